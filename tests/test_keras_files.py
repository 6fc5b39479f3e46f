"""Keras files as they exist, converted to PyTorch (issue 10, item 2).

Each file is made by ``fixtures/make_fixtures.py`` in the shape its writer gave it: Keras 2.1.6
(a Sequential config that is a bare list, uniquified scopes ``conv2d_1/conv2d_1_1/kernel:0``),
Keras 2.2.4 (a functional ``Model``, ``hard_sigmoid`` or ``sigmoid`` gates), tf.keras 2.15
(``Functional``, cell scopes, a nested Sequential and a nested Functional), and files Keras 3.15
writes itself (``model.save("x.h5")``, ``.keras``, a custom layer registered by another package).

The reference is independent of our reader and rules: the Keras model runs in Keras with the
file loaded by Keras' own loader, the PyTorch module (written here by hand) runs in PyTorch with
the converted state dict loaded strictly; outputs agree within the check's default float32
tolerances. The way back is bit-exact: PyTorch -> Keras -> PyTorch, and the Keras weights after
Keras -> PyTorch -> Keras.
"""
from __future__ import annotations


import h5py
import numpy as np
import pytest

from conftest import FRAMEWORKS, assert_bit_exact, assert_close, assert_imports_none_of, torch_state

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
nn = torch.nn
F = torch.nn.functional

import make_fixtures as mf  # noqa: E402  (fixtures/ is on sys.path: conftest)

from transcoder.checkpoint import LAYOUT_TORCH  # noqa: E402
from transcoder.formats import for_path  # noqa: E402
from transcoder.rules.plan import make_plan  # noqa: E402
from transcoder.rules.user import load as load_rules  # noqa: E402

#: The check's defaults for float32 (README: The forward check).
ATOL, RTOL = 1e-5, 1e-4


# ---------------------------------------------------------------- PyTorch references, by hand

class Keras2Cnn(nn.Module):
    """make_fixtures.KERAS2_CNN in PyTorch: Conv2D(same, relu), BatchNormalization(eps 1e-3),
    MaxPooling2D, Conv2D(valid, no bias), relu, GlobalAveragePooling2D, Dense(relu),
    Dense(softmax). Takes channels-last images, as the Keras model does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv2d_1 = nn.Conv2d(3, 4, 3, padding=1)
        self.batch_normalization_1 = nn.BatchNorm2d(4, eps=1e-3)
        self.conv2d_2 = nn.Conv2d(4, 6, 3, bias=False)
        self.dense_1 = nn.Linear(6, 8)
        self.dense_2 = nn.Linear(8, 3)

    def forward(self, x):
        x = self.batch_normalization_1(F.relu(self.conv2d_1(x.permute(0, 3, 1, 2))))
        x = F.relu(self.conv2d_2(F.max_pool2d(x, 2))).mean(dim=(2, 3))
        return F.softmax(self.dense_2(F.relu(self.dense_1(x))), dim=-1)


class Keras2Text(nn.Module):
    """make_fixtures.keras2_text_twin: Embedding, LSTM, GRU (reset_after=True), Dense."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding_1 = nn.Embedding(20, 6)
        self.lstm_1 = nn.LSTM(6, 5, batch_first=True)
        self.gru_1 = nn.GRU(5, 4, batch_first=True)
        self.dense_1 = nn.Linear(4, 3)

    def forward(self, tokens):
        x = self.lstm_1(self.embedding_1(tokens))[0]
        return self.dense_1(self.gru_1(x)[0])


