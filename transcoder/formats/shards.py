"""Sharded checkpoints: an index file naming the shard files beside it, as one checkpoint.

Reading: ``*.safetensors.index.json`` (read by :mod:`.safetensors_format`) and
``pytorch_model.bin.index.json`` (``torch.save`` shards, :func:`read`) hold the same JSON:
``{"metadata": {...}, "weight_map": {tensor name: shard file name}}``; the shards' tensors
make one checkpoint, in the order of the shards' first appearance in the map.

Writing (``--shard-size``) follows huggingface_hub's ``save_torch_state_dict`` (read in its
``serialization/_base.py`` and ``_torch.py``, 2.x): tensors are taken in checkpoint order and
a shard is closed when the next tensor would take it past the limit; a tensor larger than
the limit gets a shard of its own, placed where it is met (before the shard being filled);
shard ``k`` of ``n`` of ``model.safetensors`` is ``model-0000k-of-0000n.safetensors``; the
index ``model.safetensors.index.json`` is ``json.dump({"metadata": {"total_size": bytes},
"weight_map": ...}, indent=2)`` with the names in shard order. Sizes are decimal, as there
(``5GB`` = 5 * 10**9 bytes). One shard and no index when everything fits, unless the index
itself is the file asked for.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..checkpoint import Checkpoint
from ..errors import FormatError, UsageError
from ._guard import jsonsafe
from ._guard.brief import brief
from ._guard.regular import open_regular

INDEX = ".index.json"
MAX_INDEX = 64 << 20              # real indexes of the largest models are a few MiB
DEFAULT_SHARD_BYTES = 5 * 10**9   # huggingface_hub's MAX_SHARD_SIZE, "5GB"
UNITS = {"TB": 10**12, "GB": 10**9, "MB": 10**6, "KB": 10**3}
#: formats whose files can be shards; why the others cannot
SHARDED_FORMATS = ("safetensors", "pt")
REFUSALS = {
    "keras_h5": "Keras loads a legacy .h5 from one file (load_weights reads no shards): write "
                "one .h5, or shard a .safetensors or .pt target",
    "keras_weights_h5": "Keras 3 shards its own weights (model.save_weights('m.weights.json', "
                        "max_shard_size=...)); transcoder writes one .weights.h5",
    "keras_zip": "a .keras archive is one file",
}


def is_index(path: Path | str) -> bool:
    return Path(path).name.lower().endswith(INDEX)


def base_name(name: str) -> str:
    """``model.safetensors`` for ``model.safetensors.index.json`` (other names unchanged)."""
    return name[: -len(INDEX)] if is_index(name) else name


def weight_map(path: Path) -> dict[str, str]:
    """The ``weight_map`` of an index (tensor name -> shard file name beside it); FormatError
    unless it is one."""
    try:
        with open_regular(path) as fh:
            data = fh.read(MAX_INDEX + 1)
    except OSError as exc:
        raise FormatError(f"cannot read: {exc.strerror or exc}", path=path) from None
    if len(data) > MAX_INDEX:
        raise FormatError(f"not a checkpoint index (larger than {MAX_INDEX} bytes)", path=path)
    index = jsonsafe.loads(data, "the checkpoint index", path)
    found = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(found, dict) or not all(isinstance(v, str) for v in found.values()):
        raise FormatError('not a checkpoint index (no "weight_map" from tensor names to shard '
                          'file names)', path=path)
    for shard in found.values():
        if Path(shard).name != shard or shard in ("", ".", "..") or "\0" in shard:
            raise FormatError(f"shard name {brief(shard)} is not a file beside the index",
                              path=path)
        if is_index(shard):
            raise FormatError(f"shard {brief(shard)} is an index itself", path=path)
    return found


def shard_paths(path: Path) -> list[Path]:
    """The shard files an index names, in the order of their first appearance."""
    return [path.parent / name for name in dict.fromkeys(weight_map(path).values())]


# -- reading -------------------------------------------------------------------------------------

def read(path: Path, options: Any, read_file: Callable[[Path, Any], Checkpoint]) -> Checkpoint:
    """The shards of an index as one checkpoint, each read by ``read_file`` with ``options``
    (the format's ``ReadOptions``)."""
    names = weight_map(path)
    merged: Checkpoint | None = None
    try:
        for shard in dict.fromkeys(names.values()):
            part = read_file(existing_shard(path, shard), options)
            if merged is None:
                merged = Checkpoint({}, part.layout, source=str(path), format=part.format,
                                    meta=dict(part.meta))
            merged.on_close(part.close)
            _merge(merged, part, path.parent / shard)
        if merged is None:
            raise FormatError("the index names no shard", path=path)
        _check_listed(merged, names, path)
    except BaseException:
        if merged is not None:
            merged.close()
        raise
    return merged


def existing_shard(path: Path, shard: str) -> Path:
    """The shard's path; FormatError naming the index if there is no regular file to open
    there (a name too long for the file system, a FIFO or a device included)."""
    try:
        with open_regular(path.parent / shard):   # a FIFO would block every reader
            pass
    except (OSError, ValueError) as exc:   # ValueError: a NUL or a lone surrogate in the name
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "no valid file name"
        shown = shard if len(shard) <= 80 else f"{shard[:60]}...{shard[-16:]}"
        raise FormatError(f"names shard {shown!r}, which cannot be opened ({why})",
                          path=path) from None
    return path.parent / shard


def _merge(merged: Checkpoint, part: Checkpoint, shard: Path) -> None:
    if part.meta.get("stripped_prefixes") != merged.meta.get("stripped_prefixes"):
        raise FormatError("its tensor names carry other prefixes than the first shard's",
                          path=shard)
    for name, ref in part.tensors.items():
        if name in merged.tensors:
            raise FormatError("tensor appears in two shards", path=shard, tensor=name)
        merged.tensors[name] = ref
    kinds = part.meta.get("module_kinds")
    if kinds:
        merged.meta["module_kinds"] = {**merged.meta.get("module_kinds", {}), **kinds}


def _check_listed(merged: Checkpoint, names: dict[str, str], path: Path) -> None:
    prefix = "".join(merged.meta.get("stripped_prefixes") or [])
    held = {prefix + name for name in merged.tensors} | set(merged.tensors)
    missing = sorted(set(names) - held)
    if missing:
        raise FormatError("index lists tensors its shards do not hold: "
                          f"{', '.join(brief(m, 60) for m in missing[:5])}", path=path)


# -- writing -------------------------------------------------------------------------------------

def parse_size(text: str | int) -> int:
    """``"5GB"`` -> 5 * 10**9 (TB, GB, MB, KB: decimal, as huggingface_hub reads them), or a
    number of bytes; UsageError otherwise."""
    if isinstance(text, int):
        size = text
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]B)?\s*", str(text), re.IGNORECASE)
        if match is None:
            raise UsageError(f"--shard-size {text!r} is not a size (e.g. 5GB, 500MB or a "
                             "number of bytes)")
        size = int(float(match[1]) * UNITS[match[2].upper()]) if match[2] else int(match[1])
    if size < 1:
        raise UsageError("--shard-size must be at least 1 byte")
    return size


