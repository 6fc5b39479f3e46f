"""The per-file task: convert one source, then fingerprint what was read and what was written.

A fingerprint is a file's size and mtime; with ``checksums`` also its SHA-256, which costs
0.65 s of CPU per GiB here (hashlib with the SHA extensions, 1.58 GiB/s): more than
converting the bytes, so it is asked for, not paid by default (docs/bulk.md).
The output is made durable (fsync) before its manifest line is written: by the run itself
(:func:`make_durable`, while the worker converts its next file) or, for engines whose workers
write on other machines (``sync``), by the task.

``run_task`` runs in a worker (a local process or a Ray worker), so it takes and returns only
plain picklable data, and never raises for a bad file: a :class:`TranscoderError` becomes
``status: "failed"`` with its one-line message, and so does an unexpected exception (as an
internal error), so one bad file never stops the others.
"""
from __future__ import annotations

import hashlib
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

from ..errors import INTERNAL_ERROR_EXIT, TranscoderError
from ..formats._guard.regular import NotRegularError, open_regular
from ..options import CheckRequest
from ..pipeline import conversion
from .beneath import pinned
from .tree import output_folder, unreadable

DONE, FAILED, SKIPPED = "done", "failed", "skipped"


@dataclass(frozen=True)
class Task:
    src_root: str
    dst_root: str
    source: str                    # relative to src_root: the file (model folder) transcode() reads
    output: str                    # relative to dst_root
    files: tuple[str, ...]         # relative to src_root: every file of the source (index + shards)
    key: str | None = None
    rules: str | None = None
    options: tuple = ()            # what else decides the output (recorded in the manifest)
    check: bool = False            # per-layer check of the written output (exit code 1 if off)
    checksums: bool = False        # SHA-256 of every source and output file, in the record
    sync: bool = False             # fsync the output here (else the run does, see make_durable)


@dataclass(frozen=True)
class Fingerprint:
    size: int
    mtime_ns: int
    sha256: str | None = None
    etag: str | None = None        # an object's ETag (buckets: :mod:`.bucket`)


def stat_files(paths: list[Path]) -> Fingerprint:
    """Total size and newest mtime of a source's files (no hashing); NotRegularError if one
    is not a regular file."""
    stats = [p.stat() for p in paths]
    for path, found in zip(paths, stats):
        if not stat.S_ISREG(found.st_mode):
            raise NotRegularError(path)
    return Fingerprint(sum(s.st_size for s in stats), max(s.st_mtime_ns for s in stats))


def sha256_files(paths: list[Path]) -> str:
    """SHA-256 of one file; for several (an index and its shards), of their names and digests."""
    if len(paths) == 1:
        return _sha256(paths[0])
    lines = "".join(f"{_sha256(p)}  {p.name}\n" for p in paths)
    return hashlib.sha256(lines.encode()).hexdigest()


def _sha256(path: Path) -> str:
    with open_regular(path) as fh:   # a FIFO or /dev/zero is refused, never read
        return hashlib.file_digest(fh, "sha256").hexdigest()


def fingerprint(paths: list[Path], checksums: bool) -> Fingerprint:
    stat = stat_files(paths)
    return Fingerprint(stat.size, stat.mtime_ns, sha256_files(paths) if checksums else None)


def run_task(task: Task) -> dict:
    """Convert ``task.source`` to ``task.output``; returns the manifest record (plus ``exit_code``)."""
    return recorded(task, _run_local)


def _run_local(task: Task, record: dict) -> None:
    src_root = Path(task.src_root)
    still_readable(src_root, task.files)
    with pinned(src_root, task.files) as (folder, _):
        _convert(task, folder, [folder / PurePosixPath(f).name for f in task.files], record)


def recorded(task: Task, work: Callable[[Task, dict], None]) -> dict:
    """The manifest record of ``work(task, record)``: FAILED with the error (and its exit code)
    if it raises, timed; never raises for a bad file."""
    started = time.perf_counter()
    record: dict = {"source": task.source, "output": task.output, "status": FAILED, "error": None}
    try:
        work(task, record)
    except TranscoderError as exc:
        record.update(error=str(exc), exit_code=exc.exit_code)
    except Exception as exc:  # a bug must not stop the other files either; say it is one
        record.update(error=f"{task.source}: internal error: {type(exc).__name__}: {exc}",
                      exit_code=INTERNAL_ERROR_EXIT)
    record["options"] = list(task.options)
    record["seconds"] = round(time.perf_counter() - started, 3)
    return record


