"""The per-file task when SRC_DIR or DST_DIR is a bucket (see :mod:`.bucket`).

A bucket source's files are downloaded into a private folder (checked unchanged across the
download), converted there and removed; a bucket output is written locally and published
through a temporary key beside its name (:func:`transcoder.remote.staged_target`), and
only then is the record made, with the object's size, time and ETag as the store now lists
them. Local sides are read and written as :mod:`.task` does. :func:`run_any` is what the
engines run: this for bucket tasks, :func:`.task.run_task` for local ones.
"""
from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Iterator

from ..errors import TranscoderError
from ..formats.remote_source import stand_in
from ..remote import fetch, info, is_url, join, object_fingerprint, staged_target
from . import task as tasks
from .beneath import pinned
from .bucket import combined
from .task import DONE, Fingerprint, Task


def run_any(task: Task) -> dict:
    """The task's record, whichever sides are buckets."""
    if is_url(task.src_root) or is_url(task.dst_root):
        return run_bucket_task(task)
    return tasks.run_task(task)


def run_bucket_task(task: Task) -> dict:
    """As :func:`.task.run_task` (never raises for a bad file), one side at least a bucket."""
    return tasks.recorded(task, _run)


def _run(task: Task, record: dict) -> None:
    with _source(task) as (source, files, before):
        record.update(size=before.size, mtime_ns=before.mtime_ns, sha256=before.sha256,
                      etag=before.etag)
        out = _write(task, source)
        if files and tasks.stat_files(files) != Fingerprint(before.size, before.mtime_ns):
            raise TranscoderError("changed while it was being converted; run again",
                                  path=Path(task.src_root) / task.source)
    record.update(status=DONE, output_size=out.size, output_mtime_ns=out.mtime_ns,
                  output_sha256=out.sha256, output_etag=out.etag)


@contextmanager
def _source(task: Task) -> Iterator[tuple[Path, list[Path], Fingerprint]]:
    """``(local source file or model folder, local files to re-check after converting,
    fingerprint)``; errors raised inside name SRC_DIR's files, not the private copies."""
    parent = PurePosixPath(task.source).parent.as_posix()
    whole = task.source not in task.files   # a model folder: its files, together, are the source
    holder = task.source if whole else parent   # the folder of SRC_DIR holding its files
    if is_url(task.src_root) and not task.checksums:
        yield from _read_by_range(task)
        return
    if is_url(task.src_root):
        folder = Path(tempfile.mkdtemp(prefix="transcoder-bulk-src-"))
        try:
            copies = [folder / PurePosixPath(f).name for f in task.files]
            infos = [fetch(join(task.src_root, f), c) for f, c in zip(task.files, copies)]
            before = combined(infos)
            if task.checksums:
                before = Fingerprint(before.size, before.mtime_ns,
                                     tasks.sha256_files(copies), before.etag)
            with _renamed(folder, join(task.src_root, "" if holder == "." else holder)):
                yield folder if whole else folder / PurePosixPath(task.source).name, [], before
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    src_root = Path(task.src_root)
    tasks.still_readable(src_root, task.files)
    with pinned(src_root, task.files) as (folder, _):
        files = [folder / PurePosixPath(f).name for f in task.files]
        with _renamed(folder, src_root / holder):
            before = tasks.source_fingerprint(files, task.source, task.checksums)
            yield folder if whole else folder / PurePosixPath(task.source).name, files, before


def _read_by_range(task: Task) -> Iterator[tuple[Path, list[Path], Fingerprint]]:
    """A bucket source read as one conversion reads a URL: by byte range where its format
    allows (:func:`transcoder.formats.remote_source.stand_in`), the rest copied down; its
    objects' size, time and ETag taken before and compared after (an object replaced meanwhile
    is refused: run again). With ``--checksums`` the bytes are downloaded and hashed instead."""
    urls = [join(task.src_root, f) for f in task.files]
    before = combined([info(u) for u in urls])
    source = task.src_root if task.source == "." else join(task.src_root, task.source)
    with stand_in(source, keep=task.check) as local:
        with _renamed(local, source):
            yield local, [], before
    if combined([info(u) for u in urls]) != before:
        raise TranscoderError("changed while it was being converted; run again",
                              path=join(task.src_root, task.source))


def _write(task: Task, source: Path) -> Fingerprint:
    """Convert ``source`` into the task's output; the output's fingerprint once it is there."""
    if not is_url(task.dst_root):
        dst = tasks.output_path(Path(task.dst_root), task.output)
        tasks.convert_file(task, source, dst)
        return tasks.output_fingerprint(dst, task)
    url = join(task.dst_root, task.output)
    with staged_target(url, force=True) as staged:
        with _renamed(staged, url):
            tasks.convert_file(task, source, staged)
        digest = tasks.sha256_files([staged]) if task.checksums else None
    size, mtime_ns, etag = object_fingerprint(info(url))
    return Fingerprint(size, mtime_ns, digest, etag)


@contextmanager
def _renamed(private: Path, real: Path | str) -> Iterator[None]:
    """A TranscoderError raised inside names ``real`` where it named ``private``."""
    try:
        yield
    except TranscoderError as exc:
        if str(private) != str(real):
            exc.message = exc.message.replace(str(private), str(real))
            if exc.path is not None:
                text = str(exc.path).replace(str(private), str(real))
                exc.path = text if is_url(text) else Path(text)
        raise
