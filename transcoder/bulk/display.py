"""What `transcode bulk` shows: a progress bar (files, bytes, rate, ETA) on a terminal, one line
per file when output is piped into a log, failures as they happen, and a summary at the end.
``quiet`` prints nothing but the failures.

The bar counts bytes within files too, not only finished ones: a thread of the display adds
what the files being converted have written so far (:func:`.engines.bytes_in_flight`) to
the finished files' bytes, four times a second, never moving the bar back."""
from __future__ import annotations

import sys
import threading

from ..printing import print_rows
from . import engines
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
        self.finished_bytes = 0   # sizes of the files reported
        self.total_bytes = 0
        self._shown = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    #: seconds between two looks at the bytes the files in progress have written
    POLL = 0.25

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
            self.total_bytes = nbytes
            self.progress.start()
            self._poller = threading.Thread(target=self._poll, name="transcoder-bulk-display",
                                            daemon=True)
            self._poller.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.POLL):
            self._show(engines.bytes_in_flight())

    def _show(self, in_flight: int) -> None:
        """The bar at the finished files' bytes plus ``in_flight``, never back, never past
        the total (an output may be larger than its source: bfloat16 stored as float32)."""
        with self._lock:
            done = self.finished_bytes + in_flight
            self._shown = max(self._shown, min(done, self.total_bytes or done))
            shown = self._shown
        self.progress.update(self.task, completed=shown, files=f"{self.done}/{self.files}")

    def result(self, record: dict) -> None:
        self.done += 1
        ok = record["status"] == DONE
        if not ok:
            self._print(f"transcode: failed: {record['error']}", err=True)
        elif not self.live and not self.quiet:
            self._print(f"done {record['source']} -> {record['output']} ({record['seconds']:.2f} s)")
        if self.progress is not None:
            with self._lock:
                self.finished_bytes += record.get("size") or 0
            self._show(0)

    def finish(self, report: BulkReport) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join()
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
