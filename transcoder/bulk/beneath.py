"""A source's files opened inside SRC_DIR, and read through what was opened.

The scan looks at paths; a file swapped for a symbolic link between the scan (or the
worker's own look just before reading) and the read was read through the link, wherever it
led. So a worker opens each file of its source relative to a descriptor of SRC_DIR without
following any link: ``openat2`` with ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`` where the
kernel has it (Linux 5.6), else one component at a time with ``O_NOFOLLOW``. A link the scan
accepted (a file linking to a file inside SRC_DIR) is resolved first and its target opened the
same way. What was opened is judged by ``fstat`` (a regular file, or it is refused), and the
conversion reads exactly that: it is given a private folder of links to
``/proc/self/fd/N``, one per file under its own name (an index finds its shards beside it).
Where there is no ``/proc`` (not Linux), files are read by path as before.
"""
from __future__ import annotations

import ctypes
import errno
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Iterator

from ..errors import TranscoderError

RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS, RESOLVE_BENEATH = 0x02, 0x04, 0x08
SYS_OPENAT2 = 437    # the same number on every Linux architecture (added after the unification)
_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


_openat2: list = []   # [libc.syscall] once known to work, [None] once known not to


def _syscall():
    if not _openat2:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            _openat2.append(libc.syscall)
        except (OSError, AttributeError):
            _openat2.append(None)
    return _openat2[0]


def open_beneath(root_fd: int, rel: str) -> int:
    """A descriptor of ``rel`` opened under the folder ``root_fd``, no link followed on the
    way; OSError (ELOOP, EXDEV, ENOENT ...) otherwise."""
    syscall = _syscall()
    if syscall is not None:
        how = _OpenHow(_FLAGS, 0, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)
        fd = syscall(ctypes.c_long(SYS_OPENAT2), ctypes.c_int(root_fd), os.fsencode(rel),
                     ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EPERM):   # EPERM: a seccomp filter refusing it
            raise OSError(err, os.strerror(err), rel)
        _openat2[0] = None
    return _open_by_components(root_fd, rel)


def _open_by_components(root_fd: int, rel: str) -> int:
    parts = PurePosixPath(rel).parts
    if not parts or any(p in ("..", "/") for p in parts):
        raise OSError(errno.EXDEV, "leaves the folder", rel)
    fd = root_fd
    try:
        for part in parts[:-1]:
            inner = os.open(part, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW,
                            dir_fd=fd)
            if fd != root_fd:
                os.close(fd)
            fd = inner
        return os.open(parts[-1], _FLAGS | _NOFOLLOW, dir_fd=fd)
    finally:
        if fd != root_fd:
            os.close(fd)


def _target(src_root: Path, rel: str) -> str:
    """``rel``, or the path inside ``src_root`` its final link leads to (the scan allows a
    file that links to a file inside SRC_DIR); opening it is beneath SRC_DIR either way."""
    path = src_root / rel
    if not path.is_symlink():
        return rel
    real = Path(os.path.realpath(path))
    try:
        return real.relative_to(src_root).as_posix()
    except ValueError:
        raise TranscoderError("a symbolic link that leaves SRC_DIR: not read", path=path) from None


@contextmanager
def pinned(src_root: Path, files: tuple[str, ...]) -> Iterator[tuple[Path, list[int]]]:
    """``(folder, descriptors)``: ``folder`` holds each of ``files`` (all in one folder of
    ``src_root``) under its name, reading the file its descriptor opened beneath ``src_root``.
    TranscoderError if one is a link out of SRC_DIR, not a regular file, or missing."""
    folder = src_root / PurePosixPath(files[0]).parent
    if not os.path.isdir("/proc/self/fd"):
        yield folder, []
        return
    root_fd = os.open(src_root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    fds: list[int] = []
    farm = Path(tempfile.mkdtemp(prefix=".transcode-src-"))
    try:
        for rel in files:
            try:
                fd = open_beneath(root_fd, _target(src_root, rel))
            except OSError as exc:
                why = "a symbolic link in its path: not read" if exc.errno in (
                    errno.ELOOP, errno.EXDEV) else f"cannot open: {exc.strerror}"
                raise TranscoderError(why, path=src_root / rel) from None
            fds.append(fd)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise TranscoderError("not a regular file (a FIFO, device or socket): not read",
                                      path=src_root / rel)
            os.set_blocking(fd, True)
            (farm / PurePosixPath(rel).name).symlink_to(f"/proc/{os.getpid()}/fd/{fd}")
        yield farm, fds
    finally:
        for fd in fds:
            os.close(fd)
        os.close(root_fd)
        shutil.rmtree(farm, ignore_errors=True)
