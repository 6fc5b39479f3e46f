"""A streaming zip writer that lays records out exactly as ``torch.save`` (miniz) does.

Why not :mod:`zipfile`: torch may compute storage offsets instead of reading them
(``torch.load(mmap=True)`` with ``calculate_storage_offsets``) and then assumes miniz' layout:
each record's local header padded with an ``FB`` extra field so its data starts on a 64-byte
boundary, a data descriptor after every non-empty record, zip64 fields only past 4 GiB.
Records are stored uncompressed; the CRC is computed while the data streams through
(:meth:`TorchZipWriter.write_stream`), or a record is laid out first and its data written by
others at a known offset, its CRC filled in afterwards (:meth:`TorchZipWriter.reserve`,
:meth:`TorchZipWriter.settle`: the ``.pt`` writer's threads, see :mod:`..pt`).
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import IO, Iterable

from ...errors import FormatError

ALIGNMENT = 64
ZIP64_LIMIT = 0xFFFFFFFF  # sizes/offsets at or past this need zip64 fields (as in miniz)
_MASKED32, _MASKED16 = 0xFFFFFFFF, 0xFFFF  # "see the zip64 field" markers

_LOCAL = struct.Struct("<IHHHHHIIIHH")
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
_DESCRIPTOR32 = struct.Struct("<IIII")
_DESCRIPTOR64 = struct.Struct("<IIQQ")
_EOCD64 = struct.Struct("<IQHHIIQQQQ")
_LOCATOR64 = struct.Struct("<IIQI")
_EOCD = struct.Struct("<IHHHHIIH")

_SIG_LOCAL, _SIG_CENTRAL, _SIG_DESCRIPTOR = 0x04034B50, 0x02014B50, 0x08074B50
_SIG_EOCD64, _SIG_LOCATOR64, _SIG_EOCD = 0x06064B50, 0x07064B50, 0x06054B50
_FLAG_UTF8, _FLAG_DESCRIPTOR = 0x0800, 0x0008


@dataclass
class _Entry:
    name: bytes
    header_offset: int
    size: int
    crc: int
    flags: int
    data_offset: int


def _zip64_extra(size: int | None, offset: int | None) -> bytes:
    """A zip64 extended-information field with the values that overflow 32 bits."""
    values = [v for v in (size, size, offset) if v is not None]  # uncompressed, compressed, offset
    return struct.pack("<HH", 1, 8 * len(values)) + b"".join(struct.pack("<Q", v) for v in values)


def _local_zip64(size: int, offset: int) -> bytes:
    if size < ZIP64_LIMIT and offset < ZIP64_LIMIT:
        return b""
    return _zip64_extra(size if size >= ZIP64_LIMIT else None,
                        offset if offset >= ZIP64_LIMIT else None)


def _padding(data_start: int) -> bytes:
    """The ``FB`` extra field that moves the data start (after the field) to ALIGNMENT."""
    pad = -(data_start + 4) % ALIGNMENT
    return b"FB" + struct.pack("<H", pad) + b"Z" * pad


class TorchZipWriter:
    """Write records ``<prefix>/<name>`` one after another, then :meth:`close` the archive."""

    def __init__(self, fh: IO[bytes], prefix: str) -> None:
        self._fh = fh
        self._prefix = prefix
        self._entries: list[_Entry] = []
        self._offset = fh.tell()

    def _write(self, data: bytes | memoryview) -> None:
        self._fh.write(data)
        self._offset += len(data)

    def write_record(self, name: str, data: bytes) -> None:
        self.write_stream(name, len(data), [data])

    def write_stream(self, name: str, size: int, chunks: Iterable[bytes | memoryview]) -> int:
        """Write one record of ``size`` bytes from ``chunks``; returns its CRC-32."""
        entry = self._begin(name, size)
        crc, written = 0, 0
        for chunk in chunks:
            crc = zlib.crc32(chunk, crc)
            written += len(chunk)
            self._write(chunk)
        if written != size:
            raise FormatError(f"record {name}: got {written} bytes, expected {size}")
        entry.crc = crc
        if size:
            self._write(self._descriptor(crc, size, entry.header_offset))
        return crc

    def reserve(self, name: str, size: int) -> _Entry:
        """Lay out a record of ``size`` bytes whose data is written later, by someone else, at
        ``entry.data_offset`` (the file grows over it: a hole until then); its data descriptor
        is written with CRC 0, which :meth:`settle` replaces. The bytes are those
        :meth:`write_stream` writes, once settled."""
        entry = self._begin(name, size)
        if size:
            self._fh.seek(size, 1)
            self._offset += size
            self._write(self._descriptor(0, size, entry.header_offset))
        return entry

    def settle(self, entry: _Entry, crc: int) -> None:
        """Record the CRC-32 of a :meth:`reserve` d record's data, in its descriptor (the local
        header carries none, as with :meth:`write_stream`) and, at :meth:`close`, in the
        central directory."""
        entry.crc = crc
        if entry.size:
            self._fh.seek(entry.data_offset + entry.size + 4)   # past the descriptor's signature
            self._fh.write(struct.pack("<I", crc))
            self._fh.seek(self._offset)

    def flush(self) -> None:
        """Hand what is buffered to the file (before others write into the reserved ranges)."""
        self._fh.flush()

    def _begin(self, name: str, size: int) -> _Entry:
        """The local header of a record of ``size`` bytes; its entry (CRC still 0)."""
        full = f"{self._prefix}/{name}".encode("utf-8")
        header_offset = self._offset
        extra = _local_zip64(size, header_offset)
        extra += _padding(header_offset + _LOCAL.size + len(full) + len(extra))
        flags = _FLAG_UTF8 | (_FLAG_DESCRIPTOR if size else 0)
        self._write(_LOCAL.pack(_SIG_LOCAL, 0, flags, 0, 0, 0, 0, 0, 0, len(full), len(extra)))
        self._write(full + extra)
        entry = _Entry(full, header_offset, size, 0, flags, self._offset)
        self._entries.append(entry)
        return entry

    @staticmethod
    def _descriptor(crc: int, size: int, header_offset: int) -> bytes:
        if size >= ZIP64_LIMIT or header_offset >= ZIP64_LIMIT:
            return _DESCRIPTOR64.pack(_SIG_DESCRIPTOR, crc, size, size)
        return _DESCRIPTOR32.pack(_SIG_DESCRIPTOR, crc, size, size)

    def _central(self, entry: _Entry) -> bytes:
        big_size, big_offset = entry.size >= ZIP64_LIMIT, entry.header_offset >= ZIP64_LIMIT
        extra = b""
        if big_size or big_offset:
            extra = _zip64_extra(entry.size if big_size else None,
                                 entry.header_offset if big_offset else None)
        size = _MASKED32 if big_size else entry.size
        offset = _MASKED32 if big_offset else entry.header_offset
        version = 45 if extra else 0
        return _CENTRAL.pack(_SIG_CENTRAL, version, version, entry.flags, 0, 0, 0, entry.crc,
                             size, size, len(entry.name), len(extra), 0, 0, 0, 0,
                             offset) + entry.name + extra

    def close(self) -> None:
        """Central directory, then zip64 end records (torch always writes them), then EOCD."""
        cd_offset = self._offset
        for entry in self._entries:
            self._write(self._central(entry))
        cd_size, count = self._offset - cd_offset, len(self._entries)
        eocd64_offset = self._offset
        self._write(_EOCD64.pack(_SIG_EOCD64, _EOCD64.size - 12, 45, 45, 0, 0, count, count,
                                 cd_size, cd_offset))
        self._write(_LOCATOR64.pack(_SIG_LOCATOR64, 0, eocd64_offset, 1))
        count16 = count if count < _MASKED16 else _MASKED16
        self._write(_EOCD.pack(_SIG_EOCD, 0, 0, count16, count16, self._field32(cd_size),
                               self._field32(cd_offset), 0))

    @staticmethod
    def _field32(value: int) -> int:
        return value if value < ZIP64_LIMIT else _MASKED32
