"""Builders for function and ``Tensor`` method calls in a traced forward pass.

Arithmetic, reductions, norms, activations, softmax, shape ops (view/reshape/flatten/
permute/transpose/(un)squeeze/cat/stack/chunk/split), indexing, padding, pooling and
interpolation. Calls on sizes (``x.shape``, ``x.size(1)``, ``b * t``) are not here: they are
evaluated at the traced shapes (see ``rebuild.py``).
"""
from __future__ import annotations

import builtins
import math
import operator

import torch
import torch.nn.functional as F
from keras import layers as L

from .keras_layers import Scalar, Slice, TensorOp
from .rebuild_core import (KERAS_DTYPES, Build, Value, calls, functions, identity, inverse,
                           methods)
from .rebuild_ops import adaptive_pool, flatten, gelu_layer, pad, pool, reshape, softmax, upsample

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


# ---------------------------------------------------------------- element-wise

def _activation(make):
    def build(b: Build, x, *args, inplace=False, **kwargs):
        return b.elementwise(make(b, *args, **kwargs), x)
    return build


def _keras_activation(name: str):
    return _activation(lambda b: b.new(L.Activation, name))


def _tensor_op(name: str):
    return _activation(lambda b: b.new(TensorOp, name))


for _fns, _name in [((F.relu, torch.relu, "relu"), "relu"), ((F.relu6,), "relu6"),
                    ((F.sigmoid, torch.sigmoid, "sigmoid"), "sigmoid"),
                    ((F.tanh, torch.tanh, "tanh"), "tanh"), ((F.silu,), "silu"),
                    ((F.hardswish,), "hard_silu"), ((F.hardsigmoid,), "hard_sigmoid"),
                    ((F.mish,), "mish"), ((F.selu, torch.selu), "selu"),
                    ((F.softsign,), "softsign")]:
    calls(_fns, _keras_activation(_name))

for _fns, _name in [((torch.exp, "exp"), "exp"), ((torch.log, "log"), "log"),
                    ((torch.sqrt, "sqrt"), "sqrt"), ((torch.rsqrt, "rsqrt"), "rsqrt"),
                    ((torch.abs, "abs"), "abs"), ((torch.erf, "erf"), "erf"),
                    ((operator.neg, torch.neg, "neg"), "negative"), ((torch.sin, "sin"), "sin"),
                    ((torch.cos, "cos"), "cos"), ((torch.square, "square"), "square")]:
    calls(_fns, _tensor_op(_name))


@functions(F.gelu)
def gelu(b: Build, x, approximate: str = "none"):
    return b.elementwise(gelu_layer(b, approximate), x)


@functions(F.leaky_relu)
def leaky_relu(b: Build, x, negative_slope: float = 0.01, inplace: bool = False):
    return b.elementwise(b.new(L.LeakyReLU, negative_slope=negative_slope), x)


@functions(F.elu)
def elu(b: Build, x, alpha: float = 1.0, inplace: bool = False):
    return b.elementwise(b.new(L.ELU, alpha=alpha), x)


@functions(F.softplus)
def softplus(b: Build, x, beta: float = 1.0, threshold: float = 20.0):
    if beta != 1:
        raise b.unsupported(f"beta={beta}")
    return b.elementwise(b.new(L.Activation, "softplus"), x)


@functions(torch.clamp, torch.clip)
@methods("clamp", "clip")
def clamp(b: Build, x, min=None, max=None):
    if isinstance(min, torch.Tensor) or isinstance(max, torch.Tensor):
        raise b.unsupported("tensor bounds")
    return b.elementwise(b.new(TensorOp, "clip", {"low": min, "high": max}), x)


@functions(F.hardtanh)
def hardtanh(b: Build, x, min_val=-1.0, max_val=1.0, inplace=False):
    return clamp(b, x, min_val, max_val)


@functions(F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout)
@methods("contiguous", "clone", "detach")
def same(b: Build, x, *args, **kwargs):
    """Identity at inference: no layer."""
    return b.as_value(x)


@methods("float", "to", "type_as", "long", "int", "bool")
def convert(b: Build, x, *args, **kwargs):
    """A dtype change (a device change is nothing) to the traced result's dtype."""
    x = b.as_value(x)
    dtype = KERAS_DTYPES.get(b.result.dtype)
    if dtype is None:
        raise b.unsupported(f"a conversion to {b.result.dtype}")
    return x if dtype == x.dtype else b.elementwise(b.new(TensorOp, "cast", {"dtype": dtype}), x)


# ---------------------------------------------------------------- arithmetic

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


