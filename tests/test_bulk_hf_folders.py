"""`transcode bulk` over a tree holding Hugging Face model folders: each folder (config.json and
its weights: one safetensors file, a sharded index, pytorch_model.bin, or a hub cache snapshot
whose files link into the repo's blobs) is ONE source, its output named after the folder, its
fingerprint over config.json and every weights file, so that a rerun redoes exactly the folders
whose config or weights changed. Outputs are read back, planned to the PyTorch layout and
compared bit for bit with the folder's weights."""
from __future__ import annotations

import os
import shutil
import time

import pytest

os.environ.setdefault("USE_TF", "0")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers", reason="transformers builds the tiny model")

from test_bulk import assert_output_bit_exact, bulk, errors, manifest_lines  # noqa: E402
from transcoder.bulk.tree import scan  # noqa: E402

#: source (relative to SRC_DIR) -> (its weights file, its output)
FOLDERS = {
    "a/bert": ("a/bert/model.safetensors", "a/bert.h5"),
    "sharded": ("sharded/model.safetensors.index.json", "sharded.h5"),
    "bin": ("bin/pytorch_model.bin", "bin.h5"),
    "hub/models--org--bert/snapshots/abc123": (
        "hub/models--org--bert/snapshots/abc123/model.safetensors",
        "hub/models--org--bert/snapshots/abc123.h5"),
    "a/plain.pt": ("a/plain.pt", "a/plain.h5"),
}


def make_tree(root):
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64,
                                     max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.AutoModel.from_config(config)
    model.save_pretrained(root / "a" / "bert")
    (root / "a" / "bert" / "tokenizer.json").write_text("{}")      # not a checkpoint
    model.save_pretrained(root / "sharded", max_shard_size="40KB")
    (root / "bin").mkdir()
    shutil.copy(root / "a" / "bert" / "config.json", root / "bin")
    torch.save(model.state_dict(), root / "bin" / "pytorch_model.bin")
    repo = root / "hub" / "models--org--bert"                      # the hub cache's layout
    snapshot = repo / "snapshots" / "abc123"
    for folder in (repo / "blobs", snapshot, repo / "refs"):
        folder.mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    for name in ("config.json", "model.safetensors"):
        blob = repo / "blobs" / f"{abs(hash(name)):x}"
        shutil.copy(root / "a" / "bert" / name, blob)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    torch.save({"fc.weight": torch.randn(3, 4)}, root / "a" / "plain.pt")


@pytest.fixture
def tree(tmp_path):
    src = tmp_path / "src"
    make_tree(src)
    return src, tmp_path / "dst"


def test_scan_makes_each_model_folder_one_source(tree):
    src, dst = tree
    found = {s.path: s for s in scan(src, dst, "h5").sources}
    assert {p: s.output for p, s in found.items()} == {p: o for p, (_, o) in FOLDERS.items()}
    shards = sorted(f.name for f in (src / "sharded").glob("model-*.safetensors"))
    assert len(shards) == 3
    assert found["sharded"].files == ("sharded/config.json", "sharded/model.safetensors.index.json",
                                      *(f"sharded/{s}" for s in shards))
    assert found["a/bert"].files == ("a/bert/config.json", "a/bert/model.safetensors")
    ignored = scan(src, dst, "h5").ignored
    assert "a/bert/tokenizer.json" in ignored and not [i for i in ignored if "model-0" in i]
    picked = scan(src, dst, "h5", pattern="*.bin").sources       # the weights' name selects too
    assert [s.path for s in picked] == ["bin"]


def test_folders_convert_bit_exact_and_rerun_redoes_what_changed(tree):
    src, dst = tree
    report = bulk(src, dst, check=True)
    assert report.exit_code == 0, errors(report)
    assert sorted(r["source"] for r in report.results) == sorted(FOLDERS)
    for weights, output in FOLDERS.values():
        assert_output_bit_exact(src / weights, dst / output)
    lines = {e["source"]: e for e in manifest_lines(dst)}
    sizes = {p: sum((src / f).stat().st_size for f in s.files)
             for p, s in ((s.path, s) for s in scan(src, dst, "h5").sources)}
    assert {p: e["size"] for p, e in lines.items()} == sizes     # config.json counted

    assert bulk(src, dst, check=True).results == []            # nothing changed: nothing redone
    later = time.time_ns() + 10**9
    os.utime(src / "sharded" / "config.json", ns=(later, later))  # the config alone changed
    shard = next((src / "sharded").glob("model-00002-*.safetensors"))
    os.utime(src / "bin" / "pytorch_model.bin", ns=(later, later))
    assert sorted(r["source"] for r in bulk(src, dst, check=True).results) == ["bin", "sharded"]
    os.utime(shard, ns=(later + 10**9, later + 10**9))             # one shard changed
    assert [r["source"] for r in bulk(src, dst, check=True).results] == ["sharded"]
    assert_output_bit_exact(src / FOLDERS["sharded"][0], dst / "sharded.h5")
