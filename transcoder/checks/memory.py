"""Letting a mapped file's pages go while a check compares a tensor a block at a time.

A mapped file's pages count in the process's resident set once read, until the map is closed:
:func:`drop_pages` lets a read-only map's pages go (the kernel reads them again from the page
cache if touched again), so a tensor compared a block at a time holds one block resident, not
the whole tensor beside the written one (24 x Linear(4096, 4096): -64 MiB at the peak).

Tried and measured without effect on the check's peak once the widest layers are cut
(:mod:`.slices`) and torch's compiler is not imported: ``malloc_trim(0)`` after wide layers, a
fixed glibc mmap threshold (no change at the peak), ``MALLOC_ARENA_MAX=2`` (none on the
frameworks' import): not used.
"""
from __future__ import annotations

import mmap

import numpy as np


def drop_pages(part: np.ndarray) -> bool:
    """Let the whole pages under ``part`` go from the resident set if it lies in a read-only
    memory map (True); anything else (memory of the process's own, a map that may be written)
    is left as it is. The maps of :func:`transcoder.formats._io.filemap.map_range` (shared,
    read-only) are the ones that carry their ``address``."""
    base = part.base
    while base is not None and not isinstance(base, mmap.mmap):
        base = base.obj if isinstance(base, memoryview) else getattr(base, "base", None)
    address = getattr(base, "address", None)
    if base is None or address is None or not part.flags.c_contiguous or not part.nbytes:
        return False
    page = mmap.PAGESIZE
    start = part.__array_interface__["data"][0] - address
    first, end = -(-start // page) * page, (start + part.nbytes) // page * page
    if end <= first or not hasattr(base, "madvise"):
        return False
    base.madvise(mmap.MADV_DONTNEED, first, end - first)
    return True
