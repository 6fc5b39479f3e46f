"""Writing an output file through shared memory mappings of its byte ranges.

Filling a range with ``pwrite`` copies every byte twice: into a scratch buffer (the
permutation) and from there into the page cache. Mapping the range ``MAP_SHARED`` lets the
permutation kernel (and numpy's copies, and the bfloat16 widening) write straight into the page
cache: one copy per byte. :class:`OutputMap` gives the file its size and disk blocks up front
(``fallocate``: a full disk is then an ordinary error before anything is mapped, not a SIGBUS
mid-write) and hands out windows: a writable uint8 array over a byte range, mapped for one task
and unmapped after it, so the resident set holds only the pages of the tasks in flight (mapped
file pages count in RssFile, not RssAnon, while they are mapped).

A write into a mapped page the file system cannot back (a disk that fills although the range
was allocated, a file truncated by someone else) raises SIGBUS: :mod:`.sigbus` knows these
mappings as outputs and ends the process with one line and exit code 2, the temporary output
deleted.

Where mapping is impossible (not a regular file, ``TRANSCODER_NO_MMAP_WRITE=1``),
:func:`open_map` says why and the caller writes with ``pwrite``; so does it, from then on, where
the file system refuses ``mmap`` (:func:`refused`).
"""
from __future__ import annotations

import errno
import logging
import mmap
import os
import stat
import threading
from contextlib import contextmanager
from typing import Iterator

import numpy as np

from . import sigbus

#: 1: write with pwrite; 0: through shared mappings (tests and the benchmark compare both)
NO_MAP_ENV = "TRANSCODER_NO_MMAP_WRITE"
#: Without the variable: pwrite. On this project's 2-core VMs (kernel 6.18, ext4) the quiet
#: benchmark (``bench.py --pwrite-row``, 3 interleaved rounds, 2026-12-07) had the mapped path
#: slower wherever it permutes: 1 GiB .pt -> .h5 1.08 s against 0.65 s, Conv1d .pt -> .h5
#: 1.58 s against 0.94 s, bulk 8 x 128 MiB 2.32 s against 1.55 s, and equal for copies. The
#: kernel zero-fills every fresh page of a shared mapping before it is written (22-42 % of
#: the samples in ``perf``); a page ``pwrite`` fills whole is never zeroed. Even the bare
#: mapped copy (the bench's floor row) took 1.2-3 x ``cp`` there.
MAP_BY_DEFAULT = False
_LOG = logging.getLogger("transcoder")


class Refused(Exception):
    """The file system (or the address space) refused a map: write with pwrite instead."""


class OutputMap:
    """An output file open for reading and writing, mapped a window at a time."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd, self.name = fd, name
        self._lock = threading.Lock()
        self._size = os.fstat(fd).st_size
        self._allocated = 0

    def cover(self, end: int) -> None:
        """Give the file its disk blocks up to ``end`` (and at least that size): ENOSPC is then
        an OSError here, not a SIGBUS in a mapped write. Never shrinks the file."""
        with self._lock:
            if end <= self._allocated:
                return
            start, self._allocated = self._allocated, end
            _allocate(self.fd, start, end - start)
            self._size = max(self._size, end)

    @contextmanager
    def window(self, offset: int, nbytes: int) -> Iterator[np.ndarray]:
        """Bytes ``[offset, offset + nbytes)`` of the file (within :meth:`cover`'s reach) as a
        writable uint8 array, unmapped on leaving (the written pages stay in the page cache)."""
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        try:
            mapped = mmap.mmap(self.fd, nbytes + offset - start, flags=mmap.MAP_SHARED,
                               prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=start)
        except (OSError, ValueError) as exc:   # ValueError: the file is shorter (truncated)
            raise Refused(getattr(exc, "strerror", None) or str(exc)) from exc
        whole = np.frombuffer(mapped, np.uint8)
        sigbus.watch(whole.__array_interface__["data"][0], len(mapped), self.fd,
                     name=self.name, output=True)
        try:
            yield whole[offset - start:]
        finally:
            del whole
            _unmap(mapped)


def _unmap(mapped: mmap.mmap) -> None:
    """Unmap; if a view of it is still alive somewhere (an exception's traceback), drop its
    pages from the resident set instead (they stay in the page cache) and let the collector
    unmap it."""
    try:
        mapped.close()
    except BufferError:
        if hasattr(mmap, "MADV_DONTNEED"):
            mapped.madvise(mmap.MADV_DONTNEED)


def _allocate(fd: int, offset: int, nbytes: int) -> None:
    """Disk blocks for the range, growing the file to its end; where the file system has no
    ``fallocate``, only the size (ftruncate)."""
    try:
        os.posix_fallocate(fd, offset, nbytes)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
        if os.fstat(fd).st_size < offset + nbytes:
            os.ftruncate(fd, offset + nbytes)


def open_map(fd: int, name: str) -> OutputMap | None:
    """An :class:`OutputMap` of ``fd`` (open read-write), or None where writes must go through
    ``pwrite``; the ``transcoder`` logger says which (``--verbose``)."""
    why = _why_not(fd)
    if why is None:
        _LOG.info("writing %s through a shared memory mapping", name)
        return OutputMap(fd, name)
    _LOG.info("writing %s with pwrite (%s)", name, why)
    return None


def _why_not(fd: int) -> str | None:
    chosen = os.environ.get(NO_MAP_ENV)
    if chosen == "1" or (chosen != "0" and not MAP_BY_DEFAULT):
        return f"{NO_MAP_ENV}=1" if chosen == "1" else f"the default; {NO_MAP_ENV}=0 maps"
    if not hasattr(os, "posix_fallocate") or not hasattr(mmap, "MAP_SHARED"):
        return "no shared mappings here"
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        return "not a regular file"
    return None


def refused(exc: Refused, name: str) -> None:
    """Log that the file system refused to map ``name``: the rest goes through ``pwrite``."""
    _LOG.info("writing %s with pwrite (mmap refused: %s)", name, exc)


#: Linux 5.14's madvise: fault a range's pages in for writing, in one call
MADV_POPULATE_WRITE = 23


def populate(view: np.ndarray) -> None:
    """Fault the pages of ``view`` (a slice of a window) in for writing before they are written.

    The kernel's tiles write pages in their own order, one fault each; populated first, in
    order, the range faults in large folios (1 GiB .safetensors -> .h5, two interleaved
    runs on a loaded machine: 1.0 s of system time instead of 1.4 s). ``MAP_POPULATE`` does
    not do it: it maps a shared file's pages read-only, and every first write faults again.
    A hint: where the kernel lacks it (before 5.14), nothing happens."""
    madvise = _madvise()
    if madvise is None or not len(view):
        return
    address = view.__array_interface__["data"][0]
    start = address - address % mmap.PAGESIZE
    if madvise(start, address + len(view) - start, MADV_POPULATE_WRITE) != 0:
        _MADVISE[:] = [None]   # EINVAL: an older kernel; not asked again


_MADVISE: list = []


def _madvise():
    if not _MADVISE:
        try:
            import ctypes

            fn = ctypes.CDLL(None, use_errno=True).madvise
            fn.argtypes = [ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int]
            fn.restype = ctypes.c_int
            _MADVISE.append(fn)
        except (OSError, AttributeError, ImportError):
            _MADVISE.append(None)
    return _MADVISE[0]
