"""Pooling: ``nn.MaxPool*``/``AvgPool*``/``Adaptive*Pool*`` and ``F.*pool*`` through one factory.

:func:`pooling` gives the module builder and the function builder of one op. Both only gather
the call's arguments under PyTorch's names (from the module's attributes, or from the call by
PyTorch's argument order) into one :class:`Pooling`; the same builder then makes the layers.
Pooling runs channels last; PyTorch's padding is explicit (zeros for average pooling, the
lowest float for max pooling, so it never wins).

``ceil_mode=True`` adds a last window where the input does not fill one (PyTorch lets it start
inside the input or its left padding, never past them). It is padded explicitly too, and sees
only what PyTorch lets it see: max pooling pads it with the lowest float; average pooling pads
it with zeros and divides every window by PyTorch's own count (the window's elements inside
the padded input, or inside the input with ``count_include_pad=False``, or
``divisor_override``): Keras divides by the whole window, so the rebuild multiplies by
``window / count`` where the two differ (a built-in ``Rescaling``, constants in its config).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch.nn.functional as F
from keras import layers as L
from torch import nn

from ..core import Build, Value, functions, modules

LOWEST = float(np.finfo(np.float32).min)   # max-pool padding: never wins a max

#: PyTorch's arguments after the input, in its positional order
ARGUMENTS = {
    "max": ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
    "avg": ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
            "divisor_override"),
    "adaptive": ("output_size", "return_indices"),
}
WINDOW = {"max": "MaxPooling{n}D", "avg": "AveragePooling{n}D"}
GLOBAL = {"max": "GlobalMaxPooling{n}D", "avg": "GlobalAveragePooling{n}D"}


@dataclass(frozen=True)
class Pooling:
    """One pooling call's arguments, under PyTorch's names and with its defaults."""

    kernel_size: Any = None
    stride: Any = None
    padding: Any = 0
    dilation: Any = 1
    ceil_mode: bool = False
    count_include_pad: bool = True
    divisor_override: Any = None
    output_size: Any = None


def ntuple(x, n: int) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,) * n


def pooling(kind: str, n: int, adaptive: bool = False):
    """``(module builder, function builder)`` of ``kind`` ("max" or "avg") n-d pooling."""
    build = adaptive_pool if adaptive else pool
    names = ARGUMENTS["adaptive" if adaptive else kind]

    def from_module(b: Build, m, x):
        return build(b, x, kind, n, _arguments(b, {a: getattr(m, a) for a in names
                                                   if hasattr(m, a)}))

    def from_call(b: Build, x, *args, **kwargs):
        return build(b, x, kind, n, _arguments(b, {**dict(zip(names, args)), **kwargs}))
    return from_module, from_call


def _arguments(b: Build, given: dict) -> Pooling:
    if given.pop("return_indices", False):
        raise b.unsupported("return_indices=True")
    return Pooling(**given)


@dataclass(frozen=True)
class Window:
    """One spatial axis of a pooling: input size, kernel, stride, padding, ceil_mode."""

    size: int
    kernel: int
    stride: int
    pad: int
    ceil: bool

    @property
    def out(self) -> int:
        """PyTorch's output size (``pooling_output_shape``: the last window starts inside the
        input or its left padding)."""
        span = self.size + 2 * self.pad - self.kernel + (self.stride - 1 if self.ceil else 0)
        out = span // self.stride + 1
        return out - 1 if self.ceil and (out - 1) * self.stride >= self.size + self.pad else out

    @property
    def extra(self) -> int:
        """Elements past the right padding that ceil_mode's last window covers."""
        return max(0, (self.out - 1) * self.stride + self.kernel - self.size - 2 * self.pad)

    def counts(self, include_pad: bool) -> np.ndarray:
        """Per output position, the elements PyTorch's average divides by (one axis)."""
        start = np.arange(self.out) * self.stride - self.pad
        if include_pad:
            return np.minimum(start + self.kernel, self.size + self.pad) - start
        return np.minimum(start + self.kernel, self.size) - np.maximum(start, 0)


