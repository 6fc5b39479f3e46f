"""safetensors: read lazily (single files and sharded indexes), tensor by tensor; write streaming.

The writer streams tensor by tensor (block by block where the data is permuted) because
``safetensors.numpy.save_file`` needs every tensor in memory at once; the file it writes
follows the published format (8-byte header length, JSON header, raw little-endian data) and
is read back by the library in the tests.
"""
from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open

from ..checkpoint import DTYPES, LAYOUT_TORCH, Checkpoint, TensorRef
from ..errors import FormatError, UnsupportedError, one_line
from . import filemeta
from ._guard import jsonsafe
from ._io import ranged, rawfill, sigbus
from .base import Format, Head, ReadOptions
from .shards import INDEX
from .shards import existing_shard, weight_map
from ._guard.brief import brief
from ._io.filemap import MAP_FROM_BYTES, map_range

#: safetensors dtype codes <-> our canonical dtype names.
CODES: dict[str, str] = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
    "C64": "complex64",
}
NAMES: dict[str, str] = {v: k for k, v in CODES.items()}
MAX_HEADER = 100 * 1024 * 1024  # the library's own limit
METADATA_KEY = "__metadata__"
CHUNK = 64 << 20                 # bytes per read call


def read(path: Path, options: ReadOptions) -> Checkpoint:
    """A safetensors file, or a ``*.safetensors.index.json`` naming shards beside it."""
    ckpt = Checkpoint({}, LAYOUT_TORCH, source=str(path), format="safetensors")
    try:
        if path.name.endswith(".index.json"):
            _add_shards(ckpt, path)
        else:
            _add_file(ckpt, path)
    except BaseException:
        ckpt.close()
        raise
    return ckpt


def _add_shards(ckpt: Checkpoint, path: Path) -> None:
    shards = weight_map(path)
    for shard in dict.fromkeys(shards.values()):  # shard order of first appearance
        _add_file(ckpt, existing_shard(path, shard))
    missing = sorted(set(shards) - set(ckpt.tensors))
    if missing:
        raise FormatError("index lists tensors its shards do not hold: "
                          f"{', '.join(brief(m, 60) for m in missing[:5])}", path=path)