def _convert(task: Task, folder: Path, files: list[Path], record: dict) -> None:
    """The conversion of the source's files as ``folder`` holds them (what was opened, see
    :mod:`.beneath`); fills ``record``. Errors name the files in SRC_DIR."""
    src_root, dst_root = Path(task.src_root), Path(task.dst_root)
    real = src_root / PurePosixPath(task.files[0]).parent
    # a model folder (config.json and its weights) is read as the folder of its files
    source = folder / PurePosixPath(task.source).name if task.source in task.files else folder
    try:
        before = _source_fingerprint(files, task.source, task.checksums)
        record.update(size=before.size, mtime_ns=before.mtime_ns, sha256=before.sha256)
        dst = output_path(dst_root, task.output)
        convert_file(task, source, dst)
        if stat_files(files) != Fingerprint(before.size, before.mtime_ns):
            raise TranscoderError("changed while it was being converted; run again",
                                  path=src_root / task.source)
    except TranscoderError as exc:
        if folder != real:
            exc.message = exc.message.replace(str(folder), str(real))
            exc.path = exc.path and Path(str(exc.path).replace(str(folder), str(real)))
        raise
    out = output_fingerprint(dst, task)
    record.update(status=DONE, output_size=out.size, output_mtime_ns=out.mtime_ns,
                  output_sha256=out.sha256)


def convert_file(task: Task, source: Path, dst: Path) -> None:
    """Convert the local ``source`` to the local ``dst`` (replacing it), checked if asked."""
    with conversion(source, dst, force=True, key=task.key, rules=task.rules) as done:
        if task.check:
            _check(done, task)


def still_readable(src_root: Path, files: tuple[str, ...]) -> None:
    """What the scan checked, again just before reading (the tree may have changed since)."""
    for rel in files:
        problem = unreadable(src_root, rel)
        if problem:
            raise TranscoderError(problem, path=src_root / rel)


def output_path(dst_root: Path, output: str) -> Path:
    """``dst_root/output``, its folders created one by one, none of them a symbolic link."""
    folder = output_folder(dst_root, output, create=True)
    if folder is None:
        raise TranscoderError("its folder is (or is inside) a symbolic link or not a folder; "
                              "outputs are never written through links", path=dst_root / output)
    return folder / Path(output).name


def _check(done, task: Task) -> None:
    """The per-layer check of the conversion ``done`` (as ``transcode SRC DST`` runs it; none
    for a copy within one layout); CheckFailed when it fails."""
    from ..checks.verify import check_written  # the check's modules: only when checking

    request = CheckRequest(key=task.key, rules=Path(task.rules) if task.rules else None)
    report, _ = check_written(done, request, asked=True)
    if report is not None:
        report.raise_for_status()


def _source_fingerprint(files: list[Path], name: str, checksums: bool) -> Fingerprint:
    try:
        return fingerprint(files, checksums)
    except FileNotFoundError as exc:
        raise TranscoderError("no such file", path=exc.filename or name) from None
    except OSError as exc:
        raise TranscoderError(f"cannot read: {exc.strerror}", path=exc.filename or name) from None


def source_fingerprint(files: list[Path], name: str, checksums: bool) -> Fingerprint:
    """The fingerprint of a local source's files (TranscoderError naming ``name``)."""
    return _source_fingerprint(files, name, checksums)


def output_fingerprint(path: Path, task: Task) -> Fingerprint:
    """Size, mtime (and SHA-256) of the written output, flushed to disk first if ``task.sync``
    (else the run flushes it while this worker converts its next file: starting the write-back
    here with ``sync_file_range`` blocked the worker for about as long, 23 ms per 128 MiB)."""
    if task.sync:
        make_durable(path)
    with open_regular(path, follow=False) as fh:
        found = os.fstat(fh.fileno())
        digest = hashlib.file_digest(fh, "sha256").hexdigest() if task.checksums else None
    return Fingerprint(found.st_size, found.st_mtime_ns, digest)


def make_durable(path: Path) -> None:
    """Flush a written file and its folder entry to disk (the manifest line that trusts the
    file is written after this returns, so a line marked done never points at data that was
    only in the page cache). OSError if the disk refuses."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
