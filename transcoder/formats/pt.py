"""PyTorch files, read and written without importing torch.

Reading handles ``torch.save`` zip archives (any suffix), the legacy pickle format
(``_use_new_zipfile_serialization=False``) and TorchScript archives. Pickles go through the
restricted unpickler in :mod:`.unpickler` (nothing from the file is imported or run); the
state dict is found by :mod:`.unwrap`; tensor data stays on disk until ``TensorRef.load()``,
which reads just that tensor's bytes and checks them against the storage size first.

Writing produces what ``torch.save(OrderedDict(...))`` produces: a zip archive (laid out by
:mod:`.torch_zip`) that ``torch.load(path, weights_only=True)`` accepts: laid out first, the
tensors' bytes then written at their offsets by :mod:`.rawfill`'s threads, which checksum the
pieces they write for the zip CRCs (:mod:`.crc`).
"""
from __future__ import annotations

import hashlib
import io
import os
import struct
import sys
import threading
import zipfile
import zlib
from functools import partial
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np

from ..checkpoint import DTYPES, LAYOUT_TORCH, Checkpoint, TensorRef
from ._io import ranged   # a remote archive's stub: storages fetched by range
from ..errors import FormatError, TranscoderError, UnsafeFileError, UnsupportedError, UsageError
from ._guard.brief import brief
from ._io.filemap import MAP_FROM_BYTES, map_range
from ._guard import limits, zipsafe
from . import shards
from ._io import filemap, rawfill, sigbus
from ._io.crc import PieceCrc
from .base import PICKLE, ZIP, Format, Head, ReadOptions
from ._torch.torch_pickle import (DTYPE_STORAGES, StateDictEntry, StorageRef, TensorDesc,
                                  UnsupportedTensor, dump_state_dict, is_tensor)
from ._torch.unpickler import unpickle
from ._torch.torch_zip import TorchZipWriter
from ._torch.unwrap import (StateDict, find_state_dict, parse_script_classes, script_state_dict,
                            strip_prefixes)

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
ARCHIVE_PREFIX = "archive"
CHUNK = 64 << 20          # bytes per read call when streaming
MAX_SMALL_RECORD = 64 << 20  # code files, byteorder ...: refuse bigger (zip bombs)

_ZIP_ERRORS = zipsafe.ZIP_ERRORS + (zlib.error, struct.error)
_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")


# ---------------------------------------------------------------------------------------------
# Where storages live
# ---------------------------------------------------------------------------------------------

def _read_at(fh: IO[bytes], lock: threading.Lock, offset: int, nbytes: int) -> np.ndarray:
    """Exactly ``nbytes`` from ``offset``; FormatError if the file ends first. The buffer is not
    zero-filled first (that alone cost 0.6-0.8 s per GiB). Large ranges are memory-mapped
    (read-only, see :mod:`.filemap`)."""
    mapped = map_range(fh.fileno(), offset, nbytes) if nbytes >= MAP_FROM_BYTES else None
    if mapped is not None:  # else a short file: the reads below say how short
        return mapped
    buf = np.empty(nbytes, np.uint8)
    view, done = memoryview(buf), 0
    with lock:
        fh.seek(offset)
        while done < nbytes:
            got = fh.readinto(view[done:done + CHUNK])
            if not got:
                raise FormatError(f"file ends {nbytes - done} bytes early (truncated?)")
            done += got
    return buf


