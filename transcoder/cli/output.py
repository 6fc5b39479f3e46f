"""What the commands print besides tables: their one-line notes, and a check's report (the
table, the verdict line or the ``--json`` document; the ``--report``, ``--junit`` and
``--report-html`` files; the exit code 1), also when the command stops on an error."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import typer

from .. import progress
from ..errors import CheckFailed
from ..frameworks import prefer_keras_backend
from ..printing import print_json


@dataclass
class CheckOutputs:
    """Where a check's results go: ``--report`` JSON, ``--junit`` XML, ``--report-html``,
    and the terminal (``quiet``: the verdict line only; ``as_json``: one JSON document)."""

    report: Optional[Path] = None
    junit: Optional[Path] = None
    quiet: bool = False
    as_json: bool = False
    html: Optional[Path] = None

    @property
    def files(self) -> bool:
        return bool(self.report or self.junit or self.html)


def say(quiet: bool, message: str) -> None:
    if not quiet:
        typer.echo(message)


def note(message: str) -> None:
    typer.echo(f"transcode: {message}", err=True)


def light_check(has_arch: bool) -> None:
    """Without an architecture the check is per layer, built from the weights alone and
    deployed nowhere: Keras runs it on its torch backend, the same layer code without
    importing TensorFlow (about 2 s less; measured in the closing notes of issue 13). With an
    architecture, Keras keeps TensorFlow: twins, rebuilt models and exports deploy there."""
    if not has_arch:
        prefer_keras_backend("torch")


@contextmanager
def outputs_of(outputs: CheckOutputs) -> Iterator[None]:
    """The body of a command that checks: ``-q`` mutes its progress; stopped by an error
    (exit 2, or 3 for a bug) it still writes its ``--report``, ``--junit`` and
    ``--report-html`` (status error, the message) and, with ``--json``, prints that document.
    A failed check (exit 1) has written its own already."""
    if outputs.quiet:
        progress.mute()
    try:
        yield
    except CheckFailed:
        raise
    except Exception as exc:
        if outputs.files or outputs.as_json:
            from ..checks.report import write_error_outputs

            write_error_outputs(exc, outputs.report, outputs.junit, outputs.as_json,
                                outputs.html)
        raise


def report(result, outputs: CheckOutputs, document: Optional[dict] = None) -> None:
    """Print the check's report (its table ending with the verdict line, ``-q``: the verdict
    line, ``--json``: ``document`` or else the report's own), write its files; CheckFailed
    (exit 1) when it failed, its verdict not printed a second time."""
    if outputs.as_json:
        print_json(document if document is not None else result.to_dict())
    elif outputs.quiet:
        typer.echo(result.summary())
    else:
        from ..checks import print_table

        print_table(result)  # ends with the verdict line
    if outputs.report:
        result.write_json(outputs.report)
    if outputs.junit:
        result.write_junit(outputs.junit)
    if outputs.html:
        result.write_html(outputs.html)
    result.raise_for_status(shown=True)
