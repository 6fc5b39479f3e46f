"""Which files of a source tree are checkpoints, and where each one's output goes.

A source is one checkpoint: usually one file, or a ``*.safetensors.index.json`` together with
the shards it lists (the shards are then not converted on their own). Its output keeps the
relative folder and the file stem, with the extension of the target format:
``SRC/a/b/model.safetensors`` -> ``DST/a/b/model.h5``.
"""
from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .. import formats
from ..errors import TranscoderError

#: ``--to`` value -> output extension.
TARGETS: dict[str, str] = {"h5": ".h5", "safetensors": ".safetensors", "pt": ".pt"}

INDEX_SUFFIX = ".safetensors.index.json"


@dataclass(frozen=True)
class Source:
    """One checkpoint to convert; paths are POSIX and relative to the source / output roots."""

    path: str                                  # the file transcode() reads
    output: str                                # the file it writes
    files: tuple[str, ...]                     # every file the checkpoint's content lives in
    size: int                                  # their total size in bytes
    error: str | None = None                   # set when the source cannot even be attempted


@dataclass
class Tree:
    sources: list[Source] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)   # not checkpoints, or not matching --pattern


def scan(src_root: Path, dst_root: Path, to: str, pattern: str | None = None) -> Tree:
    """Walk ``src_root`` (sorted, symlinked folders not followed) and plan one output per checkpoint."""
    suffix = TARGETS[to]
    tree, candidates = Tree(), []
    skip_dir = dst_root.resolve()
    for folder, dirs, files in os.walk(src_root):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if (here / d).resolve() != skip_dir)
        for name in sorted(files):
            rel = (here / name).relative_to(src_root).as_posix()
            if pattern and not _matches(rel, pattern):
                tree.ignored.append(rel)
            elif checkpoint_suffix(name) is None:
                tree.ignored.append(rel)
            else:
                candidates.append(rel)
    shards = {s for rel in candidates if rel.endswith(INDEX_SUFFIX) for s in _shards(src_root, rel)}
    for rel in candidates:
        if rel in shards:
            continue  # converted as part of its index
        files = (rel, *sorted(_shards(src_root, rel))) if rel.endswith(INDEX_SUFFIX) else (rel,)
        stem = rel[: len(rel) - len(checkpoint_suffix(rel))]
        size = sum(_size(src_root / f) for f in files)
        tree.sources.append(Source(rel, stem + suffix, files, size))
    tree.sources = _refuse_collisions(tree.sources)
    return tree


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
    """The shard files a safetensors index lists (empty if it is unreadable: conversion says why)."""
    try:
        weight_map = json.loads((src_root / index_rel).read_text())["weight_map"]
        names = {str(v) for v in weight_map.values()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()
    folder = PurePosixPath(index_rel).parent
    return {(folder / n).as_posix() for n in names if PurePosixPath(n).name == n}


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
