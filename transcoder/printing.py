"""Printing rows for people and for logs: a table drawn with rich on a terminal; piped, one
tab-separated line per row under a ``# column`` header, never wrapped or cut, no colour, so a
CI log stays readable and ``grep``/``cut`` work on it; or JSON.

Colour only on a terminal, and never with ``NO_COLOR`` set (rich honours it).

Every JSON document the tool writes (``--json`` outputs, ``--report`` files, manifest lines)
carries ``"schema": SCHEMA``, the version of its layout: it changes when a field is removed
or changes meaning, not when one is added.
"""
from __future__ import annotations

import json
import sys
from typing import Callable, Iterable, TextIO

Row = dict
#: the layout version of every JSON document the tool writes
SCHEMA = 1
#: a row's rich style ("green", "dim" ...), or None
Styler = Callable[[Row], "str | None"]


def shape_text(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def cell(value) -> str:
    if isinstance(value, list) and value and isinstance(value[0], list):
        return ", ".join(shape_text(v) for v in value)
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        return shape_text(value)
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return "" if value is None else str(value)


def print_rows(rows: list[Row], columns: Iterable[str], *, as_json: bool = False,
               title: str | None = None, out: TextIO | None = None,
               style: Styler | None = None, console=None) -> None:
    """``rows`` under ``columns``: JSON, a rich table on a terminal (or on ``console``), else
    plain lines (the title as a ``# title`` line)."""
    out = out or sys.stdout
    columns = list(columns)
    if as_json:
        print_json({"title": title, "columns": columns, "rows": rows}, out)
    elif console is not None or out.isatty():
        _rich_table(rows, columns, title, style, console or _console(out))
    else:
        if title:
            out.write(f"# {title}\n")
        out.write("# " + "\t".join(columns) + "\n")
        for row in rows:
            out.write("\t".join(cell(row[c]) for c in columns) + "\n")


def with_schema(document: dict) -> dict:
    """``document`` with ``"schema"`` first (see the module docstring)."""
    return {"schema": SCHEMA, **{k: v for k, v in document.items() if k != "schema"}}


def print_json(document: dict, out: TextIO | None = None) -> None:
    """One JSON document (with its ``schema``) on ``out`` (stdout)."""
    out = out or sys.stdout
    json.dump(with_schema(document), out, indent=1, allow_nan=False)
    out.write("\n")
    out.flush()


def print_line(text: str, *, style: str | None = None, out: TextIO | None = None,
               console=None) -> None:
    """One line, styled on a terminal."""
    out = out or sys.stdout
    if console is not None or out.isatty():
        from rich.text import Text

        (console or _console(out)).print(Text(text, style=style or ""))
    else:
        out.write(text + "\n")


def _console(out: TextIO):
    from rich.console import Console

    return Console(file=out)


def _rich_table(rows: list[Row], columns: list[str], title: str | None, style: Styler | None,
                console) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(cell(row[c]) for c in columns), style=style(row) if style else None)
    console.print(table)
