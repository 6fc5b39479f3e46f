"""The `transcode` command: exit codes, one-line errors, atomic outputs, inspect and rules."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import FIXTURES, FRAMEWORKS, ROOT, assert_bit_exact, assert_imports_none_of
from transcoder.pipeline import read

ENCODER = FIXTURES / "encoder.pt"


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got: {err!r}"
    assert "Traceback" not in err
    return lines[0]


def only_file(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.live   # the default check runs when torch and Keras are installed
def test_convert_writes_h5_with_the_permuted_kernel(cli, tmp_path):
    code, out, err = cli(ENCODER, tmp_path / "encoder.h5")
    assert code == 0, err
    assert "1 tensors mapped" in out
    with read(tmp_path / "encoder.h5") as keras, read(ENCODER) as torch_side:
        kernel = keras["conv1d_U/kernel"].load()
        assert_bit_exact(kernel, torch_side["conv1d_U.weight"].load().transpose(2, 1, 0))


@pytest.mark.live   # the default check runs when torch and Keras are installed
def test_existing_destination_survives_without_force(cli, tmp_path):
    dst = tmp_path / "out.h5"
    dst.write_bytes(b"precious")
    code, _, err = cli(ENCODER, dst)
    assert code == 2 and "--force" in one_line_error(err)
    assert dst.read_bytes() == b"precious"
    code, _, err = cli(ENCODER, dst, "--force")
    assert code == 0, err
    assert dst.read_bytes()[:4] == b"\x89HDF"


def test_same_file_is_refused(cli, tmp_path):
    src = tmp_path / "a.pt"
    shutil.copy(ENCODER, src)
    before = src.read_bytes()
    code, _, err = cli(src, src, "--force")
    assert code == 2 and "same file" in one_line_error(err)
    assert src.read_bytes() == before


def _random(path, size=4096):
    path.write_bytes(np.random.default_rng(1).integers(0, 256, size, dtype=np.uint8).tobytes())


def _truncated(source):
    def make(path):
        data = source.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    return make


BAD_INPUTS = {
    "random.pt": _random, "random.safetensors": _random, "random.h5": _random, "random.keras": _random,
    "half.pt": _truncated(ENCODER), "half.safetensors": _truncated(FIXTURES / "encoder.safetensors"),
    "empty.pt": lambda p: p.write_bytes(b""), "text.h5": lambda p: p.write_text("hello"),
}


@pytest.mark.parametrize("name", BAD_INPUTS)
@pytest.mark.parametrize("target", ["out.h5", "out.pt", "out.safetensors"])
def test_bad_input_exits_2_with_one_line_and_leaves_nothing(cli, tmp_path, name, target):
    src = tmp_path / "in" / name
    src.parent.mkdir()
    BAD_INPUTS[name](src)
    before = src.read_bytes()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, _, err = cli(src, out_dir / target)
    line = one_line_error(err)
    assert code == 2, line
    assert name in line  # the message names the file
    assert only_file(out_dir) == []  # no output, no temporary debris
    assert src.read_bytes() == before


def test_missing_file_and_unknown_suffix(cli, tmp_path):
    code, _, err = cli(tmp_path / "nope.pt", tmp_path / "x.h5")
    assert code == 2 and "nope.pt" in one_line_error(err)
    code, _, err = cli(ENCODER, tmp_path / "x.onnx")
    assert code == 2 and "unknown file type" in one_line_error(err)


def test_format_plugins_are_looked_up_only_for_suffixes_no_builtin_takes(monkeypatch):
    import importlib.metadata

    from transcoder import formats

    plugin = formats.Format("onnx", (".onnx",), "torch", "onnx_plugin")
    looked_up = []

    class EntryPoint:
        def load(self):
            return lambda: plugin

    def entry_points(group):
        looked_up.append(group)
        return [EntryPoint()]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    assert formats.for_path("model.pt").name == "pt" and looked_up == []
    assert formats.for_path("model.onnx") is plugin and looked_up == [formats.ENTRY_POINT_GROUP]


def test_keras3_targets_need_an_architecture(cli, tmp_path):
    for target in ("x.weights.h5", "x.keras"):
        code, _, err = cli(ENCODER, tmp_path / target)
        assert code == 2 and "architecture" in one_line_error(err)
    assert only_file(tmp_path) == []


def test_dry_run_prints_plan_and_writes_nothing(cli, tmp_path):
    code, out, _ = cli(ENCODER, tmp_path / "x.h5", "--dry-run")
    assert code == 0
    row = next(line for line in out.splitlines() if line.startswith("conv1d_U.weight"))
    assert row.split("\t") == ["conv1d_U.weight", "(64, 128, 1)", "float32", "Conv1d",
                               "permute(2, 1, 0)", "conv1d_U/kernel", "(1, 128, 64)"]
    assert only_file(tmp_path) == []


def test_without_torch_and_keras_one_line_says_no_check_ran(cli, tmp_path, monkeypatch):
    from transcoder.checks import verify

    monkeypatch.setattr(verify, "unavailable", lambda: "torch not installed")
    code, _, err = cli(ENCODER, tmp_path / "x.h5")
    assert code == 0 and one_line_error(err) == "transcode: no check ran: torch not installed"
    code, _, err = cli(ENCODER, tmp_path / "y.h5", "--check")  # asked for: fail loudly
    assert code == 2 and "cannot run the check" in one_line_error(err)


def test_an_architecture_without_the_frameworks_installed_is_a_one_line_error(tmp_path):
    """--model needs torch and keras: where they are missing, exit 2 naming the extra."""
    code = ("import sys; sys.modules['torch'] = sys.modules['keras'] = None; "
            "from transcoder.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, str(ENCODER), str(tmp_path / "x.h5"),
                           "--model", f"{FIXTURES / 'models.py'}:Encoder"], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert "a live model needs torch and keras" in one_line_error(proc.stderr)
    assert "pip install 'transcoder[check]'" in proc.stderr and only_file(tmp_path) == []


def test_inspect_is_greppable_and_json(cli):
    code, out, _ = cli("inspect", FIXTURES / "small_cnn.pt")
    assert code == 0
    rows = [line.split("\t") for line in out.splitlines() if not line.startswith("#")]
    assert {r[0] for r in rows} >= {"token_embedding.weight", "conv2.weight", "bn1.num_batches_tracked"}
    assert all(len(r) == 7 for r in rows)
    by_name = {r[0]: r for r in rows}
    assert by_name["token_embedding.weight"][3:6] == ["Embedding", "copy", "token_embedding/embeddings"]
    code, out, _ = cli("inspect", "--json", FIXTURES / "small_cnn.pt")
    data = json.loads(out)["rows"]
    assert {"source", "shape", "dtype", "rule", "op", "target", "target shape"} <= set(data[0])


def test_rules_json_lists_the_table(cli):
    code, out, _ = cli("rules", "--json")
    rows = json.loads(out)["rows"]
    conv1d = next(r for r in rows if r["rule"] == "Conv1d" and r["torch tensor"] == "weight")
    assert conv1d["keras"] == "Conv1D" and conv1d["op"] == "permute(2, 1, 0)"
    assert any(r["rule"] == "Embedding" and r["op"] == "copy" for r in rows)


def test_ambiguous_checkpoint_names_tensor_and_fix(cli, tmp_path):
    from safetensors.numpy import save_file

    save_file({"blocks.0.weight": np.ones((4, 3), np.float32)}, tmp_path / "a.safetensors")
    code, _, err = cli(tmp_path / "a.safetensors", tmp_path / "a.h5")
    line = one_line_error(err)
    assert code == 2 and "blocks.0.weight" in line and "--rules" in line
    assert not (tmp_path / "a.h5").exists()


def test_debug_env_shows_traceback(tmp_path):
    env = dict(os.environ, TRANSCODER_DEBUG="1")
    proc = subprocess.run([sys.executable, "-m", "transcoder", str(tmp_path / "nope.pt"),
                           str(tmp_path / "x.h5")], capture_output=True, text=True, env=env)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_plain_conversion_imports_neither_torch_nor_tensorflow(tmp_path):
    """Nor the slow imports it does not need: ml_dtypes (bfloat16 only), rich (tables on a
    terminal only). importlib.metadata and pydantic come with typer's argument parsing."""
    assert_imports_none_of("import sys; from transcoder.cli import main; "
                           "assert main(sys.argv[1:]) == 0",
                           (*FRAMEWORKS, "ml_dtypes", "rich", "transcoder.checks"),
                           ENCODER, tmp_path / "e.h5", "--no-check")
    assert (tmp_path / "e.h5").is_file()


