"""What the command shows while it works: a live display on a terminal, nothing anywhere else.

The stages call :func:`task` (bytes and tensors written, layers checked), :func:`status` (a
spinner line: "loading TensorFlow...") and :func:`each` (a loop's items); they cost nothing
unless the command opened :func:`on_terminal`, which it does only when stderr is a terminal:
piped into a log, or called from Python (the API), nothing is drawn and rich is not imported.

The display is drawn with rich on a duplicate of the terminal's descriptor, taken when it
opens, so that it stays visible while TensorFlow's start-up is silenced on descriptor 2
(:mod:`.frameworks`); the lines are transient: once a stage ends, its line is gone and the
tables printed after it stand alone. :func:`tracked` wraps a checkpoint so that the bytes its
writer takes (from any of the writer's threads) advance a task.

``transcode bulk`` draws its own bar; its workers :func:`count_into` a shared number the
bytes their current file has written so far, which the bar adds to the finished files'.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, TextIO

from .checkpoint import Checkpoint, TensorRef

#: seconds between two updates of a line (the display redraws at 10 Hz anyway)
UPDATE_EVERY = 0.05
MIB = 1 << 20


class Task:
    """One line of the display: ``advance`` it by bytes and/or items (thread-safe). Without a
    display, a Task counts and draws nothing."""

    def __init__(self, terminal: "_Terminal | None", description: str, total: int | None,
                 unit: str, items: int | None) -> None:
        self.terminal, self.unit = terminal, unit
        self.total, self.items_total = total, items
        self.done = self.items = 0
        self._lock = threading.Lock()
        self._pushed = 0.0
        self.id = terminal.add(description, total) if terminal else None

    def advance(self, amount: int = 0, items: int = 0) -> None:
        if self.terminal is None:
            return
        with self._lock:
            self.done += amount
            self.items += items
            now = time.monotonic()
            if now - self._pushed < UPDATE_EVERY:
                return
            self._pushed = now
        self._push()

    def _push(self) -> None:
        self.terminal.update(self.id, self.done, self.detail())

    def detail(self) -> str:
        """``12.0/1536.0 MiB, 3/290 tensors``, ``4/40 layers``."""
        if self.unit == "bytes":
            text = f"{self.done / MIB:.1f}/{(self.total or 0) / MIB:.1f} MiB"
            if self.items_total is not None:
                text += f", {self.items}/{self.items_total} tensors"
            return text
        return f"{self.done}/{self.total} {self.unit}" if self.total is not None else ""

    def finish(self) -> None:
        if self.terminal is not None:
            self._push()
            self.terminal.remove(self.id)


#: where lines go while the command runs: a _Terminal, a _Bytes counter, or None (nowhere)
_ACTIVE: "_Terminal | _Bytes | None" = None


@contextmanager
def task(description: str, total: int | None = None, *, unit: str = "bytes",
         items: int | None = None) -> Iterator[Task]:
    """A line for the stage inside the ``with``: ``total`` bytes (or ``unit`` items) to go;
    ``items``: how many tensors those bytes are."""
    shown = Task(_ACTIVE, description, total, unit, items)
    try:
        yield shown
    finally:
        shown.finish()


@contextmanager
def status(text: str) -> Iterator[None]:
    """A spinner line with ``text`` while inside (on a terminal)."""
    with task(text, None, unit=""):
        yield


def each(items: Iterable, description: str, *, total: int | None = None,
         unit: str = "items") -> Iterator:
    """``items``, one at a time, advancing a line "description k/n unit" as the loop goes."""
    items = list(items) if total is None else items
    count = len(items) if total is None else total
    with task(description, count, unit=unit) as shown:
        for item in items:
            yield item
            shown.advance(1)


def tracked(ckpt: Checkpoint, shown: Task) -> Checkpoint:
    """``ckpt`` whose tensors advance ``shown`` by the bytes a writer takes from them, and by
    one tensor when all of a tensor's bytes were taken. Without a display: ``ckpt`` itself."""
    if shown.terminal is None:
        return ckpt
    counter = _Counter(shown)
    return Checkpoint({name: _Counted(ref, counter) for name, ref in ckpt.tensors.items()},
                      ckpt.layout, ckpt.source, ckpt.format, ckpt.meta)


class _Counter:
    def __init__(self, shown: Task) -> None:
        self.shown = shown
        self._lock = threading.Lock()
        self._taken: dict[int, int] = {}

    def add(self, ref: TensorRef, nbytes: int) -> None:
        """Count ``nbytes`` more of ``ref`` (at most its size in all)."""
        with self._lock:
            before = self._taken.get(id(ref), 0)
            after = min(ref.nbytes, before + nbytes)
            self._taken[id(ref)] = after
        self.shown.advance(after - before, int(after == ref.nbytes and before < after))