for _fns, _op in [((operator.add, torch.add, "add"), "add"),
                  ((operator.sub, torch.sub, torch.subtract, "sub", "subtract"), "subtract"),
                  ((operator.mul, torch.mul, torch.multiply, "mul", "multiply"), "multiply"),
                  ((operator.truediv, torch.div, torch.true_divide, "div", "true_divide"),
                   "divide"),
                  ((operator.floordiv, torch.floor_divide), "floor_divide"),
                  ((operator.pow, torch.pow, "pow"), "power"),
                  ((operator.matmul, torch.matmul, torch.bmm, "matmul", "bmm"), "matmul"),
                  ((torch.maximum,), "maximum"), ((torch.minimum,), "minimum")]:
    calls(_fns, _binary(_op))


# ---------------------------------------------------------------- reductions and norms

def _reduce(op: str):
    def build(b: Build, x, dim=None, keepdim=False, *, dtype=None, axis=None):
        x = b.as_value(x)
        dims = _dims(x, dim if axis is None else axis)
        y = b.op(op, x.tensor, axis=[b.axis(x, d) for d in dims], keepdims=keepdim)
        return b.value(y, x.perm if keepdim else _drop(x.perm, dims))
    return build


for _fns, _op in [((torch.mean, "mean"), "mean"), ((torch.sum, "sum"), "sum"),
                  ((torch.amax, "amax"), "max"), ((torch.amin, "amin"), "min")]:
    calls(_fns, _reduce(_op))


def _p(b: Build, p) -> float:
    if p in ("fro", None):
        return 2.0
    if isinstance(p, str):
        raise b.unsupported(f"p={p!r}")
    return math.inf if p == float("inf") else float(p)


@functions(torch.norm, torch.linalg.vector_norm)
@methods("norm")
def norm(b: Build, x, p="fro", dim=None, keepdim=False, out=None, dtype=None, ord=None):
    x = b.as_value(x)
    dims = _dims(x, dim)
    y = b.op("norm", x.tensor, p=_p(b, p if ord is None else ord),
             axis=[b.axis(x, d) for d in dims], keepdims=keepdim)
    return b.value(y, x.perm if keepdim else _drop(x.perm, dims))


@functions(F.normalize)
def normalize(b: Build, x, p=2.0, dim=1, eps=1e-12, out=None):
    x = b.as_value(x)
    layer = b.new(TensorOp, "normalize", {"p": _p(b, p), "axis": b.axis(x, dim), "eps": eps})
    return b.elementwise(layer, x)


@functions(F.softmax, torch.softmax)
@methods("softmax")
def softmax_fn(b: Build, x, dim=None, _stacklevel=3, dtype=None):
    return softmax(b, x, dim)


@functions(F.log_softmax, torch.log_softmax)
@methods("log_softmax")
def log_softmax_fn(b: Build, x, dim=None, _stacklevel=3, dtype=None):
    return softmax(b, x, dim, log=True)


# ---------------------------------------------------------------- shapes

@functions(torch.reshape, torch.squeeze, torch.unsqueeze)
@methods("view", "reshape", "squeeze", "unsqueeze", "unflatten")
def reshape_fn(b: Build, x, *shape, **kwargs):
    return reshape(b, x)


@functions(torch.flatten)
@methods("flatten")
def flatten_fn(b: Build, x, start_dim=0, end_dim=-1):
    return flatten(b, x, start_dim, end_dim)


def relabel(x: Value, order: list[int]) -> Value:
    """``x.permute(order)`` costs nothing: the same Keras tensors, new layout labels."""
    back = inverse(order)
    return Value(x.name, {tuple(back[a] for a in p): t for p, t in x.views.items()})


@functions(torch.permute)
@methods("permute")
def permute(b: Build, x, *dims):
    x = b.as_value(x)
    dims = dims[0] if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims
    return relabel(x, [d % x.rank for d in dims])


@functions(torch.transpose, torch.swapaxes)
@methods("transpose", "swapaxes", "t")
def transpose(b: Build, x, dim0=0, dim1=1):
    x = b.as_value(x)
    order = list(range(x.rank))
    order[dim0 % x.rank], order[dim1 % x.rank] = order[dim1 % x.rank], order[dim0 % x.rank]
    return relabel(x, order)


