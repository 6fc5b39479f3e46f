"""Arithmetic: operators and their ``torch.*`` / ``Tensor`` forms, element-wise math,
reductions, norms, dtype casts, and the sizes read from tensors.

A Keras built-in layer is used wherever one computes the same numbers, so that a saved model
needs no class of ours to load: ``Add``/``Subtract``/``Multiply``/``Maximum``/``Minimum`` for
two tensors of one shape, ``Rescaling`` for a float32 tensor and a number (where its
``x * scale + offset`` rounds as the op does), global pooling for a mean or max over every
spatial axis, ``UnitNormalization`` for ``F.normalize(p=2, eps=1e-12)``. Everything else is
one of our :class:`TensorOp` / :class:`Scalar` layers.

Calls on sizes (``x.shape``, ``x.size(1)``, ``b * t``) never reach these builders unless a
tensor takes part: they are evaluated at the traced shapes (see ``trace.py``).
"""
from __future__ import annotations

import builtins
import math
import operator

import torch
import torch.nn.functional as F

from keras import layers as L

from ...keras_layers import Scalar, TensorOp
from ..core import KERAS_DTYPES, Build, Value, calls, functions, identity, methods
from .activation import call_form

NUMBER = (int, float, bool)


def _dims(x: Value, dim) -> list[int]:
    if dim is None:
        return list(range(x.rank))
    return [d % x.rank for d in (dim if isinstance(dim, (tuple, list)) else [dim])]


def _drop(perm: tuple, dims: list[int]) -> tuple:
    """The layout left when the PyTorch axes ``dims`` are reduced away."""
    rest = [p for p in perm if p not in dims]
    order = sorted(rest)
    return tuple(order.index(p) for p in rest)


# ---------------------------------------------------------------- element-wise math

def _tensor_op(name: str):
    return lambda b: b.new(TensorOp, name)


for _calls, _name in [((torch.exp, "exp"), "exp"), ((torch.log, "log"), "log"),
                      ((torch.sqrt, "sqrt"), "sqrt"), ((torch.rsqrt, "rsqrt"), "rsqrt"),
                      ((torch.abs, "abs"), "abs"), ((torch.erf, "erf"), "erf"),
                      ((operator.neg, torch.neg, "neg"), "negative"), ((torch.sin, "sin"), "sin"),
                      ((torch.cos, "cos"), "cos"), ((torch.square, "square"), "square")]:
    calls(_calls, call_form(_tensor_op(_name)))


# ---------------------------------------------------------------- binary operators

#: two tensors of one shape: the Keras merge layer computing ``op``
MERGE = {"add": L.Add, "subtract": L.Subtract, "multiply": L.Multiply, "maximum": L.Maximum,
         "minimum": L.Minimum}


def _rescaling(op: str, value, reverse: bool) -> tuple[float, float] | None:
    """``(scale, offset)`` of a ``Rescaling`` (``x * scale + offset``) computing ``x op value``
    (``value op x`` if ``reverse``) with the same rounding, or None. ``x * 1.0`` is ``x``, and
    adding -0.0 changes nothing (not even the sign of a zero), so only one rounding is left,
    the op's own; a division is exact only by a power of two."""
    value = float(value)
    if op == "add":
        return 1.0, value
    if op == "subtract":
        return (-1.0, value) if reverse else (1.0, -value)
    if op == "multiply":
        return value, -0.0
    if op == "divide" and not reverse and value != 0 and math.frexp(value)[0] in (0.5, -0.5):
        return 1.0 / value, -0.0
    return None


def scalar(b: Build, op: str, x, value, reverse: bool = False) -> Value:
    """``x op value`` (``value op x`` if ``reverse``) for a Python number ``value``."""
    x = b.as_value(x)
    exact = None if isinstance(value, bool) or x.dtype != "float32" else \
        _rescaling(op, value, reverse)
    if exact is None:
        return b.elementwise(b.new(Scalar, op, value, reverse=reverse), x)
    return b.elementwise(b.new(L.Rescaling, scale=exact[0], offset=exact[1]), x)


