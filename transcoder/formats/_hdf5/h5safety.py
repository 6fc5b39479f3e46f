"""Safe, lazy HDF5 access shared by the Keras readers and writer (h5py only, no Keras).

Like Keras' own ``saving_lib``, a reader refuses soft links, external links, external
storage, virtual datasets and "shape bombs" (a dataset declaring far more bytes than the
file can hold). Every h5py/OS error is turned into a one-line :class:`FormatError` that
names the file and, where known, the tensor.

bfloat16: h5py has no native bfloat16. Keras 3 stores it as an untagged 2-byte opaque
type (``|V2``), with a ``dtype="bfloat16"`` attribute in ``.weights.h5`` and without one in
legacy ``.h5``. Our writer stores it as exact float32 data with the attribute
``transcoder_dtype="bfloat16"`` so Keras loads the right values.
"""
from __future__ import annotations

import contextlib
import io
import math
import os
from functools import partial
from typing import Any, Callable, Iterator

import h5py
import numpy as np

from ...checkpoint import DTYPES, TensorRef, dtype_name, is_bfloat16
from ...errors import FormatError, TranscoderError, UnsafeFileError, UnsupportedError
from . import h5attrs, h5heap
from .._guard import jsonsafe, limits

#: An HDF5 object header holds at most 64 KiB; Keras splits longer attributes (same limit).
ATTR_LIMIT_BYTES = 64512
#: No single tensor is larger than this, whatever the file says.
MAX_DATASET_BYTES = 1 << 40
#: Nesting deeper than this is not a Keras file.
MAX_DEPTH = 32

BF16_ATTRS = ("dtype", "transcoder_dtype")
ERRORS = (OSError, KeyError, ValueError, RuntimeError, TypeError, AttributeError)


@contextlib.contextmanager
def h5_errors(path: object, tensor: str | None = None) -> Iterator[None]:
    """Turn h5py/OS errors into a one-line FormatError naming the file (and tensor)."""
    try:
        yield
    except TranscoderError as err:
        raise err.with_context(path=path, tensor=tensor)
    except ERRORS as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FormatError(f"corrupt or unreadable HDF5 data ({reason})", path=path,
                          tensor=tensor) from None


def open_file(source: Any, path: object) -> h5py.File:
    """Open an HDF5 file (a path or a seekable binary file object) read-only, once its global
    heaps are known not to hang the library (:mod:`.h5heap`)."""
    with h5_errors(path):
        f = h5py.File(source, "r")
    try:
        with h5_errors(path):
            if isinstance(source, (str, os.PathLike)):
                read_at, size = _reader(f, source), os.path.getsize(source)
            else:
                read_at, size = partial(_read_at, source), source.seek(0, io.SEEK_END)
            h5heap.check(f, read_at, size, path)
            h5attrs.register(f, read_at, size)
    except BaseException:
        f.close()
        raise
    return f


def _reader(f: h5py.File, source: str | os.PathLike) -> Callable[[int, int], bytes]:
    """Reads of the open file's bytes: on the library's own descriptor where its driver has
    one (pread leaves its offset be), else on the path, opened for each read."""
    try:
        fd = f.id.get_vfd_handle()
    except ERRORS:
        return lambda at, n: _read_path(source, at, n)
    return lambda at, n: os.pread(fd, n, at)


def _read_path(source: str | os.PathLike, offset: int, size: int) -> bytes:
    with open(source, "rb") as fh:
        return os.pread(fh.fileno(), size, offset)


def _read_at(fh: Any, offset: int, size: int) -> bytes:
    fh.seek(offset)
    return fh.read(size)


# -- attributes ------------------------------------------------------------------------------

def text(value: Any) -> str:
    """An attribute value (bytes, numpy bytes or str) as str."""
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf8")
    return str(value)


def attr_text(obj: h5py.HLObject, name: str) -> str | None:
    """A scalar string attribute, or None if absent."""
    if name not in obj.attrs:
        return None
    return text(_attr(obj, name))


