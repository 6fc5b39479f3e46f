"""``transcode bulk``: mirror a tree of checkpoints, resumably.

1. scan SRC_DIR for checkpoints and plan each one's output (:mod:`.tree`);
2. skip those the manifest lists as done whose source and output are unchanged (:mod:`.manifest`);
3. remove temporary files a killed run left beside the outputs;
4. run the rest on an engine (:mod:`.engines`), largest first, appending each result to the
   manifest as it arrives, after its output is on disk, so a rerun after a crash redoes only
   what is not done and intact.

Either root may be a bucket (an fsspec URL): :mod:`.bucket` then lists, trusts and cleans it,
:mod:`.bucket_task` converts, :mod:`.bucket_manifest` keeps the manifest.
"""
from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Protocol

from ..errors import UsageError
from ..rules import load_user_rules
from ..remote import is_url, local
from . import bucket, engines
from .manifest import Manifest, done_with, trusted
from .task import DONE, FAILED, SKIPPED, Task, make_durable
from .tree import TARGETS, Skipped, Source, Tree, output_folder, scan


@dataclass(frozen=True)
class BulkOptions:
    to: str
    jobs: int | None = None          # None: the number of cores
    pattern: str | None = None
    force: bool = False              # redo even what the manifest lists as done and intact
    key: str | None = None
    rules: Path | None = None
    fail_fast: bool = False
    engine: str = "local"
    address: str | None = None
    check: bool = False              # per-layer check of each converted file
    timeout: float | None = None     # seconds per file (local engine); None: no limit
    checksums: bool = False          # SHA-256 of every source and output in the manifest


@dataclass
class BulkReport:
    manifest: Path
    results: list[dict] = field(default_factory=list)   # attempted in this run, completion order
    reused: list[dict] = field(default_factory=list)    # manifest entries trusted as done
    ignored: list[str] = field(default_factory=list)    # files that are not checkpoints
    skipped: list[dict] = field(default_factory=list)   # never read: links out, FIFOs (tree)
    not_run: int = 0                                     # stopped early: --fail-fast, Ctrl-C
    seconds: float = 0.0

    @property
    def converted(self) -> list[dict]:
        return [r for r in self.results if r["status"] == DONE]

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.results if r["status"] == FAILED]

    @property
    def exit_code(self) -> int:
        """0 when every checkpoint is converted; else the worst failure's code (2: bad input)."""
        codes = [r.get("exit_code", 2) for r in self.failed] + ([2] if self.not_run else [])
        return max(codes, default=0)


class Listener(Protocol):
    """What a progress display needs (see :mod:`.display`)."""

    def start(self, files: int, nbytes: int, reused: int) -> None: ...
    def result(self, record: dict) -> None: ...
    def finish(self, report: BulkReport) -> None: ...


class _Silent:
    def start(self, files: int, nbytes: int, reused: int) -> None: ...
    def result(self, record: dict) -> None: ...
    def finish(self, report: BulkReport) -> None: ...


def run_bulk(src_root: Path | str, dst_root: Path | str, options: BulkOptions,
             listener: Listener | None = None) -> BulkReport:
    """Convert every checkpoint under ``src_root`` into the mirrored tree under ``dst_root``
    (either may be a bucket: an fsspec URL, see :mod:`.bucket`)."""
    started = time.perf_counter()
    listener = listener or _Silent()
    places = _places(src_root, dst_root, options)
    tree = places.scan(options.to, options.pattern)
    fingerprint = _options_fingerprint(options)
    with places.manifest() as manifest:
        report = BulkReport(manifest.where, ignored=tree.ignored,
                            skipped=[manifest.append(_skip(s, fingerprint)) for s in tree.skipped])
        outputs = [s.output for s in tree.sources]
        if places.local_dst is None:
            places.remove_stale_temps(outputs)   # (and lists the outputs there, for trusting)
        else:
            remove_stale_temps(places.local_dst, outputs)
        todo = _to_convert(tree, manifest, report, places, fingerprint, options.force)
        sizes = {s.path: s.size for s in todo}
        recorder = _Recorder(manifest, places.local_dst if options.engine != "ray" else None)

        def on_result(record: dict) -> bool:
            record.setdefault("size", sizes.get(record["source"]))
            recorder.add(record)
            report.results.append(record)
            listener.result(record)
            return not (options.fail_fast and record["status"] == FAILED)

        listener.start(len(todo), sum(sizes.values()), len(report.reused))
        try:
            refused = [_refusal(s, fingerprint) for s in todo if s.error]
            if all([on_result(r) for r in refused]):
                tasks = [_task(s, places, options, fingerprint) for s in todo if not s.error]
                engines.run(options.engine, tasks, on_result, address=options.address,
                            jobs=options.jobs or engines.cores(), timeout=options.timeout)
        finally:  # also on Ctrl-C: what got done is on record and shown
            recorder.close()
            report.not_run = len(todo) - len(report.results)
            report.seconds = time.perf_counter() - started
            manifest.compact()
            listener.finish(report)
    return report