def check_target(format_name: str, path: Path) -> None:
    """UsageError unless files of this format can be written in shards."""
    if format_name not in SHARDED_FORMATS:
        reason = REFUSALS.get(format_name, "this format cannot be written in shards")
        raise UsageError(f"cannot write shards: {reason}", path=path)


@dataclass(frozen=True)
class Layout:
    """The files of a sharded output, beside each other: the shards, then the index if any."""

    files: list[str]             # shard file names, in order
    groups: list[list[str]]      # the tensor names each shard holds, in checkpoint order
    index: str | None            # the index file name; None: one file, no index
    total_size: int
    stem: str                    # e.g. "model" and ".safetensors": what shard names are made of
    suffix: str

    @property
    def names(self) -> list[str]:
        """Every file written, the index last (published last: see pipeline.atomic_files)."""
        return self.files + ([self.index] if self.index else [])

    def index_json(self) -> bytes:
        weight_map = {name: file for file, group in zip(self.files, self.groups) for name in group}
        index = {"metadata": {"total_size": self.total_size}, "weight_map": weight_map}
        return json.dumps(index, indent=2).encode()

    def earlier_outputs(self, folder: Path) -> list[str]:
        """Files in ``folder`` that an output of this name wrote before (one file, shards, the
        index), which the new files would mix with; huggingface_hub removes them too."""
        own = re.compile(re.escape(self.stem) + r"(-\d{5}-of-\d{5})?" + re.escape(self.suffix)
                         + r"(\.index\.json)?")
        try:
            entries = sorted(os.listdir(folder))
        except OSError:
            return []
        return [e for e in entries if own.fullmatch(e) and e not in self.names]


def layout(name: str, suffix: str, sizes: list[tuple[str, int]], max_bytes: int) -> Layout:
    """The files for tensors of ``sizes`` (name, bytes; in order) written as ``name`` (the
    single file, e.g. ``model.safetensors``, or the index, ``model.safetensors.index.json``)
    in shards of at most ``max_bytes``; ``suffix`` is the format's (``.safetensors``)."""
    base = base_name(name)
    stem = base[: len(base) - len(suffix)]
    groups = split(sizes, max_bytes)
    total = sum(size for _, size in sizes)
    if len(groups) == 1 and not is_index(name):
        return Layout([base], groups, None, total, stem, suffix)
    files = [f"{stem}-{k + 1:05d}-of-{len(groups):05d}{suffix}" for k in range(len(groups))]
    return Layout(files, groups, base + INDEX, total, stem, suffix)


def split(sizes: list[tuple[str, int]], max_bytes: int) -> list[list[str]]:
    """huggingface_hub's split: in order, a new shard when the next tensor would pass
    ``max_bytes``; a larger tensor alone, in a shard placed before the one being filled."""
    shards: list[list[str]] = []
    current: list[str] = []
    filled = 0
    for name, size in sizes:
        if size > max_bytes:
            shards.append([name])
            continue
        if filled + size > max_bytes:
            shards.append(current)
            current, filled = [], 0
        current.append(name)
        filled += size
    if current or not shards:
        shards.append(current)
    return shards


def subset(ckpt: Checkpoint, names: list[str]) -> Checkpoint:
    """The checkpoint's tensors of one shard (the same lazy references; closing it closes
    nothing: the whole checkpoint's owner does)."""
    return Checkpoint({n: ckpt.tensors[n] for n in names}, ckpt.layout, source=ckpt.source,
                      format=ckpt.format, meta=ckpt.meta)
