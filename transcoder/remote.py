"""fsspec URLs as SRC and DST: ``s3://bucket/m.pt``, ``gs://...``, ``hf://...``, ``memory://...``.

Any protocol whose fsspec implementation is installed works (``s3://`` with s3fs:
``pip install 'transcoder[s3]'``). Credentials and endpoints come from where the protocol's own
clients read them (for S3: ``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL_S3``, ``~/.aws/config``
...); nothing here reads or prints them.

:func:`staged_source` copies a remote SRC to a private local folder before it is read (a model
folder with everything in it); a conversion reads by byte range instead where the format
allows (:mod:`transcoder.formats.remote_source`, a layer up, falls back to this). DST is
written locally, then uploaded to a temporary key beside DST and moved into place, so no
reader ever sees a partial object under DST's name (an object store's copy is atomic per
object; the shards of a sharded output are moved before their index). The readers then apply every bound they apply to local files. ``file://`` URLs are
plain local paths.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import FormatError, MissingDependencyError, OutputExistsError, UsageError

URL = re.compile(r"^(?P<protocol>[a-zA-Z][a-zA-Z0-9+.\-]*)://")
#: protocols whose implementation lives in a package of its own: the extra to install
PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs",
            "abfs": "adlfs", "hf": "huggingface_hub"}


def is_url(text: object) -> bool:
    """A URL with a protocol other than ``file``."""
    found = URL.match(str(text)) if isinstance(text, str) else None
    return bool(found) and found["protocol"].lower() != "file"


def local(text: str | os.PathLike) -> str | os.PathLike:
    """``file:///x/y`` -> ``/x/y``; anything else as it is."""
    if isinstance(text, str) and text.lower().startswith("file://"):
        return text[len("file://"):]
    return text


def filesystem(url: str):
    """``(fs, path)`` for a URL; MissingDependencyError naming the package to install."""
    try:
        import fsspec
    except ImportError:
        raise MissingDependencyError("URLs need fsspec", hint="pip install fsspec") from None
    protocol = URL.match(url)["protocol"].lower()
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        package = PACKAGES.get(protocol)
        raise MissingDependencyError(
            f"no installed filesystem for {protocol}:// ({exc})" if package is None else
            f"{protocol}:// needs {package}", hint=f"pip install {package}" if package else None
        ) from None


def _refused(exc: OSError, url: str, doing: str) -> Exception:
    """One line for what the store said: missing, denied, or another OS-level error."""
    if isinstance(exc, FileNotFoundError):
        return FormatError("no such file", path=url)
    if isinstance(exc, PermissionError):
        return UsageError(f"permission denied {doing}", path=url)
    return UsageError(f"{doing} failed: {exc.strerror or exc}", path=url)


@contextmanager
def staged_source(url: str) -> Iterator[Path]:
    """A local copy of the remote file or folder at ``url``, removed afterwards."""
    fs, path = filesystem(url)
    workdir = Path(tempfile.mkdtemp(prefix="transcoder-src-"))
    name = Path(path.rstrip("/")).name or "source"
    try:
        try:
            is_dir = fs.isdir(path)
            if not is_dir and not fs.isfile(path):
                raise FormatError("no such file", path=url)
            if is_dir:
                fs.get(path.rstrip("/") + "/", str(workdir / name), recursive=True)
            else:
                fs.get_file(path, str(workdir / name))
        except OSError as exc:
            raise _refused(exc, url, "reading") from None
        yield workdir / name
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def staged_target(url: str, *, force: bool = False) -> Iterator[Path]:
    """A local path to write DST to; on success its files are published under ``url``.
    OutputExistsError before anything is written when DST exists and ``force`` is not given."""
    fs, path = filesystem(url)
    try:
        if fs.exists(path) and not force:
            raise OutputExistsError("already exists", path=url, hint="pass --force to overwrite")
    except OSError as exc:
        raise _refused(exc, url, "looking up") from None
    workdir = Path(tempfile.mkdtemp(prefix="transcoder-dst-"))
    target = workdir / Path(path).name
    try:
        yield target
        publish(fs, workdir, path, url)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def publish(fs, workdir: Path, path: str, url: str) -> None:
    """Upload every file written in ``workdir`` to temporary keys beside ``path``, then move
    them into place; an index (``*.index.json``) last, and ``path`` itself last of all."""
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    files = sorted((p for p in workdir.rglob("*") if p.is_file()),
                   key=lambda p: (p.name == Path(path).name, p.name.endswith(".index.json")))
    staged = []
    try:
        for local_file in files:
            key = f"{parent}/{local_file.relative_to(workdir).as_posix()}" if parent else \
                local_file.relative_to(workdir).as_posix()
            tmp = f"{key}.{secrets.token_hex(4)}.tmp"
            fs.put_file(str(local_file), tmp)
            staged.append((tmp, key))
        for tmp, key in staged:
            fs.mv(tmp, key)
    except OSError as exc:
        for tmp, _ in staged:
            try:
                fs.rm(tmp)
            except OSError:
                pass
        raise _refused(exc, url, "writing") from None


