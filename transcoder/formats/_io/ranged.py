"""Byte ranges of a remote object (an fsspec URL), fetched when a reader asks for them.

A remote SRC that can be read by range (:mod:`transcoder.formats.remote_source`) is given to
the readers as a *stub*: a sparse local file of the object's size holding only the bytes that
describe it (a safetensors header; a torch zip's central directory and small records), so
every check the readers make on a local file runs unchanged on it. The tensors' bytes are
holes in the stub: the readers ask :func:`lookup` whether their file is such a stub, and if so
fetch each tensor's bytes from the object (:meth:`RangedSource.read`) when it is loaded, in
blocks of :data:`BLOCK` bytes, at most :data:`IN_FLIGHT` blocks per request batch. What is
fetched is counted (``--verbose`` prints it).

The arrays returned are plain memory (not maps of a file): writers that copy a mapped range
inside the kernel fall back to writing it (``pwrite``).
"""
from __future__ import annotations

import bisect
import logging
import os
import shutil
import threading
from pathlib import Path

import numpy as np

from ...errors import FormatError, UsageError
from .window import Window

#: Bytes per ranged request, and requests sent together: the bytes in flight for one read.
BLOCK = 4 << 20
IN_FLIGHT = 4

log = logging.getLogger("transcoder")

_SOURCES: dict[str, "RangedSource"] = {}
_LOCK = threading.Lock()


