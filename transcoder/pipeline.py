"""The pipeline: read -> plan -> write, with atomic outputs.

``transcode(src, dst)`` is the whole one-file conversion; ``conversion(src, dst)`` the same,
leaving the source open for what follows (the check reads the written file and compares it
with the source as it was read and planned: one read of SRC, one plan); ``prepare`` stops
after planning (for ``--dry-run``, ``inspect`` and ``transcode check``). Each path is
identified once (:func:`formats.identify`). Outputs go to a temporary file beside the target and
are renamed into place only when complete, so a failure leaves nothing behind. A folder
(a SavedModel) is written beside too and published whole (:func:`atomic_folder`); the shards
of a sharded output and their index are published together, the index last
(:func:`atomic_files`).
"""
from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from . import export
from . import formats
from . import progress
from .formats import filemeta, shards
from .formats._io import sigbus
from .checkpoint import Checkpoint
from .errors import OutputExistsError, TranscoderError, UsageError
from .frameworks import import_frameworks
from .live import LiveModels
from .options import Architecture
from .rules import COPY, Plan, UserRules, load_user_rules, make_plan


@dataclass
class Prepared:
    """One conversion: the source read (still open) and planned for a target, and the files
    written (by :func:`conversion`); close it when done (``with``)."""

    source: Checkpoint
    plan: Plan
    target_format: formats.Format | None   # None: planned for a layout, not to be written
    live: Any = None  # a live.LiveModels when an architecture was given (torch/keras loaded)
    written: list[Path] = field(default_factory=list)   # by conversion(): the index last
    src: Path | None = None   # the file read

    @property
    def pairs(self) -> list:
        return self.live.pairs if self.live else []

    @property
    def copy(self) -> bool:
        """Whether this step copies tensors within one layout (nothing mapped): the one place
        that answers it."""
        return self.plan.direction == COPY

    @property
    def dst(self) -> Path | None:
        """The file written (a sharded output's index), None before writing."""
        return self.written[-1] if self.written else None

    def __enter__(self) -> "Prepared":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def write(self, tmp: Path, dst: Path) -> None:
        """Write the converted checkpoint to ``tmp`` (later renamed to ``dst``)."""
        target = self.plan.apply(self.source)
        with progress.task(f"writing {dst.name}", target.nbytes, items=len(target)) as shown:
            target = progress.tracked(target, shown)
            if self.live is not None and self.live.write(target, tmp, dst, self.target_format):
                self.plan.notes += self.live.notes   # what the written model needs, holds
                self._metadata_note(through_model=self.target_format.needs_model)
                return
            self.target_format.write(target, tmp)
        self._metadata_note()

    def _metadata_note(self, through_model: bool = False) -> None:
        """A note when the source's own metadata (a safetensors ``__metadata__``) could not
        be kept by the target."""
        note = filemeta.dropped_note(self.source.meta, self.target_format.name, through_model)
        if note:
            self.plan.notes.append(note)

    def close(self) -> None:
        self.source.close()

    def counts(self) -> dict[str, int]:
        """Tensors mapped by a rule, carried verbatim, or copied (a same-layout target)."""
        if self.copy:
            return {"copied": len(self.source), "mapped": 0, "carried": 0}
        return {"copied": 0, "mapped": sum(len(s.torch) for s in self.plan.steps),
                "carried": len(self.plan.carried)}

    def described(self) -> str:
        """What was written, for the "wrote DST: ..." line: the artifact and the Keras model it
        holds, or the tensors mapped, carried or copied."""
        if self.live is not None and self.live.wrote:
            return self.live.wrote
        counts = self.counts()
        if self.copy:
            return f"{counts['copied']} tensors copied"
        return f"{counts['mapped']} tensors mapped, {counts['carried']} carried"


def prepare(src: Path | formats.Identified, target: formats.Format | str, *,
            key: str | None = None, rules: Path | UserRules | None = None,
            arch: Architecture | None = None, source_format: str | None = None) -> Prepared:
    """Read ``src`` (a path, or what :func:`formats.identify` found it is) and plan its
    conversion to ``target``: the format to write, or only a layout (``"torch"``/``"keras"``)
    to plan for."""
    found = src if isinstance(src, formats.Identified) else None
    src = Path(found.path if found else src)
    layout = target if isinstance(target, str) else target.layout
    user = rules if isinstance(rules, UserRules) else load_user_rules(rules)
    ckpt = read(found or src, key=key, source_format=source_format)
    notes = list(ckpt.meta.get("notes", []))
    live = None
    try:
        if arch:
            import_frameworks()  # torch and keras: only when an architecture is given
            live = LiveModels.load(arch)
            ckpt = live.attach(ckpt, src)
        plan = make_plan(ckpt, layout, user)
        plan.notes[:0] = notes
        if live is not None:
            live.after_plan(plan, ckpt)
    except TranscoderError as exc:
        ckpt.close()
        raise exc.with_context(path=src) from None
    return Prepared(ckpt, plan, None if isinstance(target, str) else target, live, src=src)


