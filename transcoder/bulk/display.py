"""What `transcode bulk` shows: a progress bar (files, bytes, rate, ETA) on a terminal, one line
per file when output is piped into a log, failures as they happen, and a summary at the end.
``quiet`` prints nothing but the failures."""
from __future__ import annotations

import sys

from ..printing import print_rows
from .runner import BulkReport
from .task import DONE

SUMMARY_COLUMNS = ("outcome", "files", "bytes", "seconds")
FAILURE_COLUMNS = ("source", "error")


class Display:
    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.live = not quiet and sys.stderr.isatty()
        self.progress = None
        self.files = 0
        self.done = 0

    def start(self, files: int, nbytes: int, reused: int) -> None:
        self.files = files
        if reused and not self.quiet:
            _err(f"{reused} already done and intact (manifest); {files} to convert")
        if self.live and files:
            from rich.console import Console
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                                       TimeRemainingColumn, TransferSpeedColumn)

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                     TextColumn("{task.fields[files]} files"),
                                     DownloadColumn(binary_units=True), TransferSpeedColumn(),
                                     TimeRemainingColumn(), console=Console(stderr=True))
            self.task = self.progress.add_task("converting", total=nbytes or 1,
                                               files=f"0/{files}")
            self.progress.start()

    def result(self, record: dict) -> None:
        self.done += 1
        ok = record["status"] == DONE
        if not ok:
            self._print(f"transcode: failed: {record['error']}", err=True)
        elif not self.live and not self.quiet:
            self._print(f"done {record['source']} -> {record['output']} ({record['seconds']:.2f} s)")
        if self.progress is not None:
            self.progress.update(self.task, advance=record.get("size") or 0,
                                 files=f"{self.done}/{self.files}")

    def finish(self, report: BulkReport) -> None:
        if self.progress is not None:
            self.progress.stop()
        if self.quiet:
            return
        print_rows(summary_rows(report), SUMMARY_COLUMNS,
                   title=f"transcode bulk: {report.seconds:.1f} s, manifest {report.manifest}")
        if report.failed:
            print_rows([{"source": r["source"], "error": r["error"]} for r in report.failed],
                       FAILURE_COLUMNS, title="failed")
        if report.skipped:
            print_rows([{"source": r["source"], "error": r["error"]} for r in report.skipped],
                       FAILURE_COLUMNS, title="skipped (never read)")

    def _print(self, line: str, err: bool = False) -> None:
        if self.progress is not None:
            self.progress.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=sys.stderr if err else sys.stdout, flush=True)


def summary_rows(report: BulkReport) -> list[dict]:
    def row(outcome: str, records: list[dict]) -> dict:
        return {"outcome": outcome, "files": len(records),
                "bytes": _size(sum(r.get("size") or 0 for r in records)),
                "seconds": f"{sum(r.get('seconds') or 0 for r in records):.1f}"}

    rows = [row("converted", report.converted), row("already done", report.reused),
            row("failed", report.failed)]
    if report.not_run:
        rows.append({"outcome": "not run (stopped early)", "files": report.not_run, "bytes": "",
                     "seconds": ""})
    if report.skipped:
        rows.append({"outcome": "skipped (links leaving SRC_DIR, FIFOs, devices)",
                     "files": len(report.skipped), "bytes": "", "seconds": ""})
    rows.append({"outcome": "ignored (not checkpoints, or --pattern)",
                 "files": len(report.ignored), "bytes": "", "seconds": ""})
    return rows


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _err(line: str) -> None:
    print(f"transcode: {line}", file=sys.stderr, flush=True)