class _ZipStorages:
    """Storage records ``<prefix>/data/<key>`` of a zip archive (of a remote one, when ``path``
    is its stub: local headers and storages fetched by range, :mod:`._io.ranged`)."""

    def __init__(self, path: Path, zf: zipfile.ZipFile, prefix: str) -> None:
        self._zf, self._prefix = zf, prefix
        self._remote = ranged.lookup(path)
        self._fh = open(path, "rb")
        self._size = self._fh.seek(0, io.SEEK_END)
        self._lock = threading.Lock()
        self._offsets: dict[str, int] = {}
        # Compressed records are decompressed from their start for each tensor in them: bound
        # the total, or tensors at rising offsets of one record would take quadratic time.
        self._inflate_left = limits.allowed(self._size, limits.FILE_FLOOR)

    def close(self) -> None:
        self._fh.close()
        self._zf.close()

    def _info(self, key: str) -> zipfile.ZipInfo:
        try:
            return self._zf.getinfo(f"{self._prefix}/data/{key}")
        except KeyError:
            raise FormatError(f"storage record data/{key} is missing from the archive") from None

    def size(self, key: str) -> int:
        return self._info(key).file_size

    def _data_offset(self, info: zipfile.ZipInfo) -> int:
        """Where a stored member's bytes start: after its local header (read, not trusted)."""
        if info.filename not in self._offsets:
            header = self._read_at(info.header_offset, _LOCAL_HEADER.size)
            fields = _LOCAL_HEADER.unpack(header)
            if fields[0] != 0x04034B50:
                raise FormatError(f"corrupt zip: bad local header for {info.filename}")
            start = info.header_offset + _LOCAL_HEADER.size + fields[9] + fields[10]
            if start + info.file_size > self._size:
                raise FormatError(f"{info.filename} runs past the end of the file (truncated?)")
            self._offsets[info.filename] = start
        return self._offsets[info.filename]

    def read(self, key: str, start: int, nbytes: int) -> bytearray:
        info = self._info(key)
        if info.flag_bits & 0x1:
            raise FormatError(f"storage record data/{key} is encrypted")
        if info.compress_type == zipfile.ZIP_STORED:
            return self._read_at(self._data_offset(info) + start, nbytes)
        if self._remote is not None:   # never: a remote zip with compressed storages is staged
            raise FormatError(f"storage record data/{key} is compressed in a remote archive")
        return self._read_compressed(info, start, nbytes)

    def _read_at(self, offset: int, nbytes: int) -> np.ndarray:
        if self._remote is not None:
            return self._remote.read(offset, nbytes)
        return _read_at(self._fh, self._lock, offset, nbytes)

    def _read_compressed(self, info: zipfile.ZipInfo, start: int, nbytes: int) -> bytearray:
        with self._lock:
            self._inflate_left -= start + nbytes
        if self._inflate_left < 0:
            raise UnsafeFileError(f"decompressing {info.filename} again and again for the tensors "
                                  f"in it exceeds {limits.RATIO} times the archive's size")
        with self._lock, self._zf.open(info) as member:
            while start > 0:
                skipped = len(member.read(min(start, CHUNK)))
                if not skipped:
                    break
                start -= skipped
            data = bytearray(member.read(nbytes))
        if len(data) != nbytes:
            raise FormatError(f"{info.filename} holds fewer bytes than declared")
        return data


class _LegacyStorages:
    """Raw storages after the pickles of a legacy (non-zip) file, found by their offsets."""

    def __init__(self, fh: IO[bytes], offsets: dict[str, tuple[int, int]]) -> None:
        self._fh, self._offsets = fh, offsets
        self._lock = threading.Lock()

    def close(self) -> None:
        self._fh.close()

    def size(self, key: str) -> int:
        if key not in self._offsets:
            raise FormatError(f"storage {key} is missing from the file")
        return self._offsets[key][1]

    def read(self, key: str, start: int, nbytes: int) -> bytearray:
        return _read_at(self._fh, self._lock, self._offsets[key][0] + start, nbytes)


# ---------------------------------------------------------------------------------------------
# Tensors
# ---------------------------------------------------------------------------------------------

def _span(desc: TensorDesc) -> tuple[int, int]:
    """(first byte within the storage's own bytes, bytes needed) for a strided tensor."""
    itemsize = DTYPES[desc.dtype].itemsize
    if 0 in desc.shape:
        return 0, 0
    last = sum((size - 1) * step for size, step in zip(desc.shape, desc.stride))
    return desc.offset * itemsize, (last + 1) * itemsize


