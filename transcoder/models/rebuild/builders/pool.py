"""Pooling: ``nn.MaxPool*``/``AvgPool*``/``Adaptive*Pool*`` and ``F.*pool*`` through one factory.

:func:`pooling` gives the module builder and the function builder of one op. Both only gather
the call's arguments under PyTorch's names (from the module's attributes, or from the call by
PyTorch's argument order) into one :class:`Pooling`; the same builder then makes the layers.
Pooling runs channels last; PyTorch's padding is explicit (zeros for average pooling, the
lowest float for max pooling, so it never wins).
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


def pool(b: Build, x, kind: str, n: int, a: Pooling) -> Value:
    """Max or average pooling over a sliding window."""
    x = b.as_value(x)
    perm = b.spatial(x, n)
    kernel, padding = ntuple(a.kernel_size, n), ntuple(a.padding, n)
    stride = ntuple(a.stride if a.stride not in (None, []) else kernel, n)
    if ntuple(a.dilation, n) != (1,) * n or a.divisor_override:
        raise b.unsupported("dilation or divisor_override")
    if kind == "avg" and any(padding) and not a.count_include_pad:
        raise b.unsupported("count_include_pad=False with padding")
    sizes = [b.static(s) for s in x.shape[2:]]
    floor = tuple((s + 2 * p - k) // st + 1 for s, p, k, st in zip(sizes, padding, kernel, stride))
    if a.ceil_mode and b.result is not None and tuple(b.result.shape[2:]) != floor:
        raise b.unsupported("ceil_mode=True where it adds a window")
    pads = [(p, p) for p in padding]
    y = b.view(x, perm)
    y = b.zero_pad(y, pads) if kind == "avg" else b.pad_value(y, pads, LOWEST)
    layer = b.new(getattr(L, WINDOW[kind].format(n=n)), pool_size=kernel, strides=stride,
                  padding="valid")
    return b.value(layer(y), perm)


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
