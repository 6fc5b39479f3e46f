"""CRC-32 (zip's) of a byte range written in pieces, in any order, by several threads.

A zip member's CRC is needed once the data is written; :class:`PieceCrc` takes the pieces as
the writing threads produce them (:attr:`.rawfill.Region.digest`): each piece is checksummed
on its thread (``zlib.crc32`` releases the GIL for large buffers), a piece that continues an
earlier run extends that run's CRC, and :meth:`PieceCrc.value` joins the runs in offset order
with :func:`combine`.

The checksum itself is zlib-ng's ``crc32`` where the ``zlib-ng`` package is installed (a
dependency; same values, 10-12 GB/s here against 1.8-3 GB/s for Python's zlib 1.2.13: at
zlib's speed the CRCs of a 4 GiB checkpoint alone took about as much CPU as ``cp -r`` of it),
else :func:`zlib.crc32`. Both release the GIL for large buffers. Imported on first use: it
imports :mod:`gzip` too, 3-5 ms that a command writing no ``.pt`` need not pay at start-up.

:func:`combine` is zlib's ``crc32_combine`` (Python's zlib does not expose it), as zlib
1.2.12 computes it: the first CRC multiplied by x^(8 * len2) modulo the CRC polynomial, in
GF(2), with the powers x^(2^k) from a table, so it costs O(log len2) polynomial products
(about 15 us here) instead of checksumming len2 zero bytes (``crc32(zeros, crc1) ^
crc32(zeros) ^ crc2``, exact too, but as slow as checksumming the data again).
"""
from __future__ import annotations

import functools
import threading
import zlib

_POLY = 0xEDB88320   # the CRC-32 polynomial, bit-reflected
_ONE = 1 << 31       # the polynomial 1 (x^0), reflected


def _multiply(a: int, b: int) -> int:
    """a(x) * b(x) modulo the CRC polynomial (reflected representation, as zlib's multmodp)."""
    product, bit = 0, _ONE
    while a:
        if a & bit:
            product ^= b
            a ^= bit
        bit >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1
    return product


def _powers() -> list[int]:
    """x^(2^k) modulo the polynomial for k = 0..63: enough for any length below 2^61 bytes."""
    table, p = [], _ONE >> 1   # x^1
    for _ in range(64):
        table.append(p)
        p = _multiply(p, p)
    return table


_X2N = _powers()


def _x_to_8n(nbytes: int) -> int:
    """x^(8 * nbytes) modulo the polynomial."""
    p, k = _ONE, 3   # x^0; a byte is x^8 = x^(2^3)
    while nbytes:
        if nbytes & 1:
            p = _multiply(_X2N[k], p)
        nbytes >>= 1
        k += 1
    return p


def combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC-32 of A + B from ``crc1`` = crc32(A), ``crc2`` = crc32(B) and len(B)."""
    if len2 < 0:
        raise ValueError("negative length")
    return _multiply(_x_to_8n(len2), crc1 & 0xFFFFFFFF) ^ (crc2 & 0xFFFFFFFF)


@functools.cache
def checksum():
    """zlib-ng's ``crc32`` if installed, else zlib's (the same values)."""
    try:
        from zlib_ng.zlib_ng import crc32
    except ImportError:   # the package is a dependency; without it, slower
        return zlib.crc32
    return crc32


class PieceCrc:
    """Collects pieces ``(offset, bytes)`` of one range, called from any thread; :meth:`value`
    is the CRC-32 of the range once every byte was given exactly once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[int, tuple[int, int]] = {}   # end offset -> (start offset, crc)

    def __call__(self, offset: int, data) -> None:
        length = memoryview(data).nbytes
        with self._lock:
            start, crc = self._runs.pop(offset, (offset, None))
        # a run is only ever continued by the piece right after it: the thread filling that
        # share, which is busy here, so no other thread can be extending the same run
        crc = checksum()(data, crc) if crc is not None else checksum()(data)
        with self._lock:
            self._runs[offset + length] = (start, crc)

    def value(self, nbytes: int) -> int:
        """The CRC-32 of the ``nbytes`` bytes; ValueError if the pieces did not cover them
        exactly, one after another."""
        crc, at = 0, 0
        for end, (start, run) in sorted(self._runs.items(), key=lambda item: item[1][0]):
            if start != at:
                raise ValueError(f"pieces leave a gap or overlap at byte {at}")
            crc = combine(crc, run, end - start) if at else run
            at = end
        if at != nbytes:
            raise ValueError(f"pieces cover {at} bytes, expected {nbytes}")
        return crc
