"""The format registry: which reader and writer handle which file.

A file to write takes the format its name implies (longest matching suffix, so
``.weights.h5`` wins over ``.h5``). A file to read is what its content is (:mod:`.sniff`),
whatever its name: a safetensors file named ``.pt`` or a TorchScript archive named ``.jit`` is
read for what it is, with a one-line note when the name says otherwise; ``--from FORMAT``
overrides. The content is checked against the format's magic bytes before any parsing.
Third-party packages add formats through the ``transcoder.formats`` entry-point group: each
entry point is a zero-argument callable returning a :class:`Format`. Plugins are looked up
only for names no built-in format takes (looking them up costs start-up time), so a built-in
suffix always wins.
"""
from __future__ import annotations

import importlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..checkpoint import LAYOUT_KERAS, LAYOUT_TORCH, Checkpoint
from ..errors import FormatError, UsageError

ENTRY_POINT_GROUP = "transcoder.formats"


@dataclass(frozen=True)
class ReadOptions:
    """What a user can tell a reader: ``key`` picks the state dict inside a training checkpoint."""

    key: str | None = None
    revision: str | None = None   # a Hugging Face cache snapshot (--revision)


Reader = Callable[[Path, ReadOptions], Checkpoint]
Writer = Callable[[Checkpoint, Path], None]


@dataclass(frozen=True)
class Format:
    """One file format. ``module`` is imported lazily, so unused formats cost nothing."""

    name: str
    suffixes: tuple[str, ...]
    layout: str                       # layout the writer expects: "torch" or "keras"
    module: str                       # module holding ``read`` and/or ``write``
    magics: tuple[bytes, ...] = ()    # accepted leading bytes; empty = no check
    description: str = ""
    can_read: bool = True
    #: written only through a Keras model (Keras' own savers): the architecture is needed
    needs_model: bool = False
    #: a deployment artifact exported from that Keras model (transcoder.export); the check
    #: runs the artifact itself
    exported: bool = False
    #: the artifact is a folder, published whole (pipeline.atomic_folder)
    folder: bool = False
    #: the reader itself, where it is not ``module.read``
    reader: Callable | None = None

    def _load(self, attr: str) -> Callable:
        if attr == "read" and self.reader is not None:
            return self.reader
        return getattr(importlib.import_module(self.module), attr)

    def read(self, path: Path, options: ReadOptions | None = None) -> Checkpoint:
        if not self.can_read:
            raise UsageError(f"{self.description or self.name} cannot be read as a checkpoint",
                             path=path, hint="convert from the checkpoint it was exported from"
                             if self.exported else None)
        if not self.folder:
            check_magic(self, path)
        return self._load("read")(path, options or ReadOptions())

    def check_writable(self, path: Path) -> None:
        """UsageError when this format cannot be written from weights alone."""
        if self.needs_model:
            message = NEEDS_ARCH_EXPORT if self.exported else NEEDS_ARCH
            raise UsageError(message.format(self.suffixes[0], self.description), path=path)

    def write(self, ckpt: Checkpoint, path: Path) -> None:
        self.check_writable(path)
        self._load("write")(ckpt, path)


ZIP = b"PK\x03\x04"
HDF5 = b"\x89HDF\r\n\x1a\n"
PICKLE = b"\x80"

NEEDS_ARCH = ("writing a Keras 3 {} file needs the architecture: pass --keras-model (or --model "
              "with --input-shape), or write a legacy .h5 (loads with "
              "model.load_weights(path, by_name=True))")
NEEDS_ARCH_EXPORT = ("writing a {1} needs the architecture: pass --model (with --input-shape) "
                     "or --keras-model")

PT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def _read_model_folder(path: Path, options: ReadOptions) -> Checkpoint:
    """A Hugging Face model folder: its weights file read by its own format, then what its
    config says (:mod:`.hf_folder`)."""
    from . import hf_folder

    folder = hf_folder.resolve(path, options.revision)
    if folder is None:
        raise FormatError("not a Hugging Face model folder (no config.json)", path=path)
    fmt, _ = for_source(folder.weights)
    return hf_folder.attach(fmt.read(folder.weights, options), folder, path)


