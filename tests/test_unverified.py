"""Nothing silently wrong: a layer kind the names leave open is shown as ambiguous and NOT
CHECKED, weights carried rather than mapped are named, a check that verified less than
everything says so, --strict fails it, and errors after DST is written say DST was written."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
torch = pytest.importorskip("torch", reason="needs torch: pip install '.[check]'")
from torch import nn  # noqa: E402
import numpy as np  # noqa: E402

from conftest import FIXTURES, ROOT, to_numpy  # noqa: E402

keras = pytest.importorskip("keras")


import make_fixtures  # noqa: E402  (fixtures/, on sys.path through conftest)
from models import BeatStack as Stack  # noqa: E402


class Scaled(nn.Module):
    """A module whose own parameters no rule maps (a learned scale and shift)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.film = nn.Module()
        self.film.gain = nn.Parameter(torch.rand(4))
        self.film.shift = nn.Parameter(torch.rand(4))


def save(module: nn.Module, path) -> None:
    torch.manual_seed(3)
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(-1, 1)
    torch.save(module.state_dict(), path)


def test_an_ambiguous_groupnorm_is_shown_and_not_checked(cli, tmp_path):
    make_fixtures.write_groupnorm_stack(tmp_path).rename(tmp_path / "m.pt")
    code, out, err = cli("inspect", tmp_path / "m.pt", "--json")
    rows = {r["source"]: r for r in json.loads(out)["rows"]}
    assert code == 0 and rows["input_stack.1.weight"]["rule"] == "LayerNorm?"
    assert rows["input_stack.1.weight"]["alternatives"] == ["GroupNorm", "InstanceNorm"]
    assert rows["input_stack.0.weight"]["alternatives"] == []
    assert "input_stack.1: weight and bias of one shape" in err

    code, out, err = cli(tmp_path / "m.pt", tmp_path / "m.h5", "--report", tmp_path / "r.json")
    report = json.loads((tmp_path / "r.json").read_text())
    status = {e["name"]: e["status"] for e in report["entries"]}
    assert code == 0, err
    assert status == {"input_stack.0": "SUCCESS", "input_stack.1": "NOT CHECKED",
                      "head": "SUCCESS"}
    assert report["not_checked"] == 1 and report["passed"]
    assert "only 2 of 3 layers verified (1 not checked)" in report["summary"]


def test_strict_fails_a_check_that_verified_less_than_everything(cli, tmp_path):
    save(Stack(), tmp_path / "m.pt")
    cli(tmp_path / "m.pt", tmp_path / "m.h5", "--no-check")
    code, out, err = cli("check", tmp_path / "m.pt", tmp_path / "m.h5", "--strict", "-q")
    assert code == 1 and "--strict asks for all" in out
    code, _, _ = cli("check", tmp_path / "m.pt", tmp_path / "m.h5", "-q")
    assert code == 0


def test_rules_or_the_model_decide_the_kind_and_then_it_is_checked(cli, tmp_path):
    save(Stack(), tmp_path / "m.pt")
    (tmp_path / "r.toml").write_text('[[layer]]\nmatch = "input_stack.1"\nkind = "GroupNorm"\n'
                                     'num_groups = 4\n')
    code, out, err = cli(tmp_path / "m.pt", tmp_path / "a.h5", "--rules", tmp_path / "r.toml",
                         "--strict", "--report", tmp_path / "r.json")
    entries = json.loads((tmp_path / "r.json").read_text())["entries"]
    assert code == 0, err
    assert [(e["name"], e["status"], e["torch_kind"]) for e in entries] == [
        ("input_stack.0", "SUCCESS", "Conv1d"), ("input_stack.1", "SUCCESS", "GroupNorm"),
        ("head", "SUCCESS", "Linear")]
    code, out, err = cli(tmp_path / "m.pt", tmp_path / "b.h5", "--model",
                         f"{FIXTURES / 'models.py'}:BeatStack", "--strict", "--report",
                         tmp_path / "m.json")   # the module says GroupNorm(4, 512)
    entries = json.loads((tmp_path / "m.json").read_text())["entries"]
    assert code == 0, err
    assert [(e["name"], e["status"]) for e in entries] == [
        ("input_stack.0", "SUCCESS"), ("input_stack.1", "SUCCESS"), ("head", "SUCCESS")]


