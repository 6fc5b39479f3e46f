"""The check's report as one picture: a self-contained HTML page (``--report-html``) and the
notebook view of a report (``_repr_html_``).

One bar per gating entry (a layer or a model output), then one per trace entry: its length is
the entry's worst error over its tolerance (``worst_ratio``, 1 = at the tolerance) on a log
scale from 1e-6 to 1e3, with the tolerance drawn as a line. SKIPPED and NOT CHECKED entries get
a bar of their own colour with the reason in place of a number; the first divergence is
marked. The page holds no script and loads nothing: inline CSS only, so it opens the same from
a CI artifact store, a mail attachment or a machine with no network.

Rendered from :meth:`CheckReport.to_dict`, the same record ``--report`` writes, so the picture
and the JSON cannot tell different stories.
"""
from __future__ import annotations

import math
from html import escape
from typing import Any

#: The log-scale window of the bars: ratios below the first end at the left edge, above the
#: second at the right one.
LOG_MIN, LOG_MAX = -6.0, 3.0
COLOURS = {"SUCCESS": "#2e7d32", "INACCURATE": "#ef6c00", "FAIL": "#c62828",
           "SKIPPED": "#757575", "NOT CHECKED": "#6a1b9a", "ERROR": "#c62828"}
VERDICTS = {True: ("PASSED", "#2e7d32"), False: ("FAILED", "#c62828")}

CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#212121}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:24px 0 8px}
.verdict{display:inline-block;padding:2px 10px;border-radius:4px;color:#fff;font-weight:600}
.summary{margin:8px 0 16px;font-family:ui-monospace,monospace;font-size:13px}
table.meta td{padding:1px 12px 1px 0;vertical-align:top;font-size:13px}
.rows{display:grid;grid-template-columns:minmax(120px,28%) 110px 1fr;gap:3px 10px;align-items:center}
.name{font-family:ui-monospace,monospace;font-size:12px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.status{font-size:11px;font-weight:600;color:#fff;border-radius:3px;padding:1px 6px;text-align:center}
.track{position:relative;height:16px;background:#f1f1f1;border-radius:2px}
.bar{position:absolute;left:0;top:2px;height:12px;border-radius:2px}
.tol{position:absolute;top:0;height:16px;width:2px;background:#212121}
.why{position:absolute;left:6px;top:0;font-size:11px;line-height:16px;color:#fff;white-space:nowrap;
overflow:hidden;text-overflow:ellipsis;max-width:98%}
.first{outline:3px solid #c62828;outline-offset:1px}
.axis{display:flex;justify-content:space-between;font-size:11px;color:#616161}
.legend span{display:inline-block;margin-right:14px;font-size:12px}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px;border-radius:2px}
"""


def bar_fraction(ratio: float | str | None) -> float:
    """Where a worst error/tolerance ratio sits on the log axis, 0..1 (0 for an exact match)."""
    if ratio is None:
        return 0.0
    value = float(ratio)
    if math.isnan(value):
        return 1.0
    if value <= 0:
        return 0.0
    position = (math.log10(value) - LOG_MIN) / (LOG_MAX - LOG_MIN) if math.isfinite(value) else 1.0
    return min(1.0, max(0.0, position))


def _entry_row(entry: dict[str, Any], first: str | None) -> str:
    status = entry.get("status", "SKIPPED")
    colour = COLOURS.get(status, "#757575")
    name = entry.get("name", "")
    label = name + (f" ({entry['torch_kind']} -> {entry['keras_kind']})"
                    if entry.get("torch_kind") and entry.get("keras_kind") else "")
    marked = name == first
    compared = status not in ("SKIPPED", "NOT CHECKED")
    if compared:
        width = max(bar_fraction(entry.get("worst_ratio")) * 100, 0.5)
        title = (f"worst error / tolerance = {entry.get('worst_ratio')}; "
                 f"max abs {entry.get('max_abs_error')}, max rel {entry.get('max_rel_error')}; "
                 f"atol {entry.get('atol')}, rtol {entry.get('rtol')}")
        inner = f'<div class="bar" style="width:{width:.2f}%;background:{colour}"></div>'
    else:
        width = 100.0
        title = entry.get("message", "")
        inner = (f'<div class="bar" style="width:100%;background:{colour};opacity:.75"></div>'
                 f'<span class="why">{escape(title)}</span>')
    tol = (0 - LOG_MIN) / (LOG_MAX - LOG_MIN) * 100
    track_class = "track first" if marked else "track"
    return (f'<div class="name" title="{escape(label)}">{escape(label)}'
            f'{" &#9664; first divergence" if marked else ""}</div>'
            f'<div class="status" style="background:{colour}">{escape(status)}</div>'
            f'<div class="{track_class}" data-entry="{escape(name)}" data-status="{escape(status)}"'
            f' data-ratio="{escape(str(entry.get("worst_ratio")))}" title="{escape(title)}">'
            f'{inner}<div class="tol" style="left:{tol:.2f}%"></div></div>')


def _section(title: str, entries: list[dict], first: str | None) -> str:
    if not entries:
        return ""
    axis = "".join(f"<span>1e{e:+d}</span>" for e in range(int(LOG_MIN), int(LOG_MAX) + 1, 3))
    rows = "".join(_entry_row(e, first) for e in entries)
    return (f'<h2>{escape(title)} ({len(entries)})</h2><div class="rows">{rows}'
            f'<div></div><div></div><div class="axis">{axis}</div></div>')


def _meta(report: dict[str, Any]) -> str:
    inputs = ", ".join(f"{tuple(s)} {d}" for s, d in zip(report.get("input_shapes") or [],
                                                          report.get("input_dtypes") or []))
    rows = [("kind", report.get("kind")), ("reference", report.get("reference")),
            ("inputs", inputs or None), ("seed", report.get("seed")),
            ("tolerance", _tolerance(report)), ("strict", report.get("strict")),
            ("artifact", (report.get("artifact") or {}).get("path")),
            ("versions", ", ".join(f"{k} {v}" for k, v in (report.get("versions") or {}).items()
                                   if v))]
    rows += [("note", n) for n in report.get("notes") or []]
    body = "".join(f"<tr><td>{escape(k)}</td><td>{escape(str(v))}</td></tr>"
                   for k, v in rows if v not in (None, ""))
    return f'<table class="meta">{body}</table>'


def _tolerance(report: dict[str, Any]) -> str:
    if report.get("atol") is None and report.get("rtol") is None:
        return "per-dtype defaults"
    return f"atol {report.get('atol')}, rtol {report.get('rtol')}"


def render(report: dict[str, Any], title: str = "transcoder check") -> str:
    """The whole page for a report dict (``CheckReport.to_dict()`` or an error record with
    ``status`` ``"error"`` and ``message``)."""
    if report.get("status") == "error":
        verdict, colour = "ERROR", COLOURS["ERROR"]
        summary = report.get("message", "")
    else:
        verdict, colour = VERDICTS[bool(report.get("passed"))]
        if report.get("status") == "SKIPPED":
            verdict, colour = "SKIPPED", COLOURS["SKIPPED"]
        summary = report.get("summary", "")
    first = (report.get("first_divergence") or {}).get("name")
    legend = "".join(f'<span><i style="background:{c}"></i>{escape(s)}</span>'
                     for s, c in COLOURS.items() if s != "ERROR")
    body = (f'<h1>{escape(title)} <span class="verdict" style="background:{colour}">'
            f'{verdict}</span></h1><div class="summary">{escape(summary)}</div>{_meta(report)}'
            f'<p class="legend">{legend}<span>bar: worst error / tolerance, log scale; '
            f'black line: the tolerance</span></p>'
            + _section(_what(report), report.get("entries") or [], first)
            + _section("trace (intermediate outputs, they explain and do not gate)",
                       report.get("trace") or [], first))
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{escape(title)}: {verdict}</title><style>{CSS}</style></head>'
            f'<body data-verdict="{verdict}">{body}</body></html>\n')


def fragment(report: dict[str, Any]) -> str:
    """The notebook view: the page's body without the document around it."""
    page = render(report)
    start = page.index("<body")
    return f"<div><style>{CSS}</style>" + page[page.index(">", start) + 1:page.rindex("</body>")] \
        + "</div>"


def _what(report: dict[str, Any]) -> str:
    return {"model": "outputs", "layers": "layers"}.get(report.get("kind"), report.get("kind") or
                                                        "entries")