@dataclass
class _LocalPlaces:
    """SRC_DIR and DST_DIR as local folders (:class:`.bucket.BucketPlaces` for buckets)."""
    src: Path
    dst: Path

    @property
    def local_dst(self) -> Path:
        return self.dst

    def scan(self, to: str, pattern: str | None) -> Tree:
        return scan(self.src, self.dst, to, pattern)

    def manifest(self) -> Manifest:
        return Manifest(self.dst)

    def trusted(self, entry: dict, source: Source) -> bool:
        return trusted(entry, self.src, source.files, self.dst, entry["options"])


def _places(src_root: Path | str, dst_root: Path | str, options: BulkOptions):
    _check_options(options)
    if is_url(src_root) or is_url(dst_root):
        return bucket.places(src_root, dst_root)
    return _LocalPlaces(*_check_roots(Path(local(src_root)), Path(local(dst_root))))


class _Recorder:
    """Appends each result to the manifest, a converted file's only once its output is on disk
    (:func:`_make_durable`; Ray tasks and bucket outputs: no folder to flush here). The
    flush waits for the disk, 30-45 ms per 128 MiB output here, so it runs on a thread of
    its own while the run hands out the next files (in the run's loop it held back the other worker's next
    file whenever both finished together). Lines keep the order the results came in. The
    thread starts with the first result, after the first workers are forked."""

    def __init__(self, manifest: Manifest, dst_root: Path | None) -> None:
        self._manifest, self._dst_root = manifest, dst_root   # None: nothing to flush here
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []

    def add(self, record: dict) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="transcoder-manifest")
        self._pending.append(self._pool.submit(self._record, record))

    def _record(self, record: dict) -> None:
        if record["status"] == DONE and self._dst_root is not None:
            _make_durable(self._dst_root, record)   # a failure turns the record into one
        self._manifest.append(record)

    def close(self) -> None:
        """Wait for every line; an error writing the manifest itself is raised here."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            for future in self._pending:
                future.result()


def _to_convert(tree: Tree, manifest: Manifest, report: BulkReport, places, fingerprint: list,
                force: bool) -> list[Source]:
    """The sources to convert, largest first (a large file started last would leave the other
    workers idle at the end); those the manifest vouches for go to ``report.reused``."""
    todo = []
    for src in tree.sources:
        entry = manifest.get(src.path, src.output)
        if src.error or force or not done_with(entry, fingerprint) or \
                not places.trusted(entry, src):
            todo.append(src)
        else:
            report.reused.append(entry)
    return sorted(todo, key=lambda s: s.size, reverse=True)


def _check_options(options: BulkOptions) -> None:
    if options.to not in TARGETS:
        raise UsageError(f"--to must be one of {', '.join(TARGETS)}, not {options.to!r}")
    if options.engine not in engines.ENGINES:
        raise UsageError(f"--engine must be one of {', '.join(engines.ENGINES)}, "
                         f"not {options.engine!r}")
    if options.address and options.engine != "ray":
        raise UsageError("--address is for --engine ray")
    if options.timeout is not None and options.timeout <= 0:
        raise UsageError("--timeout must be more than 0 seconds")
    if options.timeout is not None and options.engine == "ray":
        raise UsageError("--timeout is for --engine local (Ray: use the cluster's own limits)")
    if options.jobs is not None and options.jobs < 1:
        raise UsageError("--jobs must be at least 1")


def _check_roots(src_root: Path, dst_root: Path) -> tuple[Path, Path]:
    if not src_root.is_dir():
        raise UsageError("not a folder", path=src_root)
    src_root, dst_root = src_root.resolve(), dst_root.resolve()
    if dst_root == src_root:
        raise UsageError("DST_DIR must differ from SRC_DIR (outputs would be read as sources "
                         "on the next run)", path=dst_root)
    try:
        dst_root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create DST_DIR: {exc.strerror or exc}", path=dst_root) from None
    return src_root, dst_root


def _options_fingerprint(options: BulkOptions) -> list:
    """What besides the source decides an output; an entry made with other options is redone."""
    rules_hash = None
    if options.rules is not None:
        load_user_rules(options.rules)  # a bad --rules file stops here, once, not per file
        rules_hash = hashlib.sha256(Path(options.rules).read_bytes()).hexdigest()
    return [options.to, options.key, rules_hash] + (["checked"] if options.check else [])


def _task(src: Source, places, options: BulkOptions, fingerprint: list) -> Task:
    rules = str(Path(options.rules).resolve()) if options.rules is not None else None
    return Task(str(places.src), str(places.dst), src.path, src.output, src.files, options.key,
                rules, tuple(fingerprint), options.check, options.checksums,
                sync=options.engine == "ray")   # on other machines: the run cannot fsync there


def _make_durable(dst_root: Path, record: dict) -> None:
    """The output on disk before its manifest line says done (a worker only started its
    write-back); a failure to flush it fails the file."""
    folder = output_folder(dst_root, record["output"], create=False)
    try:
        if folder is None:
            raise OSError("its folder is now a symbolic link or gone")
        make_durable(folder / PurePosixPath(record["output"]).name)
    except OSError as exc:
        record.update(status=FAILED, exit_code=2, output_size=None, output_mtime_ns=None,
                      output_sha256=None,
                      error=f"{record['output']}: written but not flushed to disk: "
                            f"{exc.strerror or exc}")


def _skip(skipped: Skipped, fingerprint: list) -> dict:
    return {"source": skipped.path, "output": skipped.output, "status": SKIPPED,
            "error": f"{skipped.path}: {skipped.reason}", "seconds": 0.0, "options": fingerprint}


def _refusal(src: Source, fingerprint: list) -> dict:
    return {"source": src.path, "output": src.output, "status": FAILED, "error": src.error,
            "exit_code": 2, "seconds": 0.0, "options": fingerprint}


def remove_stale_temps(dst_root: Path, outputs: list[str]) -> int:
    """Delete ``.<output name>.*.tmp`` files (what an interrupted atomic write leaves behind),
    nested ones too (``..<output name>.*.tmp.*.tmp``: a writer that is itself atomic). One
    that cannot be deleted (a folder of that name) is left: it does not stop the run."""
    by_folder: dict[Path, set[str]] = {}
    for rel in outputs:
        folder = output_folder(dst_root, rel, create=False)
        if folder is not None:  # never through a link (it could lead out of DST_DIR)
            by_folder.setdefault(folder, set()).add(PurePosixPath(rel).name)
    removed = 0
    for folder, names in by_folder.items():
        try:
            entries = os.listdir(folder)
        except OSError:
            continue
        for entry in entries:
            bare = entry.lstrip(".")
            ours = bare != entry and any(bare.startswith(f"{n}.") for n in names)
            if ours and entry.endswith(".tmp"):
                try:
                    (folder / entry).unlink(missing_ok=True)
                except OSError:   # a folder (or not ours to delete): left, never followed
                    continue
                removed += 1
    return removed
