"""The check's report for people and logs: a colour-coded table on a terminal, one
tab-separated line per entry when piped (never wrapped), then the notes and the verdict line."""
from __future__ import annotations

from ..printing import print_line, print_rows
from .compare import FAIL, INACCURATE, NOT_CHECKED, SKIPPED, SUCCESS, Comparison
from .report import CheckReport

#: rich styles per status, as nobuco colours its validation tree.
STYLES = {SUCCESS: "green", INACCURATE: "yellow", FAIL: "bold red", SKIPPED: "dim cyan",
          NOT_CHECKED: "magenta"}
COLUMNS = ("status", "name", "torch -> keras", "max abs err", "max rel err", "atol", "rtol",
           "shape", "note")


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.2e}"


def row(e: Comparison) -> dict:
    name = e.name if not e.keras_name or e.keras_name == e.name else f"{e.name} ~ {e.keras_name}"
    return {"status": e.status, "name": name,
            "torch -> keras": " -> ".join(k for k in (e.torch_kind, e.keras_kind) if k),
            "max abs err": _number(e.max_abs_error), "max rel err": _number(e.max_rel_error),
            "atol": "" if e.atol is None else f"{e.atol:g}",
            "rtol": "" if e.rtol is None else f"{e.rtol:g}",
            "shape": e.shape, "note": e.message}


def print_table(report: CheckReport, console=None, out=None) -> None:
    """The entries, the localisation trace if one ran, the notes, then the verdict line.
    ``console``: a rich Console to draw on (else: rich on a terminal, plain lines piped)."""
    def style(r: dict) -> str:
        return STYLES[r["status"]]

    title = "model outputs" if report.kind == "model" else "layers (built from the weights alone)"
    if report.artifact:
        title = f"outputs of {report.artifact['path']} (run by {report.artifact['runtime']})"
    print_rows([row(e) for e in report.entries], COLUMNS, title=title, out=out, style=style,
               console=console)
    if report.trace:
        where = "the Keras model it is exported from: " if report.artifact else ""
        print_rows([row(e) for e in report.trace], COLUMNS, out=out, style=style, console=console,
                   title=f"{where}paired layers, in PyTorch execution order")
    for note in report.notes:
        print_line(f"note: {note}", style="dim", out=out, console=console)
    verdict = SUCCESS if report.passed else report.status if report.status != SUCCESS else FAIL
    print_line(report.summary(), style=STYLES[verdict], out=out, console=console)
