"""`transcode bulk` with hostile trees (issue 12): never read through a link that leaves SRC_DIR,
never write or delete through a link in DST_DIR, never block on a FIFO or device, and one bad
index or manifest line fails only itself."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from conftest import assert_bit_exact
from hostile import one_error_line, run_bounded
from transcoder.bulk import BulkOptions, run_bulk
from transcoder.bulk.manifest import NAME as MANIFEST
from transcoder.pipeline import read

pytestmark = pytest.mark.skipif(os.name != "posix", reason="symbolic links and FIFOs")


def weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"fc.weight": rng.standard_normal((4, 3), dtype=np.float32),
            "fc.bias": rng.standard_normal(4, dtype=np.float32)}


def save(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(weights(seed), str(path))
    return path


def bulk(src: Path, dst: Path, **options):
    options.setdefault("to", "h5")
    options.setdefault("jobs", 1)
    return run_bulk(src, dst, BulkOptions(**options))


def kernel(path: Path) -> np.ndarray:
    with read(path) as ckpt:
        return ckpt["fc/kernel"].load()


def manifest(dst: Path) -> dict[str, dict]:
    return {e["source"]: e for e in map(json.loads, (dst / MANIFEST).read_text().splitlines())}


def test_a_linked_folder_in_dst_is_never_written_or_cleaned_through(tmp_path):
    src, dst, elsewhere = tmp_path / "src", tmp_path / "dst", tmp_path / "elsewhere"
    save(src / "a" / "net.safetensors", 1)
    save(src / "b" / "net.safetensors", 2)
    elsewhere.mkdir()
    theirs = elsewhere / ".net.h5.keep.tmp"   # looks like one of our stale temporary files
    theirs.write_bytes(b"not ours")
    dst.mkdir()
    (dst / "a").symlink_to(elsewhere, target_is_directory=True)
    report = bulk(src, dst)
    assert report.exit_code == 2
    assert [r["source"] for r in report.failed] == ["a/net.safetensors"]
    assert "symbolic link" in report.failed[0]["error"]
    assert sorted(p.name for p in elsewhere.iterdir()) == [theirs.name]
    assert theirs.read_bytes() == b"not ours"
    assert_bit_exact(kernel(dst / "b" / "net.h5"), weights(2)["fc.weight"].T)


def test_links_leaving_src_are_skipped_and_links_inside_are_converted(tmp_path):
    src, dst, outside = tmp_path / "src", tmp_path / "dst", tmp_path / "secret"
    save(outside / "private.safetensors", 9)
    save(src / "real.safetensors", 3)
    (src / "escape.safetensors").symlink_to(outside / "private.safetensors")
    (src / "alias.safetensors").symlink_to(src / "real.safetensors")
    (src / "linked_dir").symlink_to(src, target_is_directory=True)
    report = bulk(src, dst)
    assert report.exit_code == 0 and not report.failed
    assert not (dst / "escape.h5").exists()
    skipped = {r["source"]: r["error"] for r in report.skipped}
    assert "leaves SRC_DIR" in skipped["escape.safetensors"]
    assert "folder" in skipped["linked_dir"]
    assert manifest(dst)["escape.safetensors"]["status"] == "skipped"
    assert_bit_exact(kernel(dst / "alias.h5"), weights(3)["fc.weight"].T)
    assert_bit_exact(kernel(dst / "real.h5"), weights(3)["fc.weight"].T)


@pytest.mark.slow
def test_fifos_and_devices_are_skipped_without_blocking(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    save(src / "good.safetensors", 4)
    os.mkfifo(src / "pipe.pt")
    os.mkfifo(src / "pipe.safetensors.index.json")
    (src / "zero.safetensors").symlink_to("/dev/zero")
    run = run_bounded(["bulk", src, dst, "--to", "h5", "--jobs", "1", "--quiet"], tmp_path,
                      timeout=60)
    assert run.code == 0, run.stderr
    entries = manifest(dst)
    assert {k: v["status"] for k, v in entries.items()} == {
        "good.safetensors": "done", "pipe.pt": "skipped", "pipe.safetensors.index.json": "skipped",
        "zero.safetensors": "skipped"}
    assert "FIFO" in entries["pipe.pt"]["error"]


def test_a_deeply_nested_index_fails_alone(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    save(src / "good.safetensors", 5)
    (src / "deep.safetensors.index.json").write_text("[" * 100_000 + "]" * 100_000)
    report = bulk(src, dst)
    assert report.exit_code == 2
    assert [r["source"] for r in report.failed] == ["deep.safetensors.index.json"]
    assert "nested" in report.failed[0]["error"]
    assert (dst / "good.h5").exists()


@pytest.mark.parametrize("source", [5, None, [1, 2], "DEEP"])
def test_manifest_lines_of_the_wrong_shape_are_ignored(tmp_path, source):
    src, dst = tmp_path / "src", tmp_path / "dst"
    save(src / "net.safetensors", 6)
    assert bulk(src, dst).exit_code == 0
    line = "[" * 50_000 + "]" * 50_000 if source == "DEEP" else json.dumps(
        {"source": source, "output": "net.h5", "status": "done"})
    with open(dst / MANIFEST, "a") as fh:
        fh.write(line + "\n")
    report = bulk(src, dst)
    assert report.exit_code == 0 and len(report.reused) == 1, report.failed


def test_an_output_path_that_is_a_folder_fails_alone(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    save(src / "a.safetensors", 7)
    save(src / "b.safetensors", 8)
    (dst / "a.h5").mkdir(parents=True)
    report = bulk(src, dst)
    assert report.exit_code == 2 and [r["source"] for r in report.failed] == ["a.safetensors"]
    assert "is a directory" in report.failed[0]["error"]
    assert (dst / "a.h5").is_dir() and (dst / "b.h5").is_file()


@pytest.mark.live   # the default check runs when torch and Keras are installed
def test_the_cli_prints_skipped_files_in_the_summary(tmp_path, cli):
    src, dst = tmp_path / "src", tmp_path / "dst"
    save(src / "ok.safetensors", 1)
    (src / "out.safetensors").symlink_to(tmp_path)
    code, out, err = cli("bulk", src, dst, "--to", "h5", "--jobs", "1")
    assert code == 0, err
    assert "skipped" in out and "out.safetensors" in out


@pytest.mark.live   # the default check runs when torch and Keras are installed
def test_a_manifest_that_is_a_link_or_fifo_is_refused(tmp_path, cli):
    src, dst = tmp_path / "src", tmp_path / "dst"
    save(src / "ok.safetensors", 1)
    dst.mkdir()
    os.mkfifo(dst / MANIFEST)
    code, _, err = cli("bulk", src, dst, "--to", "h5", "--jobs", "1")
    assert code == 2 and "not a regular file" in one_error_line(err)


@pytest.mark.parametrize("src_rel, dst_rel", [("src", ""), ("a/src", ""), ("", "out")])
def test_bulk_never_writes_over_a_file_inside_src_dir(tmp_path, src_rel, dst_rel):
    """``bulk d/src d`` with ``d/src/src/m.pt``: its output was ``d/src/m.safetensors``, a
    source, replaced (exit 0). Outputs that would land inside SRC_DIR are skipped, saying why."""
    src, dst = tmp_path / src_rel, tmp_path / dst_rel
    save(src / "m.safetensors", 1)
    inner = save(src / src_rel / "m.safetensors", 2) if src_rel else None
    before = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    report = bulk(src, dst, to="safetensors")
    for path, data in before.items():
        assert path.read_bytes() == data, f"{path} was written over"
    if inner is not None:
        skipped = {s["source"]: s["error"] for s in report.skipped}
        assert "would land inside SRC_DIR" in skipped[inner.relative_to(src).as_posix()]
    assert [r["status"] for r in report.results] == ["done"]


@pytest.mark.parametrize("openat2", [True, False])
@pytest.mark.parametrize("where", ["top", "nested/deeper"])
def test_a_file_swapped_for_a_link_after_the_last_look_is_not_read_through_it(
        tmp_path, monkeypatch, where, openat2):
    """The swap lands between the worker's last look at the path and the read (made
    deterministic here: inside the fingerprinting that precedes the conversion). What was
    opened beneath SRC_DIR is read, never the link's target outside it."""
    from transcoder.bulk import beneath
    from transcoder.bulk import task as task_module

    if not openat2:   # O_NOFOLLOW one component at a time, as without openat2
        monkeypatch.setattr(beneath, "_openat2", [None])
    src, dst = tmp_path / "src", tmp_path / "dst"
    rel = f"{where}/net.safetensors"
    mine = save(src / rel, 1)
    secret = save(tmp_path / "secret" / "net.safetensors", 99)
    fingerprint = task_module._source_fingerprint

    def swap_then_fingerprint(*args, **kwargs):
        os.replace(mine, tmp_path / "aside.safetensors")
        mine.symlink_to(secret)
        return fingerprint(*args, **kwargs)

    monkeypatch.setattr(task_module, "_source_fingerprint", swap_then_fingerprint)
    dst.mkdir()
    record = task_module.run_task(task_module.Task(str(src), str(dst), rel, f"{where}/net.h5",
                                                   (rel,)))
    assert record["status"] == "done", record
    assert_bit_exact(kernel(dst / where / "net.h5"), weights(1)["fc.weight"].T)
