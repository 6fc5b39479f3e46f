"""Sharded checkpoints: pytorch_model.bin.index.json read as one checkpoint; --shard-size writes
shards and their index exactly as huggingface_hub's save_torch_state_dict does; all the files
appear together or not at all."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs torch: pip install '.[check]'")
hub = pytest.importorskip("huggingface_hub", reason="the reference writer: pip install '.[test]'")
from safetensors.numpy import load_file as load_safetensors  # noqa: E402

from conftest import ROOT, assert_bit_exact, to_numpy  # noqa: E402
from transcoder import pipeline  # noqa: E402
from transcoder.errors import OutputExistsError, UsageError  # noqa: E402
from transcoder.formats import for_source, shards  # noqa: E402
from transcoder.pipeline import read, transcode  # noqa: E402


def state(seed: int = 0) -> dict[str, "torch.Tensor"]:
    """float32, float16 and bfloat16 (with NaN payloads, infinities, signed zeros) tensors of
    sizes that make several shards at 50 KB, one of them larger than a shard, mid-way."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    special = torch.tensor(np.array([0x7FC1, 0xFFC3, 0x7F80, 0xFF80, 0x8000, 0x0001],
                                    np.uint16).view(np.int16))
    embed = r(300, 64).bfloat16()
    embed.view(torch.int16).view(-1)[:6] = special
    sd = {"tok_embeddings.weight": embed, "norm.weight": r(64).half()}
    for i in range(4):
        sd[f"layers.{i}.fc.weight"] = r(64, 64)
        sd[f"layers.{i}.fc.bias"] = r(64).half()
        if i == 1:
            sd["layers.1.big.weight"] = r(256, 64)   # 64 KiB: more than one 50 KB shard
            sd["layers.1.big.bias"] = r(256)
    return sd


def tensors_of(path: Path) -> dict[str, np.ndarray]:
    """A file's tensors as the library that wrote it reads them."""
    if path.suffix == ".safetensors":
        return load_safetensors(str(path))
    return {k: to_numpy(v) for k, v in torch.load(path, weights_only=True).items()}


def assert_same_tensors(ours: dict, theirs: dict, what: str) -> None:
    assert list(ours) == list(theirs) or sorted(ours) == sorted(theirs), what
    for name in theirs:
        assert_bit_exact(ours[name], theirs[name], f"{what}:{name}")


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------ the layout Hugging Face writes

@pytest.mark.parametrize("safe,name", [(True, "model.safetensors"), (False, "pytorch_model.bin")])
@pytest.mark.parametrize("size", ["50KB", "20KB", "1MB"])
def test_shards_and_index_are_what_huggingface_hub_writes(tmp_path, safe, name, size):
    sd = state()
    hf, ours = tmp_path / "hf", tmp_path / "ours"
    hf.mkdir(), ours.mkdir()
    hub.save_torch_state_dict(sd, hf, max_shard_size=size, safe_serialization=safe)
    torch.save(sd, tmp_path / "src.pt")
    written = transcode(tmp_path / "src.pt", ours / name, shard_size=shards.parse_size(size)).written
    assert files(ours) == files(hf) == sorted(p.name for p in written)
    index = [n for n in files(hf) if n.endswith(".index.json")]
    if index:   # byte for byte: json.dump(index, indent=2), names in shard order
        assert (ours / index[0]).read_bytes() == (hf / index[0]).read_bytes()
        assert written[-1].name == index[0]
    for shard in files(hf):
        if not shard.endswith(".index.json"):
            assert_same_tensors(tensors_of(ours / shard), tensors_of(hf / shard), shard)


