"""Engines run tasks and hand each result back, in completion order, to the one process that
keeps the manifest. ``on_result`` returns False to stop early (``--fail-fast``): tasks not yet
started are cancelled, the ones running are finished and still reported.

- ``serial``: in this process, one file at a time (``--jobs 1``).
- ``local``: a pool of worker processes on this machine (the default).
- ``ray``: Ray tasks on a cluster (``--address``) or on a local Ray instance; every node must
  see SRC_DIR and DST_DIR at the same paths and have transcoder installed.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Callable

from ..errors import MissingDependencyError, UsageError
from .task import FAILED, INTERNAL_ERROR_CODE, Task, run_task

OnResult = Callable[[dict], bool]
ENGINES = ("local", "ray")


def run(engine: str, tasks: list[Task], on_result: OnResult, *, jobs: int,
        address: str | None = None) -> None:
    if not tasks:
        return
    if engine == "ray":
        run_ray(tasks, on_result, jobs=jobs, address=address)
    elif engine != "local":
        raise UsageError(f"unknown engine {engine!r} (choose one of: {', '.join(ENGINES)})")
    elif jobs == 1 or len(tasks) == 1:
        run_serial(tasks, on_result)
    else:
        run_local(tasks, on_result, jobs=jobs)


def run_serial(tasks: list[Task], on_result: OnResult) -> None:
    for task in tasks:
        if not on_result(run_task(task)):
            return


def run_local(tasks: list[Task], on_result: OnResult, *, jobs: int) -> None:
    """A process pool; spawned workers (no forked h5py state) that die with this process."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(jobs, len(tasks)), mp_context=context,
                             initializer=_worker_init, initargs=(os.getpid(),)) as pool:
        futures = {pool.submit(run_task, task): task for task in tasks}
        stopping = False
        try:
            for future in as_completed(futures):
                if future.cancelled():
                    continue
                try:
                    record = future.result()
                except BrokenProcessPool:
                    record = _lost(futures[future], "a worker process died (out of memory?)")
                if not on_result(record) and not stopping:
                    stopping = True
                    for other in futures:
                        other.cancel()
        except BaseException:  # Ctrl-C (workers ignore it): stop now, not after the queue
            for other in futures:
                other.cancel()
            _terminate_workers(pool)
            raise


def _terminate_workers(pool: ProcessPoolExecutor) -> None:
    terminate = getattr(pool, "terminate_workers", None)  # Python 3.14+
    if terminate is not None:
        terminate()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.terminate()


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


def _lost(task: Task, why: str) -> dict:
    return {"source": task.source, "output": task.output, "status": FAILED,
            "error": f"{task.source}: {why}; run again to retry", "exit_code": INTERNAL_ERROR_CODE,
            "options": list(task.options)}


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
        remote = ray.remote(num_cpus=1)(run_task)
        pending = {remote.remote(task): task for task in tasks}
        stopping = False
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            task = pending.pop(ref)
            try:
                record = ray.get(ref)
            except ray.exceptions.TaskCancelledError:
                continue
            except ray.exceptions.RayError as exc:
                record = _lost(task, f"the Ray task failed ({type(exc).__name__})")
            if not on_result(record) and not stopping:
                stopping = True
                for other in pending:
                    ray.cancel(other)
    finally:
        if started_here:
            ray.shutdown()
