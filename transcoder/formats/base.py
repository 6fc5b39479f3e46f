"""The format protocol: what a file format module declares, and what a file's first bytes say.

A format module (``pt``, ``safetensors_format``, ``keras_h5``, ``keras_zip``; a plugin's
module) declares one :class:`Format` record: its name, suffixes, the layout its writer expects,
flags, and three callables: ``sniff(head, path) -> bool`` (is this content mine?),
``reader(path, options) -> Checkpoint`` and ``writer(checkpoint, path)``. The registry
(:mod:`transcoder.formats`) collects the records and asks each ``sniff`` in order.

:class:`Head` is what one open of a file gives every ``sniff``: its first bytes, its size,
and a zip archive's member names (its central directory read through the same handle), or
the reason it could not be read, which the reader later reports as it always has.
"""
from __future__ import annotations

import importlib
import os
import stat
import struct
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import Callable

from ..checkpoint import Checkpoint
from ..errors import FormatError, TranscoderError, UsageError
from ._guard import zipsafe

#: Leading bytes, defined once.
ZIP = b"PK\x03\x04"
HDF5 = b"\x89HDF\r\n\x1a\n"
PICKLE = b"\x80"
HEAD_BYTES = 16

NEEDS_ARCH = ("writing a Keras 3 {} file needs the architecture: pass --keras-model (or --model "
              "with --input-shape), or write a legacy .h5 (loads with "
              "model.load_weights(path, by_name=True))")
NEEDS_ARCH_EXPORT = ("writing a {1} needs the architecture: pass --model (with --input-shape) "
                     "or --keras-model")


@dataclass(frozen=True)
class ReadOptions:
    """What a user can tell a reader: ``key`` picks the state dict inside a training checkpoint."""

    key: str | None = None
    revision: str | None = None   # a Hugging Face cache snapshot (--revision)


@dataclass(frozen=True)
class Head:
    """One look at a path: a folder, or a regular file's first bytes and size (and, for a zip,
    its member names); ``problem`` is why it could not be looked at (None: it could)."""

    path: Path
    data: bytes = b""
    size: int = 0
    folder: bool = False
    zip_names: tuple[str, ...] | None = None   # None: not a zip, or an unreadable one
    problem: Exception | None = None   # raised when the file is read

    @classmethod
    def of(cls, path: Path | str) -> "Head":
        """Open ``path`` once, without blocking (a FIFO or device is refused, not waited on)."""
        path = Path(path)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        except FileNotFoundError:
            return cls(path, problem=FormatError("no such file", path=path))
        except IsADirectoryError:
            return cls(path, folder=True, problem=_folder(path))
        except OSError as exc:
            return cls(path, problem=_unreadable(path, exc))
        except ValueError as exc:   # a NUL or a lone surrogate in the name: as open() says it
            return cls(path, problem=exc)
        try:
            mode = os.fstat(fd).st_mode
        except OSError as exc:
            os.close(fd)
            return cls(path, problem=_unreadable(path, exc))
        if stat.S_ISDIR(mode):
            os.close(fd)
            return cls(path, folder=True, problem=_folder(path))
        with open(fd, "rb") as fh:
            if not stat.S_ISREG(mode):
                return cls(path, problem=FormatError(
                    "not a regular file (a FIFO, device or socket)", path=path))
            try:
                data, size = fh.read(HEAD_BYTES), os.fstat(fd).st_size
            except OSError as exc:
                return cls(path, problem=_unreadable(path, exc))
            problem = None if data else FormatError("file is empty", path=path)
            names = _zip_names(fh) if data.startswith(ZIP) else None
        return cls(path, data, size, zip_names=names, problem=problem)


def _folder(path: Path) -> FormatError:
    return FormatError("is a directory, not a checkpoint file", path=path)


def _unreadable(path: Path, exc: OSError) -> FormatError:
    return FormatError(f"cannot read: {exc.strerror}", path=path)


