"""HDF5 global heaps checked before h5py reads a variable-length string from one.

Variable-length strings (Keras 3's ``vars`` names, our ``transcoder`` metadata, carried names)
live in *global heap collections*. The HDF5 library in h5py's wheels (1.14.6) decodes a
collection object by object, each object's size telling where the next starts; an object of
size 0 at index 0 (or a size that wraps around 64 bits) never moves forward, and the library
loops forever inside one attribute read, beyond the reach of Python (found by the fuzz
campaign). So when a file is opened, every collection in it is walked the same way here first,
and a file with such an object is refused.

Collections are found by their signature, outside the bytes that datasets store (those are
most of a checkpoint and hold no metadata), so the cost is about the file's metadata, not its
size.
"""
from __future__ import annotations

import struct
from typing import Callable

import h5py

from ...errors import UnsafeFileError

SIGNATURE = b"GCOL"
BLOCK = 1 << 20
MASK = (1 << 64) - 1
#: ``struct`` codes of the file's "size of lengths" (8 unless the file was made otherwise)
LENGTHS = {2: "<H", 4: "<I", 8: "<Q"}

ReadAt = Callable[[int, int], bytes]


def check(f: h5py.File, read_at: ReadAt, file_size: int, path: object) -> None:
    """UnsafeFileError if a global heap collection of ``f`` would make HDF5 loop forever.
    ``read_at(offset, n)`` reads the file's bytes."""
    length = LENGTHS.get(f.id.get_create_plist().get_sizes()[1])
    if length is None:
        raise UnsafeFileError("HDF5 file with an unusual size of lengths", path=path)
    for start, end in _gaps(_extents(f), file_size):
        for at in _find(read_at, start, end):
            problem = _problem(read_at, at, file_size, length)
            if problem:
                raise UnsafeFileError(f"HDF5 global heap at byte {at} is malformed ({problem}); "
                                      "refusing it (the HDF5 library would never finish "
                                      "reading it)", path=path)


def _extents(f: h5py.File) -> list[tuple[int, int]]:
    """Byte ranges that datasets' data occupy (contiguous storage, or each allocated chunk)."""
    found: list[tuple[int, int]] = []

    def visit(_name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset):
            found.extend(_dataset_extents(obj.id))
    f.visititems(visit)
    return found


def _dataset_extents(dsid: h5py.h5d.DatasetID) -> list[tuple[int, int]]:
    layout = dsid.get_create_plist().get_layout()
    if layout == h5py.h5d.CONTIGUOUS:
        offset = dsid.get_offset()
        return [] if offset is None else [(offset, offset + dsid.get_storage_size())]
    if layout == h5py.h5d.CHUNKED:
        chunks = [dsid.get_chunk_info(i) for i in range(dsid.get_num_chunks())]
        return [(c.byte_offset, c.byte_offset + c.size) for c in chunks
                if c.byte_offset is not None]
    return []  # compact data lives in the object header: metadata, scanned


def _gaps(extents: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    gaps, at = [], 0
    for start, end in sorted(extents):
        if start > at:
            gaps.append((at, min(start, size)))
        at = max(at, end)
    if at < size:
        gaps.append((at, size))
    return gaps


def _find(read_at: ReadAt, start: int, end: int) -> list[int]:
    hits, at = [], start
    while at < end:
        block = read_at(at, min(BLOCK, end - at) + len(SIGNATURE) - 1)
        if not block:
            break
        found = block.find(SIGNATURE)
        while found != -1 and at + found < end:
            hits.append(at + found)
            found = block.find(SIGNATURE, found + 1)
        at += BLOCK
    return hits


def _problem(read_at: ReadAt, at: int, file_size: int, length: str) -> str | None:
    """What would make the library loop in the collection at ``at``, decoding it as the
    library does: a header (signature, version, 3 reserved bytes, size) then objects (index,
    reference count, 4 reserved bytes, size, data padded to 8 bytes; index 0 is free space)."""
    width = struct.calcsize(length)
    header = read_at(at, 8 + width)
    if len(header) < 8 + width or header[4] != 1:
        return None  # not a collection, or one the library refuses with an error
    (size,) = struct.unpack_from(length, header, 8)
    end = at + size
    if size < 8 + width or end > file_size:
        return None  # the library fails to load it, with an error
    place = at + 8 + width
    while place < end:
        if place + 8 + width > end:
            return None  # the rest is free space
        entry = read_at(place, 8 + width)
        index, object_size = struct.unpack_from("<H", entry)[0], struct.unpack_from(length, entry, 8)[0]
        need = ((8 + width + ((object_size + 7) & ~7)) & MASK) if index else object_size
        if need == 0 or place + need > end:  # the library would stand still or run backwards
            return f"object {index} of size {object_size} at byte {place}"
        place += need
    return None
