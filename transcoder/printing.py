"""Printing rows for people and for logs: a table drawn with rich on a terminal; piped, one
tab-separated line per row under a ``# column`` header, never wrapped or cut, no colour, so a
CI log stays readable and ``grep``/``cut`` work on it; or JSON; or a Markdown table (the docs).

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


def markdown_table(rows: list[Row], columns: Iterable[str]) -> str:
    """``rows`` under ``columns`` as a Markdown (GitHub) table; ``|`` and ``*`` in a cell are
    escaped so that they print as themselves."""
    columns = list(columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_markdown_cell(cell(row[c])) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _markdown_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*")


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

        # soft_wrap: a long verdict is one line the terminal folds, not lines cut by rich
        (console or _console(out)).print(Text(text, style=style or ""), soft_wrap=True)
    else:
        out.write(text + "\n")


def _console(out: TextIO):
    from rich.console import Console

    return Console(file=out)


def _rich_table(rows: list[Row], columns: list[str], title: str | None, style: Styler | None,
                console) -> None:
    """A table that fits the console's width: one line per row, the widest columns' long
    cells shortened in the middle (``encoder.layers.1…attn.out_proj``), never wrapped."""
    from rich.table import Table

    cells = [[cell(row[c]) for c in columns] for row in rows]
    natural = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    caps = fit_widths(natural, [len(c) for c in columns],
                      console.width - TABLE_OVERHEAD(len(columns)),
                      [c in NAME_COLUMNS for c in columns])
    table = Table(title=shorten(title, console.width) if title else None, title_justify="left")
    for column, cap in zip(columns, caps):
        table.add_column(shorten(column, cap), no_wrap=True, overflow="ellipsis", max_width=cap)
    for row, texts in zip(rows, cells):
        table.add_row(*(shorten(t, cap) for t, cap in zip(texts, caps)),
                      style=style(row) if style else None)
    console.print(table)


def TABLE_OVERHEAD(columns: int) -> int:   # noqa: N802  (a constant of the box drawing)
    """Characters a rich table with a box spends besides its cells: a space either side of
    each cell and a border between and around them."""
    return 3 * columns + 1


#: a column is never shortened below this many characters (or its header's)
MIN_COLUMN = 8
ELLIPSIS = "\u2026"


#: columns holding names, shortened only when shortening the others is not enough
NAME_COLUMNS = ("name", "source", "pytorch", "keras", "target")


def fit_widths(natural: list[int], headers: list[int], available: int,
               names: list[bool] | None = None) -> list[int]:
    """Column widths no wider than their content that sum to at most ``available`` where
    that is possible: the widest columns are capped first, at one common width (none below
    MIN_COLUMN or its header); ``names`` columns keep their width if capping the others
    suffices."""
    if sum(natural) <= available:
        return list(natural)
    names = names or [False] * len(natural)
    if any(names) and not all(names):
        others = [w for w, n in zip(natural, names) if not n]
        rest = available - sum(w for w, n in zip(natural, names) if n)
        floors = sum(min(w, max(MIN_COLUMN, h)) for w, h, n in zip(natural, headers, names)
                     if not n)
        if rest >= floors:
            capped = iter(fit_widths(others, [h for h, n in zip(headers, names) if not n], rest))
            return [w if n else next(capped) for w, n in zip(natural, names)]
    floors = [min(w, max(MIN_COLUMN, h)) for w, h in zip(natural, headers)]
    low, high = 0, max(natural)
    while low < high:   # the largest common cap that fits
        cap = (low + high + 1) // 2
        if sum(max(f, min(w, cap)) for w, f in zip(natural, floors)) <= available:
            low = cap
        else:
            high = cap - 1
    return [max(f, min(w, low)) for w, f in zip(natural, floors)]


def shorten(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters: its middle replaced by an ellipsis (the
    start and the end of a name say the most)."""
    if len(text) <= width:
        return text
    if width <= 1:
        return ELLIPSIS[:width]
    head = (width - 1 + 1) // 2
    tail = width - 1 - head
    return text[:head] + ELLIPSIS + (text[-tail:] if tail else "")