def test_a_wrong_group_count_fails_where_the_guess_would_have_passed(tmp_path):
    """The per-layer check of a GroupNorm read as a LayerNorm passed before; it computes
    differently: with the kind stated, a wrong num_groups is caught."""
    from transcoder.checks import check_layers
    from transcoder.checkpoint import LAYOUT_KERAS, LAYOUT_TORCH, Checkpoint, TensorRef
    from transcoder.rules import UserRules, make_plan
    from transcoder.rules.user import LayerHint

    norm = nn.GroupNorm(4, 8)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2)
        norm.bias.uniform_(-1, 1)
    src = Checkpoint({f"gn.{k}": TensorRef.from_array(f"gn.{k}", to_numpy(v))
                      for k, v in norm.state_dict().items()}, LAYOUT_TORCH)
    for groups, status in ((4, "SUCCESS"), (2, "SUCCESS")):   # each side built alike
        plan = make_plan(src, LAYOUT_KERAS, UserRules((LayerHint("gn", "GroupNorm",
                                                                 {"num_groups": groups}),)))
        report = check_layers(src, plan, options={"gn": {"num_groups": groups}})
        assert report.entries[0].status == status
    assert report.entries[0].torch_kind == "GroupNorm"


def test_weights_no_rule_maps_are_named_and_not_checked(cli, tmp_path):
    save(Scaled(), tmp_path / "m.pt")
    code, out, err = cli(tmp_path / "m.pt", tmp_path / "m.h5", "--report", tmp_path / "r.json")
    assert code == 0, err
    notes = [line for line in err.splitlines() if "film" in line]
    assert notes == ["transcode: film: weights carried verbatim, not mapped (no rule matches "
                     "these tensor names); the check cannot verify them"]
    report = json.loads((tmp_path / "r.json").read_text())
    film = next(e for e in report["entries"] if e["name"] == "film")
    assert film["status"] == "NOT CHECKED" and "carried verbatim" in film["message"]
    assert "only 1 of 2 layers verified" in report["summary"]


def test_a_check_that_cannot_run_after_writing_names_the_written_file(cli, tmp_path):
    code, _, err = cli(FIXTURES / "encoder.pt", tmp_path / "enc.h5", "--model",
                       f"{FIXTURES / 'models.py'}:Encoder", "--input-shape", "4,10,7")
    assert code == 2 and (tmp_path / "enc.h5").is_file()
    assert err.startswith(f"transcode: error: {tmp_path / 'enc.h5'} was written, but the check "
                          f"could not run: the PyTorch model fails on inputs of shapes")
    assert len(err.strip().splitlines()) == 1


def test_a_reading_that_changes_the_numbers_is_refused_without_frameworks(tmp_path):
    """A bias-free 2-d weight named 'mystery': Linear (transposed) or Embedding (kept)."""
    save(nn.Sequential(nn.Linear(3, 5, bias=False)), tmp_path / "m.pt")
    code = ("import sys; from transcoder.cli import main; rc = main(sys.argv[1:]); "
            "print(sorted(m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules)); "
            "sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.pt"),
                           str(tmp_path / "m.h5")], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and proc.stdout.strip() == "[]"
    assert "either a Linear (transposed) or an Embedding" in proc.stderr
    assert "--rules" in proc.stderr and "--model" in proc.stderr
    assert not (tmp_path / "m.h5").exists()


