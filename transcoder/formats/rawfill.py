"""Writing tensors' bytes into byte ranges an output file has already set aside, two at a time.

The ``.h5`` and ``.safetensors`` writers lay out the file (HDF5 datasets allocated up front,
the safetensors header) and hand each tensor with the file offset of its data to a
:class:`Filler` (the ``.h5`` writer as soon as HDF5 has allocated the dataset, while it lays out
the rest). Each worker thread takes a tensor, asks it for its bytes in blocks
(:meth:`TensorRef.blocks`: a permuted tensor is permuted block by block into the thread's
scratch buffer, which stays in the cache) and writes every block with ``pwrite`` at its offset.
The permutation kernel and ``pwrite`` release the GIL, so on two cores one thread permutes
while the other writes; no tensor is ever held whole in fresh memory.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..checkpoint import TensorRef
from ..errors import FormatError

WORKERS = 2
#: Per worker: stays in a core's L2 cache between the permutation and the write. Measured on a
#: 1 GiB .pt -> .h5 (medians of 7 interleaved runs): 256 KiB 0.72 s, 512 KiB 0.60 s, 1 MiB
#: 0.49 s, 2 MiB 1.5 s (not explained yet; page-aligned 1 MiB pwrites of a plain buffer were
#: slow too, so the kernel's page-cache allocation for large writes is the likely cause).
SCRATCH_BYTES = 1 << 20


@dataclass(frozen=True)
class Region:
    """Where a tensor's bytes go in the output file."""

    offset: int
    ref: TensorRef


class Filler:
    """Writes each region added on worker threads while the caller goes on laying out the file.

    Leaving the ``with`` block waits for every region and raises the first error (in the order
    the regions were added); after an error nothing more is started.
    """

    def __init__(self, path: Path, workers: int = WORKERS) -> None:
        self._fd = os.open(path, os.O_WRONLY | getattr(os, "O_BINARY", 0))
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="transcoder-fill")
        self._futures: list[Future] = []
        self._local = threading.local()

    def add(self, region: Region) -> None:
        self._futures.append(self._pool.submit(self._one, region))

    def _one(self, region: Region) -> None:
        if not hasattr(self._local, "scratch"):
            self._local.scratch = np.empty(SCRATCH_BYTES, np.uint8)
        _write_tensor(self._fd, region, self._local.scratch)

    def __enter__(self) -> "Filler":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                for future in self._futures:
                    future.result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
            os.close(self._fd)


def fill(path: Path, regions: list[Region], workers: int = WORKERS) -> None:
    """Write every region's tensor at its offset; the first error (in region order) is raised."""
    with Filler(path, workers) as filler:
        for region in regions:
            filler.add(region)


def _write_tensor(fd: int, region: Region, scratch: np.ndarray) -> None:
    ref, at = region.ref, region.offset
    end = at + ref.nbytes
    for block in ref.blocks(scratch):
        if at + len(block) > end:
            raise _wrong_size(ref)
        pwrite_all(fd, block, at)
        at += len(block)
    if at != end:
        raise _wrong_size(ref)


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
