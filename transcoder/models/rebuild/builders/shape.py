"""Shapes: view/reshape/(un)squeeze, (un)flatten, permute/transpose, cat/stack, indexing,
split/chunk/unbind and copies; ``nn.Flatten`` / ``nn.Unflatten`` beside their functions.

Reshapes work in PyTorch element order (the value is viewed in PyTorch's layout first);
``permute`` and ``transpose`` only relabel the layouts a value is held in.
"""
from __future__ import annotations

import math
import operator

import torch
from keras import layers as L
from torch import nn

from ...keras_layers import Slice
from ..core import Build, Value, functions, identity, inverse, methods, modules


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


@functions(torch.reshape, torch.squeeze, torch.unsqueeze)
@methods("view", "reshape", "squeeze", "unsqueeze", "unflatten")
def reshape_fn(b: Build, x, *shape, **kwargs):
    return reshape(b, x)


@modules(nn.Unflatten)
def unflatten_module(b: Build, m, x):
    return reshape(b, x)


def flatten(b: Build, x, start_dim=0, end_dim=-1) -> Value:
    """``torch.flatten``: in PyTorch (C, H, W) order, whatever layout ``x`` is held in."""
    x = b.as_value(x)
    if x.rank >= 2 and start_dim == 1 and end_dim in (-1, x.rank - 1):
        return b.value(b.new(L.Flatten)(b.view(x, identity(x.rank))))
    return reshape(b, x)


@modules(nn.Flatten)
def flatten_module(b: Build, m, x):
    return flatten(b, x, m.start_dim, m.end_dim)


@functions(torch.flatten)
@methods("flatten")
def flatten_fn(b: Build, x, start_dim=0, end_dim=-1):
    return flatten(b, x, start_dim, end_dim)


@methods("contiguous", "clone", "detach")
def same(b: Build, x, *args, **kwargs):
    """A copy, or memory order: no layer."""
    return b.as_value(x)


@methods("repeat")
def repeat(b: Build, x, *repeats):
    """``Tensor.repeat``: tiled copies, PyTorch order (more repeats than axes add leading
    axes, as in PyTorch)."""
    x = b.as_value(x)
    repeats = repeats[0] if len(repeats) == 1 and isinstance(repeats[0], (tuple, list)) \
        else repeats
    return b.value(b.op("tile", b.view(x, identity(x.rank)), repeats=[int(r) for r in repeats]))


@methods("expand", "expand_as")
def expand(b: Build, x, *sizes, implicit=False) -> Value:
    """``Tensor.expand`` / ``aten.expand``: broadcast to the traced result's shape (fixed
    shapes: the target is a size)."""
    x = b.as_value(x)
    shape = list(b.result.shape)
    if b.grow is not None:   # along other axes than the (dynamic) batch it already has
        if b.grow != 0 or not x.shape or x.shape[0] is not None or x.rank != len(shape):
            b.static(None)
        return b.value(b.op("expand_batch", b.view(x, identity(x.rank)), shape=shape[1:]))
    return b.value(b.op("broadcast_to", b.view(x, identity(x.rank)), shape=shape))


# ---------------------------------------------------------------- relabelling axes

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


# ---------------------------------------------------------------- joining and splitting

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