def test_a_piped_check_prints_one_unwrapped_line_per_layer(cli, tmp_path):
    """In a CI log (stdout not a terminal): no box drawing, no wrapping, tab-separated rows."""
    long = "a_rather_long_module_name_that_would_wrap_in_eighty_columns_" * 2
    module = nn.Module()
    module.add_module(long, nn.Linear(3, 4))
    save(module, tmp_path / "m.pt")
    code, out, err = cli(tmp_path / "m.pt", tmp_path / "m.h5")
    assert code == 0, err
    rows = [line.split("\t") for line in out.splitlines() if line.startswith("SUCCESS")]
    assert rows and rows[0][1] == long and rows[0][2] == "Linear -> Dense"
    assert not any(c in out for c in "│┃━─┏")
    assert out.splitlines()[-1].startswith("check passed: 0 of 1 layers differ beyond tolerance")


def test_check_of_two_pytorch_files_compares_every_tensor_bit_for_bit(cli, tmp_path):
    from safetensors.numpy import load_file, save_file

    save(Stack(), tmp_path / "m.pt")
    cli(tmp_path / "m.pt", tmp_path / "m.safetensors", "--no-check")
    code, out, err = cli("check", tmp_path / "m.pt", tmp_path / "m.safetensors",
                         "--report", tmp_path / "r.json")
    report = json.loads((tmp_path / "r.json").read_text())
    assert code == 0, err
    assert report["kind"] == "tensors" and report["compared"] == 6
    assert {e["status"] for e in report["entries"]} == {"SUCCESS"}
    tensors = load_file(tmp_path / "m.safetensors")
    tensors["head.bias"] = tensors["head.bias"].copy()
    tensors["head.bias"].view("uint32")[3] ^= 1          # one bit of one float
    save_file(tensors, tmp_path / "bad.safetensors")
    code, out, err = cli("check", tmp_path / "m.pt", tmp_path / "bad.safetensors", "-q")
    assert code == 1 and "first difference: head.bias: 1 of 32 bytes differ" in out


@pytest.mark.slow
def test_the_per_layer_check_of_the_command_runs_without_tensorflow(tmp_path):
    """No architecture: the layers are built from the weights alone and deploy nowhere, so
    Keras runs them on its torch backend (TensorFlow costs seconds to import)."""
    code = ("import sys; from transcoder.cli import main; rc = main(sys.argv[1:]); "
            "import keras; print(rc, 'tensorflow' in sys.modules, keras.backend.backend())")
    env = {k: v for k, v in __import__("os").environ.items() if k != "KERAS_BACKEND"}
    proc = subprocess.run([sys.executable, "-c", code, str(FIXTURES / "small_cnn.pt"),
                           str(tmp_path / "m.h5"), "-q"], capture_output=True, text=True,
                          cwd=ROOT, env=env)
    assert proc.stdout.strip().splitlines()[-1] == "0 False torch", proc.stderr
    assert "check passed: 0 of 9 layers differ" in proc.stdout


def test_rules_work_for_a_keras_source_and_the_check_follows_them(cli, tmp_path):
    """A Keras file with a custom layer no rule knows: [[layer]] carry keeps it, [[tensor]]
    maps one of its weights; [[layer]] kind reads a layer as a family."""
    import h5py

    rng = np.random.default_rng(0)
    kernel, scale = rng.standard_normal((4, 3)).astype("f4"), rng.standard_normal((3,)).astype("f4")
    inputs = keras.Input((4,))
    dense = keras.layers.Dense(3, name="fc")
    model = keras.Model(inputs, dense(inputs))
    dense.set_weights([kernel, scale])
    model.save_weights(tmp_path / "m.weights.h5")
    with h5py.File(tmp_path / "legacy.h5", "w") as f:      # written as Keras 2 wrote custom layers
        f.attrs["layer_names"] = [b"fc", b"film"]
        f.attrs["keras_version"], f.attrs["backend"] = b"2.4.0", b"tensorflow"
        for name, weights in (("fc", {"kernel:0": kernel, "bias:0": scale}),
                              ("film", {"gain:0": scale, "shift:0": scale * 2})):
            g = f.create_group(name)
            g.attrs["weight_names"] = [f"{name}/{w}".encode() for w in weights]
            for w, value in weights.items():
                g.create_dataset(f"{name}/{w}", data=value)
    code, _, err = cli(tmp_path / "legacy.h5", tmp_path / "out.pt", "--no-check")
    assert code == 2 and "film" in err                    # no rule knows it: a way out is needed
    (tmp_path / "r.toml").write_text('[[layer]]\nmatch = "film"\nkind = "carry"\n\n'
                                     '[[tensor]]\ntorch = "head.gain"\nkeras = "film/gain"\n')
    code, out, err = cli(tmp_path / "legacy.h5", tmp_path / "out.pt", "--rules",
                         tmp_path / "r.toml", "--report", tmp_path / "r.json")
    assert code == 0, err
    state = torch.load(tmp_path / "out.pt", weights_only=True)
    assert sorted(state) == ["fc.bias", "fc.weight", "film.shift", "head.gain"]
    assert np.array_equal(state["fc.weight"].numpy(), kernel.T)
    assert np.array_equal(state["head.gain"].numpy(), scale)
    assert np.array_equal(state["film.shift"].numpy(), scale * 2)
    entries = json.loads((tmp_path / "r.json").read_text())["entries"]
    assert [(e["name"], e["status"]) for e in entries] == [
        ("fc", "SUCCESS"), ("film", "NOT CHECKED"), ("film", "NOT CHECKED")]
    assert "[[tensor]]" in entries[1]["message"] and "--rules says carry" in entries[2]["message"]


