"""Giving freed memory back to the system while a check runs (glibc only; elsewhere nothing).

glibc's malloc keeps what Python, numpy and torch free in its heaps for the next allocation,
and raises its mmap threshold (up to 32 MiB) each time a large block is freed, so the float64
copies of the check's layers come from the heap after the first and stay in the process's
resident set when freed (measured: +8 MiB per Linear(2048, 512) proof). :func:`fixed_heap`
pins the threshold (blocks of 1 MiB and more are mapped, and unmapped when freed);
:func:`release` returns the free tops and pages of the heaps (``malloc_trim(0)``).

A mapped file's pages count in the resident set once read, until the map is closed:
:func:`drop_pages` lets a read-only map's pages go (the kernel reads them again from the page
cache if touched again), so a tensor compared a block at a time holds a block resident.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import mmap

import numpy as np

#: mallopt's parameter number for the mmap threshold (glibc's malloc.h)
M_MMAP_THRESHOLD = -3
#: blocks of this many bytes and more are mapped on their own (and unmapped when freed)
MMAP_FROM_BYTES = 1 << 20


@functools.lru_cache(maxsize=1)
def _libc():
    """glibc, or None (another C library, or none found: nothing to do)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    if libc is None or not hasattr(libc, "malloc_trim") or not hasattr(libc, "mallopt"):
        return None
    return libc


def fixed_heap() -> bool:
    """Map every allocation of :data:`MMAP_FROM_BYTES` or more on its own from now on (the
    threshold no longer rises); True where done."""
    libc = _libc()
    return bool(libc is not None and libc.mallopt(M_MMAP_THRESHOLD, MMAP_FROM_BYTES))


def release() -> bool:
    """Give the heaps' free memory back to the system; True where some was."""
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0))


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
