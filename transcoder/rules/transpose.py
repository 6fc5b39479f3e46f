"""Permuting the axes of large tensors fast, whole or in blocks of output rows.

Most of a conversion's bytes are Linear and Conv weights whose axes Keras stores in another
order, so the permutation is the hot loop. ``np.ascontiguousarray(x.transpose(axes))`` runs at
about 0.5 GiB/s here (it misses the cache on every read); the C kernel in ``_transpose.c``
copies 8x8 register tiles inside cache blocks at about 5 GiB/s for float32 on one core. Where
the kernel is not built (no compiler at install time), numpy tiles do the same copy at about
1.1 GiB/s. Both give the same bytes; tests compare them.

:func:`permuted_blocks` yields the permuted tensor as consecutive blocks of whole output rows
written into one reusable buffer, so a writer streams a 64 MiB tensor through a few MiB of
memory that stays in the cache.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

try:
    from . import _transpose
except ImportError:  # built without a C compiler: numpy does the copy
    _transpose = None

#: numpy fallback: copy tiles of TILE x TILE elements; smaller arrays are copied whole.
TILE = 128
TILED_FROM_BYTES = 1 << 20

View = tuple[tuple[int, ...], tuple[int, ...]]   # (shape, byte strides)


def permute_array(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """``x.transpose(axes)`` as a new C-contiguous array."""
    x = np.ascontiguousarray(x)
    out = np.empty([x.shape[a] for a in axes], x.dtype)
    if x.size:
        view = x.transpose(axes)
        _copy(x, 0, simplify(view.shape, view.strides), _bytes(out))
    return out


def permuted_blocks(x: np.ndarray, axes: tuple[int, ...], scratch: np.ndarray) -> Iterator[np.ndarray]:
    """``x.transpose(axes)`` in C order as consecutive 1-d uint8 blocks of whole output rows,
    each written into ``scratch`` (a uint8 buffer; a row larger than it gets its own buffer).

    A block is valid until the next one is asked for. Rows are taken along the first output
    axis after size-1 axes are dropped and axes that stay adjacent are merged, so a 1x1
    convolution's kernel still comes in many blocks. When the permutation moves no data the
    whole tensor comes as one block, a view of ``x``.
    """
    if x.ndim == 0:  # ascontiguousarray would make it 1-d, and transpose(()) then fails
        yield _bytes(np.ascontiguousarray(x))
        return
    x = np.ascontiguousarray(x)
    if x.size == 0:
        return
    view = x.transpose(axes)
    if view.flags.c_contiguous:
        yield _bytes(x)
        return
    shape, strides = simplify(view.shape, view.strides)
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * x.itemsize
    rows = max(1, len(scratch) // row_bytes)
    if rows * row_bytes > len(scratch):
        scratch = np.empty(row_bytes, np.uint8)
    for start in range(0, shape[0], rows):
        stop = min(start + rows, shape[0])
        block = scratch[:(stop - start) * row_bytes]
        _copy(x, start * strides[0], ((stop - start,) + shape[1:], strides), block)
        yield block


def _copy(x: np.ndarray, offset: int, view: View, out: np.ndarray) -> None:
    """Write the strided ``view`` (shape, byte strides from ``offset``) of the C-contiguous
    ``x`` into the uint8 buffer ``out``, in C order."""
    shape, strides = view
    if _transpose is not None:
        _transpose.permute(_bytes(x), offset, out, shape, strides, x.itemsize)
        return
    src = np.lib.stride_tricks.as_strided(_bytes(x)[offset:].view(x.dtype), shape, strides,
                                          writeable=False)
    _numpy_copy(src, out[:src.nbytes].view(x.dtype).reshape(shape))


def _numpy_copy(src: np.ndarray, dst: np.ndarray) -> None:
    """``dst[...] = src`` in TILE x TILE tiles of (dst's last axis) x (src's most contiguous
    axis): a plain strided copy of a big transposed matrix misses the cache on every read."""
    if src.nbytes < TILED_FROM_BYTES or src.ndim < 2:
        dst[...] = src
        return
    b = min(range(src.ndim - 1), key=lambda k: (src.strides[k], k))
    for i in range(0, src.shape[b], TILE):
        for j in range(0, src.shape[-1], TILE):
            index = [slice(None)] * src.ndim
            index[b], index[-1] = slice(i, i + TILE), slice(j, j + TILE)
            dst[tuple(index)] = src[tuple(index)]


def simplify(shape: tuple[int, ...], strides: tuple[int, ...]) -> View:
    """The same strided view with size-1 axes dropped and neighbours that can be merged merged."""
    kept = [(n, s) for n, s in zip(shape, strides) if n != 1] or [(1, 0)]
    merged = [kept[0]]
    for n, s in kept[1:]:
        n0, s0 = merged[-1]
        merged[-1:] = [(n0 * n, s)] if s0 == s * n else [(n0, s0), (n, s)]
    return tuple(n for n, _ in merged), tuple(s for _, s in merged)


def _bytes(array: np.ndarray) -> np.ndarray:
    """A C-contiguous array's memory as 1-d uint8 (works for every dtype, bfloat16 included)."""
    return array.reshape(-1).view(np.uint8)
