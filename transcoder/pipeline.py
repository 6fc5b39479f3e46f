"""The pipeline: read -> plan -> write, with atomic outputs.

``transcode(src, dst)`` is the whole one-file conversion; ``prepare`` stops after planning
(for ``--dry-run`` and ``inspect``). Outputs go to a temporary file beside the target and
are renamed into place only when complete, so a failure leaves nothing behind. A folder
(a SavedModel) is written beside too and published whole (:func:`atomic_folder`).
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from . import export
from . import formats
from .formats import sigbus
from .checkpoint import Checkpoint
from .errors import OutputExistsError, TranscoderError, UsageError
from .frameworks import import_frameworks
from .live import LiveModels
from .options import Architecture
from .rules import Plan, UserRules, load_user_rules, make_plan


@dataclass
class Prepared:
    """A source read and planned for a target; close it when done."""

    source: Checkpoint
    plan: Plan
    target_format: formats.Format | None   # None: planned for a layout, not to be written
    live: Any = None  # a live.LiveModels when an architecture was given (torch/keras loaded)

    @property
    def pairs(self) -> list:
        return self.live.pairs if self.live else []

    def write(self, tmp: Path, dst: Path) -> None:
        """Write the converted checkpoint to ``tmp`` (later renamed to ``dst``)."""
        target = self.plan.apply(self.source)
        if self.live is not None and self.live.write(target, tmp, dst):
            self.plan.notes += self.live.notes   # what the written model needs, holds
            return
        self.target_format.write(target, tmp)

    def close(self) -> None:
        self.source.close()


def prepare(src: Path, target: formats.Format | str, *, key: str | None = None,
            rules: Path | UserRules | None = None, arch: Architecture | None = None,
            source_format: str | None = None) -> Prepared:
    """Read ``src`` and plan its conversion to ``target``: the format to write, or only a
    layout (``"torch"``/``"keras"``) to plan for."""
    src = Path(src)
    layout = target if isinstance(target, str) else target.layout
    user = rules if isinstance(rules, UserRules) else load_user_rules(rules)
    ckpt = read(src, key=key, source_format=source_format)
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
    return Prepared(ckpt, plan, None if isinstance(target, str) else target, live)


def read(src: Path, *, key: str | None = None, source_format: str | None = None) -> Checkpoint:
    """Read any supported checkpoint, of the format its content is (or ``source_format``);
    errors name the file. A name that says another format leaves a note in ``meta["notes"]``."""
    src = Path(src)
    try:
        fmt, note = formats.for_source(src, source_format)
        ckpt = fmt.read(src, formats.ReadOptions(key=key))
    except TranscoderError as exc:
        raise exc.with_context(path=src) from None
    if note:
        ckpt.meta.setdefault("notes", []).append(note)
    return ckpt


def transcode(src: Path | str, dst: Path | str, *, force: bool = False, key: str | None = None,
              rules: Path | UserRules | None = None, arch: Architecture | None = None,
              source_format: str | None = None) -> Prepared:
    """Convert one checkpoint; returns what was prepared (the plan, the layer pairing)."""
    src, dst = Path(src), Path(dst)
    refuse_same_file(src, dst)
    if dst.exists() and not force:
        raise OutputExistsError("already exists", path=dst, hint="pass --force to overwrite")
    fmt = formats.for_path(dst)
    if not arch:
        fmt.check_writable(dst)
    export.validate(fmt, arch)
    prepared = prepare(src, fmt, key=key, rules=rules, arch=arch, source_format=source_format)
    publish = atomic_folder if fmt.folder else atomic_output
    try:
        with publish(dst, force=force) as tmp:
            try:
                prepared.write(tmp, dst)
            except TranscoderError as exc:
                raise exc.with_context(path=src) from None
    finally:
        prepared.close()
    return prepared


def refuse_same_file(src: Path, dst: Path) -> None:
    same = src.resolve() == dst.resolve()
    if not same and src.exists() and dst.exists():
        same = os.path.samefile(src, dst)
    if same:
        raise UsageError("source and destination are the same file", path=dst)


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
    fd, name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, 0o666 & ~_umask())
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
            os.replace(tmp, dst)  # over an existing file, ext4 flushes tmp first
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


def _rename_noreplace(tmp: Path, dst: Path) -> bool:
    """``renameat2(..., RENAME_NOREPLACE)`` (Linux); False where it is not available."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        rename = libc.renameat2
    except (OSError, AttributeError, ImportError):
        return False
    at_fdcwd, noreplace = -100, 1
    if rename(at_fdcwd, os.fsencode(tmp), at_fdcwd, os.fsencode(dst), noreplace) == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.EEXIST:
        raise FileExistsError
    return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
    import ctypes

    at_fdcwd, exchange = -100, 2
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        renameat2 = None
    if renameat2 is not None and renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b),
                                           exchange) == 0:
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