def _zip_names(fh) -> tuple[str, ...] | None:
    """The member names of the zip archive open as ``fh`` (None: not a readable archive)."""
    try:
        fh.seek(0)
        with zipsafe.open_zip(fh) as archive:
            return tuple(archive.namelist())
    except (TranscoderError, *zipsafe.ZIP_ERRORS, struct.error):
        return None   # the reader says why


class LazyModule:
    """A module imported when one of its names is first used: the format modules bind h5py
    and their HDF5 helpers so, and the registry reads their ``Format`` records without paying
    for h5py until a Keras file is read or written. (Each such module names the same modules
    under ``TYPE_CHECKING``, so the import graph still shows them.)"""

    def __init__(self, name: str) -> None:
        self._name = name
        self._module = None

    def __getattr__(self, attr: str):
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)


Sniffer = Callable[[Head, Path], bool]
Reader = Callable[[Path, ReadOptions], Checkpoint]
Writer = Callable[[Checkpoint, Path], None]


def never(head: Head, path: Path) -> bool:
    """The sniff of a format known only by its name."""
    return False


@dataclass(frozen=True)
class Format:
    """One file format. Built-in formats and new plugins give ``sniff``, ``reader`` and
    ``writer``; an older plugin may name a ``module`` holding ``read`` and ``write`` instead."""

    name: str
    suffixes: tuple[str, ...]
    layout: str                       # layout the writer expects: "torch" or "keras"
    module: str = ""                  # older plugins: the module holding ``read``/``write``
    magics: tuple[bytes, ...] = ()    # leading bytes the reader accepts; empty = no check
    description: str = ""
    can_read: bool = True
    #: written only through a Keras model (Keras' own savers): the architecture is needed
    needs_model: bool = False
    #: a deployment artifact exported from that Keras model (transcoder.export); the check
    #: runs the artifact itself
    exported: bool = False
    #: the artifact is a folder, published whole (pipeline.atomic_folder)
    folder: bool = False
    _: KW_ONLY
    #: the written file holds the model's layer classes, which Keras must find to load it
    stores_classes: bool = False
    sniff: Sniffer = never
    reader: Reader | None = None
    writer: Writer | None = None

    def _callable(self, given: Callable | None, attr: str) -> Callable:
        if given is not None:
            return given
        if not self.module:
            raise UsageError(f"{self.description or self.name} has no {attr}er")
        return getattr(importlib.import_module(self.module), attr)

    def read(self, path: Path, options: ReadOptions | None = None, head: Head | None = None
             ) -> Checkpoint:
        """Read ``path`` once its leading bytes are this format's (``head``: what an earlier
        look found, else the file is looked at now)."""
        if not self.can_read:
            raise UsageError(f"{self.description or self.name} cannot be read as a checkpoint",
                             path=path, hint="convert from the checkpoint it was exported from"
                             if self.exported else None)
        self.check_head(head if head is not None else Head.of(path))
        return self._callable(self.reader, "read")(path, options or ReadOptions())

    def check_head(self, head: Head) -> None:
        """FormatError unless the file is a regular, non-empty file starting with one of the
        format's magic byte strings (an index is JSON: its reader checks it)."""
        if self.folder and (head.folder or not head.path.exists()):
            return   # a folder format: its reader looks inside (or for a name, a repo id)
        if head.problem is not None:
            raise head.problem
        index = head.path.name.lower().endswith(".index.json")
        if self.magics and not index and not any(head.data.startswith(m) for m in self.magics):
            raise FormatError(f"not a valid {self.description or self.name} file (unexpected "
                              "leading bytes)", path=head.path)

    def check_writable(self, path: Path) -> None:
        """UsageError when this format cannot be written from weights alone."""
        if self.needs_model:
            message = NEEDS_ARCH_EXPORT if self.exported else NEEDS_ARCH
            raise UsageError(message.format(self.suffixes[0], self.description), path=path)

    def write(self, ckpt: Checkpoint, path: Path) -> None:
        self.check_writable(path)
        self._callable(self.writer, "write")(ckpt, path)
