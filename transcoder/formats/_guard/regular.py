"""Opening a path some file names (an index's shard, a manifest's output) only if it is a
regular file: opened without blocking, then judged by what was opened (``fstat``), so a FIFO,
a device or a socket is refused instead of waited on or read forever."""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)


class NotRegularError(OSError):
    """The path exists but is not a regular file (a FIFO, device, socket or folder)."""

    def __init__(self, path: Path | str) -> None:
        super().__init__(f"{path}: not a regular file (a FIFO, device, socket or folder)")
        self.strerror = "not a regular file (a FIFO, device, socket or folder)"
        self.filename = str(path)


def open_regular(path: Path | str, *, follow: bool = True) -> BinaryIO:
    """``path`` opened for reading (blocking mode restored); NotRegularError unless it is a
    regular file, OSError as ``os.open`` raises it. ``follow=False``: a final symbolic link
    is refused too (``O_NOFOLLOW``)."""
    flags = _FLAGS | (0 if follow else getattr(os, "O_NOFOLLOW", 0))
    fd = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularError(path)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return open(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def is_regular(path: Path | str) -> bool:
    """True if ``path`` (links followed) is a regular file; False if not or missing."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False
