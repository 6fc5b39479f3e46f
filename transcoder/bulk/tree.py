"""Which files of a source tree are checkpoints, and where each one's output goes.

A source is one checkpoint: usually one file, or an index (``*.safetensors.index.json``,
``pytorch_model.bin.index.json``) together with the shards it lists (the shards are then not
converted on their own). Its output keeps the
relative folder and the file stem, with the extension of the target format:
``SRC/a/b/model.safetensors`` -> ``DST/a/b/model.h5``.

What is never read (each is *skipped*, and the summary and manifest say why): a symbolic link
whose target leaves SRC_DIR (or is broken), anything that is not a regular file (FIFOs,
devices, sockets: reading one could block forever), and a checkpoint whose shards are such.
A symbolic link to a file inside SRC_DIR is converted like the file, under the link's name.
Symbolic links to folders are never followed, wherever they point.

A Hugging Face model folder (``config.json`` beside ``model.safetensors``, a sharded index or
``pytorch_model.bin``: what ``save_pretrained`` writes, or a hub cache snapshot
``models--org--name/snapshots/REV/``, whose files link into the repo's ``blobs/``) is ONE
source: its files are ``config.json``, the weights transformers itself would read (the first
of :data:`~transcoder.formats.hf_folder.WEIGHT_FILES`) and their shards, and its output is
named after the folder: ``SRC/a/bert/`` -> ``DST/a/bert.h5``. Its other files (tokenizer, a
second copy of the weights in another layout) are not converted; its subfolders are scanned
as usual. A cache snapshot's links must stay inside SRC_DIR, so scan the cache, not its
``snapshots/`` folder alone.
"""
from __future__ import annotations

import fnmatch
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .. import formats
from ..errors import TranscoderError
from ..formats import hf_folder, shards as sharding

#: ``--to`` value -> output extension.
TARGETS: dict[str, str] = {"h5": ".h5", "safetensors": ".safetensors", "pt": ".pt"}


@dataclass(frozen=True)
class Source:
    """One checkpoint to convert; paths are POSIX and relative to the source / output roots."""

    path: str                                  # the file transcode() reads
    output: str                                # the file it writes
    files: tuple[str, ...]                     # every file the checkpoint's content lives in
    size: int                                  # their total size in bytes
    error: str | None = None                   # set when the source cannot even be attempted


@dataclass(frozen=True)
class Skipped:
    """Something in SRC_DIR that is never read, and why."""

    path: str       # relative to the source root
    output: str     # the output it would have had ("" for a folder)
    reason: str


@dataclass
class Tree:
    sources: list[Source] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)   # not checkpoints, or not matching --pattern
    skipped: list[Skipped] = field(default_factory=list)  # links leaving SRC_DIR, FIFOs, ...


def scan(src_root: Path, dst_root: Path, to: str, pattern: str | None = None) -> Tree:
    """Walk ``src_root`` (sorted, symlinked folders not followed) and plan one output per
    checkpoint (a model folder is one)."""
    tree, candidates, folders = Tree(), [], []
    skip_dir = dst_root.resolve()
    for folder, dirs, files in os.walk(src_root):
        here = Path(folder)
        for name in [d for d in dirs if (here / d).is_symlink()]:
            tree.skipped.append(Skipped(_rel(here / name, src_root), "",
                                        "a symbolic link to a folder: never followed"))
        dirs[:] = sorted(d for d in dirs if not (here / d).is_symlink()
                         and (here / d).resolve() != skip_dir)
        weights = model_weights(files)
        if weights is not None:   # a model folder: one source, its files not on their own
            _take_folder(tree, folders, src_root, here, sorted(files), weights, pattern)
            continue
        for name in sorted(files):
            rel = _rel(here / name, src_root)
            if (pattern and not _matches(rel, pattern)) or checkpoint_suffix(name) is None:
                tree.ignored.append(rel)
            else:
                candidates.append(rel)
    _plan(tree, src_root, candidates, TARGETS[to])
    _plan_folders(tree, src_root, folders, TARGETS[to])
    _skip_outputs_inside(tree, src_root, dst_root)
    tree.sources = _refuse_collisions(tree.sources)
    return tree


def _skip_outputs_inside(tree: Tree, src_root: Path, dst_root: Path) -> None:
    """When DST_DIR holds SRC_DIR, a source's output can land inside SRC_DIR (``bulk d/src d``:
    ``d/src/src/m.pt`` -> ``d/src/m.safetensors``, over a source): such sources are skipped.
    (When SRC_DIR holds DST_DIR, DST_DIR is never scanned, and outputs land only inside it.)"""
    src_root, dst_root = src_root.resolve(), dst_root.resolve()
    if dst_root not in src_root.parents:
        return
    inside = src_root.relative_to(dst_root).as_posix() + "/"
    keep = []
    for source in tree.sources:
        if source.output.startswith(inside):
            tree.skipped.append(Skipped(source.path, source.output,
                                        f"its output {source.output} would land inside SRC_DIR "
                                        f"(DST_DIR holds SRC_DIR): not converted"))
        else:
            keep.append(source)
    tree.sources = keep


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _plan(tree: Tree, src_root: Path, candidates: list[str], suffix: str) -> None:
    """One source (or skipped entry) per candidate; shards go with their index."""
    indexes = {rel: _shards(src_root, rel) for rel in candidates if sharding.is_index(rel)}
    shards = {s for listed in indexes.values() for s in listed}
    for rel in candidates:
        if rel in shards:
            continue  # converted as part of its index
        files = (rel, *sorted(indexes.get(rel, ())))
        output = rel[: len(rel) - len(checkpoint_suffix(rel))] + suffix
        problem = next(((f, p) for f in files if (p := unreadable(src_root, f))), None)
        if problem:
            reason = problem[1] if problem[0] == rel else f"its shard {problem[0]}: {problem[1]}"
            tree.skipped.append(Skipped(rel, output, reason))
        else:
            tree.sources.append(Source(rel, output, files, sum(_size(src_root / f) for f in files)))


