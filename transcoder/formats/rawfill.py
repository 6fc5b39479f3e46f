"""Writing tensors' bytes into byte ranges an output file has already set aside, two at a time.

The ``.h5`` and ``.safetensors`` writers first lay out the whole file (HDF5 datasets allocated
up front, the safetensors header), then hand :func:`fill` each tensor with the file offset of
its data. Each worker thread takes a tensor, asks it for its bytes in blocks
(:meth:`TensorRef.blocks`: a permuted tensor is permuted block by block into the thread's
scratch buffer, which stays in the cache) and writes every block with ``pwrite`` at its offset.
The permutation kernel and ``pwrite`` release the GIL, so on two cores one thread permutes
while the other writes; no tensor is ever held whole in fresh memory.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..checkpoint import TensorRef
from ..errors import FormatError

WORKERS = 2
#: Per worker. Small enough to stay in a core's L2 cache between the permutation and the write.
SCRATCH_BYTES = 1 << 20


@dataclass(frozen=True)
class Region:
    """Where a tensor's bytes go in the output file."""

    offset: int
    ref: TensorRef


def fill(path: Path, regions: list[Region], workers: int = WORKERS) -> None:
    """Write every region's tensor at its offset; the first error (in region order) is raised."""
    fd = os.open(path, os.O_WRONLY)
    local = threading.local()

    def one(region: Region) -> None:
        if not hasattr(local, "scratch"):
            local.scratch = np.empty(SCRATCH_BYTES, np.uint8)
        _write_tensor(fd, region, local.scratch)

    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="transcoder-fill") as pool:
            futures = [pool.submit(one, region) for region in regions]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                pool.shutdown(cancel_futures=True)
                raise
    finally:
        os.close(fd)


def _write_tensor(fd: int, region: Region, scratch: np.ndarray) -> None:
    ref, at = region.ref, region.offset
    end = at + ref.nbytes
    for block in ref.blocks(scratch):
        if at + len(block) > end:
            break
        pwrite_all(fd, block, at)
        at += len(block)
    if at != end:
        raise FormatError(f"its data does not have the {ref.nbytes} bytes its shape and dtype "
                          "need", tensor=ref.name)


def pwrite_all(fd: int, data: np.ndarray, offset: int) -> None:
    """``os.pwrite`` until every byte is written (one call writes at most about 2 GiB)."""
    view = memoryview(data)
    while view.nbytes:
        done = os.pwrite(fd, view, offset)
        view, offset = view[done:], offset + done
