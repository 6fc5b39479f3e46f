"""The manifest: one JSON line per conversion attempt, in ``DST_DIR/transcode-manifest.jsonl``.

Each line records ``source`` (relative to SRC_DIR), its ``size``, ``mtime_ns`` and ``sha256``;
the ``output`` (relative to DST_DIR) with ``output_size``, ``output_mtime_ns`` and
``output_sha256`` (both hashes only with ``--checksums``, else null); ``status`` (``done``,
``failed`` or ``skipped``), ``error``, ``seconds``, and ``options`` (what else decides the
output: ``--to``, ``--key``, the ``--rules`` file's hash); and ``schema``, the version of
this layout (:data:`transcoder.printing.SCHEMA`).

Lines are appended and flushed to disk one by one, so a run killed at any moment leaves at
worst a truncated last line, which is ignored; for a source, the last line wins. A run
rewrites the file compactly (one line per source, atomically) when it starts and when it
ends. One run at a time: the destination folder is locked while a run uses it.
"""
from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Iterable

from ..errors import UsageError
from ..printing import with_schema
from .task import DONE, Fingerprint, sha256_files, stat_files

NAME = "transcode-manifest.jsonl"
FIELDS = ("source", "size", "mtime_ns", "sha256", "output", "output_size", "output_mtime_ns",
          "output_sha256", "status", "error", "seconds", "options", "etag", "output_etag")


class Manifest:
    """The manifest of one destination folder, locked for the lifetime of the object."""

    def __init__(self, dst_root: Path) -> None:
        self.root = Path(dst_root)
        self.path = self.root / NAME
        self.entries: dict[tuple[str, str], dict] = {}
        self.unreadable_lines = 0
        self._lock = _lock_folder(self.root)
        try:
            self._load()
            self._fh = None
            self.compact()
        except BaseException:
            os.close(self._lock)
            raise

    def _load(self) -> None:
        try:
            if not stat.S_ISREG(os.lstat(self.path).st_mode):
                raise UsageError("the manifest is not a regular file (a link, FIFO or folder)",
                                 path=self.path, hint="remove it")
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return
        for line in lines:
            entry = _entry(line)
            if entry is None:
                self.unreadable_lines += 1  # e.g. the last line of a run that was killed
            else:
                self.entries[(entry["source"], entry["output"])] = entry

    @property
    def where(self) -> Path | str:
        """Where the manifest is, as the run reports it."""
        return self.path

    def get(self, source: str, output: str) -> dict | None:
        return self.entries.get((source, output))

    def append(self, record: dict) -> dict:
        """Record one attempt; on disk (flushed and fsynced) when this returns."""
        entry = {k: record.get(k) for k in FIELDS}
        self.entries[(entry["source"], entry["output"])] = entry
        self._fh.write(_line(entry))
        self._fh.flush()
        os.fsync(self._fh.fileno())
        return entry

    def compact(self) -> None:
        """Rewrite the file with the last entry per source, sorted (atomically: temp + rename)."""
        if self._fh is not None:
            self._fh.close()
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{NAME}.", suffix=".tmp", dir=self.root)
        except OSError as exc:
            raise UsageError(f"cannot write the manifest: {exc.strerror or exc}",
                             path=self.root) from None
        try:
            with os.fdopen(fd, "w") as fh:
                for key in sorted(self.entries):
                    fh.write(_line(self.entries[key]))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        os.fsync(self._lock)  # the folder entry of the renamed file
        self._fh = open(self.path, "a")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._lock is not None:
            os.close(self._lock)  # releases the lock
            self._lock = None

    def __enter__(self) -> "Manifest":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _line(entry: dict) -> str:
    return json.dumps(with_schema(entry), separators=(",", ":")) + "\n"


#: What each field of a line may hold (anything else makes the line unreadable, and ignored).
_TEXT = (str,)
_NUMBER = (int, float, type(None))
_FIELD_TYPES = {"source": _TEXT, "output": _TEXT, "status": _TEXT, "size": _NUMBER,
                "mtime_ns": _NUMBER, "sha256": (str, type(None)), "output_size": _NUMBER,
                "output_mtime_ns": _NUMBER, "output_sha256": (str, type(None)),
                "error": (str, type(None)), "seconds": _NUMBER, "options": (list, type(None)),
                "etag": (str, type(None)), "output_etag": (str, type(None))}


def _entry(line: bytes) -> dict | None:
    """A manifest line as a dict of FIELDS with the right types, or None (a line cut by a
    killed run, or edited by hand into something else: it must not stop every later run)."""
    try:
        entry = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(entry, dict):
        return None
    entry = {k: entry.get(k) for k in FIELDS}
    if not all(isinstance(entry[k], types) for k, types in _FIELD_TYPES.items()):
        return None
    options = entry["options"] or []
    if not all(isinstance(o, (str, int, float, bool, type(None))) for o in options):
        return None
    return entry


def _lock_folder(folder: Path) -> int:
    """An exclusive lock on the folder itself; released when the process ends, even by kill -9."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, one run at a time is then up to the user
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UsageError("another `transcode bulk` is writing to this folder", path=folder,
                         hint="wait for it to finish") from None
    return fd


def trusted(entry: dict | None, src_root: Path, files: Iterable[str], dst_root: Path,
            options: list) -> bool:
    """True if ``entry`` says done and both its source and its output are still what it recorded.

    Size and mtime are compared; when only the mtime differs (a copy, a touch) and the entry
    holds a SHA-256 (``--checksums``), the hash decides, so such a file is not redone for its
    date alone; without one it is redone. Only regular files are ever hashed: an output that
    is a link, or a source or output that is a FIFO or a device (``/dev/zero``) is redone,
    never read.
    """
    return done_with(entry, options) and source_unchanged(entry, src_root, files) and \
        output_unchanged(entry, dst_root)


def done_with(entry: dict | None, options: list) -> bool:
    """The entry says done, with these options."""
    return bool(entry) and entry.get("status") == DONE and entry.get("options") == options


def source_unchanged(entry: dict, src_root: Path, files: Iterable[str]) -> bool:
    """The source's files in a local SRC_DIR are still what ``entry`` recorded."""
    try:
        src = [src_root / f for f in files]
        return _same(stat_files(src), src, entry["size"], entry["mtime_ns"], entry["sha256"])
    except (OSError, KeyError):
        return False


def output_unchanged(entry: dict, dst_root: Path) -> bool:
    """The output in a local DST_DIR is still what ``entry`` recorded (and not a link)."""
    try:
        out = [dst_root / entry["output"]]
        if stat.S_ISLNK(os.lstat(out[0]).st_mode):
            return False   # outputs are never links; redone (the write replaces the link)
        return _same(stat_files(out), out, entry["output_size"], entry["output_mtime_ns"],
                     entry["output_sha256"])
    except (OSError, KeyError):
        return False


def _same(now: Fingerprint, paths: list[Path], size: int, mtime_ns: int, sha256: str | None
          ) -> bool:
    if now.size != size:
        return False
    return now.mtime_ns == mtime_ns or (sha256 is not None and sha256_files(paths) == sha256)
