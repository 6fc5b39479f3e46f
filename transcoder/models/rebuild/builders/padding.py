"""Padding: ``F.pad`` and the ``nn`` padding modules (zero, constant, reflection).

The spatial layers' own padding (convolutions, pooling) is ``b.zero_pad`` / ``b.pad_value``
in ``core``; this is padding as an op of its own, in whatever layout its input is held.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ..core import Build, Value, functions, modules


def pad(b: Build, x, pad_list, value=0.0, mode: str = "constant") -> Value:
    """``F.pad``: pairs from the last axis backwards, in any layout of ``x``."""
    x = b.as_value(x)
    if mode not in ("constant", "reflect"):
        raise b.unsupported(f"mode={mode!r}")
    width = [(0, 0)] * x.rank
    for i in range(len(pad_list) // 2):
        width[x.rank - 1 - i] = (pad_list[2 * i], pad_list[2 * i + 1])
    if any(lo < 0 or hi < 0 for lo, hi in width):
        raise b.unsupported("negative padding (cropping)")
    keras_width = [width[p] for p in x.perm]
    y = b.op("pad", x.tensor, pad_width=keras_width, mode=mode, value=float(value or 0.0))
    return b.value(y, x.perm)


@functions(F.pad)
def pad_fn(b: Build, x, pad_list, mode="constant", value=None):
    return pad(b, x, list(pad_list), value, mode)


@modules(nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d,
         nn.ConstantPad3d)
def constant_pad_module(b: Build, m, x):
    return pad(b, x, list(m.padding), getattr(m, "value", 0.0))


@modules(nn.ReflectionPad1d, nn.ReflectionPad2d)
def reflection_pad_module(b: Build, m, x):
    return pad(b, x, list(m.padding), mode="reflect")