def _check_fits(name: str, desc: TensorDesc, record_size: int) -> None:
    """FormatError unless the tensor lies inside both its declared storage and the stored bytes
    (checked before anything is allocated: a huge shape over a tiny record is a shape bomb)."""
    start, nbytes = _span(desc)
    storage = desc.storage
    if start + nbytes > storage.nbytes:
        raise FormatError(f"tensor {desc.dtype}{list(desc.shape)} at offset {desc.offset} needs "
                          f"{start + nbytes} bytes, its storage declares {storage.nbytes}",
                          tensor=name)
    if storage.byte_offset + start + nbytes > record_size:
        raise FormatError(f"storage data/{storage.key} holds {record_size} bytes, the tensor "
                          f"needs {storage.byte_offset + start + nbytes} (truncated file or "
                          f"shape bomb)", tensor=name)


def _byteswapped(flat: np.ndarray) -> np.ndarray:
    """Big-endian storage bytes to native order (complex numbers swap each half)."""
    dtype = flat.dtype
    width = dtype.itemsize // 2 if dtype.kind == "c" else dtype.itemsize
    if width == 1:
        return flat
    return flat.view(f"u{width}").byteswap().view(dtype)


def _load(storages: Any, desc: TensorDesc, swap: bool) -> np.ndarray:
    dtype = DTYPES[desc.dtype]
    if 0 in desc.shape:
        return np.zeros(desc.shape, dtype)
    start, nbytes = _span(desc)
    raw = storages.read(desc.storage.key, desc.storage.byte_offset + start, nbytes)
    flat = np.frombuffer(raw, dtype=dtype)
    if swap:
        flat = _byteswapped(flat)
    strides = tuple(step * dtype.itemsize for step in desc.stride)
    view = np.lib.stride_tricks.as_strided(flat, shape=desc.shape, strides=strides)
    return view if view.flags.c_contiguous and view.size == flat.size else view.copy()


def _tensor_ref(name: str, desc: Any, storages: Any, swap: bool) -> TensorRef:
    if isinstance(desc, UnsupportedTensor):
        raise UnsupportedError(desc.reason, tensor=name)
    if desc.dtype not in DTYPES:
        raise UnsupportedError(f"dtype {desc.dtype} is not supported", tensor=name)
    try:
        record_size = storages.size(desc.storage.key)
    except FormatError as exc:
        raise exc.with_context(tensor=name)
    _check_fits(name, desc, record_size)
    ref = TensorRef(name, desc.shape, desc.dtype, partial(_load_named, storages, desc, swap, name))
    # zero strides repeat stored values: that is decompression too (4 bytes as 4 GiB)
    limits.check_tensor(ref.nbytes, _span(desc)[1], "the tensor", tensor=name)
    return ref


def _load_named(storages: Any, desc: TensorDesc, swap: bool, name: str) -> np.ndarray:
    try:
        return _load(storages, desc, swap)
    except FormatError as exc:
        raise exc.with_context(tensor=name)
    except _ZIP_ERRORS as exc:
        raise FormatError(f"cannot read tensor data: {exc}", tensor=name) from None


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

def read(path: Path, options: ReadOptions) -> Checkpoint:
    """A torch-layout Checkpoint of the state dict in a PyTorch file (lazy tensors), or of
    the ``torch.save`` shards an index (``pytorch_model.bin.index.json``) names."""
    path = Path(path)
    if shards.is_index(path):
        return shards.read(path, options, read)
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise FormatError(f"cannot read: {exc.strerror or exc}", path=path) from None
    if not head:
        raise FormatError("file is empty", path=path)
    try:
        return _read_zip(path, options) if head == ZIP else _read_legacy(path, options)
    except TranscoderError as exc:
        raise exc.with_context(path=path)