class RangedSource:
    """One remote object: its filesystem, path, size and URL; every fetch counted."""

    def __init__(self, fs, path: str, size: int, url: str) -> None:
        self.fs, self.path, self.size, self.url = fs, path, size, url
        self.fetched = 0
        self.requests = 0
        self.reread = 0   # bytes read again from the stub (keep_in)
        self._lock = threading.Lock()
        self._stub: int | None = None   # keep_in: the stub, open read-write
        self._full = False                # the disk refused a write to the stub
        self._kept = _Ranges()

    def keep_in(self, stub: Path) -> None:
        """Keep what :meth:`read` fetches in ``stub`` (the sparse local file standing in for
        the object, at the same offsets) and serve a later read of the same bytes from there:
        a conversion's check reads every tensor again. On disk, not in memory: at most the
        object's size, removed with the stub (a staged object takes as much)."""
        if self._stub is None:
            self._stub = os.open(stub, os.O_RDWR)

    def close(self) -> None:
        if self._stub is not None:
            os.close(self._stub)
            self._stub = None

    def _keep(self, data: bytes, start: int) -> None:
        """Put fetched bytes in the stub; where the disk refuses them (full), keep no more
        (the descriptor stays open until :meth:`close`: other threads may be writing): a
        second read of what is not kept fetches again, the conversion goes on."""
        if self._full:
            return
        try:
            done = os.pwrite(self._stub, data, start)
        except OSError as exc:
            done, why = -1, exc.strerror or str(exc)
        else:
            why = "short write"
        if done == len(data):
            self._kept.add(start, start + len(data))
        elif not self._full:
            self._full = True
            log.info("%s: fetched bytes no longer kept locally (%s)", self.url, why)

    def fetch(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` clipped to the object (fewer at its end)."""
        return self.fetch_many([(start, end)])[0]

    def fetch_many(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        """Several ranges in one batch of requests (clipped to the object)."""
        ranges = [(s, min(e, self.size)) for s, e in ranges]
        wanted = [(s, e) for s, e in ranges if e > s]
        got = iter(self._cat(wanted) if wanted else [])
        out = [next(got) if e > s else b"" for s, e in ranges]
        with self._lock:
            self.fetched += sum(len(b) for b in out)
            self.requests += len(wanted)
        return out

    def _cat(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        try:
            if len(ranges) == 1:
                return [self.fs.cat_file(self.path, start=ranges[0][0], end=ranges[0][1])]
            out = self.fs.cat_ranges([self.path] * len(ranges), [s for s, _ in ranges],
                                     [e for _, e in ranges], on_error="raise")
        except OSError as exc:
            raise refused(exc, self.url) from None
        return list(out)

    def read(self, offset: int, nbytes: int, what: object = None) -> np.ndarray:
        """Exactly ``nbytes`` from ``offset`` as a fresh uint8 array, fetched block by block
        (or read from the stub if kept there before); FormatError naming the URL if the object
        ends first (truncated, or replaced since)."""
        buf = np.empty(nbytes, np.uint8)
        if self._stub is not None and self._kept.cover(offset, offset + nbytes):
            _pread_all(self._stub, buf, offset)
            with self._lock:
                self.reread += nbytes
            return buf
        done = 0
        while done < nbytes:
            ranges = []
            for _ in range(IN_FLIGHT):
                start = offset + done + sum(e - s for s, e in ranges)
                end = min(start + BLOCK, offset + nbytes)
                if start >= end:
                    break
                ranges.append((start, end))
            for (start, end), data in zip(ranges, self.fetch_many(ranges)):
                if len(data) > end - start:
                    raise FormatError("the store answered a ranged read with more bytes than "
                                      "asked (no ranged reads?)", path=self.url)
                if len(data) < end - start:
                    raise FormatError(f"object ends {offset + nbytes - start - len(data)} bytes "
                                      "early (truncated, or replaced while read?)", path=self.url,
                                      tensor=what if isinstance(what, str) else None)
                buf[start - offset:end - offset] = np.frombuffer(data, np.uint8)
                if self._stub is not None:
                    self._keep(data, start)
            done = ranges[-1][1] - offset
        return buf

    def describe(self) -> str:
        again = f", {self.reread} read again from the local copy" if self.reread else ""
        return (f"{self.url}: {self.fetched} of {self.size} bytes fetched by range "
                f"({self.requests} requests{again})")


class _Ranges:
    """Disjoint sorted byte ranges ``[start, end)``, merged as they are added; thread-safe."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._lock = threading.Lock()

    def add(self, start: int, end: int) -> None:
        with self._lock:
            lo = bisect.bisect_left(self._ends, start)     # first range ending at or after start
            hi = bisect.bisect_right(self._starts, end)    # ranges starting at or before end
            if lo < hi:
                start, end = min(start, self._starts[lo]), max(end, self._ends[hi - 1])
            self._starts[lo:hi], self._ends[lo:hi] = [start], [end]

    def cover(self, start: int, end: int) -> bool:
        """Whether ``[start, end)`` lies within one range."""
        with self._lock:
            i = bisect.bisect_right(self._starts, start) - 1
            return i >= 0 and self._ends[i] >= end


def _pread_all(fd: int, buf: np.ndarray, offset: int) -> None:
    view, done = memoryview(buf), 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            raise FormatError("the local copy of a fetched range ends early")
        done += got


def refused(exc: OSError, url: str) -> Exception:
    """One line for what the store said while reading."""
    if isinstance(exc, FileNotFoundError):
        return FormatError("no such file (removed while read?)", path=url)
    if isinstance(exc, PermissionError):
        return UsageError("permission denied reading", path=url)
    return UsageError(f"reading failed: {exc.strerror or exc}", path=url)


class RangedFile(Window):
    """A read-only, seekable file over a :class:`RangedSource` for :mod:`zipfile`: each range
    fetched (at least ``readahead`` bytes) is written at its offset into the stub open as
    ``stub`` (read-write) and later reads of it are served from there; ``budget`` bounds
    the bytes fetched (:class:`TooLarge` past it)."""

    def __init__(self, source: RangedSource, stub: int, budget: int, readahead: int) -> None:
        super().__init__(source.size)
        self._source, self._stub = source, stub
        self._budget, self._readahead = budget, readahead
        self._have = _Ranges()   # what is in the stub already

    def have(self, start: int, end: int) -> None:
        """Bytes ``[start, end)`` are in the stub already."""
        self._have.add(start, end)

    def fetch(self, start: int, end: int) -> None:
        """Fetch ``[start, end)`` into the stub."""
        data = self._source.fetch(start, end)
        self._budget -= len(data)
        if self._budget < 0:
            raise TooLarge(self._source.url)
        os.pwrite(self._stub, data, start)
        self.have(start, start + len(data))

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        end = min(self._pos + len(view), self._source.size)
        if end <= self._pos:
            return 0
        if not self._have.cover(self._pos, end):
            self.fetch(self._pos, max(end, self._pos + self._readahead))
        got = os.preadv(self._stub, [view[:end - self._pos]], self._pos)
        self._pos += got
        return got


class TooLarge(Exception):
    """The metadata of an object is larger than a ranged read would fetch: stage it."""


def register(stub: Path, source: RangedSource) -> None:
    with _LOCK:
        _SOURCES[_key(stub)] = source


def unregister(stub: Path) -> RangedSource | None:
    with _LOCK:
        source = _SOURCES.pop(_key(stub), None)
    if source is not None:
        source.close()
    return source


#: Fetched bytes are kept only where the disk has this much room beyond them.
KEEP_MARGIN = 1 << 30


def keep_under(folder: Path) -> None:
    """Every object standing in under ``folder`` keeps what it fetches
    (:meth:`RangedSource.keep_in`), if the disk holding ``folder`` has room for all of them
    and :data:`KEEP_MARGIN` more (else a check fetches them again: ``--verbose`` says so)."""
    root = _key(folder)
    with _LOCK:
        stubs = [(key, s) for key, s in _SOURCES.items()
                 if key == root or key.startswith(root + os.sep)]
    needed = sum(source.size for _, source in stubs)
    free = shutil.disk_usage(root).free
    if stubs and free < needed + KEEP_MARGIN:
        log.info("fetched bytes not kept locally for the check (%d bytes free beside %s, %d "
                 "needed): the check fetches them again", free, root, needed + KEEP_MARGIN)
        return
    for key, source in stubs:
        source.keep_in(Path(key))


def lookup(path: Path | str) -> RangedSource | None:
    """The remote object a stub file stands in for (None: a plain local file)."""
    if not _SOURCES:
        return None
    with _LOCK:
        return _SOURCES.get(_key(path))


def _key(path: Path | str) -> str:
    return os.path.realpath(path)