def arith(b: Build, op: str, x, y) -> Value:
    """``x op y`` with PyTorch broadcasting; a number on either side: :func:`scalar`."""
    if isinstance(y, NUMBER):
        return scalar(b, op, x, y)
    if isinstance(x, NUMBER):
        return scalar(b, op, y, x, reverse=True)
    x, y = b.as_value(x), b.as_value(y)
    same_layout = x.rank == y.rank and op != "matmul"
    px = x.perm if same_layout else identity(x.rank)
    py = px if same_layout else identity(y.rank)
    xs = [b.view(x, px), b.view(y, py)]
    if op in MERGE and same_layout and x.shape == y.shape:   # no broadcasting
        return b.value(b.new(MERGE[op])(xs), px)
    return b.value(b.op(op, xs), px if same_layout else None)


def _binary(op: str):
    def build(b: Build, x, y, *, alpha=1, rounding_mode=None, out=None):
        if alpha != 1 or rounding_mode is not None or out is not None:
            raise b.unsupported("alpha, rounding_mode or out")
        return arith(b, op, x, y)
    return build


for _calls, _op in [((operator.add, torch.add, "add"), "add"),
                    ((operator.sub, torch.sub, torch.subtract, "sub", "subtract"), "subtract"),
                    ((operator.mul, torch.mul, torch.multiply, "mul", "multiply"), "multiply"),
                    ((operator.truediv, torch.div, torch.true_divide, "div", "true_divide"),
                     "divide"),
                    ((operator.floordiv, torch.floor_divide), "floor_divide"),
                    ((operator.pow, torch.pow, "pow"), "power"),
                    ((operator.matmul, torch.matmul, torch.bmm, "matmul", "bmm"), "matmul"),
                    ((torch.maximum,), "maximum"), ((torch.minimum,), "minimum")]:
    calls(_calls, _binary(_op))


# ---------------------------------------------------------------- reductions and norms

#: a mean or max over every spatial axis: Keras' global pooling (the same ``ops.mean`` /
#: ``ops.max`` over the same axes)
GLOBAL_POOLING = {"mean": "GlobalAveragePooling{n}D", "max": "GlobalMaxPooling{n}D"}


def _global_pooling(b: Build, op: str, rank: int, axes: list[int], keepdims: bool):
    """The global pooling layer reducing Keras ``axes`` of a rank-``rank`` tensor, or None."""
    n = rank - 2
    if op not in GLOBAL_POOLING or not 1 <= n <= 3:
        return None
    formats = {tuple(range(1, rank - 1)): "channels_last", tuple(range(2, rank)): "channels_first"}
    data_format = formats.get(tuple(sorted(axes)))
    if data_format is None:
        return None
    return b.new(getattr(L, GLOBAL_POOLING[op].format(n=n)), data_format=data_format,
                 keepdims=keepdims)


def _reduce(op: str):
    def build(b: Build, x, dim=None, keepdim=False, *, dtype=None, axis=None):
        x = b.as_value(x)
        dims = _dims(x, dim if axis is None else axis)
        axes = [b.axis(x, d) for d in dims]
        layer = _global_pooling(b, op, x.rank, axes, keepdim) or \
            b.new(TensorOp, op, {"axis": axes, "keepdims": keepdim})
        return b.value(layer(x.tensor), x.perm if keepdim else _drop(x.perm, dims))
    return build


for _calls, _op in [((torch.mean, "mean"), "mean"), ((torch.sum, "sum"), "sum"),
                    ((torch.amax, "amax"), "max"), ((torch.amin, "amin"), "min")]:
    calls(_calls, _reduce(_op))


