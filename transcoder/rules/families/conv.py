"""Conv1d/2d/3d <-> Conv1D/2D/3D and ConvTranspose1d/2d/3d <-> Conv1DTranspose/2D/3D.

A convolution's weight (out, in/groups, k..) becomes the Keras kernel (k.., in/groups, out); a
transposed one's (in, out/groups, k..) becomes (k.., out, in): the same axis permutation, so the
bytes do not tell the two apart. Keras convolutions take ``groups=``, so grouped and depthwise
PyTorch convolutions map with the plain permutation; Keras' transposed convolutions have no
groups.
"""
from __future__ import annotations

from typing import Callable

from ...checkpoint import TensorRef
from ..checkcase import BATCH, Built, LayerCase, Skip, spatial_sizes
from ..ops import Permute
from ..table import Inference, LayerRule, Option, Param, kernel

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


# ---------------------------------------------------------------- the Keras rebuild (b: a Build)

def conv_pads(m, n: int) -> list[tuple[int, int]]:
    """A convolution module's padding as explicit (before, after) pairs per spatial axis."""
    if m.padding == "valid":
        return [(0, 0)] * n
    if m.padding == "same":   # PyTorch puts the odd element at the end, like Keras
        totals = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size)]
        return [(t // 2, t - t // 2) for t in totals]
    return [(p, p) for p in m.padding]


def rebuild_conv(b, m, x):
    n = len(m.kernel_size)
    perm = b.spatial(x, n)
    pads = conv_pads(m, n)
    if m.padding_mode == "zeros":
        y = b.zero_pad(b.view(x, perm), pads)
    elif m.padding_mode == "reflect":
        y = b.pad_value(b.view(x, perm), pads, 0.0, mode="reflect")
    else:
        raise b.unsupported(f"padding_mode={m.padding_mode!r}")
    layer = b.new(getattr(b.layers, f"Conv{n}D"), m.out_channels, m.kernel_size,
                  strides=m.stride, padding="valid", dilation_rate=m.dilation, groups=m.groups,
                  use_bias=m.bias is not None)
    b.weights(layer)
    return b.value(layer(y), perm)


def rebuild_conv_transpose(b, m, x, output_size=None):
    n = len(m.kernel_size)
    perm = b.spatial(x, n)
    if output_size is not None:
        raise b.unsupported("an output_size argument")
    if m.groups != 1:
        raise b.unsupported(f"groups={m.groups} (Keras Conv{n}DTranspose has no groups)")
    if m.padding_mode != "zeros":
        raise b.unsupported(f"padding_mode={m.padding_mode!r}")
    layer = b.new(getattr(b.layers, f"Conv{n}DTranspose"), m.out_channels, m.kernel_size,
                  strides=m.stride, padding="valid", output_padding=m.output_padding,
                  dilation_rate=m.dilation, use_bias=m.bias is not None)
    b.weights(layer)
    y = layer(b.view(x, perm))
    if any(m.padding):   # PyTorch crops `padding` from both ends of the full output
        crop = [(p, p) for p in m.padding]
        y = b.new(getattr(b.layers, f"Cropping{n}D"), crop[0] if n == 1 else tuple(crop),
                  suffix="crop")(y)
    return b.value(y, perm)


# ---------------------------------------------------------------- the families

def kernel_of_rank(rank: int) -> Callable[[LayerRule, dict[str, TensorRef]], Inference | None]:
    """``guess_keras`` of a family whose Keras layer holds a ``kernel`` of ``rank`` axes (and
    perhaps a ``bias``), when the weights alone must say the class."""
    def guess(rule: LayerRule, weights: dict[str, TensorRef]) -> Inference | None:
        kernel = weights.get("kernel")
        if kernel is not None and set(weights) <= {"kernel", "bias"} \
                and len(kernel.shape) == rank:
            return Inference(rule.keras_kind, f"{rank}-d kernel")
        return None
    return guess


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
                     note=note, hints=TRANSPOSED_HINTS if transposed else (), check=check,
                     rebuild=rebuild_conv_transpose if transposed else rebuild_conv,
                     weight_norm=True, bias_of=None if transposed else 0, fused_activation=True,
                     keras_options={} if transposed else {"groups": Option("groups", missing=1)},
                     guess_keras=None if transposed else kernel_of_rank(n + 2),
                     inferred_from=(kernel(n + 2, transposed),))


CONVOLUTIONS = tuple(_conv(n, False) for n in (1, 2, 3))
TRANSPOSED = tuple(_conv(n, True) for n in (1, 2, 3))
