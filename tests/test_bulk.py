"""`transcode bulk`: a mirrored tree, bit-exact outputs, resume after a kill -9, bad files, Ray.

Every output is read back with transcoder's readers, planned back to the PyTorch layout and
compared byte for byte with the source as torch / safetensors load it.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
torch = pytest.importorskip("torch", reason="needs torch: pip install '.[check]'")
from safetensors.numpy import load_file as load_safetensors
from safetensors.torch import save_file as save_safetensors

from conftest import FRAMEWORKS, ROOT, assert_bit_exact, assert_imports_none_of, to_numpy
from transcoder.bulk import BulkOptions, run_bulk
from transcoder.bulk.manifest import NAME as MANIFEST, Manifest
from transcoder.pipeline import read
from transcoder.errors import UsageError
from transcoder.rules import make_plan

PYTHON = sys.executable


# ------------------------------------------------------------------ making trees

def state(seed: int, kind: str = "cnn") -> dict[str, torch.Tensor]:
    """Small state dicts of the layer kinds the issue names (names say the kind)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    if kind == "cnn":
        return {"conv.weight": r(8, 3, 3, 3), "conv.bias": r(8), "bn.weight": r(8), "bn.bias": r(8),
                "bn.running_mean": r(8), "bn.running_var": r(8).abs(),
                "bn.num_batches_tracked": torch.tensor(7), "fc.weight": r(10, 8), "fc.bias": r(10)}
    if kind == "conv1d":
        return {"conv1.weight": r(6, 4, 5), "conv1.bias": r(6), "bn1.weight": r(6), "bn1.bias": r(6),
                "bn1.running_mean": r(6), "bn1.running_var": r(6).abs(),
                "bn1.num_batches_tracked": torch.tensor(3)}
    if kind == "text":
        return {"embed.weight": r(50, 16), "proj.weight": r(16, 16).half(), "proj.bias": r(16).half()}
    raise ValueError(kind)


def save(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".safetensors"):
        save_safetensors(tensors, str(path))
    else:
        torch.save(tensors, path)
    return path


def make_tree(root: Path) -> dict[str, str]:
    """A mixed tree; returns {source: expected output stem} for the checkpoints in it."""
    save(root / "vision" / "cnn.pt", state(1, "cnn"))
    save(root / "vision" / "deep" / "audio.safetensors", state(2, "conv1d"))
    save(root / "text" / "embed.pt", state(3, "text"))
    save(root / "top.safetensors", state(4, "cnn"))
    sharded = state(5, "cnn")
    names = list(sharded)
    save(root / "sharded" / "model-1-of-2.safetensors", {n: sharded[n] for n in names[:4]})
    save(root / "sharded" / "model-2-of-2.safetensors", {n: sharded[n] for n in names[4:]})
    weight_map = {n: "model-1-of-2.safetensors" if i < 4 else "model-2-of-2.safetensors"
                  for i, n in enumerate(names)}
    (root / "sharded" / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}))
    (root / "notes.txt").write_text("not a checkpoint")
    (root / "vision" / "config.json").write_text("{}")
    return {"vision/cnn.pt": "vision/cnn", "vision/deep/audio.safetensors": "vision/deep/audio",
            "text/embed.pt": "text/embed", "top.safetensors": "top",
            "sharded/model.safetensors.index.json": "sharded/model"}


def reference(path: Path) -> dict[str, np.ndarray]:
    """The source's tensors as the libraries that wrote them read them."""
    if path.name.endswith(".index.json"):
        out = {}
        for shard in sorted(set(json.loads(path.read_text())["weight_map"].values())):
            out.update(load_safetensors(str(path.parent / shard)))
        return out
    if path.name.endswith(".safetensors"):
        return load_safetensors(str(path))
    return {k: to_numpy(v) for k, v in torch.load(path, weights_only=True).items()}


def assert_output_bit_exact(source: Path, output: Path) -> None:
    """Read the output back, plan it to the PyTorch layout, compare every tensor with the source."""
    expected = reference(source)
    with read(output) as ckpt:
        back = make_plan(ckpt, "torch").apply(ckpt)
        assert sorted(back.tensors) == sorted(expected), output
        for name, ref in back.tensors.items():
            assert_bit_exact(ref.load(), expected[name], f"{output}:{name}")


