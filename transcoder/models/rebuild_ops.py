"""Builders for the common ``nn`` modules: convolutions, normalisation, pooling, Linear,
Embedding, activations, Dropout, Flatten, padding and upsampling.

Each module call becomes one Keras layer named by the module path; helper layers (explicit
zero padding, cropping) are named ``<path>.pad`` / ``<path>.crop``. Spatial layers run
channels last; the value keeps that layout until an op needs another one.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from keras import layers as L
from torch import nn

from .keras_layers import TensorOp
from .rebuild_core import Build, Value, channels_last, identity, modules

CONV = {1: L.Conv1D, 2: L.Conv2D, 3: L.Conv3D}
CONV_T = {1: L.Conv1DTranspose, 2: L.Conv2DTranspose, 3: L.Conv3DTranspose}
ZERO_PAD = {1: L.ZeroPadding1D, 2: L.ZeroPadding2D, 3: L.ZeroPadding3D}
CROP = {1: L.Cropping1D, 2: L.Cropping2D, 3: L.Cropping3D}
POOL = {"max": {1: L.MaxPooling1D, 2: L.MaxPooling2D, 3: L.MaxPooling3D},
        "avg": {1: L.AveragePooling1D, 2: L.AveragePooling2D, 3: L.AveragePooling3D}}
GLOBAL_POOL = {"max": {1: L.GlobalMaxPooling1D, 2: L.GlobalMaxPooling2D, 3: L.GlobalMaxPooling3D},
               "avg": {1: L.GlobalAveragePooling1D, 2: L.GlobalAveragePooling2D,
                       3: L.GlobalAveragePooling3D}}
UPSAMPLE = {1: L.UpSampling1D, 2: L.UpSampling2D, 3: L.UpSampling3D}
LOWEST = float(np.finfo(np.float32).min)   # max-pool padding: never wins a max


def ntuple(x, n: int) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,) * n


def spatial(b: Build, x: Value, n: int) -> tuple:
    """The layout for an n-d spatial op on ``x``, refusing unbatched inputs."""
    if x.rank != n + 2:
        raise b.unsupported(f"an input of rank {x.rank} (expected batched (N, C, {n}-d) input)")
    return channels_last(n + 2)


def zero_pad(b: Build, y, pads: list[tuple[int, int]], suffix: str = "pad"):
    """Explicit, possibly asymmetric zero padding of a channels-last tensor (never "same")."""
    if not any(lo or hi for lo, hi in pads):
        return y
    padding = pads[0] if len(pads) == 1 else tuple(pads)
    return b.new(ZERO_PAD[len(pads)], padding, suffix=suffix)(y)


def pad_value(b: Build, y, pads: list[tuple[int, int]], value: float, mode: str = "constant"):
    """Pad the spatial axes of a channels-last tensor with ``value`` (or reflect)."""
    if not any(lo or hi for lo, hi in pads):
        return y
    width = [(0, 0), *pads, (0, 0)]
    return b.op("pad", y, suffix="pad", pad_width=width, mode=mode, value=value)


# ---------------------------------------------------------------- convolutions

def conv_pads(m, n: int) -> list[tuple[int, int]]:
    if m.padding == "valid":
        return [(0, 0)] * n
    if m.padding == "same":   # PyTorch puts the odd element at the end, like Keras
        totals = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size)]
        return [(t // 2, t - t // 2) for t in totals]
    return [(p, p) for p in m.padding]


@modules(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def conv(b: Build, m, x):
    n = len(m.kernel_size)
    perm = spatial(b, b.as_value(x), n)
    pads = conv_pads(m, n)
    if m.padding_mode == "zeros":
        y = zero_pad(b, b.view(x, perm), pads)
    elif m.padding_mode == "reflect":
        y = pad_value(b, b.view(x, perm), pads, 0.0, mode="reflect")
    else:
        raise b.unsupported(f"padding_mode={m.padding_mode!r}")
    layer = b.new(CONV[n], m.out_channels, m.kernel_size, strides=m.stride, padding="valid",
                  dilation_rate=m.dilation, groups=m.groups, use_bias=m.bias is not None)
    b.weights(layer)
    return b.value(layer(y), perm)


@modules(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def conv_transpose(b: Build, m, x, output_size=None):
    n = len(m.kernel_size)
    perm = spatial(b, b.as_value(x), n)
    if output_size is not None:
        raise b.unsupported("an output_size argument")
    if m.groups != 1:
        raise b.unsupported(f"groups={m.groups} (Keras Conv{n}DTranspose has no groups)")
    if m.padding_mode != "zeros":
        raise b.unsupported(f"padding_mode={m.padding_mode!r}")
    layer = b.new(CONV_T[n], m.out_channels, m.kernel_size, strides=m.stride, padding="valid",
                  output_padding=m.output_padding, dilation_rate=m.dilation,
                  use_bias=m.bias is not None)
    b.weights(layer)
    y = layer(b.view(x, perm))
    if any(m.padding):   # PyTorch crops `padding` from both ends of the full output
        crop = [(p, p) for p in m.padding]
        y = b.new(CROP[n], crop[0] if n == 1 else tuple(crop), suffix="crop")(y)
    return b.value(y, perm)


# ---------------------------------------------------------------- normalisation

@modules(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
def batch_norm(b: Build, m, x):
    if m.running_mean is None:
        raise b.unsupported("track_running_stats=False (it normalises with batch statistics)")
    x = b.as_value(x)
    perm = channels_last(x.rank)
    momentum = 0.1 if m.momentum is None else m.momentum   # None: cumulative; inference only
    layer = b.new(L.BatchNormalization, axis=-1, epsilon=m.eps, momentum=1 - momentum,
                  center=m.affine, scale=m.affine)
    b.weights(layer)
    return b.value(layer(b.view(x, perm)), perm)


@modules(nn.LayerNorm)
def layer_norm(b: Build, m, x):
    k = len(m.normalized_shape)
    perm = b.last_axes(x, k)
    layer = b.new(L.LayerNormalization, axis=list(range(-k, 0)) if k > 1 else -1, epsilon=m.eps,
                  center=getattr(m, "bias", None) is not None, scale=m.weight is not None)
    b.weights(layer)
    return b.value(layer(b.view(x, perm)), perm)


@modules(nn.RMSNorm)
def rms_norm(b: Build, m, x):
    if len(m.normalized_shape) != 1:
        raise b.unsupported("RMSNorm over more than one axis")
    if m.weight is None:
        raise b.unsupported("elementwise_affine=False (Keras RMSNormalization always scales)")
    eps = torch.finfo(torch.float32).eps if m.eps is None else m.eps
    perm = b.last_axes(x)
    layer = b.new(L.RMSNormalization, axis=-1, epsilon=eps)
    b.weights(layer)
    return b.value(layer(b.view(x, perm)), perm)


@modules(nn.GroupNorm)
def group_norm(b: Build, m, x):
    perm = channels_last(b.as_value(x).rank)
    layer = b.new(L.GroupNormalization, groups=m.num_groups, axis=-1, epsilon=m.eps,
                  center=m.affine, scale=m.affine)
    b.weights(layer)
    return b.value(layer(b.view(x, perm)), perm)


@modules(nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
def instance_norm(b: Build, m, x):
    if m.track_running_stats:
        raise b.unsupported("track_running_stats=True")
    n = {nn.InstanceNorm1d: 1, nn.InstanceNorm2d: 2, nn.InstanceNorm3d: 3}[type(m)]
    perm = spatial(b, b.as_value(x), n)
    layer = b.new(L.GroupNormalization, groups=-1, axis=-1, epsilon=m.eps, center=m.affine,
                  scale=m.affine)
    b.weights(layer)
    return b.value(layer(b.view(x, perm)), perm)


# ---------------------------------------------------------------- pooling

def pool(b: Build, x, kind: str, n: int, kernel, stride, padding=0, dilation=1, ceil_mode=False,
         count_include_pad=True, divisor_override=None) -> Value:
    """Max or average pooling with PyTorch's arguments."""
    x = b.as_value(x)
    perm = spatial(b, x, n)
    kernel, padding = ntuple(kernel, n), ntuple(padding, n)
    stride = ntuple(stride if stride not in (None, []) else kernel, n)
    if ntuple(dilation, n) != (1,) * n or divisor_override:
        raise b.unsupported("dilation or divisor_override")
    if kind == "avg" and any(padding) and not count_include_pad:
        raise b.unsupported("count_include_pad=False with padding")
    sizes = [b.static(s) for s in x.shape[2:]]
    floor = tuple((s + 2 * p - k) // st + 1 for s, p, k, st in zip(sizes, padding, kernel, stride))
    if ceil_mode and b.result is not None and tuple(b.result.shape[2:]) != floor:
        raise b.unsupported("ceil_mode=True where it adds a window")
    pads = [(p, p) for p in padding]
    y = b.view(x, perm)
    y = zero_pad(b, y, pads) if kind == "avg" else pad_value(b, y, pads, LOWEST)
    layer = b.new(POOL[kind][n], pool_size=kernel, strides=stride, padding="valid")
    return b.value(layer(y), perm)


def adaptive_pool(b: Build, x, kind: str, n: int, output_size) -> Value:
    """Adaptive pooling to 1, or to sizes that divide the input evenly (uniform windows)."""
    x = b.as_value(x)
    perm = spatial(b, x, n)
    sizes = [b.static(s) for s in x.shape[2:]]
    out = [s if o is None else o for s, o in zip(sizes, ntuple(output_size, n))]
    if all(o == 1 for o in out):
        layer = b.new(GLOBAL_POOL[kind][n], keepdims=True)
    elif all(s % o == 0 for s, o in zip(sizes, out)):
        window = tuple(s // o for s, o in zip(sizes, out))
        layer = b.new(POOL[kind][n], pool_size=window, strides=window, padding="valid")
    else:
        raise b.unsupported(f"adaptive pooling from {sizes} to {out} (sizes do not divide)")
    return b.value(layer(b.view(x, perm)), perm)


def _pool_module(kind: str, n: int):
    def build(b: Build, m, x):
        if getattr(m, "return_indices", False):
            raise b.unsupported("return_indices=True")
        extra = {} if kind == "max" else {"count_include_pad": m.count_include_pad,
                                          "divisor_override": getattr(m, "divisor_override", None)}
        return pool(b, x, kind, n, m.kernel_size, m.stride, m.padding,
                    getattr(m, "dilation", 1), m.ceil_mode, **extra)
    return build


def _adaptive_module(kind: str, n: int):
    def build(b: Build, m, x):
        if getattr(m, "return_indices", False):
            raise b.unsupported("return_indices=True")
        return adaptive_pool(b, x, kind, n, m.output_size)
    return build


for _n in (1, 2, 3):
    modules(getattr(nn, f"MaxPool{_n}d"))(_pool_module("max", _n))
    modules(getattr(nn, f"AvgPool{_n}d"))(_pool_module("avg", _n))
    modules(getattr(nn, f"AdaptiveMaxPool{_n}d"))(_adaptive_module("max", _n))
    modules(getattr(nn, f"AdaptiveAvgPool{_n}d"))(_adaptive_module("avg", _n))


def upsample(b: Build, x, mode: str, align_corners=None) -> Value:
    """Upsampling by integer factors read from the traced shapes (nearest, or bilinear 2-d)."""
    x = b.as_value(x)
    n = x.rank - 2
    perm = spatial(b, x, n)
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
    layer = b.new(UPSAMPLE[n], factors[0] if n == 1 else factors, **kwargs)
    return b.value(layer(b.view(x, perm)), perm)


@modules(nn.Upsample)
def upsample_module(b: Build, m, x):
    return upsample(b, x, m.mode, m.align_corners)


# ---------------------------------------------------------------- dense, embedding, shape

@modules(nn.Linear)
def linear(b: Build, m, x):
    perm = b.last_axes(x)
    layer = b.new(L.Dense, m.out_features, use_bias=m.bias is not None)
    b.weights(layer)
    return b.value(layer(b.view(x, perm)), perm)


@modules(nn.Embedding)
def embedding(b: Build, m, x):
    if m.max_norm is not None:
        raise b.unsupported("max_norm (renormalises the table at lookup)")
    x = b.as_value(x)
    layer = b.new(L.Embedding, m.num_embeddings, m.embedding_dim)
    b.weights(layer)
    return b.value(layer(b.view(x, identity(x.rank))))


def reshape(b: Build, x, shape=None) -> Value:
    """Reshape to the traced result's shape (or ``shape``), PyTorch element order. The axis
    that grows with the batch is written -1, so the model keeps a dynamic batch size."""
    x = b.as_value(x)
    target = [None if i == b.grow else s for i, s in enumerate(shape or b.result.shape)]
    y = b.view(x, identity(x.rank))
    rest = [*x.shape[1:], *target[1:]]
    if x.shape and target and None not in rest and \
            math.prod(x.shape[1:]) == math.prod(target[1:]):   # the leading axis stays
        return b.value(b.new(L.Reshape, tuple(target[1:]))(y))
    return b.value(b.op("reshape", y, shape=[-1 if s is None else s for s in target]))


@modules(nn.Flatten)
def flatten_module(b: Build, m, x):
    return flatten(b, x, m.start_dim, m.end_dim)


def flatten(b: Build, x, start_dim=0, end_dim=-1) -> Value:
    """``torch.flatten``: in PyTorch (C, H, W) order, whatever layout ``x`` is held in."""
    x = b.as_value(x)
    if x.rank >= 2 and start_dim == 1 and end_dim in (-1, x.rank - 1):
        return b.value(b.new(L.Flatten)(b.view(x, identity(x.rank))))
    return reshape(b, x)


@modules(nn.Unflatten)
def unflatten(b: Build, m, x):
    return reshape(b, x)


# ---------------------------------------------------------------- activations and friends

def activation(make):
    """A builder for a layout-blind activation module: ``make(b, m)`` gives its Keras layer."""
    def build(b: Build, m, x):
        return b.elementwise(make(b, m), x)
    return build


def act(fn: str):
    return lambda b, m: b.new(L.Activation, fn)


def gelu_layer(b: Build, approximate: str):
    if approximate == "tanh":
        return b.new(TensorOp, "gelu", {"approximate": True})
    return b.new(L.Activation, "gelu")   # Keras' gelu is exact (erf) by default


def _softplus(b: Build, m):
    if m.beta != 1:
        raise b.unsupported(f"beta={m.beta}")
    return b.new(L.Activation, "softplus")


ACTIVATIONS = {
    nn.ReLU: lambda b, m: b.new(L.ReLU),
    nn.ReLU6: lambda b, m: b.new(L.ReLU, max_value=6.0),
    nn.LeakyReLU: lambda b, m: b.new(L.LeakyReLU, negative_slope=m.negative_slope),
    nn.ELU: lambda b, m: b.new(L.ELU, alpha=m.alpha),
    nn.GELU: lambda b, m: gelu_layer(b, m.approximate),
    nn.Sigmoid: act("sigmoid"), nn.Tanh: act("tanh"), nn.SiLU: act("silu"), nn.Mish: act("mish"),
    nn.Hardswish: act("hard_silu"), nn.Hardsigmoid: act("hard_sigmoid"), nn.SELU: act("selu"),
    nn.Softsign: act("softsign"), nn.Softplus: _softplus,
    nn.Hardtanh: lambda b, m: b.new(TensorOp, "clip", {"low": m.min_val, "high": m.max_val}),
    nn.Dropout: lambda b, m: b.new(L.Dropout, m.p),            # identity at inference
    nn.Dropout1d: lambda b, m: b.new(L.Dropout, m.p),
    nn.Dropout2d: lambda b, m: b.new(L.Dropout, m.p),
    nn.AlphaDropout: lambda b, m: b.new(L.Dropout, m.p),
    nn.Identity: lambda b, m: b.new(L.Identity),
}
for _cls, _make in ACTIVATIONS.items():
    modules(_cls)(activation(_make))


def softmax(b: Build, x, dim, log: bool = False) -> Value:
    if dim is None:
        raise b.unsupported("softmax without dim")
    x = b.as_value(x)
    axis = b.axis(x, dim)
    layer = b.new(TensorOp, "log_softmax", {"axis": axis}) if log else b.new(L.Softmax, axis=axis)
    return b.elementwise(layer, x)


@modules(nn.Softmax)
def softmax_module(b: Build, m, x):
    return softmax(b, x, m.dim)


@modules(nn.LogSoftmax)
def log_softmax_module(b: Build, m, x):
    return softmax(b, x, m.dim, log=True)


@modules(nn.PReLU)
def prelu(b: Build, m, x):
    """One slope per channel (PyTorch axis 1) or one for all; the rule table's (C,) alpha is
    given the layer's unit axes when loaded."""
    x = b.as_value(x)
    keep = {b.axis(x, 1)} if m.num_parameters > 1 else set()
    layer = b.new(L.PReLU, shared_axes=[a for a in range(1, x.rank) if a not in keep] or None)
    b.weights(layer)
    return b.elementwise(layer, x)


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


@modules(nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d,
         nn.ConstantPad3d)
def constant_pad_module(b: Build, m, x):
    return pad(b, x, list(m.padding), getattr(m, "value", 0.0))


@modules(nn.ReflectionPad1d, nn.ReflectionPad2d)
def reflection_pad_module(b: Build, m, x):
    return pad(b, x, list(m.padding), mode="reflect")
