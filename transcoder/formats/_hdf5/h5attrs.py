"""Variable-length attributes checked before the HDF5 library decodes them.

A variable-length string attribute (our ``transcoder`` metadata and carried names, Keras 3's
variable names) stores, for each element, a 4-byte length and a reference into a global heap.
The HDF5 library in h5py's wheels (1.14.6) allocates and zeroes a buffer of the declared
length before it looks at the heap: 16 bytes declaring 4 GiB took 4.2 GB of memory and 6 s
before the read failed (found by the fuzz campaign). So before such an attribute is read, its
message is found in the object's header, read here as the file's bytes, and every declared
length is checked against the file's size (a heap object cannot be larger than the file).

The header is walked as the HDF5 format specification lays it out: version 1 (a 16-byte
prefix, messages of 8-byte header) or version 2 (``OHDR``, messages of 4 or 6-byte header,
continuation blocks ``OCHK``), following continuation messages. An attribute that is not in
the header (dense attribute storage, shared attribute messages) cannot be checked and is
refused, as is a header that does not parse.
"""
from __future__ import annotations

import math
import struct
import weakref
from typing import Callable, Iterator

import h5py

from ...errors import FormatError, UnsafeFileError

ReadAt = Callable[[int, int], bytes]

ATTRIBUTE = 0x000C
CONTINUATION = 0x0010
#: No real header chunk comes near this (a message holds at most 64 KiB).
MAX_CHUNK = 16 << 20
#: Chunks of one header at most, followed and pending (real headers have a handful).
MAX_CHUNKS = 4096
UINT = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}
#: Attribute types read at all: fixed-size numbers and strings (of fixed or variable length).
PLAIN_CLASSES = frozenset({h5py.h5t.INTEGER, h5py.h5t.FLOAT, h5py.h5t.STRING,
                           h5py.h5t.BITFIELD, h5py.h5t.OPAQUE, h5py.h5t.ENUM})

#: open file -> (its bytes, its size, size of offsets, size of lengths)
_FILES: "weakref.WeakKeyDictionary[h5py.h5f.FileID, tuple]" = weakref.WeakKeyDictionary()


def register(f: h5py.File, read_at: ReadAt, file_size: int) -> None:
    """Remember how to read ``f``'s bytes, for :func:`check`."""
    offsets, lengths = f.id.get_create_plist().get_sizes()
    _FILES[f.id] = (read_at, file_size, offsets, lengths)


def check(obj: h5py.HLObject, name: str, path: object = None) -> None:
    """FormatError unless attribute ``name`` of ``obj`` is text or numbers (an empty
    ``weight_names`` is an empty float array); UnsafeFileError unless it is of fixed size or
    every length it declares fits in the file. (A variable-length sequence of numbers, which
    no Keras file has, made h5py 3.14 crash with SIGSEGV in the fuzz campaign: sequences,
    compounds, arrays and references are refused before reading.) Files not opened through
    :func:`register` are not walked."""
    attr = obj.attrs.get_id(name)
    tid = attr.get_type()
    if tid.get_class() not in PLAIN_CLASSES:
        raise FormatError(f"attribute {name!r} of {obj.name} is neither text nor numbers (HDF5 "
                          f"type class {tid.get_class()}); refusing it", path=path)
    known = _FILES.get(obj.file.id)
    if not (isinstance(tid, h5py.h5t.TypeStringID) and tid.is_variable_str()) or known is None:
        return
    read_at, file_size, offsets, lengths = known
    addr = h5py.h5o.get_info(obj.id).addr
    found = _attribute_data(read_at, addr, name.encode("utf8"), (file_size, offsets, lengths),
                            path)
    if not found:
        raise UnsafeFileError(f"variable-length attribute {name!r} of {obj.name} is stored "
                              "where it cannot be checked before reading; refusing it",
                              path=path)
    count = 1 if attr.shape == () else (0 if attr.shape is None else math.prod(attr.shape))
    step = 4 + offsets + 4
    for data in found:   # every message of that name: the library reads one of them
        if len(data) < count * step:
            raise _malformed(path, addr)
        declared = sum(struct.unpack_from("<I", data, k * step)[0] for k in range(count))
        if declared > file_size:   # the values together, as some may name one heap object
            raise UnsafeFileError(f"attribute {name!r} of {obj.name} declares {declared} bytes "
                                  f"of values in a file of {file_size}; refusing it", path=path)


