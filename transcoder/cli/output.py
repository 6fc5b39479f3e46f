"""What the commands print besides tables: their one-line notes, and a check's report (the
table or the verdict line, the ``--report`` and ``--junit`` files, the exit code 1)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import typer

from ..frameworks import prefer_keras_backend


@dataclass
class CheckOutputs:
    """Where a check's results go: ``--report`` JSON, ``--junit`` XML, and the terminal."""

    report: Optional[Path] = None
    junit: Optional[Path] = None
    quiet: bool = False


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


def report(result, outputs: CheckOutputs) -> None:
    """Print the check's report, write its files; CheckFailed (exit 1) when it failed."""
    from ..checks import print_table

    if outputs.quiet:
        typer.echo(result.summary())
    else:
        print_table(result)  # ends with the verdict line
    if outputs.report:
        result.write_json(outputs.report)
    if outputs.junit:
        result.write_junit(outputs.junit)
    result.raise_for_status()