def attr_strings(obj: h5py.HLObject, name: str) -> list[str] | None:
    """A string-list attribute, joined from ``name0``, ``name1``... if Keras split it; None if absent."""
    if name in obj.attrs:
        return [text(v) for v in np.atleast_1d(_attr(obj, name))]
    parts: list[str] = []
    chunk = 0
    while f"{name}{chunk}" in obj.attrs:
        parts.extend(text(v) for v in np.atleast_1d(_attr(obj, f"{name}{chunk}")))
        chunk += 1
    return parts if chunk else None


def _attr(obj: h5py.HLObject, name: str) -> Any:
    """An attribute's value, once what it declares is known to fit (:mod:`.h5attrs`)."""
    h5attrs.check(obj, name)
    return obj.attrs[name]


def attr_json(obj: h5py.HLObject, name: str, path: object) -> Any:
    """A JSON string attribute parsed, or None if absent; FormatError if it is not JSON."""
    raw = attr_text(obj, name)
    if raw is None:
        return None
    return jsonsafe.loads(raw, f"attribute {name!r}", path)


def write_strings_attr(obj: h5py.HLObject, name: str, values: list[str]) -> None:
    """Store a list of strings as Keras does: fixed-length bytes, split over 64 KiB."""
    data = np.array([v.encode("utf8") for v in values], dtype=bytes) if values else np.zeros(0, "S1")
    if data.itemsize > ATTR_LIMIT_BYTES:
        raise UnsupportedError(f"a name in {name!r} is longer than {ATTR_LIMIT_BYTES} bytes, "
                               "more than an HDF5 attribute holds")
    if data.nbytes <= ATTR_LIMIT_BYTES:
        obj.attrs[name] = data
        return
    chunks = 2
    while any(c.nbytes > ATTR_LIMIT_BYTES for c in np.array_split(data, chunks)):
        chunks += 1
    for i, chunk in enumerate(np.array_split(data, chunks)):
        obj.attrs[f"{name}{i}"] = chunk


# -- safe navigation ---------------------------------------------------------------------------

def _link_kind(parent: h5py.Group, name: str) -> type | None:
    """The link class (HardLink, SoftLink, ExternalLink) without following the link."""
    link = parent.get(name, getlink=True)
    return None if link is None else type(link)


def has(parent: h5py.Group, name: str) -> bool:
    """Whether ``parent`` has a link ``name`` (``name in group`` would follow the link)."""
    return parent.get(name, getlink=True) is not None


def child(parent: h5py.Group, name: str, path: object) -> h5py.HLObject:
    """A direct child reached through a hard link; UnsafeFileError for soft/external links."""
    kind = _link_kind(parent, name)
    if kind is None:
        raise FormatError(f"missing HDF5 object {parent.name.rstrip('/')}/{name}", path=path)
    if kind is not h5py.HardLink:
        raise UnsafeFileError(f"refusing HDF5 {kind.__name__} at {parent.name.rstrip('/')}/{name}",
                              path=path)
    return parent[name]


def resolve(root: h5py.Group, rel: str, path: object) -> h5py.HLObject:
    """Walk ``rel`` ("a/b/c") from ``root`` one hard link at a time (never following links)."""
    node: h5py.HLObject = root
    for part in rel.split("/"):
        if part in ("", ".", ".."):
            raise FormatError(f"invalid HDF5 path {rel!r}", path=path)
        if not isinstance(node, h5py.Group):
            raise FormatError(f"{node.name} is not a group (path {rel!r})", path=path)
        node = child(node, part, path)
    return node


def group(root: h5py.Group, rel: str, path: object) -> h5py.Group:
    node = resolve(root, rel, path)
    if not isinstance(node, h5py.Group):
        raise FormatError(f"{node.name} is not an HDF5 group", path=path)
    return node


def object_key(obj: h5py.HLObject) -> tuple[int, int]:
    """Identity of an HDF5 object, the same whichever hard link reached it."""
    info = h5py.h5o.get_info(obj.id)
    return (info.fileno, info.addr)


def children(grp: h5py.Group, path: object) -> Iterator[tuple[str, h5py.HLObject]]:
    """The direct children of a group, each checked by :func:`child`."""
    for name in grp.keys():
        yield name, child(grp, name, path)


# -- datasets ------------------------------------------------------------------------------------