@functions(torch.cat, torch.concat, torch.concatenate)
def cat(b: Build, tensors, dim=0, axis=None):
    xs = [b.as_value(t) for t in tensors]
    dim = dim if axis is None else axis
    perm = xs[0].perm if all(x.rank == xs[0].rank for x in xs) else identity(xs[0].rank)
    axis = perm.index(dim % len(perm))
    views = [b.view(x, perm) for x in xs]
    y = b.new(L.Concatenate, axis=axis)(views) if axis else b.op("concatenate", views, axis=0)
    return b.value(y, perm)


@functions(torch.stack)
def stack(b: Build, tensors, dim=0):
    xs = [b.as_value(t) for t in tensors]
    views = [b.view(x, identity(x.rank)) for x in xs]
    return b.value(b.op("stack", views, axis=dim % (xs[0].rank + 1)))


def _slice(b: Build, x: Value, key: list, suffix: str | None = None) -> Value:
    return b.value(b.new(Slice, key, suffix=suffix)(b.view(x, identity(x.rank))))


@functions(operator.getitem)
def getitem(b: Build, x, key):
    """Tuple indexing, or basic tensor indexing (ints, slices, None, ...)."""
    if not isinstance(x, Value):
        return x[key]
    items = []
    for k in key if isinstance(key, tuple) else (key,):
        if isinstance(k, slice):
            items.append([k.start, k.stop, k.step])
        elif k is None or isinstance(k, int):
            items.append(k)
        elif k is Ellipsis:
            items.append("...")
        else:
            what = "a tensor" if isinstance(k, (Value, torch.Tensor)) else type(k).__name__
            raise b.unsupported(f"indexing with {what} (only ints, slices, None and ...)")
    return _slice(b, x, items)


@functions(torch.chunk, torch.split)
@methods("chunk", "split")
def split(b: Build, x, size_or_chunks, dim=0):
    """Slices along ``dim`` with the sizes the trace found."""
    x = b.as_value(x)
    d, start, parts = dim % x.rank, 0, []
    b.static(x.shape[d])
    for i, piece in enumerate(b.result):
        key = [[None, None, None]] * d + [[start, start + piece.shape[d], None]]
        parts.append(_slice(b, x, key, suffix=str(i)))
        start += piece.shape[d]
    return tuple(parts)


@functions(torch.unbind)
@methods("unbind")
def unbind(b: Build, x, dim=0):
    x = b.as_value(x)
    d = dim % x.rank
    b.static(x.shape[d])
    return tuple(_slice(b, x, [[None, None, None]] * d + [i], suffix=str(i))
                 for i in range(len(b.result)))


# ---------------------------------------------------------------- padding, pooling, resizing

@functions(F.pad)
def pad_fn(b: Build, x, pad_list, mode="constant", value=None):
    return pad(b, x, list(pad_list), value, mode)


@functions(F.interpolate, F.upsample)
def interpolate(b: Build, x, size=None, scale_factor=None, mode="nearest", align_corners=None,
                recompute_scale_factor=None, antialias=False):
    if antialias:
        raise b.unsupported("antialias=True")
    return upsample(b, x, mode, align_corners)


def _pool_fn(kind: str, n: int):
    def build(b: Build, x, kernel_size, stride=None, padding=0, *args, **kwargs):
        if kwargs.pop("return_indices", False):
            raise b.unsupported("return_indices=True")
        if kind == "max":
            names = ("dilation", "ceil_mode")
        else:
            names = ("ceil_mode", "count_include_pad", "divisor_override")
        kwargs.update(zip(names, args))
        return pool(b, x, kind, n, kernel_size, stride, padding, **kwargs)
    return build


def _adaptive_fn(kind: str, n: int):
    def build(b: Build, x, output_size, return_indices=False):
        if return_indices:
            raise b.unsupported("return_indices=True")
        return adaptive_pool(b, x, kind, n, output_size)
    return build


for _n in (1, 2, 3):
    functions(getattr(F, f"max_pool{_n}d"))(_pool_fn("max", _n))
    functions(getattr(F, f"avg_pool{_n}d"))(_pool_fn("avg", _n))
    functions(getattr(F, f"adaptive_max_pool{_n}d"))(_adaptive_fn("max", _n))
    functions(getattr(F, f"adaptive_avg_pool{_n}d"))(_adaptive_fn("avg", _n))


# ---------------------------------------------------------------- sizes and attributes

@functions(builtins.getattr)
@methods("size", "dim", "numel", "type")
def concrete(b: Build, x, *args, **kwargs):
    """``x.shape``, ``x.size(1)``, ``x.ndim``...: the value at the traced shapes."""
    if isinstance(b.result, torch.Tensor):
        raise b.unsupported(f"the tensor-valued attribute {args[0] if args else ''!r}")
    return b.result
