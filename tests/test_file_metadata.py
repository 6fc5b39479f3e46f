"""A safetensors ``__metadata__`` survives copies, resharding and round trips through a legacy
.h5; a target that cannot hold it says in one line that it was dropped."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from conftest import assert_bit_exact

META = {"format": "pt", "license": "apache-2.0", "author": "Ada",
        "notes": 'quoted "text", unicode \u00e9\u4e2d, and a newline\n'}


def metadata(path) -> dict:
    with safe_open(str(path), framework="numpy") as f:
        return f.metadata()


def tensors(path) -> dict:
    with safe_open(str(path), framework="numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.fixture
def source(tmp_path):
    rng = np.random.default_rng(0)
    data = {"fc.weight": rng.normal(size=(5, 3)).astype(np.float32),
            "fc.bias": rng.normal(size=5).astype(np.float32),
            "head.weight": rng.normal(size=(2, 5)).astype(np.float32),
            "head.bias": rng.normal(size=2).astype(np.float32)}
    path = tmp_path / "src.safetensors"
    save_file(data, path, metadata=dict(META))
    return path, data


def test_a_copy_keeps_the_metadata(cli, source, tmp_path):
    path, data = source
    code, out, err = cli(path, tmp_path / "copy.safetensors")
    assert code == 0, err
    assert metadata(tmp_path / "copy.safetensors") == META
    assert "4 tensors copied" in out and "dropped" not in err


def test_resharding_keeps_it_in_every_shard_and_back(cli, source, tmp_path):
    path, data = source
    code, out, err = cli(path, tmp_path / "model.safetensors", "--shard-size", "64")
    assert code == 0, err
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 2
    assert [metadata(tmp_path / s) for s in shards] == [META] * len(shards)
    assert f"and {len(shards)} shards: 4 tensors copied" in out
    # sharded -> sharded (other sizes) and sharded -> one file
    (tmp_path / "again").mkdir()
    code, _, err = cli(tmp_path / "model.safetensors.index.json",
                       tmp_path / "again" / "model.safetensors", "--shard-size", "40")
    assert code == 0, err
    again = json.loads((tmp_path / "again" / "model.safetensors.index.json").read_text())
    assert [metadata(tmp_path / "again" / s) for s in sorted(set(again["weight_map"].values()))] \
        == [META] * len(set(again["weight_map"].values()))
    code, _, err = cli(tmp_path / "model.safetensors.index.json", tmp_path / "one.safetensors")
    assert code == 0, err
    assert metadata(tmp_path / "one.safetensors") == META
    back = tensors(tmp_path / "one.safetensors")
    for name, array in data.items():
        assert_bit_exact(back[name], array, name)


def test_a_round_trip_through_a_legacy_h5_keeps_it(cli, source, tmp_path):
    path, data = source
    code, _, err = cli(path, tmp_path / "m.h5", "--no-check")
    assert code == 0, err
    with h5py.File(tmp_path / "m.h5", "r") as f:
        assert json.loads(f.attrs["file_metadata"]) == META
    code, _, err = cli(tmp_path / "m.h5", tmp_path / "back.safetensors", "--no-check")
    assert code == 0, err
    assert metadata(tmp_path / "back.safetensors") == META
    back = tensors(tmp_path / "back.safetensors")
    assert list(back) == list(data) or set(back) == set(data)
    for name, array in data.items():
        assert_bit_exact(back[name], array, name)


def test_metadata_without_a_format_gains_only_the_pt_marker(cli, tmp_path):
    save_file({"w": np.ones((2, 2), np.float32)}, tmp_path / "a.safetensors",
              metadata={"license": "mit"})
    assert cli(tmp_path / "a.safetensors", tmp_path / "b.safetensors")[0] == 0
    assert metadata(tmp_path / "b.safetensors") == {"format": "pt", "license": "mit"}


def test_a_target_that_cannot_hold_it_says_it_was_dropped(cli, source, tmp_path):
    path, _ = source
    code, _, err = cli(path, tmp_path / "m.pt")
    assert code == 0, err
    notes = [line for line in err.splitlines() if "metadata" in line]
    assert notes == ["transcode: the source's metadata (author, license, notes) was dropped: "
                     "pt files cannot hold it (safetensors and legacy .h5 targets keep it)"]


def test_no_metadata_no_note(cli, tmp_path):
    save_file({"w": np.ones((2, 2), np.float32)}, tmp_path / "a.safetensors")
    code, _, err = cli(tmp_path / "a.safetensors", tmp_path / "a.pt")
    assert code == 0 and "metadata" not in err
    assert cli(tmp_path / "a.safetensors", tmp_path / "c.safetensors")[0] == 0
    assert metadata(tmp_path / "c.safetensors") == {"format": "pt"}


def test_malformed_metadata_in_an_h5_is_a_format_error(cli, source, tmp_path):
    path, _ = source
    assert cli(path, tmp_path / "m.h5", "--no-check")[0] == 0
    with h5py.File(tmp_path / "m.h5", "r+") as f:
        f.attrs["file_metadata"] = json.dumps({"license": 3})
    code, _, err = cli(tmp_path / "m.h5", tmp_path / "x.safetensors", "--no-check")
    assert code == 2 and "metadata is not a map of strings to strings" in err
    assert not (tmp_path / "x.safetensors").exists()
