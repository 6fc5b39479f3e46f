"""Keras 3 ``.keras`` archives (a zip of ``config.json``, ``metadata.json``, ``model.weights.h5``).

Read with zipfile + h5py only: ``config.json`` is parsed as JSON (never deserialized through
Keras) to give layers their real names and class names; the weights are read lazily from
``model.weights.h5``. A stored (uncompressed) member is opened in place through a window on
the archive after one streaming CRC pass, so nothing is extracted; a compressed one (Keras
writes them stored, but a re-zipped archive may deflate them) is streamed to an anonymous
temporary file (unlinked from the start, gone on close or exit), at most :mod:`.limits`' ratio
times its compressed size. Members with path traversal, compression methods other than
deflate, or sizes beyond that ratio are refused (:mod:`.zipsafe`).
"""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import struct
import tempfile
import weakref
import zipfile
import zlib
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Iterator

from ..checkpoint import LAYOUT_KERAS, Checkpoint
from ..errors import FormatError, UnsafeFileError, UsageError
from ._guard import jsonsafe, zipsafe
from ._io.window import Window
from .base import ZIP, Format, Head, LazyModule, ReadOptions

if TYPE_CHECKING:
    import h5py

    from ._hdf5 import h5safety as h5s
    from ._hdf5 import keras_v3
else:   # loaded when a file is read, not when the registry reads FORMAT
    h5s = LazyModule("transcoder.formats._hdf5.h5safety")
    keras_v3 = LazyModule("transcoder.formats._hdf5.keras_v3")
from ._guard.brief import brief

WEIGHTS = "model.weights.h5"
CONFIG = "config.json"
METADATA = "metadata.json"
#: JSON members larger than this are not a model config (parsed, JSON takes ~10 times its size).
MAX_JSON_BYTES = 16 << 20
CHUNK = 1 << 20
LOCAL_HEADER = struct.Struct("<4s5H3L2H")
LOCAL_MAGIC = ZIP
ZIP_ERRORS = zipsafe.ZIP_ERRORS + (zlib.error,)


class MemberWindow(Window):
    """A read-only, seekable view of bytes ``[start, start + size)`` of a file (a stored member);
    a seek before its start lands at 0."""

    CLAMP = True

    def __init__(self, path: Path, start: int, size: int) -> None:
        super().__init__(size)
        self._fh = open(path, "rb")
        self._start = start

    def readinto(self, buffer: Any) -> int:
        count = max(0, min(len(buffer), self._size - self._pos))
        self._fh.seek(self._start + self._pos)
        data = self._fh.read(count)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        self._fh.close()
        super().close()


def read(path: Path, options: ReadOptions) -> Checkpoint:
    """Read a ``.keras`` archive lazily; layer names and classes come from ``config.json``."""
    with _zip_errors(path):
        with zipsafe.open_zip(path) as zf:
            check_members(zf, path)
            config = _read_json(zf, CONFIG, path, required=True)
            source, size = _open_weights(zf, path)
    f = _open_h5(source, path)
    try:
        layers, tensors = keras_v3.read_tree(f, path, size, config)
    except BaseException:
        _close_both(f, source)
        raise
    ckpt = Checkpoint(tensors, LAYOUT_KERAS, str(path), "keras_zip",
                      {"keras_layers": layers, "keras_config": config})
    # HDF5 must close before the file object it reads through, also if the checkpoint is
    # never closed (at interpreter exit the other order crashes h5py).
    ckpt.on_close(weakref.finalize(ckpt, _close_both, f, source))
    return ckpt


def write(ckpt: Checkpoint, path: Path) -> None:
    """Refused for now: a ``.keras`` file holds the model architecture, which a checkpoint lacks."""
    raise UsageError("writing a .keras archive needs the model architecture: pass --keras-model "
                     "or --model (or write a legacy .h5)", path=path)


@contextlib.contextmanager
def _zip_errors(path: Path) -> Iterator[None]:
    """zipfile/OS errors -> one-line FormatError naming the archive."""
    try:
        yield
    except ZIP_ERRORS as exc:
        raise FormatError(f"corrupt or unreadable .keras archive ({exc})", path=path) from None