def max_with_indices(b: Build, x, dim: int, keepdim: bool = False) -> tuple[Value, Value]:
    """``torch.max(x, dim)``: the maxima and their (first) indices, int64 like PyTorch."""
    x = b.as_value(x)
    values = _reduce("max")(b, x, dim, keepdim)
    axis = b.axis(x, dim)
    indices = b.new(TensorOp, "argmax", {"axis": axis, "keepdims": keepdim}, suffix="indices")
    return values, b.value(indices(x.tensor), values.perm)


@functions(torch.max, torch.min)
@methods("max", "min")
def max_min(b: Build, x, dim=None, keepdim=False, *, out=None):
    """``torch.max``/``min`` in its three forms: over everything, over ``dim`` with indices
    (max only), or element-wise against another tensor."""
    op = "max" if b.label.endswith("max") else "min"
    if dim is None:
        return _reduce(op)(b, x)
    if isinstance(dim, (Value, torch.Tensor)):
        return arith(b, "maximum" if op == "max" else "minimum", x, dim)
    if op == "min":
        raise b.unsupported("torch.min with a dim (indices of the minimum)")
    return max_with_indices(b, x, dim, keepdim)


def _p(b: Build, p) -> float:
    if p in ("fro", None):
        return 2.0
    if isinstance(p, str):
        raise b.unsupported(f"p={p!r}")
    return math.inf if p == float("inf") else float(p)


@functions(torch.norm, torch.linalg.vector_norm)
@methods("norm")
def norm(b: Build, x, p="fro", dim=None, keepdim=False, *unread, **kwargs):
    """``torch.norm`` / ``Tensor.norm`` (``p``) and ``vector_norm`` (``ord``); ``out`` and
    ``dtype`` are not read."""
    x = b.as_value(x)
    dims = _dims(x, dim)
    ord = kwargs.get("ord")
    y = b.op("norm", x.tensor, p=_p(b, p if ord is None else ord),
             axis=[b.axis(x, d) for d in dims], keepdims=keepdim)
    return b.value(y, x.perm if keepdim else _drop(x.perm, dims))


@functions(F.normalize)
def normalize(b: Build, x, p=2.0, dim=1, eps=1e-12, out=None):
    """``UnitNormalization`` where it is the same function (p=2, eps=1e-12: it multiplies by
    ``min(rsqrt(sum x^2), 1e12)`` where PyTorch divides by ``max(norm, 1e-12)``; the last bit
    may round differently), else our ``normalize`` op."""
    x = b.as_value(x)
    if _p(b, p) == 2.0 and eps == 1e-12:
        return b.elementwise(b.new(L.UnitNormalization, axis=b.axis(x, dim)), x)
    layer = b.new(TensorOp, "normalize", {"p": _p(b, p), "axis": b.axis(x, dim), "eps": eps})
    return b.elementwise(layer, x)


# ---------------------------------------------------------------- casts and sizes

@methods("float", "to", "type_as", "long", "int", "bool")
def convert(b: Build, x, *args, **kwargs):
    """A dtype change (a device change is nothing) to the traced result's dtype."""
    x = b.as_value(x)
    dtype = KERAS_DTYPES.get(b.result.dtype)
    if dtype is None:
        raise b.unsupported(f"a conversion to {b.result.dtype}")
    return x if dtype == x.dtype else b.elementwise(b.new(TensorOp, "cast", {"dtype": dtype}), x)


@functions(builtins.getattr)
@methods("size", "dim", "numel", "type")
def concrete(b: Build, x, *args, **kwargs):
    """``x.shape``, ``x.size(1)``, ``x.ndim``...: the value at the traced shapes; the
    ``values`` / ``indices`` of a ``torch.max`` with a dim."""
    if isinstance(x, tuple) and args and args[0] in ("values", "indices"):
        return x[("values", "indices").index(args[0])]
    if isinstance(b.result, torch.Tensor):
        raise b.unsupported(f"the tensor-valued attribute {args[0] if args else ''!r}")
    return b.result
