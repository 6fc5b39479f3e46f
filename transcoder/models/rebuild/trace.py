"""From a traced forward to a Keras model: the tracer, the dynamic batch, the interpreter.

:func:`trace_module` traces ``module.forward`` with ``torch.fx``, keeping every module with a
builder as one call. :func:`growth` runs the graph at the example shapes and at twice the
leading axes, to find which tensors grow with the batch. :class:`Rebuilder` runs the graph in
PyTorch and, node by node, calls the builders of the tables in ``core`` (filled by
``builders/`` and the rule families) to build the Keras graph beside it, then loads the
layers' weights from the rule table's output (:func:`weights_from_checkpoint`).
"""
from __future__ import annotations

import builtins
import contextlib
import operator
from typing import Any

import keras
import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch.fx.node import map_aggregate, map_arg

from ...checkpoint import Checkpoint
from ...errors import MappingError, UnsupportedError
from .core import (FUNCTIONS, KERAS_DTYPES, METHODS, Build, Graph, Refused, Value,
                   channels_last, identity, module_builder)

#: Calls whose size arguments may depend on the batch size: their target is the traced
#: output shape with the growing axis written -1 (an expand: the batch its input has).
RESHAPES = {"view", "reshape", torch.reshape, torch.ops.aten.view.default,
            torch.ops.aten._unsafe_view.default, torch.ops.aten.reshape.default,
            torch.ops.aten.expand.default}


def weights_from_checkpoint(keras_ckpt: Checkpoint, layer_name: str) -> list[np.ndarray]:
    """The weights of Keras layer ``layer_name`` in Keras order ([] if it has none)."""
    for layer in keras_ckpt.meta.get("keras_layers", []):
        if layer["name"] == layer_name:
            return [keras_ckpt[f"{layer_name}/{w}"].load() for w in layer["weights"]]
    return []


# ---------------------------------------------------------------- tracing

class _Tracer(torch.fx.Tracer):
    """torch.fx's tracer, keeping every module with a builder as one call (a leaf)."""

    def is_leaf_module(self, m: torch.nn.Module, qualname: str) -> bool:
        return module_builder(m) is not None or super().is_leaf_module(m, qualname)


def trace_module(module: torch.nn.Module) -> torch.fx.GraphModule:
    """``module.forward`` as an fx graph; in-place calls are refused, dead code dropped."""
    try:
        graph = _Tracer().trace(module)
    except Exception as exc:   # fx's errors are of many types; say what and where
        raise UnsupportedError(f"torch.fx cannot trace {type(module).__name__}.forward: {exc}",
                               hint="data-dependent control flow must be moved out of forward"
                               ) from None
    gm = torch.fx.GraphModule(module, graph, type(module).__name__)
    _refuse_in_place(gm)
    gm.graph.eliminate_dead_code()
    return gm


def _refuse_in_place(gm: torch.fx.GraphModule) -> None:
    """An in-place call whose result goes unused would vanish from the graph: refuse it."""
    for n in gm.graph.nodes:
        method = n.target if n.op == "call_method" else ""
        in_place = (method.endswith("_") and not method.startswith("__")) \
            or (n.kwargs.get("inplace") and not n.users)
        if in_place:
            raise UnsupportedError(f"in-place {_label(gm, n)} in {_where(n)}",
                                   hint="use the out-of-place form")


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module):
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


# ---------------------------------------------------------------- dynamic batch

class _Recorder(torch.fx.Interpreter):
    """Runs the graph and keeps every node's result."""

    def __init__(self, gm: torch.fx.GraphModule) -> None:
        super().__init__(gm, garbage_collect_values=False)

    def results(self, inputs: tuple) -> dict:
        self.run(*inputs)
        return dict(self.env)


def _leaves(value) -> list:
    if isinstance(value, (tuple, list)):
        return [leaf for v in value for leaf in _leaves(v)]
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    return [value]


