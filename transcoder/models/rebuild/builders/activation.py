"""Activations, dropout and softmax: the ``nn`` modules and the functions, side by side.

An element-wise activation is one row of :data:`ACTIVATIONS`: its ``nn`` classes, the module
attributes its Keras layer takes (PyTorch's argument names), the functions and ``Tensor``
methods computing it, and the maker of its Keras layer from those arguments. The layer runs in
whatever layout its input is held.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from keras import layers as L
from torch import nn

from ...keras_layers import TensorOp
from ..core import Build, calls, functions, methods, modules

Make = Callable[..., object]   # (b, *PyTorch's arguments) -> a Keras layer


def keras_activation(name: str) -> Make:
    """The maker of Keras' own activation ``name``."""
    return lambda b: b.new(L.Activation, name)


def gelu(b: Build, approximate: str = "none"):
    if approximate == "tanh":
        return b.new(TensorOp, "gelu", {"approximate": True})
    return b.new(L.Activation, "gelu")   # Keras' gelu is exact (erf) by default


def softplus(b: Build, beta: float = 1.0, threshold: float = 20.0):
    if beta != 1:
        raise b.unsupported(f"beta={beta}")
    return b.new(L.Activation, "softplus")


def leaky_relu(b: Build, negative_slope: float = 0.01, inplace: bool = False):
    return b.new(L.LeakyReLU, negative_slope=negative_slope)


def elu(b: Build, alpha: float = 1.0, inplace: bool = False):
    return b.new(L.ELU, alpha=alpha)


def hardtanh(b: Build, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False):
    if isinstance(min_val, torch.Tensor) or isinstance(max_val, torch.Tensor):
        raise b.unsupported("tensor bounds")
    return b.new(TensorOp, "clip", {"low": min_val, "high": max_val})


def dropout(b: Build, p: float):
    return b.new(L.Dropout, p)   # the identity at inference


#: (nn classes, their attributes the layer takes, functions and Tensor methods, layer maker)
ACTIVATIONS: list[tuple[tuple, tuple[str, ...], tuple, Make]] = [
    ((nn.ReLU,), (), (), lambda b: b.new(L.ReLU)),
    ((), (), (F.relu, torch.relu, "relu"), keras_activation("relu")),
    ((nn.ReLU6,), (), (), lambda b: b.new(L.ReLU, max_value=6.0)),
    ((), (), (F.relu6,), keras_activation("relu6")),
    ((nn.LeakyReLU,), ("negative_slope",), (F.leaky_relu,), leaky_relu),
    ((nn.ELU,), ("alpha",), (F.elu,), elu),
    ((nn.GELU,), ("approximate",), (F.gelu,), gelu),
    ((nn.Sigmoid,), (), (F.sigmoid, torch.sigmoid, "sigmoid"), keras_activation("sigmoid")),
    ((nn.Tanh,), (), (F.tanh, torch.tanh, "tanh"), keras_activation("tanh")),
    ((nn.SiLU,), (), (F.silu,), keras_activation("silu")),
    ((nn.Mish,), (), (F.mish,), keras_activation("mish")),
    ((nn.Hardswish,), (), (F.hardswish,), keras_activation("hard_silu")),
    ((nn.Hardsigmoid,), (), (F.hardsigmoid,), keras_activation("hard_sigmoid")),
    ((nn.SELU,), (), (F.selu, torch.selu), keras_activation("selu")),
    ((nn.Softsign,), (), (F.softsign,), keras_activation("softsign")),
    ((nn.Softplus,), ("beta", "threshold"), (F.softplus,), softplus),
    ((nn.Hardtanh,), ("min_val", "max_val"), (F.hardtanh,), hardtanh),
    ((nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout), ("p",), (), dropout),
    ((nn.Identity,), (), (), lambda b: b.new(L.Identity)),
]


def module_form(make: Make, attributes: tuple[str, ...]):
    """The builder of an activation module: its layer from the module's attributes."""
    def build(b: Build, m, x):
        return b.elementwise(make(b, *(getattr(m, a) for a in attributes)), x)
    return build


def call_form(make: Make):
    """The builder of an activation function or method: its layer from the call's arguments."""
    def build(b: Build, x, *args, inplace=False, **kwargs):
        return b.elementwise(make(b, *args, **kwargs), x)
    return build


for _classes, _attributes, _calls, _make in ACTIVATIONS:
    modules(*_classes)(module_form(_make, _attributes))
    calls(_calls, call_form(_make))


@functions(F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout)
def dropout_fn(b: Build, x, *args, **kwargs):
    """The identity at inference: no layer."""
    return b.as_value(x)


@functions(torch.clamp, torch.clip)
@methods("clamp", "clip")
def clamp(b: Build, x, min=None, max=None):
    return b.elementwise(hardtanh(b, min, max), x)


# ---------------------------------------------------------------- softmax

def softmax(b: Build, x, dim, log: bool = False):
    if dim is None:
        raise b.unsupported("softmax without dim")
    x = b.as_value(x)
    axis = b.axis(x, dim)
    if not log:
        return b.elementwise(b.new(L.Softmax, axis=axis), x)
    if axis == x.rank - 1:   # Keras' log_softmax activation: ops.log_softmax over the last axis
        return b.elementwise(b.new(L.Activation, "log_softmax"), x)
    return b.elementwise(b.new(TensorOp, "log_softmax", {"axis": axis}), x)


@modules(nn.Softmax)
def softmax_module(b: Build, m, x):
    return softmax(b, x, m.dim)


@functions(F.softmax, torch.softmax)
@methods("softmax")
def softmax_fn(b: Build, x, dim=None, _stacklevel=3, dtype=None):
    return softmax(b, x, dim)


@modules(nn.LogSoftmax)
def log_softmax_module(b: Build, m, x):
    return softmax(b, x, m.dim, log=True)


@functions(F.log_softmax, torch.log_softmax)
@methods("log_softmax")
def log_softmax_fn(b: Build, x, dim=None, _stacklevel=3, dtype=None):
    return softmax(b, x, dim, log=True)