def read(src: Path | formats.Identified, *, key: str | None = None,
         source_format: str | None = None) -> Checkpoint:
    """Read any supported checkpoint, of the format its content is (or ``source_format``);
    errors name the file. A name that says another format leaves a note in ``meta["notes"]``.
    ``src`` already identified is not looked at again."""
    path = Path(src.path if isinstance(src, formats.Identified) else src)
    try:
        found = src if isinstance(src, formats.Identified) else formats.identify(path, source_format)
        with progress.status(f"reading {path.name}"):
            ckpt = found.read(formats.ReadOptions(key=key))
    except TranscoderError as exc:
        raise exc.with_context(path=path) from None
    if found.note:
        ckpt.meta.setdefault("notes", []).append(found.note)
    return ckpt


def transcode(src: Path | str, dst: Path | str, *, force: bool = False, key: str | None = None,
              rules: Path | UserRules | None = None, arch: Architecture | None = None,
              source_format: str | None = None, shard_size: int | None = None) -> Prepared:
    """Convert one checkpoint; returns what was prepared (the plan, the layer pairing, the
    files written), its source closed. The options are :func:`conversion`'s."""
    with conversion(src, dst, force=force, key=key, rules=rules, arch=arch,
                    source_format=source_format, shard_size=shard_size) as done:
        return done


@contextmanager
def conversion(src: Path | str, dst: Path | str, *, force: bool = False, key: str | None = None,
               rules: Path | UserRules | None = None, arch: Architecture | None = None,
               source_format: str | None = None, shard_size: int | None = None
               ) -> Iterator[Prepared]:
    """Convert one checkpoint and yield the conversion, its source still open (closed when
    the block ends). ``shard_size`` (bytes), or a ``dst`` naming an index
    (``model.safetensors.index.json``), writes shards and their index (:mod:`.formats.shards`)."""
    src, dst = Path(src), Path(dst)
    refuse_same_file(src, dst)
    if dst.exists() and not force:
        raise OutputExistsError("already exists", path=dst, hint="pass --force to overwrite")
    fmt = formats.for_path(dst)
    sharded = shard_size is not None or shards.is_index(dst)
    if sharded:
        shards.check_target(fmt.name, dst)
    if not arch:
        fmt.check_writable(dst)
    export.validate(fmt, arch)
    with prepare(src, fmt, key=key, rules=rules, arch=arch,
                 source_format=source_format) as prepared:
        if sharded:
            prepared.written = _write_shards(prepared, src, dst, shard_size, force)
        else:
            _write_one(prepared, src, dst, force)
            prepared.written = [dst]
        yield prepared


def _write_one(prepared: Prepared, src: Path, dst: Path, force: bool) -> None:
    publish = atomic_folder if prepared.target_format.folder else atomic_output
    with publish(dst, force=force) as tmp:
        try:
            prepared.write(tmp, dst)
        except TranscoderError as exc:
            raise exc.with_context(path=src) from None


def _write_shards(prepared: Prepared, src: Path, dst: Path, shard_size: int | None,
                  force: bool) -> list[Path]:
    """The target in shards of at most ``shard_size`` bytes (huggingface_hub's default when
    None) and their index, beside ``dst``; files an earlier output of that name left (other
    shards, another index) are removed with ``force``, else refused."""
    fmt, target = prepared.target_format, prepared.plan.apply(prepared.source)
    suffix = max((s for s in fmt.suffixes if shards.base_name(dst.name).lower().endswith(s)),
                 key=len)
    layout = shards.layout(dst.name, suffix, [(r.name, r.nbytes) for r in target],
                           shard_size or shards.DEFAULT_SHARD_BYTES)
    folder = dst.parent
    earlier = layout.earlier_outputs(folder)
    _refuse_source_files(src, [folder / n for n in layout.names + earlier])
    with atomic_files(folder, layout.names, force=force, replaced=earlier) as tmps, \
            progress.task(f"writing {dst.name}", target.nbytes, items=len(target)) as shown:
        target = progress.tracked(target, shown)
        try:
            for tmp, group in zip(tmps, layout.groups):
                fmt.write(shards.subset(target, group), tmp)
        except TranscoderError as exc:
            raise exc.with_context(path=src) from None
        if layout.index:
            tmps[-1].write_bytes(layout.index_json())
        prepared._metadata_note()
    return [folder / n for n in layout.names]


