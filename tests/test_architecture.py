"""Architecture-aware conversion: --model and --keras-model, in both directions, all numeric.

For each model: (a) PyTorch -> legacy .h5 loads by name into the hand-written Keras twin and
computes the same; (b) the twin's own Keras 3 .weights.h5 -> .pt loads strictly into the
PyTorch model and computes the same; (c) a twin with Keras' default layer names pairs by order;
a wrong twin is refused with a message naming the layer.
"""
from __future__ import annotations

import numpy as np
import pytest
torch = pytest.importorskip("torch", reason="needs torch: pip install '.[check]'")

from conftest import FIXTURES, assert_close
from transcoder.options import Architecture
from transcoder.pipeline import transcode
from transcoder.errors import MappingError, UnsupportedError

keras = pytest.importorskip("keras")
import keras_twins  # noqa: E402  (fixtures/, on sys.path through conftest)
import models  # noqa: E402

MODELS = FIXTURES / "models.py"
TWINS = FIXTURES / "keras_twins.py"

#: model -> (input shape in PyTorch layout, integer input bound or 0, channels-first input)
CASES = {
    "TextBiLSTM": ((3, 7), 30, False),
    "GRUTagger": ((3, 7, 6), 0, False),
    "StackedLSTM": ((2, 7, 4), 0, False),
    "CellStep": ((3, 4), 0, False),
    "TransformerBlock": ((2, 5, 8), 0, False),
    "ConvNet": ((2, 4, 9, 7), 0, True),
}


def model_spec(name: str) -> str:
    return f"{MODELS}:{name}"


def twin_spec(name: str, suffix: str = "_twin") -> str:
    return f"{TWINS}:{name}{suffix}"


def seeded_model(name: str) -> torch.nn.Module:
    torch.manual_seed(3)
    return getattr(models, name)().eval()


def inputs(name: str) -> np.ndarray:
    shape, high, _ = CASES[name]
    rng = np.random.default_rng(11)
    if high:
        return rng.integers(0, high, shape).astype(np.int64)
    return rng.standard_normal(shape).astype(np.float32)


def torch_out(model, x) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def keras_out(twin, name: str, x: np.ndarray) -> np.ndarray:
    channels_first = CASES[name][2]
    y = np.asarray(twin(np.moveaxis(x, 1, -1) if channels_first else x))
    return np.moveaxis(y, -1, 1) if channels_first else y


@pytest.mark.parametrize("name", CASES)
def test_a_pt_to_h5_loads_by_name_into_twin(tmp_path, name):
    model = seeded_model(name)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    transcode(tmp_path / "m.pt", tmp_path / "m.h5", arch=Architecture(model=model_spec(name)))
    twin = keras_twins.TWINS[name]()
    twin.load_weights(tmp_path / "m.h5", by_name=True)
    x = inputs(name)
    assert_close(keras_out(twin, name, x), torch_out(model, x), rtol=1e-5, atol=1e-5, what=name)


@pytest.mark.parametrize("suffix", ["_twin", "_twin_unnamed"])
@pytest.mark.parametrize("name", CASES)
def test_b_twin_weights_h5_to_pt_loads_strictly(tmp_path, name, suffix):
    keras.utils.set_random_seed(5)
    twin = keras_twins.TWINS[name](named=suffix == "_twin")
    for variable in twin.weights:  # non-zero biases, so a dropped bias would show
        variable.assign(np.random.default_rng(1).uniform(-0.5, 0.5, variable.shape))
    twin.save_weights(tmp_path / "twin.weights.h5")
    prepared = transcode(tmp_path / "twin.weights.h5", tmp_path / "back.pt",
                         arch=Architecture(model=model_spec(name), keras_model=twin_spec(name, suffix)))
    model = getattr(models, name)().eval()
    model.load_state_dict(torch.load(tmp_path / "back.pt", weights_only=True), strict=True)
    x = inputs(name)
    assert_close(torch_out(model, x), keras_out(twin, name, x), rtol=1e-5, atol=1e-5, what=name)
    if suffix == "_twin_unnamed":
        assert {p.how for p in prepared.pairs} == {"order"}


@pytest.mark.parametrize("target", ["out.weights.h5", "out.keras", "out.h5"])
@pytest.mark.parametrize("name", ["TextBiLSTM", "TransformerBlock", "ConvNet"])
def test_c_pt_to_keras_formats_through_an_unnamed_twin(tmp_path, name, target):
    model = seeded_model(name)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    prepared = transcode(tmp_path / "m.pt", tmp_path / target,
                         arch=Architecture(model=model_spec(name),
                                           keras_model=twin_spec(name, "_twin_unnamed")))
    assert {p.how for p in prepared.pairs} == {"order"}
    if target.endswith(".keras"):
        loaded = keras.models.load_model(tmp_path / target)
    else:
        loaded = keras_twins.TWINS[name](named=False)
        loaded.load_weights(tmp_path / target)  # topological for .h5, by path for .weights.h5
    x = inputs(name)
    assert_close(keras_out(loaded, name, x), torch_out(model, x), rtol=1e-5, atol=1e-5, what=name)


def test_wrong_twin_is_refused_naming_the_layer(tmp_path):
    model = seeded_model("GRUTagger")
    torch.save(model.state_dict(), tmp_path / "m.pt")
    with pytest.raises(UnsupportedError, match="reset_after"):
        transcode(tmp_path / "m.pt", tmp_path / "x.weights.h5",
                  arch=Architecture(keras_model=f"{TWINS}:gru_tagger_reset_before"))
    with pytest.raises(MappingError, match="lstm"):
        transcode(tmp_path / "m.pt", tmp_path / "y.weights.h5",
                  arch=Architecture(keras_model=twin_spec("StackedLSTM")))
    assert not list(tmp_path.glob("*.weights.h5"))


def test_model_that_does_not_fit_the_checkpoint_lists_keys(tmp_path):
    torch.save(seeded_model("GRUTagger").state_dict(), tmp_path / "m.pt")
    with pytest.raises(MappingError, match="missing: .*unexpected: "):
        transcode(tmp_path / "m.pt", tmp_path / "x.h5", arch=Architecture(model=model_spec("ConvNet")))


def test_cli_prints_the_pairing(cli, tmp_path):
    torch.save(seeded_model("ConvNet").state_dict(), tmp_path / "m.pt")
    code, out, err = cli(tmp_path / "m.pt", tmp_path / "m.weights.h5", "--model", model_spec("ConvNet"),
                         "--keras-model", twin_spec("ConvNet", "_twin_unnamed"))
    assert code == 0, err
    rows = [line.split("\t") for line in out.splitlines() if "\torder\t" in line]
    assert [r[0] for r in rows] == ["conv", "up"]
