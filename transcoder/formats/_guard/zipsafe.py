"""Zip archives from untrusted files (``torch.save`` archives, ``.keras``), checked before use.

:func:`open_zip` refuses a central directory with more than :data:`MAX_ENTRIES` entries
before ``zipfile`` parses it (each entry costs about 600 bytes of memory). :func:`check_members`
refuses encrypted members, compression methods the format's writers never use (bzip2 and
lzma reach ratios of millions to one), stored members whose two sizes differ, and members or
archives that declare more than :mod:`.limits` allows.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import IO, Iterable

from ...errors import FormatError, UnsafeFileError
from . import limits

#: More members than this is not a checkpoint (torch.save writes one per storage).
MAX_ENTRIES = 200_000
#: What torch.save and Keras write (stored), and what a re-zipped file may hold (deflate).
METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, KeyError,
              NotImplementedError, RuntimeError, UnicodeDecodeError, OverflowError)


def open_zip(source: Path | IO[bytes]) -> zipfile.ZipFile:
    """``zipfile.ZipFile`` over ``source`` once its entry count is plausible (zipfile errors
    propagate). A path is opened once: the count and the archive are read through that one
    handle, which closing the archive closes; a file object given stays its owner's."""
    owned = isinstance(source, (str, os.PathLike))
    fh = open(source, "rb") if owned else source
    try:
        end = zipfile._EndRecData(fh)  # what ZipFile reads first; None if there is no record
        if end is not None and end[zipfile._ECD_ENTRIES_TOTAL] > MAX_ENTRIES:
            raise UnsafeFileError(f"zip archive declares {end[zipfile._ECD_ENTRIES_TOTAL]} "
                                  f"members (more than {MAX_ENTRIES}); refusing it",
                                  path=source if owned else None)
        fh.seek(0)
        return _OwningZipFile(fh) if owned else zipfile.ZipFile(fh)
    except BaseException:
        if owned:
            fh.close()
        raise


class _OwningZipFile(zipfile.ZipFile):
    """A ZipFile over a handle :func:`open_zip` opened: closing the archive closes it too
    (its members are always closed first)."""

    def __init__(self, fh: IO[bytes]) -> None:
        super().__init__(fh)
        self._owned = fh

    def close(self) -> None:
        try:
            super().close()
        finally:
            owned = getattr(self, "_owned", None)
            if owned is not None:
                owned.close()


def check_members(zf: zipfile.ZipFile, path: Path, file_size: int,
                  methods: Iterable[int] = METHODS) -> None:
    """Refuse what no writer of the format makes and what would expand beyond the limits."""
    methods = tuple(methods)
    total = 0
    for info in zf.infolist():
        name = info.filename
        if info.flag_bits & 0x1:
            raise FormatError(f"archive member {name} is encrypted", path=path)
        if info.compress_type not in methods:
            raise UnsafeFileError(f"archive member {name} uses zip compression method "
                                  f"{info.compress_type}, which the format's writers never use; "
                                  "refusing it", path=path)
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            raise UnsafeFileError(f"archive member {name} is stored but declares {info.file_size} "
                                  f"bytes in {info.compress_size}: refusing a possible zip bomb",
                                  path=path)
        limits.check_tensor(info.file_size, info.compress_size, f"archive member {name}",
                            path=path)
        total += info.file_size
    limits.check_file(total, file_size, path=path)