def _header(path: Path) -> tuple[dict, int]:
    """The JSON header (for file order and metadata) and where the data starts; FormatError if it
    is not one."""
    try:
        with open(path, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            if size > MAX_HEADER:
                raise FormatError("header length is implausible; not a safetensors file", path=path)
            text = fh.read(size)
    except (OSError, struct.error, ValueError) as exc:
        raise FormatError(f"not a safetensors file ({type(exc).__name__})", path=path) from None
    # _validate ran first: the library nests at most 128 levels (a 200,000-tensor header's
    # walk cost 1.4 s)
    header = jsonsafe.loads(text, "the safetensors header", path, walk=False)
    if not isinstance(header, dict):
        raise FormatError("not a safetensors file (header is not a JSON object)", path=path)
    return header, 8 + size


def _validate(path: Path) -> None:
    """The library checks the layout (types, offsets, sizes, file length, nesting, Unicode)
    when it opens a file: before our own parse relies on any of it."""
    try:
        with safe_open(str(path), framework="numpy"):
            pass
    except (SafetensorError, OSError, ValueError) as exc:
        raise FormatError(f"corrupt safetensors file ({one_line(exc)})", path=path) from None


def _add_file(ckpt: Checkpoint, path: Path) -> None:
    _validate(path)
    header, data_start = _header(path)
    try:
        fh = open(path, "rb")
    except OSError as exc:  # e.g. too many open files: an index naming 100,000 shards
        raise FormatError(f"cannot open: {exc.strerror or exc}", path=path) from None
    ckpt.on_close(fh.close)
    remote = ranged.lookup(path)   # a stub: the tensors' bytes are fetched from the object
    meta = header.pop(METADATA_KEY, None) or {}
    if "transcoder" in meta:
        stored = jsonsafe.loads(meta["transcoder"], "the transcoder metadata", path)
        ckpt.meta.setdefault("transcoder", jsonsafe.check_stored_meta(stored, path))
    own = filemeta.checked({k: v for k, v in meta.items() if k != "transcoder"}, path)
    if own:   # shards: the first shard's value of a key wins
        ckpt.meta[filemeta.KEY] = {**own, **filemeta.of(ckpt.meta)}
    ordered = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
    for name, info in ordered:
        if info["dtype"] not in CODES:
            raise FormatError(f"unsupported dtype {info['dtype']}", path=path, tensor=name)
        if name in ckpt.tensors:
            raise FormatError("tensor appears in two shards", path=path, tensor=name)
        shape, dtype = tuple(info["shape"]), CODES[info["dtype"]]
        offset = data_start + info["data_offsets"][0]
        ckpt.tensors[name] = TensorRef(name, shape, dtype, _loader(fh, offset, shape, dtype, name, path)
                                       if remote is None else
                                       _ranged_loader(remote, offset, shape, dtype, name))


def _ranged_loader(source: ranged.RangedSource, offset: int, shape: tuple, dtype: str,
                   name: str):
    """Load one tensor of a remote file: its bytes fetched by range (:mod:`._io.ranged`)."""
    def load() -> np.ndarray:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(DTYPES[dtype]).itemsize
        array = source.read(offset, nbytes, name).view(DTYPES[dtype]).reshape(shape)
        return array.byteswap() if sys.byteorder == "big" else array
    return load


def _loader(fh, offset: int, shape: tuple, dtype: str, name: str, path: Path):
    """Load one tensor: a map of just its bytes if large (:mod:`.filemap`), else positioned reads
    into a fresh array.

    Not through the library's memory map: every page of a mapped file that is touched stays in
    the process's resident set until the file is closed, so converting a 1 GiB file that way
    peaks at 1.1 GiB RSS (measured); per tensor, the peak is about the largest tensor or two.
    """
    def load() -> np.ndarray:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(DTYPES[dtype]).itemsize
        mapped = _mapped(fh, offset, nbytes, shape, dtype) if nbytes >= MAP_FROM_BYTES else None
        if mapped is not None:  # else a short file: the reads below report it
            return mapped
        array = np.empty(shape, DTYPES[dtype])
        view = memoryview(array.reshape(-1).view(np.uint8))
        done = 0
        try:
            while done < len(view):
                got = os.preadv(fh.fileno(), [view[done:done + CHUNK]], offset + done)
                if not got:
                    raise FormatError("file ends early (truncated?)", path=path, tensor=name)
                done += got
        except OSError as exc:
            raise FormatError(f"cannot read tensor ({exc})", path=path, tensor=name) from None
        if sys.byteorder == "big":
            array = array.byteswap()
        return array
    return load


def _mapped(fh, offset: int, nbytes: int, shape: tuple, dtype: str) -> np.ndarray | None:
    """A large tensor as a read-only memory map of its bytes (see :mod:`.filemap`); None if
    the file is too short."""
    raw = map_range(fh.fileno(), offset, nbytes)
    if raw is None:
        return None
    array = raw.view(DTYPES[dtype]).reshape(shape)
    return array.byteswap() if sys.byteorder == "big" else array


def write(ckpt: Checkpoint, path: Path) -> None:
    """Stream every tensor (in checkpoint order) into one safetensors file: the header first,
    then the data through :func:`rawfill.fill`, two tensors at a time."""
    header, offset = {}, 0
    for ref in ckpt:
        if ref.dtype not in NAMES:
            raise FormatError(f"safetensors cannot hold dtype {ref.dtype}", tensor=ref.name)
        if ref.name == METADATA_KEY:
            raise UnsupportedError(f"safetensors reserves the name {METADATA_KEY}", tensor=ref.name)
        header[ref.name] = {"dtype": NAMES[ref.dtype], "shape": list(ref.shape),
                            "data_offsets": [offset, offset + ref.nbytes]}
        offset += ref.nbytes
    header[METADATA_KEY] = _metadata(ckpt)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    start = 8 + len(blob)
    try:
        with open(path, "wb") as fh:
            fh.write(struct.pack("<Q", len(blob)) + blob)
            fh.truncate(start + offset)
        # native byte order: little-endian on every supported CPU
        rawfill.fill(path, [rawfill.Region(start + header[ref.name]["data_offsets"][0], ref)
                            for ref in ckpt if ref.nbytes])
    except OSError as exc:
        raise sigbus.write_failure(exc, path) from None


def _metadata(ckpt: Checkpoint) -> dict[str, str]:
    """The source's own metadata (:mod:`.filemeta`; ``"format": "pt"`` unless it says
    otherwise), and ours."""
    meta = {"format": "pt", **filemeta.of(ckpt.meta)}
    if ckpt.meta.get("transcoder"):
        meta["transcoder"] = json.dumps(ckpt.meta["transcoder"], separators=(",", ":"))
    return meta


def sniff(head: Head, path: Path) -> bool:
    """An 8-byte little-endian header length, then ``{``, the length within the file. Asked
    before the pickle's sniff: a length such as 0x380 starts like a PROTO opcode, and a
    pickle's first 8 bytes never make a length that fits in its file with ``{`` right after."""
    data = head.data
    length = int.from_bytes(data[:8], "little") if len(data) >= 9 else 0
    return 2 <= length <= head.size - 8 and data[8:9] == b"{"


def _write(ckpt: Checkpoint, path: Path) -> None:
    write(ckpt, path)   # looked up when called: a test replaces ``write`` to fail mid-way


FORMAT = Format("safetensors", (".safetensors", ".safetensors" + INDEX), LAYOUT_TORCH,
                description="safetensors (single file or sharded index)",
                sniff=sniff, reader=read, writer=_write)
