"""One fuzz input through ``transcoder.cli.main`` in this process, and the contract it must keep.

The contract (issue 12), checked on every input:

- exit code 0 or 2 (1 needs a check, which the fuzz does not run; 3 is our bug);
- exit 2: exactly one line on stderr, ``transcode: error: ...``, no traceback; exit 0: nothing;
- nothing in the folder but the input files, and DST when the exit code is 0 (no temporary
  file, nothing elsewhere: the folder is the only place the command was given);
- exit 0: DST reads back with our readers (and a ``.safetensors`` with the library itself),
  every tensor loads, and a PyTorch-layout source comes back bit-exact from a PyTorch-layout
  DST, or from a Keras ``.h5`` through the reverse plan;
- within :data:`SECONDS` (an interval timer interrupts Python code; a campaign also runs a
  watchdog for hangs in C) and within a memory bound: the peak resident set of the input
  (``VmHWM`` after resetting it) at most :data:`MEMORY_MIB` above the worker's plus 100 times
  the input's size (the expansion ratio, see ``transcoder/formats/_guard/limits.py``).
"""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seeds import Case

SECONDS = 10.0
MEMORY_MIB = 160
RATIO = 100


class Timeout(BaseException):
    """Raised by the interval timer in the middle of a conversion (not an Exception: the CLI
    must not catch it)."""


@dataclass
class Outcome:
    code: int | None
    stderr: str
    seconds: float
    peak_mib: int | None
    problem: str | None        # None: the contract held


def _peak_reset() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current resident set
    except OSError:
        pass


def peak_mib() -> int | None:
    try:
        with open("/proc/self/status") as fh:
            line = next(l for l in fh if l.startswith("VmHWM:"))
        return int(line.split()[1]) // 1024
    except (OSError, StopIteration):
        return None


def _args(case: Case, folder: Path) -> list[str]:
    extra = [str(folder / a) if a in case.files else a for a in case.extra]
    return [str(folder / case.src), str(folder / case.dst), "--no-check", "-q", *extra]


def _on_timer(signum, frame):
    raise Timeout


def run(case: Case, folder: Path) -> tuple[int | None, str, float, str | None]:
    """Run ``case`` in the empty ``folder``: (exit code, stderr, seconds, timeout problem)."""
    from transcoder.cli import main

    for name, data in case.files.items():
        (folder / name).write_bytes(data)
    with _captured() as err:
        previous = signal.signal(signal.SIGALRM, _on_timer)
        signal.setitimer(signal.ITIMER_REAL, SECONDS)
        started, code, problem = time.perf_counter(), None, None
        try:
            code = main(_args(case, folder))
        except Timeout:
            problem = f"took more than {SECONDS} s"
        except BaseException as exc:  # main returns codes; anything escaping it is a break
            problem = f"main raised {type(exc).__name__}: {exc}"[:300]
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            seconds = time.perf_counter() - started
    return code, err.getvalue(), seconds, problem


class _Text(io.StringIO):
    """What was written to stderr, by Python (sys.stderr) and by C libraries (file descriptor 2)."""


@contextlib.contextmanager
def _captured():
    """stdout and stderr of one run, at both levels (a test runner may own sys.stderr)."""
    text = _Text()
    with tempfile.TemporaryFile() as raw:
        saved = os.dup(1), os.dup(2)
        sys.stdout.flush(), sys.stderr.flush()
        os.dup2(raw.fileno(), 1), os.dup2(raw.fileno(), 2)
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(text):
                yield text
        finally:
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])
            raw.seek(0)
            text.write(raw.read().decode("utf-8", "replace"))


def check(case: Case, folder: Path, baseline_mib: int | None = None) -> Outcome:
    """Run ``case`` in the empty ``folder`` and check the contract; the folder is emptied after."""
    _peak_reset()
    try:
        code, stderr, seconds, problem = run(case, folder)
        peak = peak_mib()
        problem = problem or _exit_problem(code, stderr) or _files_problem(case, folder, code) \
            or _memory_problem(case, peak, baseline_mib)
        if problem is None and code == 0:
            problem = _output_problem(case, folder)
    finally:
        for child in folder.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    return Outcome(code, stderr, seconds, peak, problem)


def _exit_problem(code: int | None, stderr: str) -> str | None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    if code not in (0, 2):
        return f"exit code {code}: {stderr.strip()[:300]}"
    if "Traceback" in stderr:
        return "a traceback was printed"
    if code == 2 and (len(lines) != 1 or not lines[0].startswith("transcode: error: ")):
        return f"exit 2 without exactly one error line: {stderr[:300]!r}"
    if code == 0 and lines:
        return f"exit 0 but stderr says: {stderr[:300]!r}"
    return None


def _files_problem(case: Case, folder: Path, code: int | None) -> str | None:
    expected = set(case.files) | ({case.dst} if code == 0 else set())
    found = {p.name for p in folder.iterdir()}
    if found != expected:
        return f"files left: {sorted(found - expected)}, missing: {sorted(expected - found)}"
    return None


def _memory_problem(case: Case, peak: int | None, baseline: int | None) -> str | None:
    if peak is None or baseline is None:
        return None
    allowed = baseline + MEMORY_MIB + RATIO * sum(map(len, case.files.values())) // 2**20
    return f"peak memory {peak} MiB (allowed {allowed})" if peak > allowed else None


def _output_problem(case: Case, folder: Path) -> str | None:
    """DST reads back; a PyTorch-layout source comes back bit-exact."""
    from transcoder.pipeline import read
    from transcoder.rules import make_plan

    dst = folder / case.dst
    try:
        if dst.name.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(str(dst), framework="numpy") as fh:
                list(fh.keys())
        with read(dst) as out, read(folder / case.src) as src:
            if src.layout != "torch" or "--rules" in case.extra:
                for ref in out:
                    ref.load()
                return None
            back = out if out.layout == "torch" else make_plan(out, "torch").apply(out)
            return _compare(src, back)
    except Exception as exc:  # noqa: BLE001 - any failure to read back is the break
        return f"exit 0 but the output does not read back: {type(exc).__name__}: {exc}"[:300]


def _compare(src, back) -> str | None:
    if list(back.tensors) != list(src.tensors) and sorted(back.tensors) != sorted(src.tensors):
        return f"tensor names differ: {sorted(src.tensors)[:5]} vs {sorted(back.tensors)[:5]}"
    for name, ref in src.tensors.items():
        a, b = ref.load(), back[name].load()
        if a.dtype != b.dtype or a.shape != b.shape or \
                np.ascontiguousarray(a).tobytes() != np.ascontiguousarray(b).tobytes():
            return f"tensor {name!r} differs after the round trip"
    return None