def _checkpoint(path: Path, state: StateDict, storages: Any, swap: bool,
                meta: dict[str, Any]) -> Checkpoint:
    tensors, removed = strip_prefixes(state.tensors)
    refs = {name: _tensor_ref(name, desc, storages, swap) for name, desc in tensors.items()}
    # many tensors over one storage, or over compressed records, expand the file too
    limits.check_file(sum(ref.nbytes for ref in refs.values()), os.path.getsize(path))
    meta = dict(meta)
    if state.module_kinds:
        meta["module_kinds"] = _strip_kinds(state.module_kinds, removed)
    if removed:
        meta["stripped_prefixes"] = removed
    if state.skipped:
        meta["skipped"] = list(state.skipped)
    return Checkpoint(refs, LAYOUT_TORCH, source=str(path), format="pt", meta=meta)


def _strip_kinds(kinds: dict[str, str], removed: list[str]) -> dict[str, str]:
    """Module kinds under the stripped prefixes (the module the prefixes name is the root)."""
    prefix = "".join(removed)
    return {("" if path == prefix[:-1] else path[len(prefix):]): kind
            for path, kind in kinds.items() if path == prefix[:-1] or path.startswith(prefix)}


def _small_record(zf: zipfile.ZipFile, name: str) -> bytes:
    info = zf.getinfo(name)
    if info.file_size > MAX_SMALL_RECORD:
        raise FormatError(f"{name} is implausibly large ({info.file_size} bytes)")
    return zf.read(info)


