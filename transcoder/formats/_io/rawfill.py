"""Writing tensors' bytes into byte ranges an output file has already set aside, on two threads.

The ``.h5`` and ``.safetensors`` writers lay out the file (HDF5 datasets allocated up front,
the safetensors header) and hand each tensor with the file offset of its data to a
:class:`Filler` (the ``.h5`` writer as soon as HDF5 has allocated the dataset, while it lays out
the rest). Each worker thread takes a task, asks the tensor for its bytes in pieces
(:meth:`TensorRef.pieces`) and puts every piece at its place in the file.

Two ways to put them. Through a shared mapping (:mod:`.mapout`, the default for a regular file):
the file gets its size and disk blocks as each region is added (a full disk is then an ordinary
error), each task maps its tensor's range, and the permutation kernel writes straight into the
mapped page cache (:class:`~transcoder.checkpoint.Target`); unpermuted bytes from a source's map
are copied inside the kernel (``copy_file_range``, see COPY_IN_KERNEL), others with one
``memcpy`` into the map; bfloat16 is widened straight into the map: one copy per byte. With
``pwrite`` (where mapping is impossible, or ``TRANSCODER_NO_MMAP_WRITE=1``): a permuted tensor
is permuted block by block into the thread's scratch buffer, which stays in the cache, and
written with ``pwrite`` (two copies per byte). The kernel, numpy's copies and ``pwrite`` release
the GIL, so on two cores both threads work at once; no tensor is ever held whole in fresh
memory. A region's ``digest`` sees every piece's bytes as written, on the worker thread.

A tensor larger than ``2 * SHARE_BYTES`` becomes several tasks, one per share of its bytes,
so that one huge tensor (an LLM's embedding) keeps every thread busy; its shares load their
source once between them (:class:`SharedLoads`).

On the ``pwrite`` path, two things the kernel does better than we can (see :class:`_Output`):
each tensor's range of the output gets its disk blocks before it is written (``fallocate``: ext4
then skips its delayed allocation for every page written; 1 GiB of 1 MiB pwrites here took
0.15-0.2 s instead of 0.25-0.35 s), and bytes that move unchanged from a source file (a tensor
copied as it is, memory-mapped by the reader) are copied from file to file by
``copy_file_range`` without passing through this process, falling back to ``pwrite`` where the
kernel or the file systems refuse it.
"""
from __future__ import annotations

import errno
import functools
import os
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ...checkpoint import SharedLoads, Target, TensorRef
from ...errors import FormatError
from . import filemap, mapout

#: Threads per Filler. A process that converts beside others (a `transcode bulk` worker)
#: sets fewer: its parallelism is across files, and more threads than cores only contend for
#: the GIL and the output's inode lock.
WORKERS = 2
#: Per worker: stays in a core's L2 cache between the permutation and the write. Measured on a
#: 1 GiB .pt -> .h5 (medians of 7 interleaved runs): 256 KiB 0.72 s, 512 KiB 0.60 s, 1 MiB
#: 0.49 s, 2 MiB 1.5 s. Since the ranges get their disk blocks first (fallocate), 1, 2 and
#: 4 MiB cost the same CPU time (0.37-0.45 s for the data of 1 GiB, interleaved runs).
SCRATCH_BYTES = 1 << 20
#: Tensors of more than twice this many bytes are filled in shares of about this size.
SHARE_BYTES = 8 << 20
#: Smaller ranges are not given their disk blocks up front (the call costs more than it saves).
RESERVE_FROM_BYTES = 256 << 10
#: Smaller tensors are written in batches of about SCRATCH_BYTES, one task per batch.
BATCH_BELOW_BYTES = RESERVE_FROM_BYTES
#: A batch of small tensors whose output ranges lie within this many bytes is mapped at once.
BATCH_SPAN_BYTES = 8 * SCRATCH_BYTES
#: Mapped output: unpermuted bytes from a source's map are copied by ``copy_file_range`` (True)
#: or with one memcpy from the source's map into the output's (False). Measured on a loaded
#: machine, 1 GiB .pt -> .safetensors (all copies), medians of 3 interleaved in-process runs:
#: 0.6 s of system time against 1.5 s for the memcpy (which also pays the kernel's zeroing of
#: every fresh mapped page); 1 GiB alone, source mapped: 0.41 s against 0.78 s.
COPY_IN_KERNEL = True

#: ``digest(offset, data)``: the bytes just written at ``offset`` of the region's output bytes
Digest = Callable[[int, np.ndarray], None]