def check_members(zf: zipfile.ZipFile, path: Path) -> None:
    """Refuse path traversal, encryption, other compression methods and expansion beyond the
    limits (:func:`.zipsafe.check_members`)."""
    for info in zf.infolist():
        name = info.filename
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":"):
            raise UnsafeFileError(f"refusing archive member with an unsafe path {brief(name)}",
                                  path=path)
    zipsafe.check_members(zf, path, os.path.getsize(path))


def _read_json(zf: zipfile.ZipFile, member: str, path: Path, required: bool) -> Any:
    if member not in zf.namelist():
        if required:
            raise FormatError(f"not a Keras archive: no {member}", path=path)
        return None
    if zf.getinfo(member).file_size > MAX_JSON_BYTES:
        raise UnsafeFileError(f"{member} is larger than {MAX_JSON_BYTES} bytes", path=path)
    return jsonsafe.loads(zf.read(member), member, path)


def _open_weights(zf: zipfile.ZipFile, path: Path) -> tuple[IO[bytes], int]:
    """A seekable file object over ``model.weights.h5`` and its size."""
    if WEIGHTS not in zf.namelist():
        raise FormatError(f"no {WEIGHTS} in the archive (members: {', '.join(zf.namelist())})",
                          path=path)
    info = zf.getinfo(WEIGHTS)
    if info.compress_type == zipfile.ZIP_STORED:
        start = _data_offset(path, info)
        _check_crc(path, start, info)
        return MemberWindow(path, start, info.file_size), info.file_size
    return _extract(zf, info), info.file_size


def _check_crc(path: Path, start: int, info: zipfile.ZipInfo) -> None:
    """One streaming pass: the window bypasses zipfile, which would check the CRC on read."""
    crc = 0
    with open(path, "rb") as fh:
        fh.seek(start)
        left = info.file_size
        while left:
            chunk = fh.read(min(left, CHUNK))
            if not chunk:
                break
            crc = zlib.crc32(chunk, crc)
            left -= len(chunk)
    if left or crc != info.CRC:
        raise FormatError(f"{info.filename} fails its CRC check: the archive is corrupt", path=path)


def _data_offset(path: Path, info: zipfile.ZipInfo) -> int:
    """Where a member's bytes start: after its local header (whose lengths can differ)."""
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        header = fh.read(LOCAL_HEADER.size)
        end = fh.seek(0, io.SEEK_END)
    if len(header) != LOCAL_HEADER.size or header[:4] != LOCAL_MAGIC:
        raise FormatError(f"bad local header for {info.filename}", path=path)
    fields = LOCAL_HEADER.unpack(header)
    start = info.header_offset + LOCAL_HEADER.size + fields[9] + fields[10]
    if start + info.file_size > end:
        raise FormatError(f"{info.filename} runs past the end of the archive (truncated?)", path=path)
    return start


def _extract(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> IO[bytes]:
    """Stream a compressed member to an anonymous temporary file (gone when closed)."""
    tmp = tempfile.TemporaryFile(prefix="transcoder-", suffix=".h5")
    try:
        with zf.open(info) as member:
            shutil.copyfileobj(member, tmp, CHUNK)
    except BaseException:
        tmp.close()
        raise
    tmp.seek(0)
    return tmp


def _open_h5(source: IO[bytes], path: Path) -> h5py.File:
    try:
        return h5s.open_file(source, path)
    except BaseException:
        source.close()
        raise


def _close_both(f: h5py.File, source: IO[bytes]) -> None:
    f.close()
    source.close()


def sniff(head: Head, path: Path) -> bool:
    """A zip archive holding ``config.json`` and ``model.weights.h5``."""
    return head.zip_names is not None and CONFIG in head.zip_names and WEIGHTS in head.zip_names


FORMAT = Format("keras_zip", (".keras",), LAYOUT_KERAS, magics=(ZIP,),
                description="Keras 3 model archive (.keras)", needs_model=True,
                stores_classes=True, sniff=sniff, reader=read, writer=write)