def _archive_prefix(zf: zipfile.ZipFile) -> str:
    """The top folder holding ``data.pkl`` (torch names it after the file, or ``archive``)."""
    names = zf.namelist()
    first = names[0].split("/", 1)[0] if names else ""
    if f"{first}/data.pkl" in names:
        return first
    found = [n[:-len("/data.pkl")] for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(found) != 1:
        if any(n.endswith("model.json") for n in names):
            raise UnsupportedError("pre-1.4 TorchScript archives (model.json) are not supported")
        raise FormatError("zip archive has no data.pkl: not a file written by torch.save")
    return found[0]


def _byteorder_swap(zf: zipfile.ZipFile, prefix: str) -> bool:
    """Whether storages need swapping; archives without the record are little-endian."""
    name = f"{prefix}/byteorder"
    order = _small_record(zf, name) if name in zf.namelist() else b"little"
    if order not in (b"little", b"big"):
        raise FormatError(f"unknown byteorder record {order[:16]!r}")
    return order.decode() != sys.byteorder


def _code_members(zf: zipfile.ZipFile, prefix: str) -> list[str]:
    """The TorchScript source records (``<prefix>/code/__torch__/....py``), if any."""
    root = f"{prefix}/code/"
    return [n for n in zf.namelist() if n.startswith(root) and n.endswith(".py")]


def _script_code(zf: zipfile.ZipFile, prefix: str,
                 names: list[str]) -> Iterator[tuple[str, Iterator[str]]]:
    """(module name, its source lines) per record (``__torch__.torch.nn.modules.conv``), read
    line by line: a record of short lines would take tens of times its size as a list."""
    root = f"{prefix}/code/"
    for name in names:
        if zf.getinfo(name).file_size > MAX_SMALL_RECORD:
            raise FormatError(f"{name} is implausibly large ({zf.getinfo(name).file_size} bytes)")
        with zf.open(name) as raw:
            yield (name[len(root):-len(".py")].replace("/", "."),
                   io.TextIOWrapper(raw, encoding="utf-8", errors="replace"))


def _read_zip(path: Path, options: ReadOptions) -> Checkpoint:
    try:
        zf = zipsafe.open_zip(path)
    except _ZIP_ERRORS as exc:
        raise FormatError(f"corrupt or truncated zip archive ({exc})") from None
    try:
        return _read_zip_members(path, zf, options)
    except _ZIP_ERRORS as exc:
        zf.close()
        raise FormatError(f"corrupt zip archive ({type(exc).__name__}: {exc})") from None
    except BaseException:
        zf.close()
        raise


def _read_zip_members(path: Path, zf: zipfile.ZipFile, options: ReadOptions) -> Checkpoint:
    zipsafe.check_members(zf, path, os.path.getsize(path))
    prefix = _archive_prefix(zf)
    root, _ = unpickle(io.BytesIO(zf.read(f"{prefix}/data.pkl")))
    code = _code_members(zf, prefix)
    if code:
        if options.key:
            raise UsageError("--key does not apply to TorchScript archives (they hold one module)")
        classes = parse_script_classes(_script_code(zf, prefix, code))
        state = script_state_dict(root, classes, is_tensor)
        key, container = None, "torchscript"
    else:
        key, state = find_state_dict(root, options.key, is_tensor)
        container = "zip"
    swap = _byteorder_swap(zf, prefix)
    storages = _ZipStorages(path, zf, prefix)
    try:
        ckpt = _checkpoint(path, state, storages, swap,
                           {"state_dict_key": key, "container": container})
    except BaseException:
        storages.close()
        raise
    ckpt.on_close(storages.close)
    return ckpt


class _Bounded:
    """The read calls the pickle modules make, never asking for more than the file holds:
    they allocate whatever a length field in the pickle declares before reading it."""

    def __init__(self, fh: IO[bytes]) -> None:
        self._fh = fh
        self._size = os.fstat(fh.fileno()).st_size

    def read(self, size: int = -1) -> bytes:
        left = max(0, self._size - self._fh.tell())
        return self._fh.read(left if size is None or size < 0 else min(size, left))

    def readline(self, size: int = -1) -> bytes:
        return self._fh.readline(size)

    def tell(self) -> int:
        return self._fh.tell()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._fh.seek(offset, whence)


def _read_legacy(path: Path, options: ReadOptions) -> Checkpoint:
    fh = open(path, "rb")
    try:
        key, state, swap, offsets = _parse_legacy(_Bounded(fh), options)
        storages = _LegacyStorages(fh, offsets)
        ckpt = _checkpoint(path, state, storages, swap,
                           {"state_dict_key": key, "container": "legacy"})
    except BaseException:
        fh.close()
        raise
    ckpt.on_close(storages.close)
    return ckpt


def _parse_legacy(fh: _Bounded, options: ReadOptions) -> tuple:
    """Magic, protocol, sys info, main pickle, storage keys; then the storages' offsets."""
    try:
        magic, _ = unpickle(fh)
    except UnsafeFileError:
        raise
    except FormatError:
        magic = None
    if magic != LEGACY_MAGIC:
        raise FormatError("not a PyTorch file (neither a zip archive nor a legacy torch pickle)")
    protocol, _ = unpickle(fh)
    if protocol != LEGACY_PROTOCOL:
        raise UnsupportedError(f"legacy torch file protocol {brief(protocol)} is not supported")
    sys_info, _ = unpickle(fh)
    little = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else True
    root, storages = unpickle(fh)
    keys, _ = unpickle(fh)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise FormatError("legacy storage key list is corrupt")
    offsets = _legacy_offsets(fh, keys, storages, "little" if little else "big")
    key, state = find_state_dict(root, options.key, is_tensor)
    return key, state, (sys.byteorder == "little") != little, offsets


def _legacy_offsets(fh: _Bounded, keys: list[str], storages: dict[str, StorageRef],
                    order: str) -> dict[str, tuple[int, int]]:
    """Each storage is an 8-byte element count then the raw elements: skip through them."""
    position = fh.tell()
    end = fh.seek(0, io.SEEK_END)
    offsets: dict[str, tuple[int, int]] = {}
    for key in keys:
        if key not in storages:
            raise FormatError(f"legacy storage {key} is listed but never referenced")
        fh.seek(position)
        header = fh.read(8)
        if len(header) != 8:
            raise FormatError(f"file ends before storage {key} (truncated?)")
        nbytes = int.from_bytes(header, order) * storages[key].itemsize
        position += 8
        if position + nbytes > end:
            raise FormatError(f"storage {key} runs past the end of the file (truncated?)")
        offsets[key] = (position, nbytes)
        position += nbytes
    return offsets


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------

def _entries(ckpt: Checkpoint) -> list[StateDictEntry]:
    entries = []
    for index, (name, ref) in enumerate(ckpt.tensors.items()):
        if ref.dtype not in DTYPE_STORAGES:
            raise UnsupportedError(f"dtype {ref.dtype} cannot be written to a PyTorch file",
                                   tensor=name)
        entries.append(StateDictEntry(name, tuple(ref.shape), ref.dtype, str(index)))
    return entries


class _Crc(PieceCrc):
    """A record's CRC from the pieces rawfill writes; the pages of a piece that is a view of a
    source file's map are given back once checksummed (they were kept: 556 MiB peak RSS for a
    1.4 GB shard, 52 MiB with this)."""

    def __call__(self, offset: int, data: np.ndarray) -> None:
        super().__call__(offset, data)
        filemap.release(data)


def _serialization_id(digest: "hashlib._Hash") -> bytes:
    return str(int.from_bytes(digest.digest()[:16], "big")).zfill(40).encode()


def write(ckpt: Checkpoint, path: Path) -> None:
    """Write a torch-layout checkpoint as ``torch.save`` would write its state dict.

    The archive is laid out first (every record stored, so every tensor's data offset is known),
    then :mod:`.rawfill`'s threads write the tensors' bytes at their offsets, checksumming each
    piece as they go; the CRCs go into the records' descriptors and the central directory last.
    """
    path = Path(path)
    if ckpt.layout != LAYOUT_TORCH:
        raise UsageError(f"a PyTorch file needs a torch-layout checkpoint, got {ckpt.layout!r}",
                         path=path)
    entries = _entries(ckpt)
    try:
        with open(path, "wb") as fh:
            _write_archive(TorchZipWriter(fh, ARCHIVE_PREFIX), ckpt, entries, path)
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise sigbus.write_failure(exc, path) from None
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _write_archive(zw: TorchZipWriter, ckpt: Checkpoint, entries: list[StateDictEntry],
                   path: Path) -> None:
    """Records in torch.save's order: pickle, format info, byteorder, storages, version, id."""
    zw.write_record("data.pkl", dump_state_dict(entries))
    zw.write_record(".format_version", b"1")
    zw.write_record(".storage_alignment", b"64")
    zw.write_record("byteorder", sys.byteorder.encode())
    refs = [ckpt.tensors[entry.name] for entry in entries]
    records = [zw.reserve(f"data/{entry.key}", ref.nbytes) for entry, ref in zip(entries, refs)]
    crcs = [_Crc() for _ in refs]
    zw.flush()
    rawfill.fill(path, [rawfill.Region(record.data_offset, ref, digest=crc)
                        for record, ref, crc in zip(records, refs, crcs) if ref.nbytes])
    digest = hashlib.sha256()
    for entry, ref, record, crc in zip(entries, refs, records, crcs):
        value = crc.value(ref.nbytes)
        zw.settle(record, value)
        digest.update(f"{entry.name}\0{ref.nbytes}\0{value}\0".encode())
    zw.write_record("version", b"3\n")
    zw.write_record(".data/serialization_id", _serialization_id(digest))
    zw.close()


# ---------------------------------------------------------------------------------------------
# The format
# ---------------------------------------------------------------------------------------------

SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
PICKLE_PROTOCOLS = (b"\x02", b"\x03", b"\x04", b"\x05")


def sniff(head: Head, path: Path) -> bool:
    """A zip archive with a ``data.pkl`` member (``torch.save``, TorchScript), or a pickle's
    PROTO opcode, protocol 2-5 (a legacy ``torch.save``)."""
    if head.zip_names is not None:
        return any(n == "data.pkl" or n.endswith("/data.pkl") for n in head.zip_names)
    return head.data[:1] == PICKLE and head.data[1:2] in PICKLE_PROTOCOLS


FORMAT = Format("pt", SUFFIXES + tuple(s + shards.INDEX for s in SUFFIXES), LAYOUT_TORCH,
                magics=(ZIP, PICKLE),
                description="PyTorch checkpoint (torch.save zip, legacy pickle, TorchScript)",
                sniff=sniff, reader=read, writer=write)