def _attribute_data(read_at: ReadAt, addr: int, name: bytes, sizes: tuple[int, int, int],
                    path: object) -> list[bytes]:
    """The raw data of every attribute message named ``name`` in the header at ``addr``."""
    found = []
    for kind, body in _messages(read_at, addr, sizes, path):
        data = _attribute(body, name) if kind == ATTRIBUTE else None
        if data is not None:
            found.append(data)
    return found


#: attribute message version -> where its name starts, and what its fields are padded to
_ATTRIBUTE_LAYOUT = {1: (8, 8), 2: (8, 1), 3: (9, 1)}


def _attribute(body: bytes, name: bytes) -> bytes | None:
    """The data of an attribute message if it is the one named ``name``."""
    if len(body) < 8 or body[0] not in _ATTRIBUTE_LAYOUT:
        return None
    at, align = _ATTRIBUTE_LAYOUT[body[0]]
    sizes = struct.unpack_from("<HHH", body, 2)   # name, datatype, dataspace
    if body[at:at + sizes[0]].rstrip(b"\0") != name:
        return None
    return body[at + sum(-(-n // align) * align for n in sizes):]


def _messages(read_at: ReadAt, addr: int, sizes: tuple[int, int, int],
              path: object) -> Iterator[tuple[int, bytes]]:
    """(type, body) of every message in the header at ``addr``, continuations followed."""
    file_size, offsets, lengths = sizes
    first = _read(read_at, addr, min(16, file_size - addr), file_size, path)
    if first[:4] == b"OHDR":
        start, size, flags = _v2_first_chunk(read_at, addr, file_size, path)
        chunks, split = [(start, size)], (lambda block: _v2_messages(block, flags))
    elif first[:1] == b"\x01" and len(first) == 16:
        chunks, split = [(addr + 16, struct.unpack_from("<I", first, 8)[0])], _v1_messages
    else:
        raise _malformed(path, addr)
    visited: set[int] = set()
    total = 0   # the chunks of one header never overlap: together, at most the file
    while chunks:
        start, size = chunks.pop()
        total += max(size, 0)
        if start in visited or size > MAX_CHUNK or total > file_size:
            raise _malformed(path, start)
        visited.add(start)
        for kind, body in split(_read(read_at, start, size, file_size, path)):
            if kind == CONTINUATION and len(body) >= offsets + lengths:
                at = struct.unpack_from(UINT[offsets], body)[0]
                length = struct.unpack_from(UINT[lengths], body, offsets)[0]
                chunks.append((at + 4, length - 8) if split is not _v1_messages else (at, length))
                if len(visited) + len(chunks) > MAX_CHUNKS:
                    raise _malformed(path, start)
            yield kind, body


def _v2_first_chunk(read_at: ReadAt, addr: int, file_size: int,
                    path: object) -> tuple[int, int, int]:
    """(start, size) of chunk 0 of a version 2 header, and the header's flags."""
    head = _read(read_at, addr, min(6 + 16 + 4 + 8, file_size - addr), file_size, path)
    flags = head[5] if len(head) > 5 else 0
    at = 6 + (16 if flags & 0x20 else 0) + (4 if flags & 0x10 else 0)
    width = 1 << (flags & 0x03)
    if len(head) < at + width:
        raise _malformed(path, addr)
    return addr + at + width, struct.unpack_from(UINT[width], head, at)[0], flags


def _v1_messages(block: bytes) -> Iterator[tuple[int, bytes]]:
    at = 0
    while at + 8 <= len(block):
        kind, size = struct.unpack_from("<HH", block, at)
        yield kind, block[at + 8:at + 8 + size]
        at += 8 + size


def _v2_messages(block: bytes, flags: int) -> Iterator[tuple[int, bytes]]:
    """Messages of 4-byte header, 6 where the header tracks attribute creation order."""
    head = 6 if flags & 0x04 else 4
    at = 0
    while at + head <= len(block):
        kind, size = struct.unpack_from("<BH", block, at)
        yield kind, block[at + head:at + head + size]
        at += head + size


def _read(read_at: ReadAt, at: int, size: int, file_size: int, path: object) -> bytes:
    if at < 0 or size < 0 or at + size > file_size:
        raise _malformed(path, at)
    return read_at(at, size)


def _malformed(path: object, at: int) -> UnsafeFileError:
    return UnsafeFileError(f"HDF5 object header at byte {at} is malformed; refusing the file",
                           path=path)
