"""A memory-mapped source truncated while it is read, or a mapped output the disk cannot hold:
one line and exit code 2, not a crash.

Touching a page of a mapping past the end of a file that another process has truncated raises
SIGBUS in whichever thread touched it (the permutation kernel, a copy in numpy, zlib's CRC); so
does writing into a mapped page of an output (:mod:`.mapout`) that the file system cannot back
(a full disk where the blocks were not allocated up front).
Python cannot turn that into an exception: its own handler only sets a flag and returns, and
the faulting instruction runs again. Reading instead of mapping would avoid it, at the cost the
mapping was made to save (see :mod:`.filemap`).

So on Linux the first mapping installs a SIGBUS handler (``sigaction`` through ctypes, once,
about 2 ms) that names the file whose mapping holds the faulting address, deletes the
temporary outputs registered with :func:`remove_on_fault` (``pipeline.atomic_output``'s), and
ends the process with exit code 2, the exit code of bad input. It never returns into the
faulting code. Elsewhere the default (a crash) remains.
"""
from __future__ import annotations

import collections
import errno
import os
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ...errors import FormatError, TranscoderError, UsageError, printable

#: Recent mappings: (first address, end address, file, an output?). Older ones are long unmapped
#: (an output is mapped a share at a time: a few hundred windows per GiB).
_MAPPED: collections.deque[tuple[int, int, str, bool]] = collections.deque(maxlen=4096)
_OUTPUTS: set[str] = set()
_LOCK = threading.Lock()
_INSTALLED: list[Any] = []   # the handler and its ctypes objects, kept alive
#: Taken by the first faulting thread and never released: any other thread that faults waits
#: on it until the first one ends the process (one message, however many threads fault).
_REPORTING = threading.Lock()
EXIT_CODE = 2


def watch(address: int, nbytes: int, fd: int, *, name: str | None = None,
          output: bool = False) -> None:
    """Remember that ``[address, address + nbytes)`` maps file ``fd`` (named ``name``, else
    as /proc says), an output being written if ``output`` (installs the handler)."""
    if not _INSTALLED:
        _install()
    if name is None:
        try:
            name = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            name = f"file descriptor {fd}"
    _MAPPED.append((address, address + nbytes, name, output))


@contextmanager
def remove_on_fault(path: Path) -> Iterator[None]:
    """Within the block, a SIGBUS deletes ``path`` (a temporary output) before exiting."""
    with _LOCK:
        _OUTPUTS.add(os.fspath(path))
    try:
        yield
    finally:
        with _LOCK:
            _OUTPUTS.discard(os.fspath(path))


def _install() -> None:
    with _LOCK:
        if _INSTALLED or not sys.platform.startswith("linux"):
            _INSTALLED.append(None)
            return
        try:
            _INSTALLED.extend(_sigaction())
        except (OSError, AttributeError, ImportError, ValueError):
            _INSTALLED.append(None)  # no handler: the default (a crash) remains


def _sigaction() -> list[Any]:
    import ctypes

    class SigInfo(ctypes.Structure):  # the start of Linux's siginfo_t on 32 and 64 bits
        _fields_ = [("si_signo", ctypes.c_int), ("si_errno", ctypes.c_int),
                    ("si_code", ctypes.c_int), ("_pad", ctypes.c_int), ("si_addr", ctypes.c_void_p)]

    class SigAction(ctypes.Structure):  # glibc's struct sigaction
        _fields_ = [("sa_sigaction", ctypes.c_void_p), ("sa_mask", ctypes.c_ulong * 16),
                    ("sa_flags", ctypes.c_int), ("sa_restorer", ctypes.c_void_p)]

    handler = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.POINTER(SigInfo), ctypes.c_void_p)(
        lambda signum, info, context: _on_fault(info.contents.si_addr or 0))
    action = SigAction()
    action.sa_sigaction = ctypes.cast(handler, ctypes.c_void_p).value
    action.sa_flags = 0x4  # SA_SIGINFO
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.sigaction(signal.SIGBUS, ctypes.byref(action), None) != 0:
        raise OSError(ctypes.get_errno(), "sigaction")
    return [handler, action]


def _on_fault(address: int) -> None:
    """Runs in the faulting thread (ctypes holds the GIL): report, clean up, exit. A second
    faulting thread blocks here (it must not return into the faulting code) until the first
    one's ``os._exit``; ``os.write`` releases the GIL, so without the lock both wrote."""
    _REPORTING.acquire()
    found = [(name, output) for start, end, name, output in reversed(_MAPPED)
             if start <= address < end]
    what, output = found[0] if found else ("a memory-mapped source file", False)
    for path in list(_OUTPUTS):
        try:
            os.unlink(path)
        except OSError:
            pass
    if output:
        message = (f"transcode: error: {printable(what)}: cannot write: no space left on the "
                   "device, or the file was truncated while it was being written (SIGBUS); "
                   "nothing was written\n")
    else:
        message = (f"transcode: error: {printable(what)}: the file was truncated or changed while "
                   "it was being read (SIGBUS); nothing was written\n")
    os.write(2, message.encode("utf-8", "backslashreplace"))
    os._exit(EXIT_CODE)


def write_failure(exc: OSError, path: Path) -> TranscoderError:
    """The error for an OSError while writing ``path``. EFAULT means the kernel found a source
    page gone while copying it from a mapping (the syscall's SIGBUS): the source, not ``path``,
    is at fault, and the pipeline names it."""
    if exc.errno == errno.EFAULT:
        return FormatError("the file was truncated or changed while it was being read; nothing "
                           "was written")
    return UsageError(f"cannot write: {exc.strerror or exc}", path=path)