def _is_bfloat16(ds: h5py.Dataset) -> bool:
    if any(attr_text(ds, a) == "bfloat16" for a in BF16_ATTRS):
        return True
    tid = ds.id.get_type()
    return tid.get_class() == h5py.h5t.OPAQUE and tid.get_size() == 2 and not tid.get_tag()


def _dtype_of(ds: h5py.Dataset) -> str:
    if _is_bfloat16(ds):
        if ds.dtype.itemsize not in (2, 4):
            raise FormatError(f"bfloat16 dataset stored as {ds.dtype}")
        return "bfloat16"
    if ds.dtype.kind not in "fiucb":
        raise FormatError(f"unsupported HDF5 datatype {ds.dtype}")
    return dtype_name(ds.dtype.newbyteorder("="))


def check_dataset(ds: h5py.Dataset, file_size: int, path: object) -> None:
    """Refuse external/virtual storage and datasets declaring more bytes than can be stored:
    beyond the file's size, or (compressed chunks, chunks never written and read as the fill
    value) beyond :mod:`.limits`' ratio to what the file stores for them."""
    if ds.shape is None:
        raise FormatError(f"dataset {ds.name} has no data space", path=path)
    if ds.external:
        raise UnsafeFileError(f"refusing HDF5 dataset {ds.name} with external storage", path=path)
    if ds.is_virtual:
        raise UnsafeFileError(f"refusing HDF5 virtual dataset {ds.name}", path=path)
    declared = math.prod(ds.shape) * ds.dtype.itemsize
    compressed = ds.id.get_create_plist().get_nfilters() > 0
    stored = ds.id.get_storage_size()
    if declared > MAX_DATASET_BYTES or (not compressed and declared > file_size):
        raise UnsafeFileError(f"dataset {ds.name} declares {declared} bytes but the file holds "
                              f"{file_size}: refusing a possible shape bomb", path=path)
    limits.check_tensor(declared, stored, f"dataset {ds.name}", path=path)


def _bf16_from_float32(array: np.ndarray) -> np.ndarray:
    bits = np.asarray(array, np.float32).view(np.uint32)
    if np.any(bits & 0xFFFF):
        raise FormatError("float32 data marked bfloat16 is not exactly representable in bfloat16")
    return (bits >> 16).astype(np.uint16).view(DTYPES["bfloat16"])


def bf16_to_float32(array: np.ndarray) -> np.ndarray:
    """bfloat16 -> float32 by bit shift: exact for every value, NaN payloads included."""
    bits = np.asarray(array).view(np.uint16).astype(np.uint32) << 16
    return bits.view(np.float32)


def _loader(ds: h5py.Dataset, dtype: str, name: str, path: object) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        with h5_errors(path, name):
            if not ds.id.valid:
                raise FormatError("file already closed")
            array = np.asarray(ds[()])
        if dtype != "bfloat16":
            return array.astype(array.dtype.newbyteorder("="), copy=False)
        if array.dtype.itemsize == 4:
            with h5_errors(path, name):
                return _bf16_from_float32(array)
        return np.ascontiguousarray(array).view(np.uint16).view(DTYPES["bfloat16"])
    return load


def tensor_ref(name: str, ds: Any, file_size: int, path: object) -> TensorRef:
    """A lazy TensorRef for a checked dataset: shape/dtype from the header, data on ``load()``."""
    with h5_errors(path, name):
        if not isinstance(ds, h5py.Dataset):
            raise FormatError(f"{ds.name} is not a dataset")
        check_dataset(ds, file_size, path)
        dtype = _dtype_of(ds)
        return TensorRef(name, tuple(int(d) for d in ds.shape), dtype, _loader(ds, dtype, name, path))


def write_array(grp: h5py.Group, rel: str, array: np.ndarray) -> h5py.Dataset:
    """Write one array (contiguous, uncompressed); bfloat16 goes as exact float32 + attribute.
    No modification times (``track_times=False``): one input, the same bytes, every run."""
    if is_bfloat16(array.dtype):
        ds = grp.create_dataset(rel, data=bf16_to_float32(array), track_times=False)
        ds.attrs["transcoder_dtype"] = "bfloat16"
        return ds
    return grp.create_dataset(rel, data=array, track_times=False)
