"""Arithmetic: operators and their ``torch.*`` / ``Tensor`` forms, element-wise math,
reductions, norms, dtype casts, and the sizes read from tensors.

Calls on sizes (``x.shape``, ``x.size(1)``, ``b * t``) never reach these builders unless a
tensor takes part: they are evaluated at the traced shapes (see ``trace.py``).
"""
from __future__ import annotations

import builtins
import math
import operator

import torch
import torch.nn.functional as F

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

def arith(b: Build, op: str, x, y) -> Value:
    """``x op y`` with PyTorch broadcasting; numbers become a :class:`Scalar` layer."""
    if isinstance(y, NUMBER):
        return b.elementwise(b.new(Scalar, op, y), x)
    if isinstance(x, NUMBER):
        return b.elementwise(b.new(Scalar, op, x, reverse=True), y)
    x, y = b.as_value(x), b.as_value(y)
    same_layout = x.rank == y.rank and op != "matmul"
    px = x.perm if same_layout else identity(x.rank)
    py = px if same_layout else identity(y.rank)
    out = b.op(op, [b.view(x, px), b.view(y, py)])
    return b.value(out, px if same_layout else None)


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

def _reduce(op: str):
    def build(b: Build, x, dim=None, keepdim=False, *, dtype=None, axis=None):
        x = b.as_value(x)
        dims = _dims(x, dim if axis is None else axis)
        y = b.op(op, x.tensor, axis=[b.axis(x, d) for d in dims], keepdims=keepdim)
        return b.value(y, x.perm if keepdim else _drop(x.perm, dims))
    return build


for _calls, _op in [((torch.mean, "mean"), "mean"), ((torch.sum, "sum"), "sum"),
                    ((torch.amax, "amax"), "max"), ((torch.amin, "amin"), "min")]:
    calls(_calls, _reduce(_op))


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
    x = b.as_value(x)
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
    """``x.shape``, ``x.size(1)``, ``x.ndim``...: the value at the traced shapes."""
    if isinstance(b.result, torch.Tensor):
        raise b.unsupported(f"the tensor-valued attribute {args[0] if args else ''!r}")
    return b.result