def model_weights(names: list[str]) -> str | None:
    """The weights file of a Hugging Face model folder holding these file names (the one
    transformers reads first), or None when they are not a model folder's."""
    if hf_folder.CONFIG not in names:
        return None
    return next((w for w in hf_folder.WEIGHT_FILES if w in names), None)


def _take_folder(tree: Tree, folders: list, src_root: Path, here: Path, names: list[str],
                 weights: str, pattern: str | None) -> None:
    """The model folder ``here`` as one source (unless ``--pattern`` matches neither its path
    nor its weights' name); its other files ignored."""
    rel, taken = _rel(here, src_root), ()
    if not pattern or _matches(rel, pattern) or _matches(weights, pattern):
        taken = _folder_files(src_root, rel, weights)
        folders.append((rel, taken))
    tree.ignored.extend(r for name in names if (r := _rel(here / name, src_root)) not in taken)


def _folder_files(src_root: Path, rel: str, weights: str) -> tuple[str, ...]:
    """A model folder's files as one source: config.json, the weights, their shards."""
    inside = PurePosixPath(rel)
    index = (inside / weights).as_posix()
    shards = sorted(_shards(src_root, index)) if sharding.is_index(weights) else []
    return ((inside / hf_folder.CONFIG).as_posix(), index, *shards)


def _plan_folders(tree: Tree, src_root: Path, folders: list[tuple[str, tuple[str, ...]]],
                  suffix: str) -> None:
    """One source per model folder (its relative path, its files), its output named after
    the folder (after SRC_DIR for SRC_DIR itself)."""
    for rel, files in folders:
        output = (rel if rel != "." else src_root.resolve().name) + suffix
        problem = next(((f, p) for f in files if (p := unreadable(src_root, f))), None)
        if problem:
            tree.skipped.append(Skipped(rel, output, f"its file {problem[0]}: {problem[1]}"))
        else:
            tree.sources.append(Source(rel, output, files,
                                       sum(_size(src_root / f) for f in files)))


def unreadable(src_root: Path, rel: str) -> str | None:
    """Why ``src_root/rel`` must not be read (a link leaving the root, not a regular file),
    or None. ``src_root`` is resolved; ``rel`` has no linked folders (the walk follows none)."""
    path = src_root / rel
    try:
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode):
            target = Path(os.path.realpath(path))
            if target != src_root and src_root not in target.parents:
                return "a symbolic link that leaves SRC_DIR: not read"
            mode = os.stat(path).st_mode
    except OSError:
        return None  # missing: the conversion fails and says so
    if not stat.S_ISREG(mode):
        return "not a regular file (a FIFO, device or socket): not read"
    return None


def checkpoint_suffix(name: str) -> str | None:
    """The format suffix a file name ends with (``.weights.h5``, ``.pt`` ...), if it is readable."""
    try:
        fmt = formats.for_path(name)
    except TranscoderError:
        return None
    if not fmt.can_read:
        return None
    lower = name.lower()
    return max((s for s in fmt.suffixes if lower.endswith(s)), key=len)


def _matches(rel: str, pattern: str) -> bool:
    """``--pattern`` (fnmatch) matches the file name, or the relative path if it holds a ``/``
    (``*`` then matches across folders too: ``vision/*.pt``)."""
    target = rel if "/" in pattern else PurePosixPath(rel).name
    return fnmatch.fnmatchcase(target, pattern)


def _shards(src_root: Path, index_rel: str) -> set[str]:
    """The shard files an index lists (empty if it cannot or must not be read: the
    conversion, or the skip, says why)."""
    if unreadable(src_root, index_rel):
        return set()
    try:
        names = set(sharding.weight_map(src_root / index_rel).values())
    except TranscoderError:
        return set()
    folder = PurePosixPath(index_rel).parent
    return {(folder / n).as_posix() for n in names}


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _refuse_collisions(sources: list[Source]) -> list[Source]:
    """Two sources that would write one output (``a.pt`` and ``a.safetensors``) are both refused."""
    by_output: dict[str, list[Source]] = {}
    for src in sources:
        by_output.setdefault(src.output, []).append(src)
    out = []
    for src in sources:
        rivals = [s.path for s in by_output[src.output] if s is not src]
        if rivals:
            src = Source(src.path, src.output, src.files, src.size,
                         error=f"{src.path}: {', '.join(rivals)} would write the same output "
                               f"{src.output} (rename one, or select one with --pattern)")
        out.append(src)
    return out


def output_folder(dst_root: Path, output: str, create: bool) -> Path | None:
    """The folder of ``output`` inside ``dst_root`` (created, if ``create``), or None if any part
    of it below ``dst_root`` is a symbolic link or not a folder: outputs are never written, and
    stale temporary files never deleted, through a link (it could lead out of DST_DIR)."""
    folder = dst_root
    for part in PurePosixPath(output).parent.parts:
        folder = folder / part
        if create:
            try:
                folder.mkdir()
            except FileExistsError:
                pass
            except OSError:
                return None
        try:
            mode = os.lstat(folder).st_mode
        except OSError:
            return None
        if not stat.S_ISDIR(mode):
            return None
    return folder
