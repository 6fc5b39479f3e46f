"""A remote SRC given to the readers: read by byte range where its format allows, else staged.

:func:`stand_in` turns an fsspec URL into a local path for the readers. A ``.safetensors``
object (alone, in a folder, or named by a ``*.index.json``) and a ``torch.save`` zip archive
(TorchScript too) become *stubs* (:mod:`._io.ranged`): sparse local files of the object's size
holding only what describes it, fetched by range (the safetensors header; the zip's central
directory and its records other than ``<archive>/data/*`` storages), so the readers apply
every bound they apply to local files; each tensor's bytes are fetched by range when it is
loaded. Everything else is copied whole first (:func:`transcoder.remote.staged_source`):
HDF5 and ``.keras`` files (their libraries want a seekable local file), a legacy (non-zip)
torch pickle (its storages follow the pickle: nothing says where before it is unpickled), a
zip whose storages are compressed, and any object whose store answers a ranged read with
more than the range (it has no ranged reads).
``--verbose`` says which of the two ran and, afterwards, how many bytes were fetched.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import zipfile
from contextlib import ExitStack, contextmanager
from pathlib import Path, PurePosixPath
from typing import Iterator

from .. import remote
from ..errors import FormatError, TranscoderError
from . import hf_folder, shards
from ._guard import zipsafe
from ._io import ranged
from .base import ZIP
from .safetensors_format import MAX_HEADER

log = logging.getLogger("transcoder")

#: The first look at an object: one request holds a typical safetensors header too.
HEAD = 64 << 10
#: zipfile's reads of a torch zip's directory and small records fetch at least this much.
READAHEAD = 32 << 10
#: A zip whose directory and small records (data.pkl, code) take more than this is staged.
MAX_ZIP_METADATA = 256 << 20


@contextmanager
def stand_in(url: str, keep: bool = False) -> Iterator[Path]:
    """A local path standing in for the remote file or folder at ``url``: stubs read by range
    where possible, the rest copied down; removed afterwards. ``keep``: what is fetched by
    range is kept in the stubs and read from there a second time (a check follows)."""
    fs, path = remote.filesystem(url)
    workdir = Path(tempfile.mkdtemp(prefix="transcoder-src-"))
    name = PurePosixPath(path.rstrip("/")).name or "source"
    with ExitStack() as stubs:
        try:
            try:
                local = _mirror(fs, path, url, workdir / name, stubs)
            except TranscoderError as exc:   # an index refused: named by its URL
                exc.message = exc.message.replace(str(workdir / name), url.rstrip("/"))
                if exc.path is not None and str(exc.path).startswith(str(workdir / name)):
                    exc.path = url.rstrip("/") + str(exc.path)[len(str(workdir / name)):]
                raise
            if keep:
                ranged.keep_under(workdir)
            yield local
        finally:
            stubs.close()
            shutil.rmtree(workdir, ignore_errors=True)


def _mirror(fs, path: str, url: str, local: Path, stubs: ExitStack) -> Path:
    """``local`` made to stand for the object or folder at ``path``."""
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise FormatError("no such file", path=url) from None
    except OSError as exc:
        raise remote._refused(exc, url, "reading") from None
    if info.get("type") == "directory":
        _folder(fs, path, url, local, stubs)
    elif shards.is_index(path):
        _index(fs, path, url, local, stubs)
    else:
        _file(fs, path, url, local, int(info["size"]), stubs)
    return local


def _folder(fs, path: str, url: str, local: Path, stubs: ExitStack) -> None:
    """A Hugging Face model folder: its config and the weights transformers would load (not
    the other frameworks' weights beside them); any other folder: every file under it. Weights
    as stubs where they can be, the rest copied."""
    root = path.rstrip("/")
    try:
        found = fs.find(root, detail=True)
    except OSError as exc:
        raise remote._refused(exc, url, "reading") from None
    local.mkdir(parents=True, exist_ok=True)
    names = {PurePosixPath(key).name: key for key in found if PurePosixPath(key).parent ==
             PurePosixPath(root)}
    weights = next((n for n in hf_folder.WEIGHT_FILES if n in names), None)
    if hf_folder.CONFIG in names and weights is not None:
        _copy_head(fs, names[hf_folder.CONFIG], f"{url.rstrip('/')}/{hf_folder.CONFIG}",
                   local / hf_folder.CONFIG, hf_folder.MAX_CONFIG_BYTES)
        _mirror(fs, names[weights], f"{url.rstrip('/')}/{weights}", local / weights, stubs)
        return
    for key, info in sorted(found.items()):
        relative = PurePosixPath(key).relative_to(PurePosixPath(root))
        if ".." in relative.parts:
            continue
        target = local.joinpath(*relative.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        _file(fs, key, f"{url.rstrip('/')}/{relative.as_posix()}", target,
              int(info.get("size") or 0), stubs)


def _index(fs, path: str, url: str, local: Path, stubs: ExitStack) -> None:
    """A ``*.index.json``: copied (as much as the reader reads of it), then each shard it
    names, from beside it."""
    local.parent.mkdir(parents=True, exist_ok=True)
    _copy_head(fs, path, url, local, shards.MAX_INDEX)
    parent, base = path.rsplit("/", 1)[0], url.rsplit("/", 1)[0]
    for shard in dict.fromkeys(shards.weight_map(local).values()):   # names checked there
        try:
            size = int(fs.info(f"{parent}/{shard}")["size"])
        except FileNotFoundError:
            continue    # the reader says which shard is missing
        except OSError as exc:
            raise remote._refused(exc, f"{base}/{shard}", "reading") from None
        _file(fs, f"{parent}/{shard}", f"{base}/{shard}", local.parent / shard, size, stubs)


def _file(fs, path: str, url: str, local: Path, size: int, stubs: ExitStack) -> None:
    """A stub for a safetensors file or torch zip; a copy of anything else."""
    source = ranged.RangedSource(fs, path, size, url)
    try:
        head = source.fetch(0, HEAD) if size else b""
    except NotImplementedError:
        head = None
    if head is None or len(head) > min(HEAD, size):
        log.info("staged %s: copied whole (the store has no ranged reads)", url)
        _copy(fs, path, url, local)
        return
    if len(head) == size:   # the whole object in one request
        local.write_bytes(head)
        log.info("fetched %s whole (%d bytes, one request)", url, size)
        return
    kind = _stub(source, head, local)
    if kind is None:
        log.info("staged %s: copied whole (%s)", url, _what(head))
        _copy(fs, path, url, local)
        return
    ranged.register(local, source)
    stubs.callback(_done, local)
    log.info("ranged reads from %s (%d bytes; its %s fetched: %d bytes)", url, size, kind,
             source.fetched)


def _copy_head(fs, path: str, url: str, local: Path, limit: int) -> None:
    """The first ``limit + 1`` bytes of a small file the reader bounds to ``limit`` (a longer
    one is refused there, as a local one is): a JSON config or index."""
    try:
        size = int(fs.info(path)["size"])
    except FileNotFoundError:
        raise FormatError("no such file", path=url) from None
    except OSError as exc:
        raise remote._refused(exc, url, "reading") from None
    local.write_bytes(ranged.RangedSource(fs, path, size, url).fetch(0, limit + 1)[:limit + 1])


def _done(local: Path) -> None:
    source = ranged.unregister(local)
    if source is not None:
        log.info("read %s", source.describe())


def _copy(fs, path: str, url: str, local: Path) -> None:
    try:
        fs.get_file(path, str(local))
    except OSError as exc:
        raise remote._refused(exc, url, "reading") from None


def _what(head: bytes) -> str:
    """Why a file is copied whole."""
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file: h5py reads a local file"
    if head.startswith(ZIP):
        return "a zip archive other than torch.save's, or with compressed storages"
    if head.startswith(b"\x80"):
        return "a legacy torch pickle: its storages are found by unpickling it"
    return "not a safetensors file or torch.save archive"


def _stub(source: ranged.RangedSource, head: bytes, local: Path) -> str | None:
    """Write the stub for ``source`` at ``local``; what it is, or None (not done: copy it)."""
    fd = os.open(local, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, source.size)
        os.pwrite(fd, head, 0)
        kind = _safetensors(source, head, fd) if _is_safetensors(head, source.size) else \
            _torch_zip(source, head, fd) if head.startswith(ZIP) else None
    finally:
        os.close(fd)
    if kind is None:
        local.unlink()
    return kind


def _is_safetensors(head: bytes, size: int) -> bool:
    """What the safetensors sniff takes (a length within the object, then ``{``), the length
    within the reader's own limit: the stub is then read as safetensors and nothing else (the
    reader checks the rest; anything else is copied and refused as a local file is)."""
    length = int.from_bytes(head[:8], "little") if len(head) >= 9 else 0
    return 2 <= length <= min(size - 8, MAX_HEADER) and head[8:9] == b"{"


def _safetensors(source: ranged.RangedSource, head: bytes, fd: int) -> str:
    """The header: 8 + its length bytes."""
    end = 8 + int.from_bytes(head[:8], "little")
    if end > len(head):
        os.pwrite(fd, source.fetch(len(head), end), len(head))
    return "safetensors header"


def _torch_zip(source: ranged.RangedSource, head: bytes, fd: int) -> str | None:
    """The zip's end records, central directory and every record but the storages, read
    through :mod:`zipfile` (bounded by :mod:`._guard.zipsafe`) and written into the stub
    as they are fetched. None for a zip that is not a ``torch.save`` archive, one whose
    storages are compressed, or one whose metadata exceeds :data:`MAX_ZIP_METADATA`; a zip
    that cannot be parsed keeps its stub: the reader says why, as for a local file."""
    raw = ranged.RangedFile(source, fd, MAX_ZIP_METADATA, READAHEAD)
    raw.have(0, len(head))
    try:
        raw.fetch(max(len(head), source.size - HEAD), source.size)   # end records, directory
        with zipsafe.open_zip(raw) as zf:
            names = zf.namelist()
            if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
                return None
            storages = [i for i in zf.infolist() if _is_storage(i.filename)]
            if any(i.compress_type != zipfile.ZIP_STORED for i in storages):
                return None
            zipsafe.check_members(zf, source.url, source.size)
            for info in zf.infolist():
                if not _is_storage(info.filename) and info.file_size:
                    zf.read(info)
    except ranged.TooLarge:
        return None
    except (FormatError, *zipsafe.ZIP_ERRORS) as exc:
        if isinstance(exc, OSError) and not isinstance(exc, zipfile.BadZipFile):
            raise ranged.refused(exc, source.url) from None
        log.info("%s: not a readable zip archive; the reader says why", source.url)
    return "torch zip directory"


def _is_storage(name: str) -> bool:
    """``<archive>/data/<key>``: a tensor storage, read by range when a tensor needs it."""
    parts = name.split("/")
    return len(parts) == 3 and parts[1] == "data"
