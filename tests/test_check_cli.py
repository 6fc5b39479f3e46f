"""The forward check from the command line: convert + check, `transcode check`, rebuilt .keras
files, reports; exit 0 when the numbers agree, 1 when they do not, naming the layer."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import h5py
import numpy as np
import pytest
torch = pytest.importorskip("torch", reason="needs torch: pip install '.[check]'")

from conftest import FIXTURES, assert_close

keras = pytest.importorskip("keras")
import models  # noqa: E402  (fixtures/, on sys.path through conftest)

MODELS, TWINS = FIXTURES / "models.py", FIXTURES / "keras_twins.py"


def seeded(name: str) -> torch.nn.Module:
    torch.manual_seed(4)
    model = getattr(models, name)().eval()
    with torch.no_grad():  # running statistics where epsilon matters
        for buf_name, buf in model.named_buffers():
            if buf_name.endswith("running_var"):
                buf.uniform_(1e-4, 1e-3)
            elif buf_name.endswith("running_mean"):
                buf.normal_()
    return model


def test_encoder_checks_against_the_answers_keras_model(cli, tmp_path):
    code, out, err = cli(FIXTURES / "encoder.pt", tmp_path / "enc.weights.h5",
                         "--model", f"{MODELS}:Encoder", "--keras-model", f"{TWINS}:encoder_answer",
                         "--input-shape", "4,10,128", "--report", tmp_path / "r.json")
    assert code == 0, err
    assert "\torder\t" in out and "check passed" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["status"] == "SUCCESS" and report["input_shapes"] == [[4, 10, 128]]
    entry = report["entries"][0]
    assert entry["max_abs_error"] <= entry["atol"] + entry["rtol"]


def test_missing_activation_fails_the_check_with_exit_1(cli, tmp_path):
    cli(FIXTURES / "encoder.pt", tmp_path / "enc.h5", "--no-check")
    code, out, err = cli("check", FIXTURES / "encoder.pt", tmp_path / "enc.h5",
                         "--model", f"{MODELS}:Encoder",
                         "--keras-model", f"{TWINS}:encoder_answer_no_relu",
                         "--input-shape", "4,10,128", "--junit", tmp_path / "j.xml")
    assert code == 1
    assert "conv1d_U" in out.splitlines()[-1]  # the verdict line names where the outputs part
    assert err == ""   # ... printed once, under the table
    failures = ET.parse(tmp_path / "j.xml").getroot().iter("failure")
    assert next(failures, None) is not None


def test_wrong_batchnorm_epsilon_names_the_layer(cli, tmp_path):
    torch.save(seeded("CNN1d").state_dict(), tmp_path / "m.pt")
    args = ("--model", f"{MODELS}:CNN1d", "--input-shape", "3,4,9")
    code, _, err = cli(tmp_path / "m.pt", tmp_path / "m.h5", *args, "--keras-model", f"{TWINS}:cnn1d")
    assert code == 0, err
    code, out, err = cli("check", tmp_path / "m.pt", tmp_path / "m.h5", *args,
                         "--keras-model", f"{TWINS}:cnn1d_keras_epsilon", "--report",
                         tmp_path / "r.json")
    assert code == 1 and "bn1" in out.splitlines()[-1]
    assert json.loads((tmp_path / "r.json").read_text())["first_divergence"]["name"] == "bn1"


REBUILT = {  # model -> input shape and dtype (PyTorch layout)
    "CNN1d": ("3,4,9", "float32"),
    "CNN2d": ("2,4,6,6", "float32"),
    "TextBiLSTM": ("3,7", "int64"),
    "GRUTagger": ("3,7,6", "float32"),
    "TransformerBlock": ("2,5,8", "float32"),
}


@pytest.mark.parametrize("name", REBUILT)
def test_rebuilt_keras_file_loads_and_matches_on_fresh_inputs(cli, tmp_path, name):
    model = seeded(name)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    shape, dtype = REBUILT[name]
    code, out, err = cli(tmp_path / "m.pt", tmp_path / "m.keras", "--model", f"{MODELS}:{name}",
                         "--input-shape", shape, "--input-dtype", dtype)
    assert code == 0, err
    assert "check passed" in out
    import transcoder.models  # noqa: F401  (registers our Keras layers)

    loaded = keras.models.load_model(tmp_path / "m.keras")
    dims = [int(d) for d in shape.split(",")]
    rng = np.random.default_rng(99)
    x = (rng.integers(0, 30, dims) if dtype == "int64" else rng.standard_normal(dims)).astype(dtype)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert_close(np.asarray(loaded(x)), expected, rtol=1e-4, atol=1e-5, what=name)


def _corrupt_one_value(path, dataset: str) -> None:
    with h5py.File(path, "r+") as f:
        data = f[dataset][...]
        data.flat[0] += 0.5
        f[dataset][...] = data


def test_check_on_a_file_with_one_tensor_corrupted_exits_1(cli, tmp_path):
    h5 = tmp_path / "cnn.h5"
    assert cli(FIXTURES / "small_cnn.pt", h5, "--no-check")[0] == 0
    code, _, err = cli("check", FIXTURES / "small_cnn.pt", h5)
    assert code == 0, err
    _corrupt_one_value(h5, "conv2/conv2/kernel")
    code, out, err = cli("check", FIXTURES / "small_cnn.pt", h5)
    assert code == 1 and "conv2" in out.splitlines()[-1]
    code, _, err = cli("check", FIXTURES / "small_cnn.pt", h5, "--model", f"{MODELS}:SmallCNN",
                       "--input-shape", "2,7", "--input-dtype", "int64",
                       "--input-shape", "2,4,9,9", "--input-dtype", "float32")
    assert code == 1, err


def test_weights_only_conversion_checks_each_layer_by_default(cli, tmp_path):
    code, out, err = cli(FIXTURES / "small_cnn.pt", tmp_path / "cnn.h5")
    assert code == 0, err
    assert "check passed" in out and "fc" in out


def test_check_needs_input_shape_for_the_full_model(cli, tmp_path):
    cli(FIXTURES / "encoder.pt", tmp_path / "enc.h5", "--no-check")
    code, _, err = cli("check", FIXTURES / "encoder.pt", tmp_path / "enc.h5", "--model",
                       f"{MODELS}:Encoder")
    assert code == 2 and "--input-shape" in err