BUILTIN_FORMATS: tuple[Format, ...] = (
    Format("pt", PT_SUFFIXES + tuple(s + ".index.json" for s in PT_SUFFIXES), "torch",
           "transcoder.formats.pt", (ZIP, PICKLE),
           "PyTorch checkpoint (torch.save zip, legacy pickle, TorchScript)"),
    Format("safetensors", (".safetensors", ".safetensors.index.json"), "torch",
           "transcoder.formats.safetensors_format", (), "safetensors (single file or sharded index)"),
    Format("keras_weights_h5", (".weights.h5",), "keras", "transcoder.formats.keras_h5",
           (HDF5,), "Keras 3 weights file (.weights.h5)", needs_model=True),
    Format("keras_h5", (".h5", ".hdf5"), "keras", "transcoder.formats.keras_h5",
           (HDF5,), "Keras legacy HDF5 (weights-only or full model)"),
    Format("keras_zip", (".keras",), "keras", "transcoder.formats.keras_zip",
           (ZIP,), "Keras 3 model archive (.keras)", needs_model=True),
    Format("hf_folder", (), "torch", "transcoder.formats.hf_folder", (),
           "Hugging Face model folder (config.json + weights; a hub cache snapshot or repo id)",
           folder=True, reader=_read_model_folder),
    Format("savedmodel", (".savedmodel",), "keras", "transcoder.export", (),
           "TensorFlow SavedModel folder", can_read=False, needs_model=True, exported=True,
           folder=True),
    Format("tflite", (".tflite",), "keras", "transcoder.export", (),
           "TFLite flatbuffer", can_read=False, needs_model=True, exported=True),
)


def all_formats() -> list[Format]:
    """Built-in formats followed by plugins from the entry-point group."""
    from importlib.metadata import entry_points

    return list(BUILTIN_FORMATS) + [ep.load()() for ep in entry_points(group=ENTRY_POINT_GROUP)]


def for_path(path: Path | str) -> Format:
    """The format a file name implies; UsageError naming the supported suffixes otherwise."""
    name = Path(path).name.lower()
    fmt = _longest_match(name, BUILTIN_FORMATS) or _longest_match(name, all_formats())
    if fmt is None:
        known = ", ".join(s for f in all_formats() for s in f.suffixes)
        raise UsageError(f"unknown file type (supported: {known})", path=path)
    return fmt


def by_name(name: str) -> Format:
    """A format by its name (``--from``); UsageError naming the choices otherwise."""
    found = next((f for f in all_formats() if f.name == name), None)
    if found is None:
        raise UsageError(f"unknown format {name!r} (one of: "
                         f"{', '.join(f.name for f in all_formats())})")
    return found


def for_source(path: Path | str, name: str | None = None) -> tuple[Format, str | None]:
    """The format to read ``path`` with: ``name`` (``--from``) if given, else what its content
    is, else what its name says; and a note when the content and the name disagree."""
    from .sniff import sniff

    if name is not None:
        return by_name(name), None
    if _model_folder(path):
        return by_name("hf_folder"), None
    found = sniff(Path(path))
    named = _longest_match(Path(path).name.lower(), BUILTIN_FORMATS)
    if found is None:
        return for_path(path), None
    fmt = next(f for f in BUILTIN_FORMATS if f.name == found)
    if named is not None and named.module == fmt.module:
        return named, None   # e.g. .weights.h5 and .h5: one reader
    said = f"its name says {named.description}" if named else "its name says nothing known"
    return fmt, f"{path}: read as {fmt.description}, by its content ({said})"


def layout_of(path: Path | str) -> str:
    """The layout (``"torch"`` or ``"keras"``) of a file: by its content when it exists, else
    by the format its name implies."""
    if Path(path).is_file() or _model_folder(path):
        return for_source(path)[0].layout
    return for_path(path).layout


def _model_folder(path: Path | str) -> bool:
    """A Hugging Face model folder, cache folder, or repo id in the local cache."""
    from . import hf_folder

    if hf_folder.is_model_folder(path):
        return True
    return not Path(path).exists() and bool(hf_folder.REPO_ID.match(str(path))) \
        and hf_folder.resolve(path) is not None


def other_layout(layout: str) -> str:
    return LAYOUT_KERAS if layout == LAYOUT_TORCH else LAYOUT_TORCH


def _longest_match(name: str, formats) -> Format | None:
    matches = [(len(s), f) for f in formats for s in f.suffixes if name.endswith(s)]
    return max(matches, key=lambda m: m[0])[1] if matches else None


def check_magic(fmt: Format, path: Path) -> None:
    """FormatError unless ``path`` is a regular file starting with one of the format's magic
    byte strings. (Opened without blocking: a FIFO or a device is refused, not waited on.)"""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        with open(fd, "rb") as fh:
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode):
                raise IsADirectoryError
            if not stat.S_ISREG(mode):
                raise FormatError("not a regular file (a FIFO, device or socket)", path=path)
            head = fh.read(16)
    except FileNotFoundError:
        raise FormatError("no such file", path=path) from None
    except IsADirectoryError:
        raise FormatError("is a directory, not a checkpoint file", path=path) from None
    except OSError as exc:
        raise FormatError(f"cannot read: {exc.strerror}", path=path) from None
    if not head:
        raise FormatError("file is empty", path=path)
    index = Path(path).name.lower().endswith(".index.json")   # JSON: its reader checks it
    if fmt.magics and not index and not any(head.startswith(m) for m in fmt.magics):
        raise FormatError(f"not a valid {fmt.description or fmt.name} file (unexpected leading bytes)",
                          path=path)