class Nested(nn.Module):
    """make_fixtures.nested_twin: the layers of its nested Sequential and nested Functional are
    modules of their own, named as the Keras layers. Takes (N, T, C), as the Keras model does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1d = nn.Conv1d(4, 5, 3)
        self.dense = nn.Linear(5, 5)
        self.batch_normalization = nn.BatchNorm1d(5, eps=1e-3)
        self.dense_1 = nn.Linear(5, 6)
        self.gru = nn.GRU(6, 6, batch_first=True)
        self.bidirectional = nn.LSTM(6, 3, batch_first=True, bidirectional=True)
        self.layer_normalization = nn.LayerNorm(6, eps=1e-3)
        self.dense_2 = nn.Linear(6, 4)
        self.dense_3 = nn.Linear(4, 2)

    def forward(self, x):
        x = self.dense(self.conv1d(x.transpose(1, 2)).transpose(1, 2))
        x = self.dense_1(self.batch_normalization(x.transpose(1, 2)).transpose(1, 2))
        x = self.bidirectional(self.gru(x)[0])[0]
        return self.dense_3(self.dense_2(self.layer_normalization(x)).mean(dim=1))


class Scaler(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.zeros(channels))
        self.offset = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        return x * self.scale + self.offset


class Foreign(nn.Module):
    """make_fixtures.foreign_twin: Dense, the custom Scaler, GroupNormalization(2, eps 1e-3)."""

    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(4, 4)
        self.scaler = Scaler(4)
        self.gn = nn.GroupNorm(2, 4, eps=1e-3)

    def forward(self, x):
        return self.gn(self.scaler(self.dense(x)))


# ---------------------------------------------------------------- helpers

def converted(cli, src, dst, *more) -> dict:
    """``transcode SRC DST`` (the per-layer check runs): exit 0, every layer verified or
    said otherwise; the PyTorch state dict as torch loads it."""
    code, out, err = cli(src, dst, "--force", *more)
    assert code == 0, err
    assert "check passed" in out
    return torch_state(dst)


def run_torch(module: nn.Module, state: dict, *inputs: np.ndarray) -> np.ndarray:
    module.load_state_dict(state, strict=True)
    with torch.no_grad():
        return module.eval()(*[torch.from_numpy(x) for x in inputs]).numpy()


def run_keras(model, *inputs: np.ndarray) -> np.ndarray:
    return np.asarray(model(list(inputs) if len(inputs) > 1 else inputs[0], training=False))


def loaded_twin(build, path):
    """``build()`` with ``path`` loaded by Keras' own (positional) legacy loader."""
    model = build()
    model.load_weights(path)
    return model


def assert_round_trips(cli, tmp_path, pt, twin) -> None:
    """PyTorch -> Keras -> PyTorch is bit-exact, and after Keras -> PyTorch -> Keras every
    layer of the Keras model (nested models' layers each in their own group) finds its
    weights in the written .h5, bit for bit, in Keras order."""
    back_h5, again_pt = tmp_path / "back.h5", tmp_path / "again.pt"
    assert cli(pt, back_h5, "--force", "--no-check")[0] == 0
    assert cli(back_h5, again_pt, "--force", "--no-check")[0] == 0
    first, again = torch_state(pt), torch_state(again_pt)
    assert list(first) == list(again)
    for name in first:
        assert_bit_exact(again[name].numpy(), first[name].numpy(), name)
    with h5py.File(back_h5, "r") as f:
        for layer in leaf_layers(twin):
            group = f[layer.name]
            stored = [group[n][()] for n in group.attrs["weight_names"]]
            assert len(stored) == len(layer.weights), layer.name
            for got, want in zip(stored, layer.get_weights()):
                assert_bit_exact(got, want, layer.name)


def leaf_layers(model) -> list:
    """The weight-bearing layers, nested models' layers in their place."""
    return [leaf for layer in model.layers
            for leaf in (leaf_layers(layer) if hasattr(layer, "layers") else [layer])
            if leaf.weights]