@dataclass(frozen=True)
class Region:
    """Where a tensor's bytes go in the output file; ``as_float32``: a bfloat16 tensor stored as
    the float32 numbers it holds (each value's bits shifted up 16: exact, NaN payloads too),
    twice its size. ``digest``: called as ``digest(offset_in_tensor, data)`` on the worker
    thread with every piece of the tensor's bytes it writes (a uint8 array; the tensor's own
    bytes, before any ``as_float32`` widening), pieces in any order and from any thread: a
    writer's checksum of the data (the ``.pt`` writer's zip CRCs) in the same pass."""

    offset: int
    ref: TensorRef
    as_float32: bool = False
    #: called on the worker thread with every piece's bytes once written (offsets in the
    #: region's output bytes, doubled for ``as_float32``), in any order: a zip CRC
    digest: Digest | None = None

    @property
    def size(self) -> int:
        """The region's bytes in the output."""
        return self.ref.nbytes * (2 if self.as_float32 else 1)


class _Shares:
    """The tasks of one region: how many, the loads they share, the bytes they wrote."""

    def __init__(self, region: Region, count: int) -> None:
        self.region, self.count = region, count
        self.loads = SharedLoads()
        self._lock = threading.Lock()
        self._left, self._written = count, 0

    def done(self, written: int) -> None:
        """Count a finished share; after the last one, check the tensor's size."""
        with self._lock:
            self._left -= 1
            self._written += written
            if self._left == 0 and self._written != self.region.ref.nbytes:
                raise _wrong_size(self.region.ref)


