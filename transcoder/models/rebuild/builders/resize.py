"""Resizing: ``nn.Upsample`` and ``F.interpolate`` / ``F.upsample``, by integer factors."""
from __future__ import annotations

import torch.nn.functional as F
from keras import layers as L
from torch import nn

from ..core import Build, Value, functions, modules


def upsample(b: Build, x, mode: str, align_corners=None) -> Value:
    """Upsampling by integer factors read from the traced shapes (nearest, or bilinear 2-d)."""
    x = b.as_value(x)
    n = x.rank - 2
    perm = b.spatial(x, n)
    sizes, out = x.shape[2:], tuple(b.result.shape[2:])
    factors = tuple(o // b.static(s) for o, s in zip(out, sizes))
    if any(f * s != o for f, s, o in zip(factors, sizes, out)):
        raise b.unsupported(f"resizing {tuple(sizes)} to {out} (not an integer factor)")
    if mode == "nearest":
        kwargs = {}
    elif mode == "bilinear" and n == 2 and not align_corners:
        kwargs = {"interpolation": "bilinear"}
    else:
        raise b.unsupported(f"mode={mode!r}, align_corners={align_corners}")
    layer = b.new(getattr(L, f"UpSampling{n}D"), factors[0] if n == 1 else factors, **kwargs)
    return b.value(layer(b.view(x, perm)), perm)


@modules(nn.Upsample)
def upsample_module(b: Build, m, x):
    return upsample(b, x, m.mode, m.align_corners)


@functions(F.interpolate, F.upsample)
def interpolate(b: Build, x, *args, **kwargs):
    """The output size is the traced one; ``size`` and ``scale_factor`` are not read."""
    a = b.bind(F.interpolate, x, *args, **kwargs)
    if a["antialias"]:
        raise b.unsupported("antialias=True")
    return upsample(b, x, a["mode"], a["align_corners"])
