"""Engines run tasks and hand each result back, in completion order, to the one process that
keeps the manifest. ``on_result`` returns False to stop early (``--fail-fast``): tasks not yet
started are cancelled, the ones running are finished and still reported.

- ``serial``: in this process, one file at a time (``--jobs 1`` without ``--timeout``).
- ``local``: worker processes on this machine (the default), started once and given one file
  at a time; the parent knows which, so a worker that dies (a segfault in a C library, the OOM
  killer) fails only that file, and one past ``--timeout`` is killed and fails only its file;
  either way a fresh worker takes its place and the other files go on. On Linux workers are
  forked from the run, which has the converter imported already (spawned, each imported it
  again: 0.15-0.2 s of CPU per worker, 0.3 s of wall time for two here); the run holds no
  HDF5 file and runs no thread of its own when it forks. Elsewhere they are spawned.
- ``ray``: Ray tasks on a cluster (``--address``) or on a local Ray instance; every node must
  have transcoder installed and see SRC_DIR and DST_DIR at the same paths, or reach them
  as buckets (fsspec URLs: each task downloads its source and publishes its output itself,
  see :mod:`.bucket`).

:func:`bytes_in_flight`: what the files being converted have written so far (serial and
local engines: each worker counts into a number shared with the run, see
:func:`transcoder.progress.count_into`), for the run's progress bar; Ray's workers report
only finished files.
"""
from __future__ import annotations

import importlib
import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Callable

from .. import progress
from ..errors import INTERNAL_ERROR_EXIT, MissingDependencyError, UsageError
from ..formats._io import rawfill
from .bucket_task import run_any as run_task
from .task import FAILED, Task

OnResult = Callable[[dict], bool]
ENGINES = ("local", "ray")
BAD_INPUT_CODE = 2
START_METHOD = "fork" if sys.platform.startswith("linux") else "spawn"
#: the counters of the files being converted now (worker or serial run -> its counter)
_IN_FLIGHT: dict[int, object] = {}


def bytes_in_flight() -> int:
    """Bytes written so far by the files being converted now (not yet reported)."""
    return sum(counter.value for counter in list(_IN_FLIGHT.values()))


class _Counter:
    value = 0


def run(engine: str, tasks: list[Task], on_result: OnResult, *, jobs: int,
        address: str | None = None, timeout: float | None = None) -> None:
    if not tasks:
        return
    if engine == "ray":
        if timeout is not None:
            raise UsageError("--timeout is for --engine local (Ray: use the cluster's own limits)")
        run_ray(tasks, on_result, jobs=jobs, address=address)
    elif engine != "local":
        raise UsageError(f"unknown engine {engine!r} (choose one of: {', '.join(ENGINES)})")
    elif (jobs == 1 or len(tasks) == 1) and timeout is None:
        run_serial(tasks, on_result)
    else:
        run_local(tasks, on_result, jobs=jobs, timeout=timeout)


def run_serial(tasks: list[Task], on_result: OnResult) -> None:
    counter = _IN_FLIGHT.setdefault(id(tasks), _Counter())
    try:
        for task in tasks:
            with progress.count_into(counter):
                record = run_task(task)
            if not on_result(record):
                return
    finally:
        _IN_FLIGHT.pop(id(tasks), None)


def run_local(tasks: list[Task], on_result: OnResult, *, jobs: int,
              timeout: float | None = None) -> None:
    """Workers that die with this process, one task each at a time. A finished worker gets its
    next file before its result is handed on, unless the result is a failure, which may stop
    the run (``--fail-fast``)."""
    count = min(jobs, len(tasks))
    workers = [_Worker(fill_threads=fill_threads(count)) for _ in range(count)]
    if START_METHOD == "fork":
        _preload(tasks)
    queue = deque(tasks)
    try:
        while queue or any(w.task is not None for w in workers):
            _dispatch(workers, queue)
            records = _next_results(workers, timeout)
            if all(r["status"] != FAILED for r in records):
                _dispatch(workers, queue)
            for record in records:
                if not on_result(record):
                    queue.clear()  # --fail-fast: the running ones finish and are reported
    except BaseException:  # Ctrl-C (workers ignore it): stop now, not after the queue
        for worker in workers:
            worker.kill()
        raise
    for worker in workers:
        worker.stop()