def _refuse_source_files(src: Path, paths: list[Path]) -> None:
    """UsageError if writing or removing ``paths`` would touch the source (or its shards)."""
    sources = [src] + (shards.shard_paths(src) if shards.is_index(src) else [])
    for path in paths:
        for source in sources:
            if path.exists() and source.exists() and os.path.samefile(path, source):
                raise UsageError(f"would replace or remove {source.name}, a file of the source",
                                 path=path, hint="write the shards to another folder")


def refuse_same_file(src: Path, dst: Path) -> None:
    same = src.resolve() == dst.resolve()
    if not same and src.exists() and dst.exists():
        same = os.path.samefile(src, dst)
    if same:
        raise UsageError("source and destination are the same file", path=dst)


#: ``renameat2`` flags (linux/fs.h)
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


@contextmanager
def atomic_output(dst: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``dst``; rename it onto ``dst`` only on success."""
    dst = Path(dst)
    if dst.is_dir():
        raise UsageError("is a directory", path=dst, hint="name the file to write")
    if dst.exists() and not force:
        raise OutputExistsError("already exists", path=dst, hint="pass --force to overwrite")
    if not dst.parent.is_dir():
        raise UsageError("destination folder does not exist", path=dst.parent)
    tmp = _temporary(dst)
    try:
        with sigbus.remove_on_fault(tmp):  # a source truncated mid-read: see formats.sigbus
            yield tmp
        _publish(tmp, dst, force)
    finally:
        tmp.unlink(missing_ok=True)


def _publish(tmp: Path, dst: Path, force: bool) -> None:
    """Rename ``tmp`` to ``dst``. Without ``force``, never over a file that appeared since the
    check: a hard link fails if ``dst`` exists (atomically); where the file system has no hard
    links, ``renameat2(RENAME_NOREPLACE)``; only where neither exists, check and rename."""
    try:
        if force:
            if not _exchange_file(tmp, dst):
                os.replace(tmp, dst)
        elif not _link(tmp, dst) and not _rename_noreplace(tmp, dst):
            if os.path.lexists(dst):
                raise FileExistsError
            os.rename(tmp, dst)
    except FileExistsError:
        raise OutputExistsError("appeared while it was being written; it was kept", path=dst,
                                hint="pass --force to overwrite") from None
    except IsADirectoryError:
        raise UsageError("is a directory", path=dst, hint="name the file to write") from None


def _link(tmp: Path, dst: Path) -> bool:
    """Whether ``dst`` now names ``tmp``'s file (False: no hard links here)."""
    try:
        os.link(tmp, dst, follow_symlinks=False)
    except FileExistsError:
        raise
    except (OSError, NotImplementedError):
        return False
    return True


def _renameat2(tmp: Path, dst: Path, flags: int) -> int:
    """``renameat2(tmp, dst, flags)`` (Linux): 0, the call's errno, or ENOSYS where libc has
    no such call."""
    import ctypes

    try:
        rename = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return errno.ENOSYS
    at_fdcwd = -100
    if rename(at_fdcwd, os.fsencode(tmp), at_fdcwd, os.fsencode(dst), flags) == 0:
        return 0
    return ctypes.get_errno()


def _rename_noreplace(tmp: Path, dst: Path) -> bool:
    """``renameat2(..., RENAME_NOREPLACE)``; False where it is not available."""
    err = _renameat2(tmp, dst, RENAME_NOREPLACE)
    if err == errno.EEXIST:
        raise FileExistsError
    return err == 0


def _exchange_file(tmp: Path, dst: Path) -> bool:
    """Swap ``tmp`` and an existing regular file (or link) ``dst`` in one step
    (``RENAME_EXCHANGE``); ``tmp`` then names the old file, which the caller removes. False
    where ``dst`` is anything else or the call is not available: then ``os.replace``. Why: a
    rename over an existing file makes ext4 write the new file's delayed blocks out first
    (``auto_da_alloc``), 0.9-1.2 s for 1 GiB here; the exchange and the old file's removal take
    0.25-0.33 s (docs/performance.md; ``bench/replace_bench.py`` times whole commands)."""
    try:
        kind = os.lstat(dst).st_mode
    except OSError:
        return False
    if not (stat.S_ISREG(kind) or stat.S_ISLNK(kind)):
        return False
    return _renameat2(tmp, dst, RENAME_EXCHANGE) == 0


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------- several files (shards)

@contextmanager
def atomic_files(folder: Path, names: list[str], *, force: bool = False,
                 replaced: list[str] = ()) -> Iterator[list[Path]]:
    """Yield a temporary path beside each of ``names`` (in ``folder``); publish them only when
    all are written, the last one (the index) last, so that a reader that finds the index
    finds every shard it names, complete. Existing files of those names and ``replaced`` ones
    (what an earlier output of that name left) are refused, or with ``force`` moved aside
    first (the old index first: nothing then points into a mixture), and removed once the new
    files are in place. A failure before the last rename removes what it placed and puts the
    old files back. Several names cannot change in one atomic step: a process killed during
    the renames (a few milliseconds) leaves new shards without their index (nothing loads
    them as a checkpoint) and the old files aside as ``.NAME.*.tmp``."""
    if not folder.is_dir():
        raise UsageError("destination folder does not exist", path=folder)
    existing = [n for n in [names[-1], *names[:-1], *replaced] if os.path.lexists(folder / n)]
    for name in existing:
        if (folder / name).is_dir():
            raise UsageError("is a directory", path=folder / name, hint="name the file to write")
        if not force:
            raise OutputExistsError("already exists", path=folder / name,
                                    hint="pass --force to replace it")
    tmps = [_temporary(folder / n) for n in names]
    try:
        with ExitStack() as stack:
            for tmp in tmps:
                stack.enter_context(sigbus.remove_on_fault(tmp))
            yield tmps
        _publish_all(tmps, [folder / n for n in names], [folder / n for n in existing])
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)