def assert_tree_bit_exact(src: Path, dst: Path, sources: dict[str, str], ext: str = ".h5") -> None:
    for rel, stem in sources.items():
        assert_output_bit_exact(src / rel, dst / (stem + ext))
    assert not list(dst.rglob("*.tmp")), "temporary files left behind"


def manifest_lines(dst: Path) -> list[dict]:
    lines = (dst / MANIFEST).read_text().splitlines()
    return [json.loads(line) for line in lines]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def errors(report) -> list[str]:
    return [r["error"] for r in report.failed]


def bulk(src: Path, dst: Path, **options) -> "object":
    options.setdefault("to", "h5")
    options.setdefault("jobs", 1)
    return run_bulk(src, dst, BulkOptions(**options))


# ------------------------------------------------------------------ the tree converts, once

def test_tree_converts_bit_exact_with_a_manifest_and_a_rerun_redoes_nothing(cli, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    sources = make_tree(src)
    code, out, err = cli("bulk", src, dst, "--to", "h5", "--jobs", "2", "--no-check",
                         "--checksums")
    assert code == 0, err
    assert_tree_bit_exact(src, dst, sources)
    assert not (dst / "notes.txt").exists() and not (dst / "vision" / "config.json").exists()
    assert not list(dst.rglob("model-*")), "shards are converted through their index only"
    assert "converted\t5" in out and "ignored (not checkpoints, or --pattern)\t2" in out

    entries = {e["source"]: e for e in manifest_lines(dst)}
    assert set(entries) == set(sources)
    for rel, stem in sources.items():
        entry = entries[rel]
        assert entry["status"] == "done" and entry["error"] is None and entry["seconds"] >= 0
        assert entry["output"] == stem + ".h5"
        assert entry["output_sha256"] == sha256(dst / entry["output"])
        assert entry["output_size"] == (dst / entry["output"]).stat().st_size
        if not rel.endswith(".index.json"):
            assert entry["sha256"] == sha256(src / rel)
            assert entry["size"] == (src / rel).stat().st_size

    mtimes = {p: p.stat().st_mtime_ns for p in dst.rglob("*.h5")}
    report = bulk(src, dst, jobs=2)
    assert report.exit_code == 0 and report.results == [] and len(report.reused) == 5
    assert {p: p.stat().st_mtime_ns for p in dst.rglob("*.h5")} == mtimes
    code, out, err = cli("bulk", src, dst, "--to", "h5", "--check", "--jobs", "1")
    assert code == 0, err  # checking is an option of its own: the files are redone, checked
    assert "converted\t5" in out
    assert all("checked" in e["options"] for e in manifest_lines(dst))


@pytest.mark.parametrize("to,ext", [("safetensors", ".safetensors"), ("pt", ".pt")])
def test_other_targets_are_bit_exact(tmp_path, to, ext):
    src, dst = tmp_path / "src", tmp_path / "dst"
    sources = make_tree(src)
    report = bulk(src, dst, to=to)
    assert report.exit_code == 0, errors(report)
    assert_tree_bit_exact(src, dst, sources, ext)


def test_rerun_redoes_exactly_what_is_missing_damaged_or_changed(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    sources = make_tree(src)
    first = bulk(src, dst, checksums=True)
    assert first.exit_code == 0, errors(first)

    with open(dst / "vision" / "cnn.h5", "r+b") as fh:            # damaged output
        fh.truncate(100)
    (dst / "text" / "embed.h5").unlink()                           # missing output
    save(src / "top.safetensors", state(40, "cnn"))                # changed source
    audio = src / "vision" / "deep" / "audio.safetensors"          # touched, same content
    os.utime(audio, ns=(time.time_ns(), time.time_ns() + 10**9))
    stale = dst / "vision" / ".cnn.h5.k3j2.tmp"                   # what a killed write leaves
    stale.write_bytes(b"half")
    nested = dst / "vision" / "..cnn.h5.k3j2.tmp.0a1b.tmp"        # ... from a writer's own temp
    nested.write_bytes(b"half")
    mine = dst / "vision" / ".keep.tmp"                            # not an output's: kept
    mine.write_bytes(b"user")
    with open(dst / MANIFEST, "a") as fh:                          # a line cut by a kill
        fh.write('{"source": "vision/cnn.pt", "sta')

    report = bulk(src, dst)
    assert report.exit_code == 0, errors(report)
    assert sorted(r["source"] for r in report.results) == ["text/embed.pt", "top.safetensors",
                                                            "vision/cnn.pt"]
    assert not stale.exists() and not nested.exists() and mine.exists()
    mine.unlink()
    assert_tree_bit_exact(src, dst, sources)
    assert len(manifest_lines(dst)) == 5  # compacted: one line per source

    top = src / "top.safetensors"          # converted without --checksums: no hash to tell
    assert {e["source"]: e for e in manifest_lines(dst)}["top.safetensors"]["sha256"] is None
    os.utime(top, ns=(time.time_ns(), time.time_ns() + 10**9))
    os.utime(audio, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    assert [r["source"] for r in bulk(src, dst).results] == ["top.safetensors"]
    assert bulk(src, dst, force=True).results.__len__() == 5       # --force redoes everything
    other = bulk(src, dst, key="state_dict")                       # other options: redone (and fail)
    assert len(other.results) == 5


def test_corrupt_files_are_reported_and_the_rest_convert(cli, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    sources = make_tree(src)
    (src / "vision" / "broken.pt").write_bytes(b"PK\x03\x04 not really a zip")
    good = (src / "top.safetensors").read_bytes()
    (src / "text" / "cut.safetensors").write_bytes(good[: len(good) // 2])
    code, out, err = cli("bulk", src, dst, "--to", "h5", "--jobs", "2", "--no-check")
    assert code == 2
    failures = [line for line in err.splitlines() if line.startswith("transcode: failed:")]
    assert len(failures) == 2 and "broken.pt" in err and "cut.safetensors" in err
    assert "Traceback" not in err
    assert_tree_bit_exact(src, dst, sources)
    assert not (dst / "vision" / "broken.h5").exists() and not (dst / "text" / "cut.h5").exists()
    failed = {e["source"]: e for e in manifest_lines(dst) if e["status"] == "failed"}
    assert set(failed) == {"vision/broken.pt", "text/cut.safetensors"}
    assert all(e["error"] and e["output_sha256"] is None for e in failed.values())

    report = bulk(src, dst)  # the bad ones are retried, the good ones are not redone
    assert sorted(r["source"] for r in report.results) == sorted(failed)
    assert report.exit_code == 2


def test_fail_fast_stops_after_the_first_failure(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src).mkdir()
    (src / "a_broken.pt").write_bytes(b"\x80 not a pickle" + bytes(1 << 20))  # the largest: first
    save(src / "b.pt", state(1))
    save(src / "c.pt", state(2))
    report = bulk(src, dst, fail_fast=True)
    assert report.exit_code == 2 and report.not_run == 2
    assert [r["source"] for r in report.results] == ["a_broken.pt"]
    assert not (dst / "b.h5").exists()
    assert bulk(src, dst).converted.__len__() == 2  # without it, the others convert


def test_an_output_is_on_disk_before_its_manifest_line(tmp_path, monkeypatch):
    """The run flushes each output (while the worker converts its next file), then writes the
    line that trusts it; an output the disk refuses to flush fails its file."""
    from transcoder.bulk import runner

    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src)
    events = []
    append = Manifest.append
    monkeypatch.setattr(Manifest, "append", lambda self, r: events.append(("line", r["output"]))
                        or append(self, r))

    def flush(path: Path) -> None:
        events.append(("flush", path.relative_to(dst).as_posix()))
        if path.name == "cnn.h5":
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(runner, "make_durable", flush)
    report = bulk(src, dst, jobs=2)
    done = [e for e in events if e[0] == "line"]
    assert len(done) == 5 and all(events[events.index(e) - 1] == ("flush", e[1]) for e in done)
    assert [r["error"] for r in report.failed] == [
        "vision/cnn.h5: written but not flushed to disk: Input/output error"]
    assert report.exit_code == 2 and len(report.converted) == 4
    assert len(bulk(src, dst).results) == 1   # it is redone


def test_files_start_largest_first(tmp_path):
    """A large file started last would leave the other workers idle at the end."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    for i, width in enumerate((4, 64, 16, 32)):
        save(src / f"m{i}.pt", {"fc.weight": torch.ones(width, width),
                                "fc.bias": torch.ones(width)})
    order = [r["source"] for r in bulk(src, dst).results]
    assert order == ["m1.pt", "m3.pt", "m2.pt", "m0.pt"]


def test_pattern_and_colliding_outputs(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src)
    report = bulk(src, dst, pattern="*.pt")
    assert sorted(r["source"] for r in report.converted) == ["text/embed.pt", "vision/cnn.pt"]
    assert bulk(src, tmp_path / "d2", pattern="vision/*").converted.__len__() == 2
    inside = bulk(src, src / "converted")  # DST inside SRC: its outputs are not read as sources
    assert inside.exit_code == 0 and len(inside.converted) == 5
    assert len(bulk(src, src / "converted").reused) == 5
    (src / "converted").rename(tmp_path / "converted")

    save(src / "text" / "embed.safetensors", state(9, "text"))  # embed.pt -> embed.h5 as well
    report = bulk(src, tmp_path / "d3")
    assert report.exit_code == 2
    assert sorted(r["source"] for r in report.failed) == ["text/embed.pt", "text/embed.safetensors"]
    assert "same output text/embed.h5" in report.failed[0]["error"]
    assert len(report.converted) == 4


def test_usage_errors(cli, tmp_path):
    src = tmp_path / "src"
    make_tree(src)
    for args in (["--to", "onnx"], ["--to", "h5", "--engine", "spark"], ["--to", "h5", "--jobs", "0"],
                 ["--to", "h5", "--address", "ray://head:10001"], ["--to", "h5", "--timeout", "0"],
                 ["--to", "h5", "--engine", "ray", "--timeout", "5"]):
        code, _, err = cli("bulk", src, tmp_path / "out", *args)
        assert code == 2 and err.startswith("transcode: error:"), err
    code, _, err = cli("bulk", src, src, "--to", "h5")
    assert code == 2 and "must differ" in err
    code, _, err = cli("bulk", tmp_path / "nope", tmp_path / "out", "--to", "h5")
    assert code == 2 and "not a folder" in err
    (tmp_path / "bad.toml").write_text("[[layer]]\nmatch = 3\n")
    code, _, err = cli("bulk", src, tmp_path / "out", "--to", "h5", "--rules", tmp_path / "bad.toml")
    assert code == 2 and err.count("\n") == 1


def test_one_run_at_a_time_per_destination(tmp_path):
    with Manifest(tmp_path):
        with pytest.raises(UsageError, match="another `transcode bulk`"):
            Manifest(tmp_path)
    Manifest(tmp_path).close()  # released


def test_plain_path_imports_neither_torch_nor_tensorflow_nor_ray(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src)
    assert_imports_none_of("import sys; from transcoder.cli import main; "
                           "assert main(['bulk', *sys.argv[1:]]) == 0", (*FRAMEWORKS, "ray"),
                           src, dst, "--to", "h5", "-j", "1", "-q", "--no-check")
    assert list(dst.rglob("*.h5")), "nothing converted"


# ------------------------------------------------------------------ a worker crashes or hangs

def test_a_file_that_crashes_or_hangs_its_worker_fails_alone(tmp_path):
    """tests/faults/sitecustomize.py makes the workers of a `transcode bulk` started with it on
    PYTHONPATH segfault on crash.pt and sleep on hang.safetensors (as some corrupted HDF5
    files make the HDF5 C library do)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    sources = make_tree(src)
    save(src / "vision" / "crash.pt", state(6))
    save(src / "text" / "hang.safetensors", state(7, "text"))
    path = os.pathsep.join([str(Path(__file__).parent / "faults"), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path,
               TRANSCODER_TEST_FAULTS="crash=crash.pt,hang=hang.safetensors")
    started = time.monotonic()
    run = subprocess.run([PYTHON, "-m", "transcoder", "bulk", src, dst, "--to", "h5", "--jobs",
                          "2", "--timeout", "2", "--no-check"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    code, err = run.returncode, run.stderr
    assert code == 2 and time.monotonic() - started < 60, err
    assert "Traceback" not in err
    assert_tree_bit_exact(src, dst, sources)
    failed = {e["source"]: e["error"] for e in manifest_lines(dst) if e["status"] == "failed"}
    assert failed == {
        "vision/crash.pt": "worker crashed (signal SIGSEGV) while converting vision/crash.pt",
        "text/hang.safetensors": "timed out after 2 s while converting text/hang.safetensors"}
    assert not (dst / "vision" / "crash.h5").exists() and not (dst / "text" / "hang.h5").exists()


# ------------------------------------------------------------------ kill -9 part-way

@pytest.mark.slow
def test_kill_9_part_way_then_rerun_ends_complete_and_bit_exact(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    sources = {}
    for i in range(160):
        rel = f"batch{i % 4}/model{i:03d}" + (".pt" if i % 2 else ".safetensors")
        save(src / rel, state(i, ("cnn", "conv1d", "text")[i % 3]))
        sources[rel] = rel.rsplit(".", 1)[0]
    proc = subprocess.Popen([PYTHON, "-m", "transcoder", "bulk", src, dst, "--to", "h5", "-j", "2",
                             "-q", "--no-check"], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        seen = 0
        deadline = time.monotonic() + 60
        while seen < 8 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
            if (dst / MANIFEST).exists():
                seen = (dst / MANIFEST).read_bytes().count(b'"status":"done"')
        os.kill(proc.pid, signal.SIGKILL)  # the bulk process only: its workers must follow it
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL, "finished before it could be killed"
        _wait_until_group_gone(proc.pid)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    done_at_kill = sum(e["status"] == "done" for e in _readable_lines(dst / MANIFEST))
    assert 8 <= done_at_kill < len(sources), "the kill should land part-way"

    report = bulk(src, dst, jobs=2)
    assert report.exit_code == 0, errors(report)
    assert len(report.reused) >= done_at_kill and len(report.reused) + len(report.results) == 160
    assert_tree_bit_exact(src, dst, sources)


def _wait_until_group_gone(pgid: int, timeout: float = 15.0) -> None:
    """The workers die with their parent (PR_SET_PDEATHSIG) instead of converting on alone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError("worker processes outlived the killed bulk process")


def _readable_lines(path: Path) -> list[dict]:
    out = []
    for line in path.read_bytes().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


# ------------------------------------------------------------------ Ray

@pytest.mark.slow
def test_ray_engine_converts_the_same_tree(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    src, dst = tmp_path / "src", tmp_path / "dst"
    sources = make_tree(src)
    (src / "vision" / "broken.pt").write_bytes(b"PK\x03\x04 not really a zip")
    save(src / "vision" / "crash.pt", state(6))  # segfaults its Ray worker (tests/faults)
    path = os.pathsep.join([str(Path(__file__).parent / "faults"), os.environ.get("PYTHONPATH", "")])
    monkeypatch.setenv("PYTHONPATH", path)
    monkeypatch.setenv("TRANSCODER_TEST_FAULTS", "crash=crash.pt")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        report = bulk(src, dst, engine="ray")
        assert report.exit_code == 2
        failed = {r["source"]: r["error"] for r in report.failed}
        assert sorted(failed) == ["vision/broken.pt", "vision/crash.pt"]
        assert failed["vision/crash.pt"] == "worker crashed while converting vision/crash.pt"
        assert_tree_bit_exact(src, dst, sources)
        (src / "vision" / "broken.pt").unlink()
        (src / "vision" / "crash.pt").unlink()
        again = bulk(src, dst, engine="ray")
        assert again.exit_code == 0 and again.results == [] and len(again.reused) == 5
    finally:
        ray.shutdown()
