"""Nobody waits in silence: on a terminal (a real pseudo-terminal here) a conversion shows its
bytes and tensors, the frameworks' loading and the check's layers; piped, none of it. Tables
fit the terminal; TensorFlow's C++ start-up lines are hidden unless the user asked for them."""
from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys

import numpy as np
import pytest

from conftest import FIXTURES, ROOT

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
SPINNER = re.compile(r"^\s*[\u2800-\u28ff]")   # rich's dots spinner
TF_START_UP = ("absl::InitializeLog", "cpu_feature_guard", "oneDNN", "cuda", "I0000", "W0000")


def environment(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "NO_COLOR", "KERAS_BACKEND")}
    env.update(PYTHONPATH=str(ROOT), TERM="xterm", COLUMNS="120", LINES="40", **extra)
    return env


def on_terminal(args: list, env: dict, cwd) -> tuple[int, str]:
    """Run ``transcode ARGS`` with stdin, stdout and stderr on a pseudo-terminal: (exit code,
    everything it drew)."""
    pid, fd = pty.fork()
    if pid == 0:   # the child: the pty is its terminal
        os.chdir(cwd)
        os.execve(sys.executable, [sys.executable, "-m", "transcoder", *map(str, args)], env)
    chunks = []
    while True:
        ready, _, _ = select.select([fd], [], [], 300)
        if not ready:
            break
        try:
            data = os.read(fd, 1 << 16)
        except OSError:   # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode("utf-8", "replace")


def piped(args: list, env: dict, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "transcoder", *map(str, args)], env=env,
                          cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL)


def frames(drawn: str) -> list[str]:
    """What the terminal showed, line by line and redraw by redraw, without colours."""
    parts = [part for line in ANSI.sub("", drawn).split("\n") for part in line.split("\r")]
    return [SPINNER.sub("", part).strip() for part in parts if SPINNER.sub("", part).strip()]


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """Four 8 MiB float32 weights and their biases (32 MiB), as a torch.save file."""
    torch = pytest.importorskip("torch")
    folder = tmp_path_factory.mktemp("wide")
    gen = torch.Generator().manual_seed(0)
    state = {}
    for i in range(4):
        state[f"l{i}.weight"] = torch.randn(2048, 1024, generator=gen) * 0.01
        state[f"l{i}.bias"] = torch.zeros(2048)
    torch.save(state, folder / "wide.pt")
    return folder / "wide.pt"


def test_a_conversion_on_a_terminal_shows_bytes_and_tensors(wide, tmp_path):
    code, drawn = on_terminal([wide, tmp_path / "w.h5", "--no-check"], environment(), tmp_path)
    assert code == 0, drawn
    shown = frames(drawn)
    total = 4 * 2048 * (1024 + 1) * 4 / (1 << 20)   # float32 bytes, in MiB
    final = f"writing w.h5 {total:.1f}/{total:.1f} MiB, 8/8 tensors"
    assert any(line.startswith("writing w.h5") and final.split(" ", 2)[2] in line
               for line in shown), shown
    assert any(line.startswith("reading wide.pt") for line in shown)
    assert any(line.startswith(f"wrote {tmp_path / 'w.h5'}: 8 tensors mapped") for line in shown)
    counts = [tuple(map(float, m.groups())) for m in
              (re.search(r"writing w\.h5.*?([\d.]+)/[\d.]+ MiB, (\d+)/8 tensors", line)
               for line in shown) if m]
    assert counts == sorted(counts)   # bytes and tensors only go forward