def test_the_split_is_huggingface_hubs_for_any_sizes():
    rng = np.random.default_rng(0)
    for trial in range(200):
        count = int(rng.integers(1, 30))
        sizes = [(f"t{i}", int(rng.integers(1, 6)) * 4) for i in range(count)]  # (empty
        # tensors share a storage address: huggingface_hub keeps them with the first one)
        limit = int(rng.integers(4, 40))
        sd = {name: torch.empty(size // 4) for name, size in sizes}
        theirs = hub.split_torch_state_dict_into_shards(sd, max_shard_size=limit)
        layout = shards.layout("model.safetensors", ".safetensors", sizes, limit)
        got = dict(zip(layout.files, layout.groups))
        assert got == theirs.filename_to_tensors, (trial, sizes, limit)
        assert layout.total_size == theirs.metadata["total_size"]


def test_sizes_are_read_as_huggingface_hub_reads_them():
    assert shards.parse_size("5GB") == 5 * 10**9 == shards.DEFAULT_SHARD_BYTES
    assert shards.parse_size("500MB") == 500 * 10**6 and shards.parse_size("1.5gb") == 15 * 10**8
    assert shards.parse_size("123") == 123 and shards.parse_size(7) == 7
    for bad in ("5GiB", "GB", "-1MB", "0", "five"):
        with pytest.raises(UsageError):
            shards.parse_size(bad)


# ------------------------------------------------------------------ reading an index as one checkpoint

def test_pytorch_model_bin_index_reads_as_one_checkpoint_and_comes_back_bit_exact(tmp_path, cli):
    """HF's .bin shards -> one .h5 -> safetensors shards Hugging Face loads -> .pt: every tensor
    bit for bit (bfloat16 NaN payloads included)."""
    sd = state(1)
    hf = tmp_path / "hf"
    hf.mkdir()
    hub.save_torch_state_dict(sd, hf, max_shard_size="50KB", safe_serialization=False)
    index = hf / "pytorch_model.bin.index.json"
    fmt, note = for_source(index)
    assert fmt.name == "pt" and note is None
    code, _, err = cli(index, tmp_path / "model.h5", "--no-check")
    assert code == 0, err
    out = tmp_path / "out"
    out.mkdir()
    code, stdout, err = cli(tmp_path / "model.h5", out / "model.safetensors", "--shard-size",
                            "50KB", "--no-check")
    assert code == 0, err
    assert "wrote" in stdout and "model.safetensors.index.json and 4 shards" in stdout
    model = torch.nn.Module()   # HF's own loader, strict: every name, shape and value
    for name, tensor in sd.items():
        module, _, attr = name.rpartition(".")
        target = model
        for part in module.split("."):
            if not hasattr(target, part):
                target.add_module(part, torch.nn.Module())
            target = getattr(target, part)
        target.register_parameter(attr, torch.nn.Parameter(torch.zeros_like(tensor)))
    hub.load_torch_model(model, out, strict=True)
    loaded = model.state_dict()
    for name, tensor in sd.items():
        assert_bit_exact(to_numpy(loaded[name]), to_numpy(tensor), name)
    code, _, err = cli(out / "model.safetensors.index.json", tmp_path / "back.pt", "--no-check")
    assert code == 0, err
    assert_same_tensors(tensors_of(tmp_path / "back.pt"), {k: to_numpy(v) for k, v in sd.items()},
                        "back.pt")


def test_an_index_is_read_for_what_its_shards_are(tmp_path):
    sd = state(2)
    hub.save_torch_state_dict(sd, tmp_path, max_shard_size="50KB", safe_serialization=False)
    renamed = tmp_path / "model.safetensors.index.json"
    (tmp_path / "pytorch_model.bin.index.json").rename(renamed)
    fmt, note = for_source(renamed)
    assert fmt.name == "pt" and "by its content" in note
    with read(renamed) as ckpt:
        assert list(ckpt.tensors) == list(json.loads(renamed.read_text())["weight_map"])
        for name, ref in ckpt.tensors.items():
            assert_bit_exact(ref.load(), to_numpy(sd[name]), name)


def test_an_index_naming_what_its_shards_do_not_hold_is_refused(tmp_path, cli):
    hub.save_torch_state_dict(state(), tmp_path, max_shard_size="50KB", safe_serialization=False)
    index = tmp_path / "pytorch_model.bin.index.json"
    data = json.loads(index.read_text())
    data["weight_map"]["ghost.weight"] = "pytorch_model-00001-of-00004.bin"
    index.write_text(json.dumps(data))
    code, _, err = cli(index, tmp_path / "out.h5", "--no-check")
    assert code == 2 and "ghost.weight" in err and err.count("\n") == 1
    data["weight_map"]["ghost.weight"] = "pytorch_model.bin.index.json"
    index.write_text(json.dumps(data))
    code, _, err = cli(index, tmp_path / "out.h5", "--no-check")
    assert code == 2 and "is an index itself" in err
    assert not (tmp_path / "out.h5").exists()


@pytest.mark.parametrize("safe", [True, False])
@pytest.mark.parametrize("shard, why", [("missing.bin", "No such file or directory"),
                                        ("x" * 300 + ".bin", "File name too long"),
                                        ("a\ud800.bin", "no valid file name")])
def test_an_index_naming_a_shard_that_cannot_be_opened_is_refused(tmp_path, cli, safe, shard,
                                                                   why):
    """(A name too long for the file system, or holding a lone surrogate, was an internal
    error: found by the fuzz campaign.)"""
    hub.save_torch_state_dict(state(), tmp_path, max_shard_size="50KB", safe_serialization=safe)
    index = next(tmp_path.glob("*.index.json"))
    data = json.loads(index.read_text())
    data["weight_map"][next(iter(data["weight_map"]))] = shard   # the first: sniffed too
    index.write_text(json.dumps(data))
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = cli(index, tmp_path / "out.h5", "--no-check")
    shown = shard if len(shard) < 80 else "x" * 60 + "..." + "x" * 12 + ".bin"
    assert code == 2 and err.count("\n") == 1, err
    assert err == f"transcode: error: {index}: names shard {shown!r}, which cannot be opened " \
                  f"({why})\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# ------------------------------------------------------------------ refusals

@pytest.mark.parametrize("dst,why", [("model.h5", "Keras loads a legacy .h5 from one file"),
                                     ("model.weights.h5", "Keras 3 shards its own weights")])
def test_keras_targets_are_refused_in_shards(tmp_path, cli, dst, why):
    torch.save(state(), tmp_path / "src.pt")
    code, _, err = cli(tmp_path / "src.pt", tmp_path / dst, "--shard-size", "50KB", "--no-check")
    assert code == 2 and why in err and err.count("\n") == 1
    assert files(tmp_path) == ["src.pt"]


def test_shards_that_would_replace_the_source_are_refused(tmp_path, cli):
    hub.save_torch_state_dict(state(), tmp_path, max_shard_size="50KB")
    before = {n: (tmp_path / n).read_bytes() for n in files(tmp_path)}
    code, _, err = cli(tmp_path / "model.safetensors.index.json", tmp_path / "model.safetensors",
                       "--shard-size", "20KB", "--force", "--no-check")
    assert code == 2 and "a file of the source" in err
    assert {n: (tmp_path / n).read_bytes() for n in files(tmp_path)} == before


# ------------------------------------------------------------------ all together, or nothing

def _sharded(tmp_path: Path, size: str) -> tuple[Path, dict[str, bytes]]:
    """An earlier sharded output in tmp_path/out; its files' bytes."""
    torch.save(state(3), tmp_path / "old.pt")
    (tmp_path / "out").mkdir(exist_ok=True)
    transcode(tmp_path / "old.pt", tmp_path / "out" / "model.safetensors", force=True,
              shard_size=shards.parse_size(size))
    out = tmp_path / "out"
    return out, {n: (out / n).read_bytes() for n in files(out)}


def test_an_earlier_output_is_refused_without_force_and_replaced_whole_with_it(tmp_path):
    out, old = _sharded(tmp_path, "20KB")
    assert len(old) == 7   # 6 shards and the index
    torch.save(state(4), tmp_path / "new.pt")
    with pytest.raises(OutputExistsError, match="model.*already exists"):
        transcode(tmp_path / "new.pt", out / "model.safetensors", shard_size=50_000)
    assert {n: (out / n).read_bytes() for n in files(out)} == old
    written = transcode(tmp_path / "new.pt", out / "model.safetensors", shard_size=50_000,
                        force=True).written
    assert files(out) == sorted(p.name for p in written) and len(written) == 5
    with read(out / "model.safetensors.index.json") as ckpt:
        for name, tensor in state(4).items():
            assert_bit_exact(ckpt.tensors[name].load(), to_numpy(tensor), name)
    one = transcode(tmp_path / "new.pt", out / "model.safetensors", shard_size=10**9,
                    force=True).written   # everything fits: one file, no index, as HF does
    assert files(out) == ["model.safetensors"] == [p.name for p in one]


@pytest.mark.parametrize("where", ["writing", "publishing"])
def test_a_failure_leaves_the_earlier_output_as_it_was(tmp_path, monkeypatch, where):
    out, old = _sharded(tmp_path, "20KB")
    torch.save(state(5), tmp_path / "new.pt")
    if where == "writing":   # the third shard cannot be written
        from transcoder.formats import safetensors_format

        calls = []
        real = safetensors_format.write

        def write(ckpt, path):
            calls.append(path)
            if len(calls) == 3:
                raise OSError(28, "No space left on device")
            real(ckpt, path)

        monkeypatch.setattr(safetensors_format, "write", write)
    else:   # the index cannot be renamed into place, after every shard was
        real = pipeline._publish

        def publish(tmp, dst, force):
            if dst.name.endswith(".index.json"):
                raise OSError(5, "Input/output error")
            real(tmp, dst, force)

        monkeypatch.setattr(pipeline, "_publish", publish)
    with pytest.raises(OSError):
        transcode(tmp_path / "new.pt", out / "model.safetensors", shard_size=50_000, force=True)
    assert {n: (out / n).read_bytes() for n in files(out)} == old   # no temporary file either


def test_a_killed_write_leaves_only_temporary_files(tmp_path):
    """kill -9 while the shards are written: none of them, and no index, is visible."""
    torch.save({f"l{i}.weight": torch.randn(1024, 1024) for i in range(48)}, tmp_path / "src.pt")
    code = ("import os, signal, sys\n"
            "from transcoder.formats import safetensors_format as st\n"
            "real, n = st.write, []\n"
            "def write(ckpt, path):\n"
            "    n.append(1)\n"
            "    if len(n) == 2: os.kill(os.getpid(), signal.SIGKILL)\n"
            "    real(ckpt, path)\n"
            "st.write = write\n"
            "from transcoder.cli import main\n"
            "main(sys.argv[1:])\n")
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "src.pt"),
                           str(out / "model.safetensors"), "--shard-size", "40MB", "--no-check"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9
    assert all(n.startswith(".") and n.endswith(".tmp") for n in files(out)), files(out)


def test_bulk_converts_a_bin_index_with_its_shards_as_one_checkpoint(tmp_path):
    from transcoder.bulk import BulkOptions, run_bulk

    sd = state(6)
    (tmp_path / "src" / "llm").mkdir(parents=True)
    hub.save_torch_state_dict(sd, tmp_path / "src" / "llm", max_shard_size="50KB",
                              safe_serialization=False)
    report = run_bulk(tmp_path / "src", tmp_path / "dst", BulkOptions(to="safetensors", jobs=1))
    assert [(r["source"], r["output"]) for r in report.converted] == [
        ("llm/pytorch_model.bin.index.json", "llm/pytorch_model.safetensors")]
    assert report.exit_code == 0 and not report.ignored
    assert_same_tensors(tensors_of(tmp_path / "dst" / "llm" / "pytorch_model.safetensors"),
                        {k: to_numpy(v) for k, v in sd.items()}, "pytorch_model.safetensors")


def test_the_python_api_writes_shards_and_names_the_index(tmp_path):
    import transcoder

    torch.save(state(7), tmp_path / "src.pt")
    (tmp_path / "out").mkdir()
    result = transcoder.convert(tmp_path / "src.pt", tmp_path / "out" / "model.safetensors",
                                shard_size="50KB", check=False)
    assert result.dst == tmp_path / "out" / "model.safetensors.index.json"
    assert files(tmp_path / "out") == [f"model-0000{k}-of-00004.safetensors" for k in range(1, 5)] \
        + ["model.safetensors.index.json"]