def test_library_conversion_imports_only_what_it_needs(tmp_path):
    """Format plugins are looked up (importlib.metadata) only for suffixes no built-in takes."""
    assert_imports_none_of("import sys; from transcoder.pipeline import transcode; "
                           "transcode(*sys.argv[1:])",
                           (*FRAMEWORKS, "ml_dtypes", "rich", "typer", "pydantic",
                            "importlib.metadata", "tomllib"),
                           ENCODER, tmp_path / "e.h5")
    assert (tmp_path / "e.h5").is_file()


@pytest.mark.slow
def test_errors_with_frameworks_loaded_stay_one_line(tmp_path):
    """TensorFlow's start-up notices must not leak around the one-line error."""
    pytest.importorskip("torch")
    pytest.importorskip("keras")
    proc = subprocess.run([sys.executable, "-m", "transcoder", str(ENCODER), str(tmp_path / "x.h5"),
                           "--model", f"{FIXTURES / 'models.py'}:nn"], capture_output=True,
                          text=True, cwd=ROOT)
    # ``nn`` is a top-level name (the spec passes the check made before anything loads) that
    # names no class or function: found out once torch and TensorFlow are loaded
    assert proc.returncode == 2
    assert one_line_error(proc.stderr).endswith("has no class or function 'nn'")
    assert only_file(tmp_path) == []


@pytest.mark.parametrize("name, prefix", [("small_cnn_training.ckpt", "model."),
                                          ("small_cnn_scripted.pt", "")])
def test_shipped_training_and_torchscript_fixtures_convert(cli, tmp_path, name, prefix):
    """A Lightning-style checkpoint (optimizer state, a pickled config class that is never
    imported) and a TorchScript archive give the same tensors as the plain state dict."""
    code, _, err = cli(FIXTURES / name, tmp_path / "out.safetensors", "--no-check")
    assert code == 0, err
    with read(tmp_path / "out.safetensors") as got, read(FIXTURES / "small_cnn.pt") as want:
        assert sorted(got.tensors) == sorted(prefix + k for k in want.tensors)
        for key in want.tensors:
            assert_bit_exact(got[prefix + key].load(), want[key].load(), key)
