"""One exception family. Each error knows its exit code and renders as one line.

The CLI prints ``str(err)`` on stderr and exits with ``err.exit_code``; a traceback
is shown only with ``TRANSCODER_DEBUG=1``.
"""
from __future__ import annotations

import re

#: Characters that would break the one-line message or act on a terminal (a tensor name from a
#: hostile file can hold NUL, escape sequences or lone surrogates): shown escaped instead.
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029]")


class TranscoderError(Exception):
    """Base of every error the tool raises on purpose (exit code 2: bad usage or input)."""

    exit_code = 2
    #: True when the command has already printed what this error says (a failed check's
    #: verdict line, under its table): the error line is then not printed a second time.
    shown = False

    def __init__(self, message: str, *, path: object = None, tensor: str | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.tensor = tensor
        self.hint = hint

    def __str__(self) -> str:
        parts = [str(p) for p in (self.path, self.tensor) if p]
        parts.append(self.message)
        line = ": ".join(parts)
        if self.hint:
            line += f" ({self.hint})"
        return printable(" ".join(line.split()))  # always one line

    def with_context(self, *, path: object = None, tensor: str | None = None) -> "TranscoderError":
        """Fill in the file or tensor if the raiser did not know it; returns self for ``raise``."""
        self.path = self.path or path
        self.tensor = self.tensor or tensor
        return self


class UsageError(TranscoderError):
    """The command line or options are wrong (missing architecture, DST == SRC, ...)."""


class FormatError(TranscoderError):
    """A file is unreadable, truncated, corrupt or not of the format its name says."""


class UnsafeFileError(FormatError):
    """A file tries something a reader refuses: calling code from a pickle, HDF5 links, size bombs."""


class UnsupportedError(TranscoderError):
    """Valid input that this version cannot convert exactly (and will not approximate)."""


class AmbiguousError(TranscoderError):
    """The evidence allows more than one reading; the message lists them and how to choose."""


class MappingError(TranscoderError):
    """A tensor does not fit the rule that should map it (shape, missing partner tensor, ...)."""


class OutputExistsError(UsageError):
    """The destination exists and ``--force`` was not given."""


class MissingDependencyError(TranscoderError):
    """An optional package (torch, tensorflow, ray) is needed for this request and is not installed."""


class CheckFailed(TranscoderError):
    """The forward check found outputs that differ beyond tolerance (exit code 1)."""

    exit_code = 1


#: The exit code of an unexpected exception (a bug in transcoder, never the input's fault).
INTERNAL_ERROR_EXIT = 3


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, cut at ``limit`` characters (for embedding a
    library's error in ours)."""
    return " ".join(str(exc).split())[:limit]


def printable(text: str) -> str:
    """``text`` with control characters and lone surrogates escaped (``\\x00``, ``\\ud800``)."""
    return _UNPRINTABLE.sub(lambda m: ascii(m.group())[1:-1], text)
