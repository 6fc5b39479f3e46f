"""Deployment artifacts: every fixture model exported as a TensorFlow SavedModel and as a TFLite
flatbuffer, the check run on the artifact itself; then run again here, independently
(``tf.saved_model.load``, ``tf.lite.Interpreter``), on fresh inputs, against PyTorch.

Exports take seconds: each artifact is made once per module (:class:`Exports`) and shared.
"""
from __future__ import annotations

import json
import os
import shutil
import warnings
import xml.etree.ElementTree as ET

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs torch: pip install '.[check]'")
tf = pytest.importorskip("tensorflow", reason="needs tensorflow: pip install '.[check]'")

import transcoder  # noqa: E402
from conftest import FIXTURES, assert_close  # noqa: E402
from transcoder.checks.artifacts import QUANTIZED_TOLERANCES  # noqa: E402

MODELS = FIXTURES / "models.py"
TWINS = FIXTURES / "keras_twins.py"
#: fixture model -> (--input-shape, --input-dtype)
CASES = {"Encoder": ("4,10,128", "float32"), "CNN1d": ("3,4,9", "float32"),
         "CNN2d": ("2,4,6,6", "float32"), "TextBiLSTM": ("2,7", "int64"),
         "GRUTagger": ("2,7,6", "float32"), "TransformerBlock": ("2,5,8", "float32")}
#: their TFLite exports have a fixed batch: the converter refuses the loops of a Keras
#: LSTM/GRU over a dynamic batch with builtin ops only
FIXED_IN_TFLITE = {"TextBiLSTM", "GRUTagger"}
ATOL, RTOL = 1e-5, 1e-4          # the float32 defaults
WORST_FLOAT32 = 1e-6             # float32 artifacts err by at most 4e-7 here


class Exports:
    """Fixture checkpoints and their exports, each made once (through the Python API)."""

    def __init__(self, folder) -> None:
        self.folder = folder
        self.done: dict[tuple, tuple] = {}

    def checkpoint(self, name: str):
        path = self.folder / f"{name}.pt"
        if not path.exists():
            import models   # fixtures/models.py, on sys.path through conftest

            torch.manual_seed(0)
            torch.save(getattr(models, name)().state_dict(), path)
        return path

    def module(self, name: str):
        import models

        module = getattr(models, name)()
        module.load_state_dict(torch.load(self.checkpoint(name), weights_only=True))
        return module.eval()

    def get(self, name: str, suffix: str, **options):
        """``(path, transcoder.convert's result)`` of ``name`` exported as ``suffix``."""
        key = (name, suffix, tuple(sorted(options.items())))
        if key not in self.done:
            shape, dtype = CASES[name]
            tag = "".join(f"-{v}" for v in options.values() if isinstance(v, str)) + \
                ("-cl" if options.get("channels_last") else "")
            path = self.folder / f"{name}{tag}.{suffix}"
            result = transcoder.convert(self.checkpoint(name), path, model=f"{MODELS}:{name}",
                                        input_shape=[shape], input_dtype=[dtype], **options)
            self.done[key] = (path, result)
        return self.done[key]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    return Exports(tmp_path_factory.mktemp("deploy"))


def fresh_input(name: str, batch: int, seed: int = 7) -> np.ndarray:
    shape, dtype = CASES[name]
    dims = (batch, *map(int, shape.split(",")[1:]))
    rng = np.random.default_rng(seed)
    if dtype == "int64":
        return rng.integers(0, 30, size=dims).astype(np.int64)
    return rng.standard_normal(dims).astype(np.float32)


def run_savedmodel(path, x: np.ndarray) -> np.ndarray:
    signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    (name,) = signature.structured_input_signature[1]
    return signature(**{name: tf.constant(x)})["output_0"].numpy()