def test_a_check_on_a_terminal_shows_loading_and_layers(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("keras")
    code, drawn = on_terminal([FIXTURES / "small_cnn.pt", tmp_path / "c.h5"], environment(),
                              tmp_path)
    assert code == 0, drawn
    shown = frames(drawn)
    assert any(line.startswith("loading torch and Keras...") for line in shown), shown
    assert any(re.match(r"checking layers .*\b9/9 layers", line) for line in shown), shown
    assert shown[-1].startswith("check passed: 0 of 9 layers")


def test_piped_there_is_no_display(wide, tmp_path):
    proc = piped([wide, tmp_path / "w.h5", "--no-check"], environment(), tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and "\x1b" not in proc.stdout
    assert proc.stdout.startswith(f"wrote {tmp_path / 'w.h5'}: 8 tensors mapped, 0 carried (")
    assert len(proc.stdout.splitlines()) == 1


def test_quiet_on_a_terminal_draws_nothing(wide, tmp_path):
    code, drawn = on_terminal([wide, tmp_path / "w.h5", "--no-check", "-q"], environment(),
                              tmp_path)
    assert code == 0 and frames(drawn) == []


def test_tensorflow_start_up_lines_are_hidden_unless_asked_for(tmp_path):
    pytest.importorskip("tensorflow")
    args = [FIXTURES / "encoder.pt", tmp_path / "e.h5", "--model",
            f"{FIXTURES / 'models.py'}:Encoder", "--input-shape", "4,10,128"]
    code, drawn = on_terminal(args, environment(), tmp_path)
    assert code == 0, drawn
    shown = frames(drawn)
    assert any(line.startswith("loading torch and Keras and TensorFlow...") for line in shown)
    assert any(line.startswith("checking e.h5: both models") for line in shown)
    assert not [line for line in shown if any(word in line for word in TF_START_UP)], shown
    # the user's own level is respected: 0 shows TensorFlow's lines
    proc = piped(args[:2] + ["--force"] + args[2:], environment(TF_CPP_MIN_LOG_LEVEL="0"),
                 tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert any(word in proc.stderr for word in TF_START_UP), proc.stderr


# ---------------------------------------------------------------- pieces, without a terminal

def test_tracked_counts_every_byte_once_from_the_writers_threads(tmp_path):
    """Through the real .safetensors and .h5 writers (two fill threads, shares of large
    tensors): the counter ends at the written tensors' bytes, and at zero after the file."""
    from transcoder import progress
    from transcoder.pipeline import transcode
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    arrays = {"big.weight": rng.normal(size=(4096, 1100)).astype(np.float32),   # 17.2 MiB
              "big.bias": np.zeros(4096, np.float32),
              "fc.weight": rng.normal(size=(5, 3)).astype(np.float32),
              "fc.bias": np.zeros(5, np.float32)}
    save_file(arrays, tmp_path / "s.safetensors")
    written = sum(a.nbytes for a in arrays.values())

    class Recorder:
        def __init__(self):
            self.seen = []

        @property
        def value(self):
            return self.seen[-1] if self.seen else 0

        @value.setter
        def value(self, v):
            self.seen.append(v)

    for target in ("c.safetensors", "c.h5"):
        counter = Recorder()
        with progress.count_into(counter):
            transcode(tmp_path / "s.safetensors", tmp_path / target)
        assert max(counter.seen) == written and counter.seen == sorted(counter.seen[:-1]) + [0]
        assert any(0 < v < written for v in counter.seen)   # within the file, not at its end


def test_the_bulk_bar_counts_bytes_in_flight_never_back():
    from transcoder.bulk.display import Display

    class Bar:
        def __init__(self):
            self.completed = []

        def update(self, task, completed, files):
            self.completed.append(completed)

    display = Display()
    display.progress, display.task, display.total_bytes, display.files = Bar(), 0, 1000, 2
    display._show(300)                       # 300 bytes of the first file written
    display.finished_bytes = 400             # it is done: 400 bytes
    display._show(0)                         # the worker's counter went back to 0
    display._show(500)                       # the second file: 500 of its bytes
    display._show(900)                       # an output larger than its source
    assert display.progress.completed == [300, 400, 900, 1000]


def test_tables_fit_the_terminal_one_line_per_row():
    from rich.console import Console
    from transcoder.printing import print_rows, shorten

    long = "encoder.layers.11.attention.self_attention.output.dense_projection_final"
    rows = [{"status": "SUCCESS", "name": long, "note": "groups=1 assumed (not in the "
             "weights) and many more words than a column holds"},
            {"status": "FAIL", "name": "fc", "note": ""}]
    for width in (60, 100, 120):
        buf = io.StringIO()
        console = Console(file=buf, width=width, color_system=None)
        print_rows(rows, ["status", "name", "note"], title="t", console=console)
        lines = buf.getvalue().splitlines()
        assert len(lines) == 1 + 3 + len(rows) + 1       # title, header, rows, bottom
        assert max(len(line) for line in lines) <= width
        name, note = (c.strip() for c in lines[4].split("\u2502")[2:4])
        assert name == shorten(long, len(name)) and note == shorten(rows[0]["note"], len(note))
        assert name.startswith("encoder.la") and name.endswith("final")
        if width >= 100:   # the names keep their width while shortening the notes suffices
            assert name == long and note.endswith("holds") and "\u2026" in note
        else:
            assert "\u2026" in name
    assert shorten("abcdefghij", 5) == "ab\u2026ij" and shorten("abc", 5) == "abc"
