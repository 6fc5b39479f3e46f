"""Hugging Face model folders as a source: what ``save_pretrained`` writes, a hub cache
snapshot, or a repo id present in the local hub cache.

A model folder holds ``config.json`` and its weights in one of the layouts transformers writes
(:data:`WEIGHT_FILES`, in the order transformers itself prefers them). :func:`resolve` turns
any of these into a :class:`ModelFolder`: the weights file to read like any other checkpoint,
and the config, whose ``model_type`` settles what the tensor names leave open
(:mod:`transcoder.rules.hf_naming`):

- ``DIR`` with ``config.json``: a ``save_pretrained`` folder, or a cache snapshot
  (``models--org--name/snapshots/REV/``);
- ``models--org--name``: a cache repo folder; its snapshot is ``refs/<revision>`` (``main`` by
  default) or a snapshot folder named by the revision;
- ``org/name`` that is not a path: looked up in the local hub cache, offline
  (``huggingface_hub``'s own lookup where it is installed, else ``HF_HUB_CACHE``,
  ``HF_HOME/hub``, ``~/.cache/huggingface/hub``). Nothing is ever downloaded.

Nothing here runs code from the folder: ``config.json`` is parsed as bounded JSON, and a config
asking for remote code (``auto_map``) is only noted.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoint import LAYOUT_TORCH, Checkpoint
from ..errors import FormatError, UsageError
from ._guard import jsonsafe
from .base import Format, Head, ReadOptions

CONFIG = "config.json"
#: transformers' own preference: safetensors first, sharded after single.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
#: a config larger than this is not a model config
MAX_CONFIG_BYTES = 4 << 20
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
CACHE_REPO = re.compile(r"^models--[^/]+--[^/]+$")
REVISION = re.compile(r"^[\w.\-]+$")


@dataclass(frozen=True)
class ModelFolder:
    """A resolved model folder: where it is, the weights file in it, and its config."""

    folder: Path
    weights: Path
    config: dict[str, Any] = field(hash=False)

    @property
    def model_type(self) -> str | None:
        value = self.config.get("model_type")
        return value if isinstance(value, str) else None

    def note(self, given: str) -> str:
        kind = f"a {self.model_type} model" if self.model_type else "a model"
        return f"{given}: Hugging Face folder of {kind}, reading {self.weights.name}"


def resolve(path: str | os.PathLike, revision: str | None = None) -> ModelFolder | None:
    """The model folder ``path`` names, or None when it names none (a plain file, say).
    FormatError when it is a model folder without weights; UsageError for a repo id not in the
    local cache or an unknown revision."""
    given = Path(path)
    if given.is_dir():
        if CACHE_REPO.match(given.name) and (given / "snapshots").is_dir():
            return _from_folder(_snapshot(given, revision))
        return _from_folder(given) if (given / CONFIG).is_file() else None
    text = os.fspath(path)
    if not given.exists() and REPO_ID.match(text) and not text.endswith(_SUFFIXES):
        return _from_folder(_cached_repo(text, revision))
    return None


#: names that are files to be written or read, never repo ids
_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".h5", ".hdf5", ".keras", ".json",
             ".tflite", ".savedmodel")


def is_model_folder(path: str | os.PathLike) -> bool:
    """Cheap: does ``path`` look like a model folder (no config parsed)?"""
    given = Path(path)
    return given.is_dir() and ((given / CONFIG).is_file() or bool(CACHE_REPO.match(given.name)))


def _from_folder(folder: Path) -> ModelFolder:
    config = read_config(folder / CONFIG)
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return ModelFolder(folder, folder / name, config)
    raise FormatError(f"holds {CONFIG} but no weights (looked for {', '.join(WEIGHT_FILES)})",
                      path=folder)


def read_config(path: Path) -> dict[str, Any]:
    """``config.json`` as a dict: bounded in size and nesting; FormatError otherwise."""
    try:
        if not path.is_file():
            raise FormatError(f"no {CONFIG}", path=path.parent)
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise FormatError(f"larger than {MAX_CONFIG_BYTES >> 20} MiB: not a model config",
                              path=path)
        text = path.read_bytes()
    except OSError as exc:
        raise FormatError(f"cannot read: {exc.strerror}", path=path) from None
    config = jsonsafe.loads(text, CONFIG, path)
    if not isinstance(config, dict):
        raise FormatError("is not a JSON object", path=path)
    return config


def _snapshot(repo: Path, revision: str | None) -> Path:
    """The snapshot folder of a cache repo folder for ``revision`` (a ref or a commit)."""
    wanted = revision or "main"
    if not REVISION.match(wanted):
        raise UsageError(f"--revision {wanted!r} is not a branch, tag or commit name")
    ref = repo / "refs" / wanted
    commit = ref.read_text().strip() if ref.is_file() else wanted
    snapshot = repo / "snapshots" / commit
    if not REVISION.match(commit) or not snapshot.is_dir():
        known = sorted(p.name for p in (repo / "refs").glob("*")) if (repo / "refs").is_dir() else []
        raise UsageError(f"no snapshot for revision {wanted!r} in the cache", path=repo,
                         hint=f"known refs: {', '.join(known)}" if known else None)
    return snapshot


def cache_dir() -> Path:
    """The hub cache, where huggingface_hub looks for it."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface")
    return Path(home) / "hub"