def cores() -> int:
    """The cores this process may run on (``--jobs`` default), which a container may limit."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def fill_threads(workers: int) -> int:
    """Threads each worker's conversions write with: the cores left to it, at most rawfill's
    default. 8 files of 128 MiB to .h5 on 2 cores, --jobs 2, five interleaved runs: 1.05-1.24 s
    with one thread each, 1.26-1.38 s with two."""
    return max(1, min(rawfill.WORKERS, cores() // workers))


#: Outputs written with h5py: workers import it on their first such file unless the run has.
HDF5_OUTPUTS = (".h5", ".hdf5", ".keras")
#: What the HDF5 writers load on first use (``formats.base.LazyModule``).
HDF5_MODULES = ("h5py", "transcoder.formats._hdf5.h5safety")


def _preload(tasks: list[Task]) -> None:
    """Import once, in the run, what every forked worker would otherwise import on its first
    file: the format modules, and h5py for HDF5 outputs (about 0.06 s of CPU per worker; the
    run holds no HDF5 file when it forks, importing h5py opens none)."""
    from .. import formats

    formats.builtin_formats()
    if any(task.output.lower().endswith(HDF5_OUTPUTS) for task in tasks):
        for module in HDF5_MODULES:
            importlib.import_module(module)


def _dispatch(workers: list[_Worker], queue: deque) -> None:
    for worker in workers:
        if queue and worker.task is None:
            worker.start(queue.popleft())


def _next_results(workers: list[_Worker], timeout: float | None) -> list[dict]:
    """Wait until a worker finishes, dies, or passes ``timeout``; what those workers produced."""
    busy = [w for w in workers if w.task is not None]
    wait_for = None
    if timeout is not None:
        wait_for = max(0.0, min(w.started for w in busy) + timeout - time.monotonic())
    wait([c for w in busy for c in (w.conn, w.process.sentinel)], wait_for)
    records = [w.collect() for w in busy if w.conn.poll() or not w.process.is_alive()]
    records += [w.time_out(timeout) for w in busy
                if timeout is not None and w.task is not None and w.elapsed() > timeout]
    return records


@dataclass
class _Worker:
    """One worker process, started when first needed and replaced when it dies or is killed."""
    process: multiprocessing.process.BaseProcess | None = None
    conn: Connection | None = None
    task: Task | None = None
    started: float = 0.0
    fill_threads: int | None = None   # rawfill threads per conversion (None: its default)
    counter: object = None            # bytes of its file in progress (shared with it)

    def start(self, task: Task) -> None:
        if self.process is None:
            context = multiprocessing.get_context(START_METHOD)
            self.conn, child = context.Pipe()
            self.counter = context.RawValue("q", 0)   # written by the worker, read by the run
            self.process = context.Process(target=_worker_main,
                                           args=(child, os.getpid(), self.fill_threads,
                                                 self.counter))
            self.process.start()
            child.close()
            _IN_FLIGHT[id(self)] = self.counter
        self.task, self.started = task, time.monotonic()
        self.conn.send(task)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def collect(self) -> dict:
        """The finished task's record; or, if the worker died instead, a failure naming why."""
        task, self.task = self.task, None
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            self.process.join(5)
            why = _death(self.process.exitcode)
            self.kill()
            return _failure(task, f"worker crashed ({why}) while converting {task.source}",
                            self.elapsed())

    def time_out(self, timeout: float) -> dict:
        task, self.task = self.task, None
        self.kill()
        return _failure(task, f"timed out after {timeout:g} s while converting {task.source}",
                        timeout)

    def kill(self) -> None:
        _IN_FLIGHT.pop(id(self), None)
        if self.process is not None:
            self.process.kill()
            self.process.join()
            self.conn.close()
        self.process = self.conn = None

    def stop(self) -> None:
        """Let an idle worker exit; one that cannot be told to (it died meanwhile) is reaped."""
        try:
            if self.process is not None:
                self.conn.send(None)
                self.process.join(10)
        except OSError:
            pass
        self.kill()


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


def _worker_main(conn: Connection, parent_pid: int, fill_threads: int | None,
                 counter=None) -> None:
    """Convert the tasks the parent sends, one at a time, until it sends None; the bytes of
    the file in progress go to ``counter``."""
    _worker_init(parent_pid)
    if fill_threads:
        rawfill.WORKERS = fill_threads
    while (task := conn.recv()) is not None:
        with progress.count_into(counter) if counter is not None else nullcontext():
            record = run_task(task)
        conn.send(record)


def _worker_init(parent_pid: int) -> None:
    """Workers leave Ctrl-C to the parent, which stops them; and on Linux they ask the kernel
    to kill them when the parent dies, so a kill -9 of `transcode bulk` stops them too."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(1)


def _failure(task: Task, error: str, seconds: float, code: int = BAD_INPUT_CODE) -> dict:
    return {"source": task.source, "output": task.output, "status": FAILED, "error": error,
            "exit_code": code, "seconds": round(seconds, 3), "options": list(task.options)}


def _lost(task: Task, why: str) -> dict:
    return _failure(task, f"{task.source}: {why}; run again to retry", 0.0, INTERNAL_ERROR_EXIT)


def run_ray(tasks: list[Task], on_result: OnResult, *, jobs: int, address: str | None) -> None:
    """The same task as Ray remote calls; uses the Ray instance already initialised in this
    process, else connects to ``address``, else starts a local one with ``jobs`` CPUs."""
    try:
        import ray
    except ImportError:
        raise MissingDependencyError("--engine ray needs Ray",
                                     hint="pip install 'transcoder[ray]'") from None
    started_here = False
    if not ray.is_initialized():
        kwargs = {"address": address} if address else {"num_cpus": jobs}
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False, **kwargs)
        started_here = True
    try:
        # no retries: a file that crashes its worker fails once, like with the local engine
        remote = ray.remote(num_cpus=1, max_retries=0)(run_task)
        pending = {remote.remote(task): task for task in tasks}
        stopping = False
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            task = pending.pop(ref)
            try:
                record = ray.get(ref)
            except ray.exceptions.TaskCancelledError:
                continue
            except ray.exceptions.WorkerCrashedError:
                record = _failure(task, f"worker crashed while converting {task.source}", 0.0)
            except ray.exceptions.RayError as exc:
                record = _lost(task, f"the Ray task failed ({type(exc).__name__})")
            if not on_result(record) and not stopping:
                stopping = True
                for other in pending:
                    ray.cancel(other)
    finally:
        if started_here:
            ray.shutdown()
