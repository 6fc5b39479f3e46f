"""The pieces every rebuild builder uses: values with layouts, the per-call context, the tables.

A :class:`Value` is one PyTorch tensor inside the Keras graph. It may be held in several
layouts: a layout is a permutation ``p`` of the PyTorch axes with ``keras = torch.permute(p)``.
Convolutions and their kin want channels last, ``(0, 2, ..., n-1, 1)``; reshapes want the
PyTorch order ``(0, 1, ..., n-1)``; element-wise ops take whatever they get, and
``permute``/``transpose`` only relabel. A change of layout is a Keras ``Permute`` layer, made
once per value and layout, only where an op asks for it.

Builders are small functions ``builder(b, *args, **kwargs) -> Value`` (modules get the module
after ``b``), registered in :data:`MODULES` (by class), :data:`FUNCTIONS` (by function) and
:data:`METHODS` (by ``Tensor`` method name). ``b`` is a :class:`Build`: everything a builder
needs (``b.layers`` is ``keras.layers``; layouts, padding, weights, errors), so that the rule
families' builders (``transcoder/rules/families``) import neither torch nor keras.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import keras
import numpy as np
import torch

from ...errors import UnsupportedError
from ..keras_layers import Constant, TensorOp
from ..torch_side import original_class

Perm = tuple[int, ...]
Builder = Callable[..., Any]

MODULES: dict[type, Builder] = {}
FUNCTIONS: dict[Callable, Builder] = {}
METHODS: dict[str, Builder] = {}
ATEN: dict[Any, Builder] = {}      # torch.ops.aten overloads: the ops of a torch.export graph

KERAS_DTYPES = {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16",
                torch.bfloat16: "bfloat16", torch.int64: "int64", torch.int32: "int32",
                torch.int16: "int16", torch.int8: "int8", torch.uint8: "uint8", torch.bool: "bool"}


def module_builder(module) -> Builder | None:
    """The builder of a module's class; a parametrized module (weight norm's new API) is built
    as the class it was made from, with the weights the rule table folded."""
    return MODULES.get(original_class(module))


def modules(*classes: type) -> Callable[[Builder], Builder]:
    """Decorator: register a builder for these ``nn.Module`` classes."""
    def register(fn: Builder) -> Builder:
        MODULES.update((c, fn) for c in classes)
        return fn
    return register


def functions(*fns: Callable) -> Callable[[Builder], Builder]:
    def register(fn: Builder) -> Builder:
        FUNCTIONS.update((f, fn) for f in fns)
        return fn
    return register


def methods(*names: str) -> Callable[[Builder], Builder]:
    def register(fn: Builder) -> Builder:
        METHODS.update((n, fn) for n in names)
        return fn
    return register


def aten(*overloads) -> Callable[[Builder], Builder]:
    """Decorator: register a builder for these ``torch.ops.aten`` overloads."""
    def register(fn: Builder) -> Builder:
        ATEN.update((o, fn) for o in overloads)
        return fn
    return register


def calls(targets: tuple, builder: Builder) -> None:
    """Register ``builder`` for functions and ``Tensor`` method names (strings) alike."""
    for target in targets:
        (methods if isinstance(target, str) else functions)(target)(builder)


# ---------------------------------------------------------------- layouts

def identity(n: int) -> Perm:
    return tuple(range(n))


def channels_last(n: int) -> Perm:
    """PyTorch (N, C, ...) -> Keras (N, ..., C); ranks below 3 have no spatial axes."""
    return (0, *range(2, n), 1) if n >= 3 else identity(n)


#: PyTorch (T, N, F) held as Keras (N, T, F): a sequence that is not batch first
SEQUENCE_FIRST = (1, 0, 2)


def inverse(p: Perm) -> Perm:
    return tuple(int(i) for i in np.argsort(p))


def _label(p: Perm) -> str:
    if p == identity(len(p)):
        return "torch_order"
    if p == channels_last(len(p)):
        return "channels_last"
    return "permute" + "".join(map(str, p))


@dataclass
class Value:
    """A PyTorch tensor in the Keras graph: ``views[p]`` holds it in layout ``p``; the first
    view is the one its producer made."""

    name: str
    views: dict[Perm, Any] = field(default_factory=dict)

    @property
    def perm(self) -> Perm:
        return next(iter(self.views))

    @property
    def tensor(self):
        return self.views[self.perm]

    @property
    def rank(self) -> int:
        return len(self.perm)

    @property
    def shape(self) -> tuple:
        """PyTorch-order shape; None where the size is left dynamic."""
        kshape = self.tensor.shape
        return tuple(kshape[self.perm.index(i)] for i in range(self.rank))

    @property
    def dtype(self) -> str:
        return self.tensor.dtype


class Refused:
    """A result that exists in PyTorch but not in the rebuild (attention weights): an error
    only if something uses it."""

    def __init__(self, error: UnsupportedError) -> None:
        self.error = error


class NeedStatic(Exception):
    """A builder needs a size the dynamic-batch model leaves open: rebuild with fixed shapes."""


# ---------------------------------------------------------------- the shared build state

class Graph:
    """What all builders of one rebuild share: layer names, weights to load, the anchor."""

    def __init__(self, keras_ckpt, reserved: set[str]) -> None:
        self.ckpt = keras_ckpt
        self.reserved = reserved                # module paths: only their own calls use them
        self.layers: dict[str, Any] = {}
        self.weights: dict[str, tuple[Any, Any]] = {}   # layer name -> (layer, source)
        self.anchor = None                      # a model input: Constant layers hang off it
        self.params: dict[int, str] = {}        # id of a parameter tensor -> its path
        self.param_values: dict[str, Value] = {}

    def unique(self, name: str) -> str:
        base, i = name, 1
        while name in self.layers or name in self.reserved:
            name, i = f"{base}_{i}", i + 1
        return name


class Build:
    """The context of one call: its names, its concrete PyTorch result and the helpers.

    ``name`` names the call's Keras layer (the module path for a module, a unique readable
    name from the trace for a function or method); helper layers are ``<name>.<suffix>``.
    ``path`` is the module path of a module call (None for a function or method call).
    Builders get everything through it, so that the rule families' builders import neither
    torch nor keras.
    """

    layers = keras.layers                   # what builders make layers from
    identity = staticmethod(identity)       # layouts: PyTorch order, channels last
    channels_last = staticmethod(channels_last)

    def __init__(self, graph: Graph, name: str, *, label: str, where: str, module: Any = None,
                 result: Any = None, grow: int | None = None) -> None:
        self.g, self.name, self.label, self.where = graph, name, label, where
        self.module, self.result, self.grow = module, result, grow
        self.path = name if module is not None else None

    # ------------------------------------------------------------ errors

    def unsupported(self, reason: str) -> UnsupportedError:
        return UnsupportedError(f"{self.label} in {self.where}: {reason}",
                                hint="see docs/check.md#what-the-rebuild-covers")

    def refused(self, reason: str) -> Refused:
        """A result the rebuild cannot give: an error only if something uses it."""
        return Refused(UnsupportedError(f"{self.label} in {self.where}: {reason}"))

    def static(self, size: int | None) -> int:
        if size is None:
            raise NeedStatic(self.label)
        return size

    @staticmethod
    def bind(fn: Callable, *args, **kwargs) -> dict[str, Any]:
        """A call's arguments by the names and defaults of PyTorch's own ``fn``."""
        bound = inspect.signature(fn).bind(*args, **kwargs)
        bound.apply_defaults()
        return bound.arguments

    # ------------------------------------------------------------ layers

    def new(self, cls, *args, suffix: str | None = None, name: str | None = None, **kwargs):
        """A Keras layer named by this call (exact module paths; a module called twice
        reuses its layer), or ``<name>.<suffix>`` for a helper layer."""
        exact = name or (self.path if suffix is None else None)
        if exact is not None and exact in self.g.layers:
            return self.g.layers[exact]
        layer_name = exact or self.g.unique(f"{self.name}.{suffix}" if suffix else self.name)
        try:
            layer = cls(*args, name=layer_name, **kwargs)
        except (ValueError, TypeError) as exc:
            raise self.unsupported(f"Keras refuses {cls.__name__} for it ({exc})") from None
        self.g.layers[layer_name] = layer
        return layer

    def weights(self, layer, source: Any = None) -> None:
        """Load ``layer``'s weights from the rule table's output for Keras layer ``source``
        (default: this module's path), or from a list of arrays."""
        self.g.weights.setdefault(layer.name, (layer, self.path if source is None else source))

    def op(self, op: str, inputs, *, suffix: str | None = None, **kwargs):
        """Apply a :class:`TensorOp` to Keras tensors."""
        return self.new(TensorOp, op, kwargs, suffix=suffix)(inputs)

    # ------------------------------------------------------------ values and layouts

    def value(self, tensor, perm: Perm | None = None, name: str | None = None) -> Value:
        perm = identity(len(tensor.shape)) if perm is None else tuple(perm)
        return Value(name or self.name, {perm: tensor})

    def as_value(self, x) -> Value:
        if isinstance(x, Value):
            return x
        if isinstance(x, torch.Tensor):
            path = self.g.params.get(id(x))
            return self.constant(x.detach()) if path is None else self.parameter(x, path)
        raise self.unsupported(f"expected a tensor, got {type(x).__name__} {x!r}")

    def view(self, x, perm: Perm):
        """The Keras tensor holding ``x`` in layout ``perm`` (a Permute layer, made once)."""
        x = self.as_value(x)
        perm = tuple(perm)
        if perm not in x.views:
            src = inverse(x.perm)
            axes = [src[p] for p in perm]   # new Keras axis i = old Keras axis axes[i]
            name = self.g.unique(f"{x.name}.{_label(perm)}")
            if axes[0] == 0:
                layer = keras.layers.Permute(axes[1:], name=name)
            else:
                layer = TensorOp("transpose", {"axes": axes}, name=name)
            self.g.layers[name] = layer
            x.views[perm] = layer(x.tensor)
        return x.views[perm]

    def last_axes(self, x, k: int = 1) -> Perm:
        """A layout of ``x`` whose last ``k`` axes are PyTorch's last ``k``, in order (for ops
        over trailing axes: Dense, LayerNorm): its current one if it fits, else PyTorch order."""
        x = self.as_value(x)
        n = x.rank
        return x.perm if x.perm[n - k:] == identity(n)[n - k:] else identity(n)

    def elementwise(self, layer, x) -> Value:
        """Apply a layout-blind layer in ``x``'s current layout."""
        x = self.as_value(x)
        return self.value(layer(x.tensor), x.perm, name=layer.name)

    @staticmethod
    def sequence(batch_first: bool) -> Perm:
        """The layout of a (N, T, F) or (T, N, F) PyTorch sequence held as Keras (N, T, F)."""
        return identity(3) if batch_first else SEQUENCE_FIRST

    def spatial(self, x, n: int) -> Perm:
        """The layout for an n-d spatial op on ``x`` (channels last), refusing unbatched input."""
        x = self.as_value(x)
        if x.rank != n + 2:
            raise self.unsupported(f"an input of rank {x.rank} (expected batched (N, C, {n}-d) "
                                   f"input)")
        return channels_last(n + 2)

    def axis(self, x: Value, dim: int) -> int:
        """The Keras axis holding PyTorch axis ``dim`` of ``x``."""
        return x.perm.index(dim % x.rank)

    def constant(self, tensor: torch.Tensor, source: Any = None, name: str | None = None) -> Value:
        """A tensor independent of the inputs, as a :class:`Constant` layer."""
        dtype = KERAS_DTYPES.get(tensor.dtype)
        if dtype is None:
            raise self.unsupported(f"a constant of dtype {tensor.dtype}")
        layer = self.new(Constant, list(tensor.shape), dtype, suffix=None if name else "constant",
                         name=name)
        self.weights(layer, [tensor.detach().cpu().numpy()] if source is None else source)
        return self.value(layer(self.g.anchor), name=layer.name)

    def parameter(self, tensor: torch.Tensor, path: str) -> Value:
        """A parameter or buffer used directly: one Constant layer named by its path, its
        value the checkpoint's where the checkpoint carries it under that name."""
        if path not in self.g.param_values:
            source = [self.g.ckpt[path].load()] if path in self.g.ckpt.tensors else None
            self.g.param_values[path] = self.constant(tensor, source=source, name=path)
        return self.g.param_values[path]

    # ------------------------------------------------------------ padding (channels last)

    def zero_pad(self, y, pads: list[tuple[int, int]], suffix: str = "pad"):
        """Explicit, possibly asymmetric zero padding of the spatial axes of a channels-last
        Keras tensor (never "same")."""
        if not any(lo or hi for lo, hi in pads):
            return y
        padding = pads[0] if len(pads) == 1 else tuple(pads)
        return self.new(getattr(keras.layers, f"ZeroPadding{len(pads)}D"), padding,
                        suffix=suffix)(y)

    def pad_value(self, y, pads: list[tuple[int, int]], value: float, mode: str = "constant"):
        """Pad the spatial axes of a channels-last Keras tensor with ``value`` (or reflect)."""
        if not any(lo or hi for lo, hi in pads):
            return y
        width = [(0, 0), *pads, (0, 0)]
        return self.op("pad", y, suffix="pad", pad_width=width, mode=mode, value=value)

    # ------------------------------------------------------------ composite modules

    def sub(self, attr: str, *args, **kwargs):
        """Call child ``attr`` of this module (a module or a function) through its builder."""
        try:
            child = self.module.get_submodule(attr)
        except AttributeError:
            child = getattr(self.module, attr)   # a function such as F.relu
        path = f"{self.path}.{attr}"
        if isinstance(child, torch.nn.Module):
            builder = module_builder(child)
            label = f"nn.{type(child).__name__}"
            b = Build(self.g, path, label=label, where=path, module=child)
            args = (child, *args)
        else:
            builder = FUNCTIONS.get(child)
            label = getattr(child, "__name__", repr(child))
            b = Build(self.g, self.g.unique(path), label=label, where=self.path)
        if builder is None:
            raise self.unsupported(f"its {attr} is {label}, which has no Keras rebuild")
        return builder(b, *args, **kwargs)