def rng_inputs(shape, seed: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------- Keras 2 and tf.keras 2 files

def test_keras2_cnn_with_uniquified_scopes_converts(cli, tmp_path):
    path = mf.write_keras2_cnn_h5(tmp_path)
    state = converted(cli, path, tmp_path / "cnn.pt")
    assert list(state)[:2] == ["conv2d_1.weight", "conv2d_1.bias"]
    twin = loaded_twin(mf.keras2_cnn_twin, path)
    x = rng_inputs((3, 8, 8, 3))
    assert_close(run_torch(Keras2Cnn(), state, x), run_keras(twin, x), RTOL, ATOL)
    assert_round_trips(cli, tmp_path, tmp_path / "cnn.pt", twin)


def test_keras2_cnn_can_be_inspected_and_its_check_knows_the_config(cli, tmp_path):
    path = mf.write_keras2_cnn_h5(tmp_path)
    code, out, err = cli("inspect", path)
    assert code == 0, err
    assert "conv2d_1/kernel" in out and "conv2d_1_1" not in out
    with for_path(path).read(path) as ckpt:
        plan = make_plan(ckpt, LAYOUT_TORCH)
    assert plan.options["batch_normalization_1"] == {"eps": 0.001, "momentum": 0.01}
    assert plan.options["conv2d_2"] == {"groups": 1}    # Keras 2 had no groups: one
    assert not plan.ambiguous


def test_keras2_text_model_converts(cli, tmp_path):
    path = mf.write_keras2_text_h5(tmp_path)
    state = converted(cli, path, tmp_path / "text.pt")
    twin = loaded_twin(mf.keras2_text_twin, path)
    tokens = np.random.default_rng(6).integers(0, 20, size=(2, 7)).astype(np.int64)
    assert_close(run_torch(Keras2Text(), state, tokens), run_keras(twin, tokens.astype(np.int32)),
                 RTOL, ATOL)
    assert_round_trips(cli, tmp_path, tmp_path / "text.pt", twin)


def test_keras2_hard_sigmoid_gates_are_refused_with_the_way_out(cli, tmp_path):
    path = mf.write_keras2_text_h5(tmp_path, "hard_sigmoid")
    code, out, err = cli(path, tmp_path / "text.pt")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert "'lstm_1' (LSTM) has recurrent_activation='hard_sigmoid'" in err
    assert 'kind = "LSTM"' in err and 'kind = "carry"' in err
    assert not (tmp_path / "text.pt").exists()
    rules = _rules(tmp_path, '[[layer]]\nmatch = "lstm_1"\nkind = "LSTM"\n'
                             '[[layer]]\nmatch = "gru_1"\nkind = "carry"\n')
    code, out, err = cli(path, tmp_path / "text.pt", "--rules", rules, "--no-check")
    assert code == 0, err
    assert ("'lstm_1': mapped by --rules as kind LSTM, though its "
            "recurrent_activation='hard_sigmoid'") in err
    state = torch_state(tmp_path / "text.pt")
    assert sorted(k for k in state if k.startswith("gru_1.")) == [
        "gru_1.bias", "gru_1.kernel", "gru_1.recurrent_kernel"]


def test_tf_keras2_nested_models_convert(cli, tmp_path):
    path = mf.write_tf_keras2_nested_h5(tmp_path)
    state = converted(cli, path, tmp_path / "nested.pt")
    assert "batch_normalization.running_var" in state and "dense_2.weight" in state
    twin = loaded_twin(mf.nested_twin, path)
    x = rng_inputs((2, 6, 4))
    assert_close(run_torch(Nested(), state, x), run_keras(twin, x), RTOL, ATOL)
    assert_round_trips(cli, tmp_path, tmp_path / "nested.pt", twin)


# ---------------------------------------------------------------- files Keras 3.15 writes

@pytest.mark.parametrize("build, module, shape", [
    (mf.nested_twin, Nested, (2, 6, 4)), (mf.keras2_cnn_twin, Keras2Cnn, (2, 8, 8, 3))],
    ids=["nested", "cnn"])
@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_files_keras3_writes_convert(cli, tmp_path, build, module, shape, suffix):
    h5, archive = mf.write_keras3(tmp_path, build)
    path = h5 if suffix == ".h5" else archive
    state = converted(cli, path, tmp_path / "k3.pt")
    model = keras.models.load_model(path, compile=False)
    x = rng_inputs(shape)
    assert_close(run_torch(module(), state, x), run_keras(model, x), RTOL, ATOL)
    assert_round_trips(cli, tmp_path, tmp_path / "k3.pt", model)


# ---------------------------------------------------------------- classes from other packages

@pytest.fixture
def foreign(tmp_path):
    mf.scaler_class()     # registered, so that Keras itself can load the files
    return mf.write_keras3(tmp_path, mf.foreign_twin)


@pytest.mark.parametrize("which", [0, 1], ids=["h5", "keras"])
def test_a_foreign_class_is_refused_naming_it_and_the_way_out(cli, tmp_path, foreign, which):
    code, out, err = cli(foreign[which], tmp_path / "f.pt")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "Keras layer 'scaler' is a my_pkg>Scaler, a class from another package" in err
    assert '[[layer]] match = "scaler", kind = "carry"' in err
    assert "[[tensor]] keras = \"scaler/" in err
    assert not (tmp_path / "f.pt").exists()


@pytest.mark.parametrize("which, weights", [(0, ("scale", "offset")), (1, ("0", "1"))],
                         ids=["h5", "keras"])
def test_a_foreign_class_converts_with_tensor_rules(cli, tmp_path, foreign, which, weights):
    rules = tmp_path / "rules.toml"
    rules.write_text("".join(f'[[tensor]]\nkeras = "scaler/{w}"\ntorch = "scaler.{t}"\n'
                             for w, t in zip(weights, ("scale", "offset"))))
    code, out, err = cli(foreign[which], tmp_path / "f.pt", "--rules", rules)
    assert code == 0, err
    assert "NOT CHECKED\tscaler" in out and "only 2 of 3 layers verified" in out
    model = keras.models.load_model(foreign[which], compile=False)
    x = rng_inputs((5, 4))
    assert_close(run_torch(Foreign(), torch_state(tmp_path / "f.pt"), x), run_keras(model, x),
                 RTOL, ATOL)


def test_a_foreign_class_carried(cli, tmp_path, foreign):
    rules = tmp_path / "rules.toml"
    rules.write_text('[[layer]]\nmatch = "scaler"\nkind = "carry"\n')
    code, out, err = cli(foreign[1], tmp_path / "f.pt", "--rules", rules)
    assert code == 0, err
    assert "NOT CHECKED\tscaler" in out
    state = torch_state(tmp_path / "f.pt")
    model = keras.models.load_model(foreign[1], compile=False)
    scaler = model.get_layer("scaler")
    assert_bit_exact(state["scaler.0"].numpy(), np.asarray(scaler.weights[0]))
    assert_bit_exact(state["scaler.1"].numpy(), np.asarray(scaler.weights[1]))


def test_a_group_normalization_stays_one_by_its_class(tmp_path, foreign):
    """The config says GroupNormalization(groups=2): no ambiguity, the check builds it with
    2 groups. Without the config (a weights-only file) the same weights are ambiguous."""
    rules = load_rules(_rules(tmp_path, '[[layer]]\nmatch = "scaler"\nkind = "carry"\n'))
    with for_path(foreign[1]).read(foreign[1]) as ckpt:
        plan = make_plan(ckpt, LAYOUT_TORCH, rules)
        assert "gn" not in plan.ambiguous and plan.layers["gn"].rule == "GroupNorm"
        assert plan.options["gn"] == {"eps": 0.001, "num_groups": 2}
        for layer in ckpt.meta["keras_layers"]:
            del layer["class_name"], layer["config"]
        assert make_plan(ckpt, LAYOUT_TORCH, rules).ambiguous["gn"][0] == "LayerNormalization"


def _rules(tmp_path, text: str):
    path = tmp_path / "rules.toml"
    path.write_text(text)
    return path


def test_refusals_exit_2_quickly_without_torch_or_tensorflow(tmp_path, foreign):
    """A refused reading costs neither framework's import time."""
    hard = mf.write_keras2_text_h5(tmp_path, "hard_sigmoid")
    for src in (hard, foreign[1]):
        out = assert_imports_none_of(
            "import sys, time; t = time.perf_counter(); from transcoder.cli import main; "
            "code = main(sys.argv[1:]); print(code, round(time.perf_counter() - t, 3))",
            FRAMEWORKS, src, tmp_path / "x.pt", timeout=60)
        code, seconds = out.split()[-2:]
        assert code == "2", out
        assert float(seconds) < 1.0, (src.name, seconds)


@pytest.mark.parametrize("center, scale", [(True, False), (False, True), (False, False)])
def test_batchnorm_without_scale_or_center_maps_to_pytorchs_affine_one(cli, tmp_path, center,
                                                                       scale):
    """InceptionV3 builds BatchNormalization(scale=False): PyTorch's BatchNorm2d gets weight 1
    (bias 0 for center=False), exactly; without either it is the non-affine one."""
    x = keras.Input((6, 6, 5))
    y = keras.layers.BatchNormalization(center=center, scale=scale, epsilon=1e-3, name="bn")(
        keras.layers.Conv2D(5, 3, name="conv")(x))
    model = keras.Model(x, y)
    rng = np.random.default_rng(0)
    bn = model.get_layer("bn")
    bn.set_weights([rng.uniform(0.5, 2, w.shape).astype("f4") for w in bn.weights])
    model.save(tmp_path / "m.keras")
    code, out, err = cli(tmp_path / "m.keras", tmp_path / "m.pt", "--strict")
    assert code == 0 and "check passed: 0 of 2 layers differ" in out, err
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    module = nn.Sequential(nn.Conv2d(5, 5, 3), nn.BatchNorm2d(5, eps=1e-3, affine=center or scale))
    renamed = {k.replace("conv.", "0.").replace("bn.", "1."): v for k, v in state.items()}
    module.load_state_dict(renamed, strict=True)   # PyTorch fills in num_batches_tracked
    if center or scale:
        assert torch.equal(state["bn.weight"], torch.ones(5)) or torch.equal(state["bn.bias"],
                                                                             torch.zeros(5))
    xin = rng.standard_normal((2, 6, 6, 5)).astype("f4")
    with torch.no_grad():
        got = module.eval()(torch.from_numpy(xin).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    assert_close(got, np.asarray(model(xin)), atol=ATOL, rtol=RTOL)