def _temporary(dst: Path, suffix: str = ".tmp") -> Path:
    """An empty file beside ``dst``; UsageError if the folder refuses one (read-only, full)."""
    try:
        fd, name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=suffix, dir=dst.parent)
    except OSError as exc:
        raise UsageError(f"cannot write in the destination folder: {exc.strerror or exc}",
                         path=dst.parent) from None
    os.close(fd)
    os.chmod(name, 0o666 & ~_umask())
    return Path(name)


def _publish_all(tmps: list[Path], finals: list[Path], old: list[Path]) -> None:
    aside: list[tuple[Path, Path]] = []
    placed: list[Path] = []
    try:
        for path in old:
            aside.append((path, _move_aside(path)))
        for tmp, final in zip(tmps, finals):
            _publish(tmp, final, force=False)   # one that appeared meanwhile is kept: an error
            placed.append(final)
    except BaseException:
        for path in placed:
            path.unlink(missing_ok=True)
        for path, moved in reversed(aside):
            os.replace(moved, path)
        raise
    for _, moved in aside:
        moved.unlink(missing_ok=True)


def _move_aside(path: Path) -> Path:
    """Rename ``path`` to a new temporary name beside it; that name."""
    moved = _temporary(path, ".old.tmp")
    try:
        os.replace(path, moved)
    except BaseException:
        moved.unlink(missing_ok=True)
        raise
    return moved


# ---------------------------------------------------------------- folders (SavedModel)

@contextmanager
def atomic_folder(dst: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``dst``; publish it as ``dst`` only on success.
    An existing ``dst`` (with ``force``) is swapped out whole, then removed: at every moment
    ``dst`` is the complete old artifact or the complete new one, never a mixture."""
    dst = Path(dst)
    if os.path.lexists(dst) and not force:
        raise OutputExistsError("already exists", path=dst, hint="pass --force to overwrite")
    if not dst.parent.is_dir():
        raise UsageError("destination folder does not exist", path=dst.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if os.path.lexists(dst):
            _exchange(tmp, dst)   # tmp now holds the old artifact, removed below
        else:
            os.rename(tmp, dst)
    finally:
        _remove(tmp)


def _exchange(a: Path, b: Path) -> None:
    """Swap the names ``a`` and ``b`` (files or folders): ``renameat2(RENAME_EXCHANGE)``, one
    atomic step (Linux); elsewhere three renames, ``b`` absent for a moment but never mixed."""
    if _renameat2(a, b, RENAME_EXCHANGE) == 0:
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{b.name}.", suffix=".old", dir=b.parent))
    os.rmdir(aside)
    os.rename(b, aside)
    try:
        os.rename(a, b)
    except BaseException:
        os.rename(aside, b)
        raise
    os.rename(aside, a)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        path.unlink()