def run_tflite(path, x: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # its advice to move to ai-edge-litert
        interpreter = tf.lite.Interpreter(model_path=str(path))
    runner = interpreter.get_signature_runner("serving_default")
    (name,) = runner.get_input_details()
    return runner(**{name: x})["output_0"]


RUN = {"savedmodel": run_savedmodel, "tflite": run_tflite}


def torch_output(module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


# ---------------------------------------------------------------- every fixture model, both exports

@pytest.mark.slow   # a real export and its check per case: 2 to 7 s each
@pytest.mark.parametrize("suffix", ["savedmodel", "tflite"])
@pytest.mark.parametrize("name", list(CASES))
def test_each_fixture_model_exports_and_checks_on_the_artifact(exports, name, suffix):
    path, result = exports.get(name, suffix)
    report = result.report
    assert report.passed and report.kind == "model"
    assert report.artifact["path"] == str(path) and report.artifact["format"] == suffix
    assert report.artifact["quantization"] is None
    (entry,) = report.entries
    # the default atol is scaled to the output's magnitude (checks/compare.py: max(1, max|y|))
    scale = entry.extra.get("atol_scale", 1.0)
    assert scale >= 1.0 and entry.atol == pytest.approx(ATOL * scale) and entry.rtol == RTOL
    assert entry.max_abs_error <= WORST_FLOAT32
    # independently: the artifact on fresh inputs (another batch size where it is dynamic)
    batch = int(CASES[name][0].split(",")[0]) if suffix == "tflite" and name in FIXED_IN_TFLITE \
        else 5
    x = fresh_input(name, batch)
    expected = torch_output(exports.module(name), x)
    got = RUN[suffix](path, x)
    assert got.shape == expected.shape
    assert_close(got, expected, rtol=RTOL, atol=ATOL, what=f"{name}.{suffix}")
    signature = [n for n in result.notes if "signature serving_default(" in n]
    assert signature and signature[0].startswith(f"{path.name}: signature serving_default(")
    fixed = [n for n in result.notes if "input shapes fixed" in n]
    assert bool(fixed) == (suffix == "tflite" and name in FIXED_IN_TFLITE)


def test_check_command_on_an_existing_artifact_prints_plain_lines(exports, cli, tmp_path):
    path, _ = exports.get("Encoder", "savedmodel")
    code, out, err = cli("check", exports.checkpoint("Encoder"), path, "--model",
                         f"{MODELS}:Encoder", "--input-shape", "4,10,128", "--report",
                         tmp_path / "r.json", "--junit", tmp_path / "j.xml")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == f"# outputs of {path} (run by tf.saved_model.load)"
    assert lines[1].split("\t")[:2] == ["# status", "name"]
    status, name, _, abs_err, *_ = lines[2].split("\t")
    assert (status, name) == ("SUCCESS", "output") and float(abs_err) <= WORST_FLOAT32
    assert lines[-1] == "check passed: 0 of 1 outputs of Encoder.savedmodel differ beyond " \
                        "tolerance (seed 0)"
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["artifact"]["runtime"] == "tf.saved_model.load" and report["passed"]
    assert report["artifact"]["inputs"] == ["x"] and report["artifact"]["outputs"] == ["output_0"]
    suite = ET.parse(tmp_path / "j.xml").getroot().find("testsuite")
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["artifact.format"] == "savedmodel" and suite.get("failures") == "0"


def test_channels_last_savedmodel_takes_the_deployment_layout(exports):
    path, result = exports.get("CNN2d", "savedmodel", channels_last=True)
    assert result.report.passed and result.report.keras_layout == "channels_last"
    signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    (spec,) = signature.structured_input_signature[1].values()
    assert tuple(spec.shape) == (None, 6, 6, 4)
    x = fresh_input("CNN2d", 3)
    got = run_savedmodel(path, np.ascontiguousarray(np.moveaxis(x, 1, -1)))
    assert_close(got, torch_output(exports.module("CNN2d"), x), rtol=RTOL, atol=ATOL)


def test_several_inputs_are_fed_by_name(exports, tmp_path):
    """SmallCNN takes (tokens, image); the flatbuffer's signature lists them sorted (image,
    tokens): the check feeds them by the forward's argument names."""
    import models

    torch.manual_seed(0)
    module = models.SmallCNN().eval()
    torch.save(module.state_dict(), tmp_path / "small.pt")
    result = transcoder.convert(tmp_path / "small.pt", tmp_path / "small.tflite",
                                model=f"{MODELS}:SmallCNN", input_shape=["2,7", "2,4,8,8"],
                                input_dtype=["int64", "float32"])
    report = result.report
    assert report.passed and [e.name for e in report.entries] == ["output[0]", "output[1]"]
    assert report.artifact["inputs"] == ["tokens", "image"]
    assert report.artifact["outputs"] == ["output_0", "output_1"]
    assert max(e.max_abs_error for e in report.entries) <= WORST_FLOAT32


def test_inputs_are_never_matched_by_guess():
    from pathlib import Path

    from transcoder.checks.artifacts import Artifact, feeding_order

    artifact = Artifact(Path("m.tflite"), "tflite", "test", ["a", "b"], ["output_0"], dict)
    assert feeding_order(artifact, ["b", "a"]) == ["b", "a"]
    with pytest.raises(transcoder.TranscoderError, match="cannot tell which input is which: "
                                                         "the signature takes a, b, the model's "
                                                         "inputs are x, y"):
        feeding_order(artifact, ["x", "y"])


# ---------------------------------------------------------------- sabotaged artifacts fail

def test_a_wrong_weight_in_the_savedmodel_variables_fails_with_exit_1(exports, cli, tmp_path):
    path, _ = exports.get("Encoder", "savedmodel")
    loaded = tf.saved_model.load(str(path))
    (kernel,) = loaded.variables
    value = kernel.numpy()
    value[0, 3, 5] += 0.25                                  # one weight of 8192
    kernel.assign(value)
    bad = tmp_path / "bad.savedmodel"
    tf.saved_model.save(loaded, str(bad), signatures=dict(loaded.signatures))
    code, out, err = cli("check", exports.checkpoint("Encoder"), bad, "--model",
                         f"{MODELS}:Encoder", "--input-shape", "4,10,128")
    assert code == 1
    assert out.splitlines()[2].startswith("FAIL\toutput\t")
    assert "check FAILED: 1 of 1 outputs of bad.savedmodel differ beyond tolerance (seed 0); " \
           "first divergence: in the export: the Keras model it is exported from agrees with " \
           "PyTorch" in out.splitlines()[-1]
    assert err == ""   # the verdict line is printed once, under the table


def test_a_wrong_weight_in_the_flatbuffer_fails_with_exit_1(exports, cli, tmp_path):
    path, _ = exports.get("Encoder", "tflite")
    weight = exports.module("Encoder").conv1d_U.weight.detach().numpy()   # (64, 128, 1)
    data = bytearray(path.read_bytes())
    needle = weight.reshape(-1)[:4].tobytes()   # TFLite's (64, 1, 1, 128): the same order
    assert data.count(needle) == 1
    at = data.find(needle)
    data[at:at + 4] = np.float32(weight.reshape(-1)[0] + 0.25).tobytes()
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(bytes(data))
    code, out, _ = cli("check", exports.checkpoint("Encoder"), bad, "--model",
                       f"{MODELS}:Encoder", "--input-shape", "4,10,128")
    assert code == 1 and "in the export" in out.splitlines()[-1]


def test_a_wrong_conversion_is_localised_in_the_keras_model(exports, cli, tmp_path, monkeypatch):
    """A rebuild with Keras' default BatchNorm epsilon: the export computes something else, and
    the Keras model it came from names the layer."""
    from torch import nn
    from transcoder.models.rebuild.core import MODULES

    right = MODULES[nn.BatchNorm1d]

    def wrong_epsilon(b, m, x):
        m = nn.BatchNorm1d(m.num_features, eps=1e-3).eval().requires_grad_(False)
        return right(b, m, x)

    monkeypatch.setitem(MODULES, nn.BatchNorm1d, wrong_epsilon)
    code, out, err = cli(exports.checkpoint("CNN1d"), tmp_path / "m.tflite", "--model",
                         f"{MODELS}:CNN1d", "--input-shape", "3,4,9", "--report",
                         tmp_path / "r.json")
    assert code == 1 and (tmp_path / "m.tflite").is_file()   # written; its check failed
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["first_divergence"]["name"] == "bn1"
    assert "# the Keras model it is exported from: paired layers, in PyTorch execution order" in out
    assert err.splitlines()[-1] == (f"transcode: error: {tmp_path / 'm.tflite'} was written "
                                    f"and is kept; its check failed (above)")
    assert "first divergence: bn1 (BatchNorm1d -> BatchNormalization)" in out.splitlines()[-1]


# ---------------------------------------------------------------- quantized flatbuffers

@pytest.mark.parametrize("quantize", ["float16", "dynamic"])
def test_quantized_flatbuffers_pass_their_tolerance_and_fail_float32(exports, cli, quantize):
    path, result = exports.get("Encoder", "tflite", quantize=quantize)
    atol, rtol = QUANTIZED_TOLERANCES[quantize]
    report = result.report
    assert report.passed and report.artifact["quantization"] == quantize
    entry = report.entries[0]   # the default atol scales with the output, as float32's does
    assert entry.atol == pytest.approx(atol * entry.extra.get("atol_scale", 1.0)) and entry.rtol == rtol
    x = fresh_input("Encoder", 6)
    expected, got = torch_output(exports.module("Encoder"), x), run_tflite(path, x)
    assert_close(got, expected, rtol=rtol, atol=atol)
    assert np.any(np.abs(got - expected) > ATOL + RTOL * np.abs(expected))   # not float32-exact
    assert path.stat().st_size < exports.get("Encoder", "tflite")[0].stat().st_size
    code, out, _ = cli("check", exports.checkpoint("Encoder"), path, "--model",
                       f"{MODELS}:Encoder", "--input-shape", "4,10,128", "--atol", ATOL,
                       "--rtol", RTOL)
    assert code == 1 and out.splitlines()[2].split("\t")[0] in ("FAIL", "INACCURATE")


def test_dynamic_quantization_of_small_weights_says_it_changed_nothing(exports):
    path, result = exports.get("CNN1d", "tflite", quantize="dynamic")
    assert [n for n in result.notes if "--quantize dynamic left every weight in float32" in n]
    assert result.report.passed and result.report.artifact["quantization"] is None
    assert result.report.entries[0].atol == ATOL


# ---------------------------------------------------------------- bad usage, atomic outputs

@pytest.mark.parametrize("suffix", ["savedmodel", "tflite"])
def test_no_architecture_exits_2_and_writes_nothing(exports, cli, tmp_path, suffix):
    code, out, err = cli(exports.checkpoint("CNN1d"), tmp_path / f"m.{suffix}")
    assert code == 2 and out == ""
    assert "needs the architecture: pass --model (with --input-shape) or --keras-model" in err
    assert os.listdir(tmp_path) == []


def test_bad_options_exit_2_and_write_nothing(exports, cli, tmp_path):
    src = exports.checkpoint("CNN1d")
    code, _, err = cli(src, tmp_path / "m.h5", "--quantize", "dynamic")
    assert code == 2 and "--quantize applies to a TFLite export (.tflite)" in err
    code, _, err = cli(src, tmp_path / "m.tflite", "--quantize", "int8", "--model",
                       f"{MODELS}:CNN1d", "--input-shape", "3,4,9")
    assert code == 2 and "one of float16, dynamic" in err
    assert os.listdir(tmp_path) == []
    path, _ = exports.get("CNN1d", "savedmodel")
    code, _, err = cli(path, tmp_path / "back.pt")
    assert code == 2 and "TensorFlow SavedModel folder cannot be read as a checkpoint" in err
    code, _, err = cli("check", src, path, "--keras-model", f"{TWINS}:cnn1d")
    assert code == 2 and "runs it beside the PyTorch module: pass --model" in err
    assert os.listdir(tmp_path) == []


def test_keras_model_as_the_architecture(exports, cli, tmp_path):
    src = exports.checkpoint("CNN1d")
    code, out, err = cli(src, tmp_path / "twin.savedmodel", "--keras-model", f"{TWINS}:cnn1d")
    assert code == 0 and (tmp_path / "twin.savedmodel" / "saved_model.pb").is_file()
    assert "no check ran: checking" in err and "pass --model and --input-shape" in err
    x = fresh_input("CNN1d", 4)
    assert_close(run_savedmodel(tmp_path / "twin.savedmodel", x),
                 torch_output(exports.module("CNN1d"), x), rtol=RTOL, atol=ATOL)
    code, out, _ = cli("check", src, tmp_path / "twin.savedmodel", "--keras-model",
                       f"{TWINS}:cnn1d", "--model", f"{MODELS}:CNN1d", "--input-shape", "3,4,9")
    assert code == 0 and out.splitlines()[-1].startswith("check passed: 0 of 1 outputs of twin")


def test_an_export_from_a_keras_file_says_how_to_check_it(exports, cli, tmp_path):
    args = ("--model", f"{MODELS}:CNN1d", "--input-shape", "3,4,9")
    assert cli(exports.checkpoint("CNN1d"), tmp_path / "m.h5", "--no-check")[0] == 0
    code, _, err = cli(tmp_path / "m.h5", tmp_path / "m.savedmodel", *args)
    assert code == 0 and "no check ran: checking" in err and "m.h5 holds the Keras layout: run " \
        "transcode check model.pt" in err
    x = fresh_input("CNN1d", 3)
    assert_close(run_savedmodel(tmp_path / "m.savedmodel", x),
                 torch_output(exports.module("CNN1d"), x), rtol=RTOL, atol=ATOL)
    code, _, err = cli("check", tmp_path / "m.h5", tmp_path / "m.savedmodel", *args)
    assert code == 2 and "holds the Keras layout" in err
    assert cli("check", exports.checkpoint("CNN1d"), tmp_path / "m.savedmodel", *args)[0] == 0


def test_force_replaces_an_existing_artifact_whole(exports, cli, tmp_path, monkeypatch):
    src, dst = exports.checkpoint("CNN1d"), tmp_path / "m.savedmodel"
    args = ("--model", f"{MODELS}:CNN1d", "--input-shape", "3,4,9", "--no-check")
    shutil.copytree(exports.get("Encoder", "savedmodel")[0], dst)   # another model's export
    (dst / "marker").write_text("old")
    code, _, err = cli(src, dst, *args)
    assert code == 2 and "already exists" in err and (dst / "marker").read_text() == "old"
    assert cli(src, dst, *args, "--force")[0] == 0
    assert not (dst / "marker").exists() and sorted(os.listdir(tmp_path)) == ["m.savedmodel"]
    x = fresh_input("CNN1d", 2)
    assert_close(run_savedmodel(dst, x), torch_output(exports.module("CNN1d"), x), rtol=RTOL,
                 atol=ATOL)
    (dst / "marker").write_text("new")

    def half_written(model, folder, input_signature=None):
        (folder / "saved_model.pb").write_bytes(b"half")
        raise transcoder.errors.UnsupportedError("the export broke")

    monkeypatch.setattr(transcoder.export, "_saved_model", half_written)
    code, _, err = cli(src, dst, *args, "--force")
    assert code == 2 and "the export broke" in err
    assert (dst / "marker").read_text() == "new" and sorted(os.listdir(tmp_path)) == ["m.savedmodel"]
    assert_close(run_savedmodel(dst, x), torch_output(exports.module("CNN1d"), x), rtol=RTOL,
                 atol=ATOL)


@pytest.mark.parametrize("suffix", ["savedmodel", "tflite"])
def test_an_interrupted_export_leaves_nothing_behind(exports, cli, tmp_path, monkeypatch, suffix):
    def interrupted(model, folder, input_signature=None):
        (folder / "variables").mkdir()
        (folder / "variables" / "variables.index").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(transcoder.export, "_saved_model", interrupted)
    code, _, err = cli(exports.checkpoint("CNN1d"), tmp_path / f"m.{suffix}", "--model",
                       f"{MODELS}:CNN1d", "--input-shape", "3,4,9")
    assert code == 130 and "Traceback" not in err
    assert os.listdir(tmp_path) == []


def test_a_folder_is_swapped_whole_without_renameat2(tmp_path, monkeypatch):
    from transcoder import pipeline

    def no_libc(*args, **kwargs):
        raise OSError("no renameat2 here")

    monkeypatch.setattr("ctypes.CDLL", no_libc)
    dst = tmp_path / "m.savedmodel"
    dst.mkdir()
    (dst / "old").write_text("old")
    with pipeline.atomic_folder(dst, force=True) as folder:
        (folder / "new").write_text("new")
        assert (dst / "old").is_file()                # the old one stays until the swap
    assert os.listdir(dst) == ["new"] and os.listdir(tmp_path) == ["m.savedmodel"]
