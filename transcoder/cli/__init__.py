"""The ``transcode`` command: a shell over :mod:`transcoder.api` (parse, call, print).

``transcode SRC DST`` converts (the default command, :mod:`.convert`); ``check`` validates,
``inspect`` and ``rules`` explain (:mod:`.check`), ``bulk`` converts a tree (:mod:`.bulk`).
Errors are one line on stderr with exit code 2 (bad usage or input), 1 when a check fails,
3 for a bug; ``TRANSCODER_DEBUG=1`` shows the traceback instead. Options that several
commands take are declared once, in :mod:`.options`.
"""
from __future__ import annotations

import gc
import signal
from contextlib import contextmanager
import os
import sys
from typing import Iterator, Optional

import typer

# Before numpy is imported: the command does no linear algebra with numpy, and OpenBLAS's
# idle worker threads would spin on the cores a conversion needs.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from .. import progress  # noqa: E402
from .._version import __version__  # noqa: E402
from ..errors import INTERNAL_ERROR_EXIT, TranscoderError, one_line  # noqa: E402
from .bulk import bulk_cmd  # noqa: E402
from .check import check_cmd, inspect_cmd, rules_cmd  # noqa: E402
from .convert import convert_cmd  # noqa: E402
from .output import note  # noqa: E402

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Move weights between PyTorch and Keras; `transcode SRC DST` converts.")

#: Options of the whole command, taken wherever they stand before ``--`` (``main`` reads them)
VERSION, VERBOSE = ("--version", "-V"), ("--verbose", "-v")


@app.callback()
def _options(
        version: bool = typer.Option(False, *VERSION, help="Print the version and exit."),
        verbose: bool = typer.Option(False, *VERBOSE, help="Say on stderr what is loaded and "
                                     "decided (formats, architecture, check).")) -> None:
    """Move weights between PyTorch and Keras; `transcode SRC DST` converts."""


def version_cmd() -> None:
    """Print the version."""
    typer.echo(__version__)


for _name, _command in (("convert", convert_cmd), ("check", check_cmd),
                        ("inspect", inspect_cmd), ("rules", rules_cmd),
                        ("version", version_cmd), ("bulk", bulk_cmd)):
    app.command(_name)(_command)

COMMANDS = {c.name for c in app.registered_commands}
PASSTHROUGH = {"--help", "-h"}
COMPLETION = {"--install-completion", "--show-completion"}   # typer's own


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point: maps every error to its exit code and a one-line message."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:   # nothing asked: the help, and the exit code of a usage error
        app(["--help"], prog_name="transcode", standalone_mode=False)
        return 2
    if args[0] in VERSION:
        typer.echo(__version__)
        return 0
    args, verbose = _take_verbose(args)
    if args and args[0] not in COMMANDS | PASSTHROUGH | COMPLETION:
        args.insert(0, "convert")
    debug = os.environ.get("TRANSCODER_DEBUG") == "1"
    try:
        with _verbose(verbose), progress.on_terminal():   # progress on a terminal, never piped
            result = app(args, prog_name="transcode", standalone_mode=False)
        if _RECEIVED:   # Typer returns 130 for any KeyboardInterrupt
            note("interrupted")
            return 128 + _RECEIVED[-1]
        return result if isinstance(result, int) else 0
    except TranscoderError as exc:
        if debug:
            raise
        if not exc.shown:   # a failed check's verdict is printed under its table, once
            note(f"error: {exc}")
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except typer.TyperException as exc:  # usage errors from the command-line parser
        note(f"error: {exc.format_message()} (see transcode --help)")
        return 2
    except (typer.Abort, KeyboardInterrupt):
        note("interrupted")
        return 128 + (_RECEIVED[-1] if _RECEIVED else signal.SIGINT)
    except Exception as exc:  # a bug: still one line, unless debugging
        if debug:
            raise
        note(f"internal error: {type(exc).__name__}: {one_line(exc)} (set TRANSCODER_DEBUG=1 "
              "for the traceback, and please report it)")
        return INTERNAL_ERROR_EXIT


def _take_verbose(args: list[str]) -> tuple[list[str], bool]:
    """``args`` without ``--verbose``/``-v`` (before ``--``), and whether it was there."""
    end = args.index("--") if "--" in args else len(args)
    kept = [a for a in args[:end] if a not in VERBOSE] + args[end:]
    return kept, len(kept) != len(args)


@contextmanager
def _verbose(enabled: bool) -> Iterator[None]:
    """With ``--verbose``: the ``transcoder`` logger's records on stderr, one line each, for
    this command only."""
    if not enabled:
        yield
        return
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("transcode: %(message)s"))
    logger = logging.getLogger("transcoder")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def run() -> None:
    """The console script. The modules imported so far live until exit: freezing them keeps the
    garbage collector from scanning them again on every full collection. Not in :func:`main`,
    which tests call many times."""
    gc.freeze()
    for signum in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if signum is not None:
            signal.signal(signum, _interrupt)
    sys.exit(main())


_RECEIVED: list[int] = []


def _interrupt(signum: int, frame) -> None:
    """SIGTERM or SIGHUP, raised as Ctrl-C's KeyboardInterrupt so that the same clean-up runs
    (temporary outputs removed, a bulk run's manifest written); exit code 128 + the signal."""
    _RECEIVED.append(signum)
    raise KeyboardInterrupt