def test_a_keras_weights_file_checks_against_the_twin_it_was_read_with(cli, tmp_path):
    """The twin's unnamed layers are named by Keras' process-wide counter: the conversion and
    its check use one build of it, so both see the same names."""
    twins = FIXTURES / "keras_twins.py"
    code, _, err = cli(FIXTURES / "encoder.pt", tmp_path / "enc.weights.h5", "--no-check",
                       "--model", f"{FIXTURES / 'models.py'}:Encoder",
                       "--keras-model", f"{twins}:encoder_answer")
    assert code == 0, err
    code, out, err = cli(tmp_path / "enc.weights.h5", tmp_path / "back.pt",
                         "--keras-model", f"{twins}:encoder_answer")
    assert code == 0, err
    assert "check passed: 0 of 1 layers differ" in out
    state = torch.load(tmp_path / "back.pt", weights_only=True)
    original = torch.load(FIXTURES / "encoder.pt", weights_only=True)
    assert [tuple(v.shape) for v in state.values()] == [tuple(v.shape) for v in original.values()]
    assert all(torch.equal(a, b) for a, b in zip(state.values(), original.values()))


SCALED = '''
import torch
from torch import nn


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.scale = nn.Parameter(torch.full((3,), 2.0))

    def forward(self, x):
        return self.fc(x) * self.scale
'''


def test_a_parameter_the_forward_uses_directly_goes_there_and_back(cli, tmp_path):
    """The rebuilt model holds it as a Constant layer named by its path: the check pairs the
    rest without it, and the way back takes its value from the Keras file (trained there)."""
    (tmp_path / "scaled.py").write_text(SCALED)
    spec = f"{tmp_path / 'scaled.py'}:Scaled"
    torch.manual_seed(2)
    torch.save({"fc.weight": torch.randn(3, 4), "fc.bias": torch.randn(3),
                "scale": torch.tensor([0.5, 1.5, -2.0])}, tmp_path / "m.pt")
    code, out, err = cli(tmp_path / "m.pt", tmp_path / "m.keras", "--model", spec,
                         "--input-shape", "2,4")
    assert code == 0 and "check passed: 0 of 1 outputs differ" in out, err
    loaded = keras.models.load_model(tmp_path / "m.keras")
    loaded.get_layer("scale").set_weights([np.array([5.0, 6.0, 7.0], np.float32)])
    loaded.save(tmp_path / "trained.keras")
    code, out, err = cli(tmp_path / "trained.keras", tmp_path / "back.pt", "--model", spec,
                         "--input-shape", "2,4")
    assert code == 0 and "check passed" in out, err
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    assert back["scale"].tolist() == [5.0, 6.0, 7.0]
    assert torch.equal(back["fc.weight"], torch.load(tmp_path / "m.pt")["fc.weight"])