@contextmanager
def local_paths(src: str | os.PathLike, dst: str | os.PathLike | None, *, force: bool = False
                ) -> Iterator[tuple[Path, Path | None]]:
    """Local stand-ins for SRC and DST, URLs staged (:func:`staged_source`,
    :func:`staged_target`), local paths and ``file://`` URLs as they are."""
    from contextlib import ExitStack

    with ExitStack() as stack:
        source = stack.enter_context(staged_source(src)) if is_url(src) else Path(local(src))
        target = None if dst is None else (
            stack.enter_context(staged_target(dst, force=force)) if is_url(dst)
            else Path(local(dst)))
        yield source, target


# ------------------------------------------------------------------ for `transcode bulk`

def join(url: str, rel: str) -> str:
    """``s3://b/prefix`` + ``a/m.pt`` -> ``s3://b/prefix/a/m.pt``."""
    return f"{url.rstrip('/')}/{rel}" if rel else url.rstrip("/")


def listing(url: str, *, missing_ok: bool = False) -> dict[str, dict]:
    """Every object under the folder (prefix) ``url``: relative POSIX name -> the store's info
    (size, modification time, ETag). A prefix with nothing under it is refused ("no such
    folder") unless ``missing_ok``."""
    fs, root = filesystem(url)
    root = root.rstrip("/")
    try:
        found = fs.find(root, detail=True, withdirs=False)
        if not found and not missing_ok and not fs.isdir(root):
            raise UsageError("no such folder (nothing under this prefix)", path=url)
    except OSError as exc:
        raise _refused(exc, url, "listing") from None
    cut = len(root) + 1
    return {name[cut:]: info for name, info in found.items()
            if name.startswith(root + "/") and not name.endswith("/")
            and info.get("type", "file") == "file"}


def object_fingerprint(info: dict) -> tuple[int, int | None, str | None]:
    """``(size, mtime_ns, etag)`` of an object as its store lists it; an ETag changes with the
    bytes (S3: the MD5 of a single-part upload), the time with every write."""
    when = next((info[k] for k in ("LastModified", "mtime", "last_modified", "created")
                 if info.get(k) is not None), None)
    if hasattr(when, "timestamp"):
        when = when.timestamp()
    # whole seconds: S3 lists times in milliseconds but HEAD gives them in seconds
    mtime_ns = None if when is None else int(float(when)) * 10**9
    etag = info.get("ETag") or info.get("etag")
    return int(info.get("size") or 0), mtime_ns, (str(etag).strip('"') if etag else None)


def info(url: str) -> dict:
    """The store's info for one object, fresh (no listing cache)."""
    fs, path = filesystem(url)
    try:
        fs.invalidate_cache(path)
        return fs.info(path)
    except OSError as exc:
        raise _refused(exc, url, "looking up") from None


def fetch(url: str, into: Path) -> dict:
    """Download the object ``url`` to the local file ``into``; its info, taken before and
    checked after the download (an object replaced meanwhile is refused: run again)."""
    fs, path = filesystem(url)
    before = info(url)
    try:
        fs.get_file(path, str(into))
    except OSError as exc:
        raise _refused(exc, url, "reading") from None
    if object_fingerprint(info(url)) != object_fingerprint(before):
        raise UsageError("changed while it was being read; run again", path=url)
    return before


def sha256_object(url: str) -> str:
    """SHA-256 of an object's bytes, streamed from the store (never stored locally)."""
    import hashlib

    fs, path = filesystem(url)
    try:
        with fs.open(path, "rb", block_size=8 << 20) as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError as exc:
        raise _refused(exc, url, "reading") from None


def publish_file(local_file: Path, url: str) -> None:
    """Upload one local file to a temporary key beside ``url``, then move it to ``url``
    (:func:`publish`): a reader sees the old object or the new one, never part of one."""
    fs, path = filesystem(url)
    workdir = Path(tempfile.mkdtemp(prefix="transcoder-pub-"))
    try:
        shutil.copyfile(local_file, workdir / Path(path).name)
        publish(fs, workdir, path, url)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


TEMP_KEY = re.compile(r"\.[0-9a-f]{8}\.tmp$")


def remove_temps(url: str, names: set[str], found: dict[str, dict]) -> int:
    """Delete the temporary keys (``<name>.<8 hex>.tmp``, what :func:`publish` writes before
    its move) that a killed run left under ``url`` for the relative ``names``; ``found`` is the
    folder's :func:`listing`."""
    fs, root = filesystem(url)
    stale = [rel for rel in found if TEMP_KEY.search(rel) and TEMP_KEY.sub("", rel) in names]
    for rel in stale:
        try:
            fs.rm(f"{root.rstrip('/')}/{rel}")
        except OSError as exc:
            raise _refused(exc, join(url, rel), "removing a temporary key") from None
    return len(stale)