def growth(gm: torch.fx.GraphModule, inputs: tuple, broadcasts: set | None = None
           ) -> dict | None:
    """``{node: axis}`` for tensors that grow with the inputs' leading axes, or None if the
    model must keep the example shapes (see "Shapes" in the package docstring).

    ``broadcasts`` (a set to fill; the export rebuild's): a tensor computed in PyTorch (from
    sizes and weights alone) that grows along the batch axis with every row equal (a cls
    token or a default mask expanded to the batch) may meet the inputs: it is added to it,
    and the rebuild broadcasts its first row to the batch there. Sizes may then feed what is
    computed in PyTorch (``arange(batch)`` in a mask's making); a tensor so computed that
    is not such a broadcast must not meet the inputs."""
    if any(not isinstance(x, torch.Tensor) or x.dim() == 0 for x in inputs):
        return None
    run1 = _Recorder(gm).results(inputs)
    try:
        run2 = _Recorder(gm).results(tuple(torch.cat([x, x]) for x in inputs))
    except Exception:   # the module fixes its batch size somewhere: keep the example shapes
        return None
    tensorish = {n: any(isinstance(v, torch.Tensor) for v in _leaves(run1[n])) for n in run1}
    live, grow, sized, pending, rows = set(), {}, [], set(), set()
    for n in gm.graph.nodes:
        if n.op == "placeholder" or (tensorish[n] and any(a in live for a in n.all_input_nodes)):
            if any(a in pending for a in n.all_input_nodes):
                return None   # a value of the batch size meets the inputs
            if rows:
                broadcasts.update(a for a in n.all_input_nodes if a in rows)
            live.add(n)
        a, b = _leaves(run1[n]), _leaves(run2[n])
        if len(a) != len(b):
            return None
        for x, y in zip(a, b):
            if isinstance(x, torch.Tensor):
                axes = [i for i in range(x.dim()) if x.dim() != y.dim() or x.shape[i] != y.shape[i]]
                if broadcasts is not None and n not in live and \
                        _batch_valued(n, axes, pending | rows):
                    if axes == [0] and len(a) == 1 and _rows_equal(x, y):
                        rows.add(n)      # one row repeated: broadcast where the inputs meet it
                    elif axes or not torch.equal(x, y):
                        pending.add(n)   # an error only if an op of the inputs uses it
                    if n in rows or n in pending:
                        continue
                if len(axes) > 1 or (axes and n not in live):
                    return None
                grow.setdefault(n, axes[0] if axes else None)
            elif _differs(x, y):
                sized.append(n)
    computed = set() if broadcasts is None else {u for u in run1 if u not in live}
    if not all(_sizes_only(u, tensorish) or u in computed for n in sized for u in n.users):
        return None
    return grow


def _batch_valued(n: torch.fx.Node, axes: list[int], pending: set) -> bool:
    """Whether a tensor computed without the inputs may hold a value of the batch size."""
    return bool(axes) or any(a in pending for a in n.all_input_nodes)


def _rows_equal(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Every row along axis 0 of both runs' results is one and the same row (not a value
    computed from the batch size: that differs between the runs)."""
    return x.dim() == y.dim() > 0 and x.shape[0] > 0 and torch.equal(x[:1], y[:1]) and \
        all(torch.equal(t, t[:1].expand_as(t)) for t in (x, y))


def _differs(x, y) -> bool:
    try:
        return bool(x != y)
    except Exception:
        return True


def _sizes_only(user: torch.fx.Node, tensorish: dict) -> bool:
    return not tensorish.get(user, False) or user.target in RESHAPES


# ---------------------------------------------------------------- building

class Rebuilder(torch.fx.Interpreter):
    """Runs the traced graph in PyTorch and builds the Keras graph beside it, call by call."""

    def __init__(self, gm: torch.fx.GraphModule, module: torch.nn.Module, keras_ckpt: Checkpoint,
                 grow: dict, channels_last: bool) -> None:
        super().__init__(gm)
        reserved = {name for name, _ in module.named_modules() if name}
        self.g = Graph(keras_ckpt, reserved)
        self.state = set(module.state_dict())   # the weights (not non-persistent buffers)
        self.grow, self.channels_last = grow, channels_last
        self.kenv: dict[torch.fx.Node, Any] = {}
        self.inputs: list = []

    def build(self, example_inputs: tuple) -> keras.Model:
        self.run(*example_inputs)
        inputs = self.inputs[0] if len(self.inputs) == 1 else self.inputs
        model = keras.Model(inputs, self.outputs, name=type(self.module).__name__)
        for layer, source in self.g.weights.values():
            _set_weights(layer, self._arrays(source) if isinstance(source, str) else source)
        return model

    def _arrays(self, source: str) -> list:
        """The rule table's weights for Keras layer ``source``."""
        return weights_from_checkpoint(self.g.ckpt, source)

    def run_node(self, n: torch.fx.Node) -> Any:
        result = super().run_node(n)
        self.kenv[n] = getattr(self, f"_keras_{n.op}")(n, result)
        return result

    # ------------------------------------------------------------ per node kind

    def _keras_placeholder(self, n, result):
        if not isinstance(result, torch.Tensor):
            raise UnsupportedError(f"input {n.name!r} is a {type(result).__name__}, not a tensor")
        rank = result.dim()
        perm = channels_last(rank) if self.channels_last else identity(rank)
        shape = [None if i == self.grow.get(n) else s for i, s in enumerate(result.shape)]
        name = self.g.unique(n.name)
        tensor = keras.Input(batch_shape=tuple(shape[p] for p in perm), name=name,
                             dtype=KERAS_DTYPES[result.dtype])
        self.g.reserved.add(name)
        self.inputs.append(tensor)
        self.g.anchor = self.g.anchor if self.g.anchor is not None else tensor
        return Value(n.name, {perm: tensor})

    def _keras_get_attr(self, n, result):
        if not isinstance(result, torch.Tensor):
            return result
        b = Build(self.g, n.target, label=f"attribute {n.target}", where=_where(n))
        if n.target not in self.state:   # not a weight (a non-persistent buffer)
            return b.constant(result, name=n.target)
        if n.target not in self.g.ckpt.tensors:
            raise b.unsupported("a parameter of a layer the rule table maps, used directly")
        return b.constant(result, source=[self.g.ckpt[n.target].load()], name=n.target)

    def _keras_call_module(self, n, result):
        module = self.module.get_submodule(n.target)
        builder = module_builder(module)
        label = _label(self.module, n)
        if builder is None:
            raise UnsupportedError(f"no Keras rebuild for {label} (module {n.target})",
                                   hint="see docs/check.md#what-the-rebuild-covers")
        b = Build(self.g, n.target, label=label, where=n.target, module=module, result=result,
                  grow=self.grow.get(n))
        args, kwargs = self._args(n)
        with _keras_errors(b):
            return builder(b, module, *args, **kwargs)

    def _keras_call_function(self, n, result):
        picked = self._picked(n)
        if picked:
            return picked[0]
        args, kwargs = self._args(n)
        if not _has_value((args, kwargs)):
            return result   # sizes and constants: evaluated at the traced shapes
        builder = (METHODS if n.op == "call_method" else FUNCTIONS).get(n.target)
        label = _label(self.module, n)
        if builder is None:
            raise UnsupportedError(f"no Keras rebuild for {label} (in {_where(n)})",
                                   hint="see docs/check.md#what-the-rebuild-covers")
        b = Build(self.g, self.g.unique(n.name), label=label, where=_where(n), result=result,
                  grow=self.grow.get(n))
        with _keras_errors(b):
            return builder(b, *args, **kwargs)

    _keras_call_method = _keras_call_function

    def _picked(self, n) -> tuple:
        """``(item,)`` for ``results[i]`` of a call that returned several (``attn(x, x,
        x)[0]``): the item picked, so that a sibling the rebuild refuses (the attention
        weights) is an error only where it is used; else ``()``."""
        if n.op != "call_function" or n.target is not operator.getitem or len(n.args) != 2:
            return ()
        results = self.kenv.get(n.args[0]) if isinstance(n.args[0], torch.fx.Node) else None
        index = n.args[1]
        if not isinstance(results, tuple) or not isinstance(index, int) or \
                not -len(results) <= index < len(results):
            return ()
        if isinstance(results[index], Refused):
            raise results[index].error
        return (results[index],)

    def _keras_output(self, n, result):
        def output(x):
            if isinstance(x, Value):
                return Build(self.g, x.name, label="output", where="output").view(
                    x, channels_last(x.rank) if self.channels_last else identity(x.rank))
            if isinstance(x, Refused):
                raise x.error
            raise UnsupportedError(f"model output {x!r} does not depend on the inputs")
        self.outputs = map_aggregate(map_arg(n.args[0], self.kenv.__getitem__), output)
        return self.outputs

    def _args(self, n):
        args, kwargs = map_arg((n.args, n.kwargs), self.kenv.__getitem__)
        for x in _leaves([args, list(kwargs.values())]):
            if isinstance(x, Refused):
                raise x.error
        return args, kwargs


