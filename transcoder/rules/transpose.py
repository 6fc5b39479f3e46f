"""Permuting the axes of large tensors fast, whole or in blocks of output rows.

Most of a conversion's bytes are Linear and Conv weights whose axes Keras stores in another
order, so the permutation is the hot loop. ``np.ascontiguousarray(x.transpose(axes))`` runs at
about 0.5 GiB/s here (it misses the cache on every read); the C kernel in ``_transpose.c``
copies 8x8 register tiles between merged runs of axes inside cache blocks: on one core here,
4.5-7 GiB/s for Linear kernels and 6-9 GiB/s for Conv1d/2d/3d kernels (float32, float16,
bfloat16) with the source coming from memory (``bench/kernel_bench.py``). Where the kernel is
not built (no compiler at install time), numpy tiles do the same copy at about 1.1 GiB/s.
Both give the same bytes; tests compare them.

:func:`permuted_blocks` yields the permuted tensor as consecutive blocks of whole output rows
written into one reusable buffer, so a writer streams a 64 MiB tensor through a few MiB of
memory that stays in the cache. :func:`permuted_pieces` yields it as pieces with their
offsets, cut where the copy is fastest, and in shares that threads can fill side by side.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from ..checkpoint import target_of

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
    for _, block in permuted_pieces(x, axes, scratch, ordered=True):
        yield block


Piece = tuple[int, np.ndarray]   # (byte offset in the permuted tensor, its bytes there)


def permuted_pieces(x: np.ndarray, axes: tuple[int, ...], scratch: np.ndarray,
                    part: tuple[int, int] = (0, 1), ordered: bool = False) -> Iterator[Piece]:
    """Share ``part`` = (k, n) of ``x.transpose(axes)``'s C-order bytes (the k-th of n about
    equal shares) as ``(offset, block)`` pieces, written into ``scratch`` like
    :func:`permuted_blocks` (each valid until the next one is asked for); together the n
    shares cover every byte once.

    Pieces come in any order unless ``ordered``. Unordered, the output is cut along the axis
    that keeps the source's contiguous runs long (:func:`split_axis`): a Conv1d kernel
    (out, in, k) -> (k, in, out) cut along its first output axis k would read every k-th
    element; cut along ``in`` it reads runs of k*in elements and comes as k pieces per block.
    When the permutation moves no data the pieces are views of ``x``.
    """
    if np.ndim(x) == 0:   # ascontiguousarray would make it 1-d, and transpose(()) then fails
        if part[0] == 0:
            yield 0, _bytes(np.ascontiguousarray(x))
        return
    x = np.ascontiguousarray(x)
    if x.size == 0:
        return
    view = x.transpose(axes)
    if view.flags.c_contiguous:
        lo, hi = _share(x.nbytes // x.itemsize, part)
        yield lo * x.itemsize, _bytes(x)[lo * x.itemsize:hi * x.itemsize]
        return
    shape, strides = simplify(view.shape, view.strides)
    axis = 0 if ordered else split_axis(shape, strides, x.itemsize, len(scratch))
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64)) * x.itemsize
    rows = max(1, len(scratch) // (outer * inner))
    lo, hi = _share(shape[axis], part)
    out = target_of(scratch, x.nbytes)
    if out is not None:
        yield from _pieces_into(x, (shape, strides), axis, (lo, hi, rows), out,
                                getattr(scratch, "ready", None))
        return
    if rows * outer * inner > len(scratch):
        scratch = np.empty(outer * inner, np.uint8)
    for start in range(lo, hi, rows):
        n = min(rows, hi - start)
        block = scratch[:outer * n * inner]
        _copy(x, start * strides[axis], (shape[:axis] + (n,) + shape[axis + 1:], strides), block)
        for o in range(outer):
            yield (o * shape[axis] + start) * inner, block[o * n * inner:(o + 1) * n * inner]


def _pieces_into(x: np.ndarray, view: View, axis: int, cut: tuple[int, int, int],
                 out: np.ndarray, ready=None) -> Iterator[Piece]:
    """The pieces of :func:`permuted_pieces`, permuted straight to their places in ``out`` (the
    whole permuted tensor's bytes, a mapped output): a block cut along an inner axis is one
    kernel call with the output's strides, no scratch buffer. The pieces are views of ``out``;
    ``ready`` (if any) is called with each before the kernel writes it."""
    shape, strides = view
    lo, hi, rows = cut
    item = x.itemsize
    dst = [item] * len(shape)   # the output's C-order byte strides
    for k in range(len(shape) - 2, -1, -1):
        dst[k] = dst[k + 1] * shape[k + 1]
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    along = shape[axis] * dst[axis]   # bytes between two outer indices' pieces
    for start in range(lo, hi, rows):
        n = min(rows, hi - start)
        first = start * dst[axis]
        block_shape = shape[:axis] + (n,) + shape[axis + 1:]
        if ready is not None:
            for o in range(outer):
                ready(out[first + o * along:first + o * along + n * dst[axis]])
        _copy(x, start * strides[axis], (block_shape, strides), out[first:],
              tuple(dst) if outer > 1 else None)
        for o in range(outer):
            at = first + o * along
            yield at, out[at:at + n * dst[axis]]


def _share(count: int, part: tuple[int, int]) -> tuple[int, int]:
    """The index range of share k of n of ``range(count)``."""
    k, n = part
    if not 0 <= k < n:
        raise ValueError(f"no share {k} of {n}")
    return count * k // n, count * (k + 1) // n


#: a cut that leaves the source contiguous for fewer bytes than a cache line wastes the rest of
#: each line it reads (and the kernel's register tiles need 8 elements)
MIN_RUN_BYTES = 64
#: pieces smaller than this cost a write call each for little data
MIN_PIECE = 16 << 10


def split_axis(shape: tuple[int, ...], strides: tuple[int, ...], item: int, scratch: int) -> int:
    """The first axis of a simplified view along which blocks of output rows that fit in
    ``scratch`` bytes keep the source contiguous for MIN_RUN_BYTES or more, in pieces of
    MIN_PIECE bytes or more; 0 if none does."""
    total = int(np.prod(shape, dtype=np.int64)) * item
    for axis in range(len(shape)):
        rows = min(shape[axis], scratch // (total // shape[axis]))
        piece = rows * int(np.prod(shape[axis + 1:], dtype=np.int64)) * item
        if rows >= 1 and (axis == 0 or piece >= MIN_PIECE) \
                and _source_run(shape, strides, item, axis, rows) * item >= MIN_RUN_BYTES:
            return axis
    return 0


def _source_run(shape: tuple[int, ...], strides: tuple[int, ...], item: int, axis: int,
                rows: int) -> float:
    """For how many elements the source is contiguous in a block of ``rows`` along ``axis``
    (infinite if along the output's last axis: whole rows are copied)."""
    run = 1
    while (k := next((k for k, s in enumerate(strides) if s == run * item), None)) is not None:
        if k == len(shape) - 1:
            return run if run > 1 else float("inf")
        if k == axis and rows < shape[k]:
            return run * rows
        run *= shape[k]
    return run


def _copy(x: np.ndarray, offset: int, view: View, out: np.ndarray,
          out_strides: tuple[int, ...] | None = None) -> None:
    """Write the strided ``view`` (shape, byte strides from ``offset``) of the C-contiguous
    ``x`` into the uint8 buffer ``out``, in C order (or in the view of ``out`` with
    ``out_strides``: C order with rows spaced out)."""
    shape, strides = view
    if _transpose is not None:
        if out_strides is None:
            _transpose.permute(_bytes(x), offset, out, shape, strides, x.itemsize)
        else:
            _transpose.permute(_bytes(x), offset, out, shape, strides, x.itemsize, out_strides)
        return
    src = np.lib.stride_tricks.as_strided(_bytes(x)[offset:].view(x.dtype), shape, strides,
                                          writeable=False)
    if out_strides is None:
        _numpy_copy(src, out[:src.nbytes].view(x.dtype).reshape(shape))
        return
    reach = sum((n - 1) * s for n, s in zip(shape, out_strides)) + x.itemsize
    if reach > len(out):
        raise ValueError("the destination buffer is too small")
    _numpy_copy(src, np.lib.stride_tricks.as_strided(out[:reach].view(x.dtype), shape, out_strides))


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