class _Counted(TensorRef):
    """A tensor reference that counts what is taken from the one it wraps."""

    def __init__(self, ref: TensorRef, counter: _Counter) -> None:   # no re-validation
        self.name, self.shape, self.dtype = ref.name, ref.shape, ref.dtype
        self.loader, self.blocker = self.load, ref.blocker   # a copy made from it counts too
        self._ref, self._counter = ref, counter

    def load(self):
        array = self._ref.load()
        self._counter.add(self, self.nbytes)
        return array

    def blocks(self, scratch):
        for block in self._ref.blocks(scratch):
            yield block
            self._counter.add(self, len(block))

    def pieces(self, scratch, part=(0, 1)):
        for piece in self._ref.pieces(scratch, part):
            yield piece
            self._counter.add(self, len(piece[1]))


# ---------------------------------------------------------------- the terminal

@contextmanager
def on_terminal(stream: TextIO | None = None, *, enabled: bool = True) -> Iterator[None]:
    """While inside, stages draw on ``stream`` (stderr) if it is a terminal and ``enabled``
    (the command's ``--quiet`` turns it off)."""
    global _ACTIVE
    stream = stream or sys.stderr
    if _ACTIVE is not None or not enabled or not _is_terminal(stream):
        yield
        return
    terminal = _ACTIVE = _Terminal(stream)
    try:
        yield
    finally:
        _ACTIVE = None
        terminal.close()


@contextmanager
def count_into(counter: Any) -> Iterator[None]:
    """While inside, the bytes of the stages that write (a task with a total) go to
    ``counter.value`` (a ``multiprocessing.Value``: a bulk worker's file in progress)."""
    global _ACTIVE
    before, _ACTIVE = _ACTIVE, _Bytes(counter)
    try:
        yield
    finally:
        _ACTIVE = before
        counter.value = 0


class _Bytes:
    """A sink that sums the written bytes of the tasks that have a total into a counter."""

    def __init__(self, counter: Any) -> None:
        self.counter, self._done, self._next = counter, {}, 0
        self._lock = threading.Lock()

    def add(self, description: str, total: int | None) -> Any:
        with self._lock:
            self._next += 1
            if total is not None:
                self._done[self._next] = 0
            return self._next

    def update(self, task_id: Any, done: int, detail: str) -> None:
        with self._lock:
            if task_id in self._done:
                self._done[task_id] = done
                self.counter.value = sum(self._done.values())

    def remove(self, task_id: Any) -> None:
        """A finished task's bytes stay counted until the file is done (its record counts
        them then)."""


def mute() -> None:
    """Stop drawing for the rest of the command (``--quiet``)."""
    global _ACTIVE
    if isinstance(_ACTIVE, _Terminal):
        _ACTIVE.close()
        _ACTIVE = None


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty()) and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


class _Terminal:
    """A rich Progress on a duplicate of ``stream``'s descriptor, started while a line shows."""

    def __init__(self, stream: TextIO) -> None:
        self._file = os.fdopen(os.dup(stream.fileno()), "w", buffering=1, encoding="utf-8",
                               errors="replace")
        self._lock = threading.RLock()
        self._progress = None
        self._lines = 0

    def add(self, description: str, total: int | None) -> Any:
        with self._lock:
            if self._progress is None:
                self._progress = self._start()
            self._lines += 1
            return self._progress.add_task(description, total=total, detail="")

    def update(self, task_id: Any, done: int, detail: str) -> None:
        with self._lock:
            if self._progress is not None:
                self._progress.update(task_id, completed=done, detail=detail)

    def remove(self, task_id: Any) -> None:
        with self._lock:
            if self._progress is None:
                return
            self._progress.refresh()
            self._progress.remove_task(task_id)
            self._lines -= 1
            if not self._lines:
                self._progress.stop()
                self._progress = None

    def _start(self):
        from rich.console import Console
        from rich.progress import (BarColumn, Progress, SpinnerColumn, TextColumn,
                                   TimeElapsedColumn)

        class Bar(BarColumn):   # none for a spinner line (no total): not a pulsing bar
            def render(self, task):
                return "" if task.total is None else super().render(task)

        console = Console(file=self._file, stderr=True)
        progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), Bar(),
                            TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
                            console=console, transient=True, redirect_stderr=True,
                            redirect_stdout=_is_terminal(sys.stdout))
        progress.start()
        return progress

    def close(self) -> None:
        with self._lock:
            if self._progress is not None:
                self._progress.stop()
                self._progress = None
            if not self._file.closed:
                self._file.close()