@contextlib.contextmanager
def _keras_errors(b: Build):
    """Keras refusing a layer or a shape becomes one UnsupportedError naming the call."""
    try:
        yield
    except (ValueError, TypeError) as exc:
        raise b.unsupported(f"Keras could not build it ({' '.join(str(exc).split())})") from exc


def _has_value(args) -> bool:
    return any(isinstance(x, Value) for x in _leaves([args]))


def _set_weights(layer, arrays: list) -> None:
    """Load ``arrays`` into ``layer``, checking the rule table gave what the layer holds. Unit
    axes may differ (a PReLU's (C,) alpha in a (1, 1, C) weight); nothing else may."""
    expected = [tuple(w.shape) for w in layer.weights]
    got = [tuple(a.shape) for a in arrays]
    def squeezed(shape):
        return [d for d in shape if d != 1]
    fits = len(got) == len(expected) and all(
        g == e or squeezed(g) == squeezed(e) for g, e in zip(got, expected))
    if not fits:
        raise MappingError(f"Keras layer {layer.name!r} ({type(layer).__name__}) holds weights "
                           f"{expected}, the rule table gives {got}")
    layer.set_weights([np.asarray(a).reshape(e) for a, e in zip(arrays, expected)])


# ---------------------------------------------------------------- labels for messages

def function_label(fn) -> str:
    name = getattr(fn, "__name__", "")
    for namespace, prefix in ((F, "F."), (torch.linalg, "torch.linalg."), (torch, "torch."),
                              (operator, "operator."), (builtins, "")):
        short = name.removeprefix("linalg_") if namespace is torch.linalg else name
        if getattr(namespace, short, None) is fn:
            return prefix + short
    return getattr(fn, "__qualname__", repr(fn))


def _label(root: torch.nn.Module, n: torch.fx.Node) -> str:
    if n.op == "call_module":
        cls = type(root.get_submodule(n.target))
        return f"{'nn.' if cls.__module__.startswith('torch.nn') else cls.__module__ + '.'}" \
               f"{cls.__name__}"
    if n.op == "call_method":
        return f"Tensor.{n.target}"
    return function_label(n.target)


def _where(n: torch.fx.Node) -> str:
    stack = n.meta.get("nn_module_stack") or {}
    path = next(reversed(stack.values()))[0] if stack else ""
    return path or "the top-level forward"