def _cached_repo(repo_id: str, revision: str | None) -> Path:
    """The snapshot folder of ``repo_id`` in the local cache, offline."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        snapshot_download = None
    if snapshot_download is not None:
        try:
            return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
        except LocalEntryNotFoundError:
            pass
        except Exception:  # noqa: BLE001 - its other refusals: fall back to reading the cache
            pass
    repo = cache_dir() / f"models--{repo_id.replace('/', '--')}"
    if not repo.is_dir():
        raise UsageError(f"{repo_id}: no such file, and no such model in the local Hugging Face "
                         f"cache ({cache_dir()})",
                         hint="download it first (hf download), or give a path")
    return _snapshot(repo, revision)



def read(path: Path, options: ReadOptions) -> Checkpoint:
    """The folder's weights, read by their own format, with what its config says."""
    from . import pt, safetensors_format

    folder = resolve(path, options.revision)
    if folder is None:
        raise FormatError(f"not a Hugging Face model folder (no {CONFIG})", path=path)
    fmt = safetensors_format.FORMAT if ".safetensors" in folder.weights.name else pt.FORMAT
    return attach(fmt.read(folder.weights, options), folder, path)


def sniff(head: Head, path: Path) -> bool:
    """A model folder or cache repo folder; or a name that is no file and reads as a repo id
    (the reader then finds it in the cache, or says it is not there)."""
    if head.folder:
        return is_model_folder(path)
    text = str(path)
    # the name first: os.path.exists is False (not an OSError) for a name too long to stat
    return isinstance(head.problem, FormatError) and bool(REPO_ID.match(text)) \
        and not text.endswith(_SUFFIXES) and not os.path.exists(path)


def attach(ckpt, folder: ModelFolder, given: object):
    """Record what the folder's config says on the checkpoint read from its weights: the kinds
    its family's naming settles (``meta["module_kinds"]``/``["module_options"]``, below what
    ``--model`` says), the config itself (``meta["hf_config"]``), and notes."""
    from ..rules.hf_naming import kinds_from_config

    modules = {name.rpartition(".")[0] for name in ckpt.tensors}
    kinds, module_options = kinds_from_config(folder.config, modules)
    ckpt.meta["module_kinds"] = {**kinds, **ckpt.meta.get("module_kinds", {})}
    ckpt.meta["module_options"] = {**module_options, **ckpt.meta.get("module_options", {})}
    ckpt.meta["hf_config"] = folder.config
    ckpt.meta["hf_folder"] = str(folder.folder)
    notes = ckpt.meta.setdefault("notes", [])
    notes.append(folder.note(str(given)))
    if kinds:
        notes.append(f"{len(kinds)} module kind(s) from the {folder.model_type} naming of "
                     f"{CONFIG} (e.g. {next(iter(kinds))}: {next(iter(kinds.values()))})")
    if "auto_map" in folder.config:
        notes.append(f"{CONFIG} names remote code (auto_map): never run; the weights are read "
                     f"as tensors")
    return ckpt


FORMAT = Format("hf_folder", (), LAYOUT_TORCH,
                description="Hugging Face model folder (config.json + weights; a hub cache "
                            "snapshot or repo id)", folder=True, sniff=sniff, reader=read)
