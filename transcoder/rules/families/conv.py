"""Conv1d/2d/3d <-> Conv1D/2D/3D and ConvTranspose1d/2d/3d <-> Conv1DTranspose/2D/3D.

A convolution's weight (out, in/groups, k..) becomes the Keras kernel (k.., in/groups, out); a
transposed one's (in, out/groups, k..) becomes (k.., out, in): the same axis permutation, so the
bytes do not tell the two apart. Keras convolutions take ``groups=``, so grouped and depthwise
PyTorch convolutions map with the plain permutation; Keras' transposed convolutions have no
groups.
"""
from __future__ import annotations

from typing import Callable

from ..checkcase import BATCH, Built, LayerCase, Skip, spatial_sizes
from ..ops import Permute
from ..table import LayerRule, Param

TRANSPOSED_HINTS = ("deconv", "convt", "transpose", "transposed", "upconv", "tconv")


def _check_conv(n: int) -> Callable[[LayerCase], Built]:
    def build(c: LayerCase) -> Built:
        shape = c.shape("weight")
        if len(shape) != n + 2:
            raise Skip(f"a Conv{n}d weight must be {n + 2}-d, not {list(shape)}")
        groups = int(c.options.get("groups", 1))
        out, kernel, bias = shape[0], shape[2:], c.has("bias")
        inn = shape[1] * groups
        module = getattr(c.nn, f"Conv{n}d")(inn, out, kernel, groups=groups, bias=bias)
        layer = getattr(c.layers, f"Conv{n}D")(out, kernel, groups=groups, use_bias=bias)
        note = "" if "groups" in c.options else "groups=1 assumed (not in the weights)"
        return Built(module, layer, [c.normal((BATCH, inn, *spatial_sizes(kernel)))], True,
                     note=note)
    return build


def _check_conv_transpose(n: int) -> Callable[[LayerCase], Built]:
    def build(c: LayerCase) -> Built:
        shape = c.shape("weight")
        if int(c.options.get("groups", 1)) != 1:
            raise Skip("a grouped ConvTranspose has no Keras counterpart (Keras Conv*DTranspose "
                       "has no groups)")
        inn, out, kernel, bias = shape[0], shape[1], shape[2:], c.has("bias")
        module = getattr(c.nn, f"ConvTranspose{n}d")(inn, out, kernel, bias=bias)
        layer = getattr(c.layers, f"Conv{n}DTranspose")(out, kernel, use_bias=bias)
        return Built(module, layer, [c.normal((BATCH, inn, *spatial_sizes(kernel)))], True)
    return build


def _conv(n: int, transposed: bool) -> LayerRule:
    axes = tuple(range(2, n + 2)) + (1, 0)
    name = f"ConvTranspose{n}d" if transposed else f"Conv{n}d"
    keras = f"Conv{n}DTranspose" if transposed else f"Conv{n}D"
    note = ("(in, out/g, k..) -> (k.., out, in); Keras has no groups here: grouped needs a densified "
            "kernel" if transposed else "(out, in/g, k..) -> (k.., in/g, out); groups and depthwise "
            "map to Keras Conv with groups=")
    check = _check_conv_transpose(n) if transposed else _check_conv(n)
    return LayerRule(name, (name,), keras, (Param("weight", "kernel", Permute(axes)),
                                            Param("bias", "bias", required=False)),
                     note=note, hints=TRANSPOSED_HINTS if transposed else (), check=check)


CONVOLUTIONS = tuple(_conv(n, False) for n in (1, 2, 3))
TRANSPOSED = tuple(_conv(n, True) for n in (1, 2, 3))