class Filler:
    """Writes each region added on worker threads while the caller goes on laying out the file.

    Leaving the ``with`` block waits for every region and raises the first error (in the order
    the regions were added); after an error nothing more is started.
    """

    def __init__(self, path: Path, workers: int | None = None) -> None:
        self._out = _Output(os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0)))
        self._name = os.fspath(path)
        self._map = mapout.open_map(self._out.fd, self._name)
        self._pool = ThreadPoolExecutor(workers or WORKERS, thread_name_prefix="transcoder-fill")
        self._futures: list[Future | None] = []
        self._local = threading.local()
        self._batch: list[Region] = []   # small regions not yet handed to a thread
        self._batch_slot = self._batch_bytes = 0

    def cover(self, end: int) -> None:
        """Mapped output: the file's disk blocks and size up to ``end`` now (ENOSPC raises
        OSError here, before any of it is mapped)."""
        if self._map is not None:
            self._map.cover(end)

    def add(self, region: Region) -> None:
        self.cover(region.offset + region.size)
        nbytes = region.ref.nbytes
        if nbytes < BATCH_BELOW_BYTES and nbytes <= 2 * SHARE_BYTES:   # one share
            self._add_small(region)
            return
        shares = _Shares(region, max(1, nbytes // SHARE_BYTES) if nbytes > 2 * SHARE_BYTES else 1)
        for k in range(shares.count):
            self._futures.append(self._pool.submit(self._one, shares, k))

    def _add_small(self, region: Region) -> None:
        """Small regions go to the threads SCRATCH_BYTES at a time: a task per tensor cost
        about 40 us of bookkeeping, as much as writing 100 KiB (364 tensors of 128 MiB of
        the benchmark's bulk files). The batch keeps the place of its first region among
        the results, so errors still come in region order."""
        if not self._batch:
            self._batch_slot = len(self._futures)
            self._futures.append(None)
        self._batch.append(region)
        self._batch_bytes += region.ref.nbytes
        if self._batch_bytes >= SCRATCH_BYTES:
            self._submit_batch()

    def _submit_batch(self) -> None:
        if self._batch:
            self._futures[self._batch_slot] = self._pool.submit(self._small, self._batch)
            self._batch, self._batch_bytes = [], 0

    def _small(self, regions: list[Region]) -> None:
        lo = min(r.offset for r in regions)
        hi = max(r.offset + r.size for r in regions)
        if self._map is not None and hi - lo <= BATCH_SPAN_BYTES:   # one map for the batch
            try:
                with self._map.window(lo, hi - lo) as view:
                    for region in regions:
                        at = region.offset - lo
                        placed = view[at:at + region.size]
                        self._check(region, _fill_mapped(self._out, region, (0, 1),
                                                         self._scratch(), placed))
                return
            except mapout.Refused as exc:
                self._refused(exc)
        for region in regions:
            self._check(region, self._put(region, (0, 1)))

    @staticmethod
    def _check(region: Region, written: int) -> None:
        if written != region.ref.nbytes:
            raise _wrong_size(region.ref)

    def _one(self, shares: _Shares, k: int) -> None:
        region = shares.region
        if k == 0 and self._map is None:  # on the worker: a call takes about 0.1 ms
            self._out.reserve(region.offset, region.size)
        with shares.loads.active():
            written = self._put(region, (k, shares.count))
        shares.done(written)

    def _scratch(self) -> np.ndarray:
        if not hasattr(self._local, "scratch"):
            self._local.scratch = np.empty(SCRATCH_BYTES, np.uint8)
        return self._local.scratch

    def _put(self, region: Region, part: tuple[int, int]) -> int:
        """Write share ``part`` of the region, through a map of its range where possible."""
        if self._map is not None:
            try:
                with self._map.window(region.offset, region.size) as view:
                    return _fill_mapped(self._out, region, part, self._scratch(), view)
            except mapout.Refused as exc:
                self._refused(exc)
        return _write_share(self._out, region, part, self._scratch())

    def _refused(self, exc: "mapout.Refused") -> None:
        """The file system refused to map the output: the rest goes through pwrite."""
        if self._map is not None:
            self._map = None
            mapout.refused(exc, self._name)

    def __enter__(self) -> "Filler":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._submit_batch()
                for future in self._futures:
                    future.result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
            os.close(self._out.fd)


def fill(path: Path, regions: list[Region], workers: int | None = None) -> None:
    """Write every region's tensor at its offset; the first error (in region order) is raised."""
    with Filler(path, workers) as filler:
        filler.cover(max((r.offset + r.size for r in regions), default=0))
        for region in regions:
            filler.add(region)


def _fill_mapped(out: "_Output", region: Region, part: tuple[int, int], scratch: np.ndarray,
                 view: np.ndarray) -> int:
    """Write share ``part`` of the region's tensor into ``view``, the region's bytes in a map
    of the output; the number of the tensor's bytes written."""
    ref, written = region.ref, 0
    source = scratch if region.as_float32 else Target.of(scratch, view, mapout.populate)
    for offset, block in ref.pieces(source, part):
        if offset < 0 or offset + len(block) > ref.nbytes or (region.as_float32 and len(block) % 2):
            raise _wrong_size(ref)
        scale = 2 if region.as_float32 else 1
        placed = view[scale * offset:scale * (offset + len(block))]
        if region.as_float32:
            mapout.populate(placed)
            np.left_shift(block.view(np.uint16), 16, out=placed.view(np.uint32), dtype=np.uint32)
            filemap.release(block)
        elif not _same(block, placed):   # the permutation wrote it there; else copy it there
            _copy_mapped(out, block, placed, region.offset + offset, ref.name)
        if region.digest is not None:
            region.digest(scale * offset, placed)
        written += len(block)
    return written


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return len(a) == len(b) and a.__array_interface__["data"][0] == b.__array_interface__["data"][0]


def _copy_mapped(out: "_Output", block: np.ndarray, placed: np.ndarray, offset: int,
                 name: str) -> None:
    """Copy ``block`` into ``placed`` (its place in the output's map, at file ``offset``):
    inside the kernel if COPY_IN_KERNEL and it is a view of a source's map, else one memcpy
    (numpy releases the GIL for it)."""
    if COPY_IN_KERNEL and out.copies and filemap.file_range(block) is not None:
        try:
            out.put(block, offset)
        except FormatError as exc:
            raise exc.with_context(tensor=name) from None
        return
    mapout.populate(placed)
    np.copyto(placed, block)
    filemap.release(block)   # a huge tensor copied from its map: pages not kept


def _write_share(out: "_Output", region: Region, part: tuple[int, int], scratch: np.ndarray) -> int:
    """Write share ``part`` of the region's tensor with pwrite; the number of bytes written."""
    ref, written = region.ref, 0
    for offset, block in ref.pieces(scratch, part):
        if offset < 0 or offset + len(block) > ref.nbytes:
            raise _wrong_size(ref)
        if region.digest is not None and not region.as_float32:   # before the write: a piece
            region.digest(offset, block)   # of a source's map may be given back once written
        if region.as_float32:
            digest = region.digest and functools.partial(_shifted, region.digest, -region.offset)
            out.put_float32(block, region.offset + 2 * offset, digest)
        elif block.base is scratch:   # permuted here: no file holds these bytes
            pwrite_all(out.fd, block, region.offset + offset)
        else:
            try:
                out.put(block, region.offset + offset)
            except FormatError as exc:
                raise exc.with_context(tensor=ref.name) from None
        written += len(block)
    return written


def _shifted(digest: Digest, by: int, offset: int, data: np.ndarray) -> None:
    digest(offset + by, data)


#: errors that mean "copy_file_range cannot do this here", not "the output is broken"
_NO_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF, errno.EPERM,
            errno.ETXTBSY, errno.EOVERFLOW}


class _Output:
    """The output file's descriptor and what the kernel lets us do with it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.copies = hasattr(os, "copy_file_range")   # until the kernel refuses once
        self._fallocate = _fallocate()
        self._local = threading.local()

    def reserve(self, offset: int, nbytes: int) -> None:
        """Give a range of RESERVE_FROM_BYTES or more its disk blocks now, without changing the
        file's size (a hint: file systems without ``fallocate`` are left alone)."""
        if self._fallocate is not None and nbytes >= RESERVE_FROM_BYTES:
            self._fallocate(self.fd, 1, offset, nbytes)   # 1: FALLOC_FL_KEEP_SIZE

    def put(self, block: np.ndarray, offset: int) -> None:
        """Write ``block`` at ``offset``: copied inside the kernel if it is a view of a source
        file's map, else (or for what the kernel did not copy) with pwrite."""
        source = filemap.file_range(block) if self.copies else None
        done = self._copy(source, len(block), offset) if source is not None else 0
        if done < len(block):
            pwrite_all(self.fd, block[done:], offset + done)
            filemap.release(block)   # a huge tensor written from its map: pages not kept

    def put_float32(self, block: np.ndarray, offset: int, digest: Digest | None = None) -> None:
        """Write the bfloat16 values of ``block`` at ``offset`` as float32, through a scratch
        buffer of each thread's own, SCRATCH_BYTES at a time (2 MiB writes took 2.5-3 x the
        system time of 1 MiB ones here: 1 GiB of bfloat16 to .h5, 0.76-0.88 s against
        0.27-0.30 s, three interleaved rounds)."""
        if not hasattr(self._local, "wide"):
            self._local.wide = np.empty(SCRATCH_BYTES, np.uint8)
        step = SCRATCH_BYTES // 2
        for at in range(0, len(block), step):
            narrow = block[at:at + step].view(np.uint16)
            wide = self._local.wide[:2 * narrow.nbytes].view(np.uint32)
            np.left_shift(narrow, 16, out=wide, dtype=np.uint32)
            pwrite_all(self.fd, wide.view(np.uint8), offset + 2 * at)
            if digest is not None:
                digest(offset + 2 * at, wide.view(np.uint8))
        filemap.release(block)

    def _copy(self, source: tuple[int, int], nbytes: int, offset: int) -> int:
        """Bytes copied from ``source`` (descriptor, offset) by the kernel before it refused."""
        fd, at = source
        done = 0
        try:
            while done < nbytes:
                step = os.copy_file_range(fd, self.fd, nbytes - done, at + done, offset + done)
                if step == 0:   # reading the map there would raise SIGBUS
                    raise FormatError("the source file ends early (did it change while being "
                                      "converted?)")
                done += step
        except OSError as exc:
            if exc.errno not in _NO_COPY:
                raise
            self.copies = False
        return done


@functools.cache
def _fallocate():
    """libc's ``fallocate`` (never emulated by writing zeros, as ``posix_fallocate`` is), or None
    off Linux."""
    if sys.platform != "linux":
        return None
    import ctypes

    try:
        fn = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn


def _wrong_size(ref: TensorRef) -> FormatError:
    return FormatError(f"its data does not have the {ref.nbytes} bytes its shape and dtype need",
                       tensor=ref.name)


_SEEK_LOCK = threading.Lock()


def pwrite_all(fd: int, data: np.ndarray, offset: int) -> None:
    """``os.pwrite`` until every byte is written (one call writes at most about 2 GiB); where
    there is no ``os.pwrite`` (Windows), seek and write under a lock."""
    view = memoryview(data)
    while view.nbytes:
        if hasattr(os, "pwrite"):
            done = os.pwrite(fd, view, offset)
        else:
            with _SEEK_LOCK:
                os.lseek(fd, offset, os.SEEK_SET)
                done = os.write(fd, view)
        view, offset = view[done:], offset + done