def pool(b: Build, x, kind: str, n: int, a: Pooling) -> Value:
    """Max or average pooling over a sliding window."""
    x = b.as_value(x)
    perm = b.spatial(x, n)
    kernel, padding = ntuple(a.kernel_size, n), ntuple(a.padding, n)
    stride = ntuple(a.stride if a.stride not in (None, []) else kernel, n)
    if ntuple(a.dilation, n) != (1,) * n:
        raise b.unsupported("dilation")
    windows = [Window(b.static(s), k, st, p, bool(a.ceil_mode))
               for s, k, st, p in zip(x.shape[2:], kernel, stride, padding)]
    if b.result is not None and tuple(b.result.shape[2:]) != tuple(w.out for w in windows):
        raise b.unsupported(f"an output of {list(b.result.shape[2:])}, where PyTorch's size "
                            f"rule gives {[w.out for w in windows]}")
    pads = [(w.pad, w.pad + w.extra) for w in windows]
    y = b.view(x, perm)
    y = b.zero_pad(y, pads) if kind == "avg" else b.pad_value(y, pads, LOWEST)
    layer = b.new(getattr(L, WINDOW[kind].format(n=n)), pool_size=kernel, strides=stride,
                  padding="valid")
    y = layer(y)
    return b.value(_divisor(b, y, windows, a) if kind == "avg" else y, perm)


def _divisor(b: Build, y, windows: list[Window], a: Pooling):
    """Keras' average divides by the whole window; rescale where PyTorch divides by less.
    PyTorch's count is a product over the axes: one built-in ``Rescaling`` per axis that needs
    it, its factors constants of the layer config (no weights, no layer of ours)."""
    if a.divisor_override:
        whole = float(np.prod([w.kernel for w in windows]))
        return b.new(L.Rescaling, whole / a.divisor_override, suffix="divisor")(y)
    for axis, w in enumerate(windows):
        counts = w.counts(bool(a.count_include_pad))
        if np.all(counts == w.kernel):
            continue
        shape = [1] * (len(windows) + 2)
        shape[axis + 1] = w.out
        factor = (w.kernel / counts).astype(np.float32).reshape(shape).tolist()
        y = b.new(L.Rescaling, factor, suffix="divisor")(y)
    return y


def adaptive_pool(b: Build, x, kind: str, n: int, a: Pooling) -> Value:
    """Adaptive pooling to 1, or to sizes that divide the input evenly (uniform windows)."""
    x = b.as_value(x)
    perm = b.spatial(x, n)
    sizes = [b.static(s) for s in x.shape[2:]]
    out = [s if o is None else o for s, o in zip(sizes, ntuple(a.output_size, n))]
    if all(o == 1 for o in out):
        layer = b.new(getattr(L, GLOBAL[kind].format(n=n)), keepdims=True)
    elif all(s % o == 0 for s, o in zip(sizes, out)):
        window = tuple(s // o for s, o in zip(sizes, out))
        layer = b.new(getattr(L, WINDOW[kind].format(n=n)), pool_size=window, strides=window,
                      padding="valid")
    else:
        raise b.unsupported(f"adaptive pooling from {sizes} to {out} (sizes do not divide)")
    return b.value(layer(b.view(x, perm)), perm)


for _n in (1, 2, 3):
    for _kind, _Kind in (("max", "Max"), ("avg", "Avg")):
        _module, _call = pooling(_kind, _n)
        modules(getattr(nn, f"{_Kind}Pool{_n}d"))(_module)
        functions(getattr(F, f"{_kind}_pool{_n}d"))(_call)
        _module, _call = pooling(_kind, _n, adaptive=True)
        modules(getattr(nn, f"Adaptive{_Kind}Pool{_n}d"))(_module)
        functions(getattr(F, f"adaptive_{_kind}_pool{_n}d"))(_call)
