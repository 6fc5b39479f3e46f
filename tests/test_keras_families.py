"""Keras layers PyTorch writes otherwise: SeparableConv1D/2D, DepthwiseConv1D/2D with a depth
multiplier, PReLU with shared_axes, Keras 2 CuDNNLSTM/CuDNNGRU.

Real-world-shaped files from fixtures/make_fixtures.py (Keras models saved by Keras; a Keras
2.2.4 cuDNN file written with h5py as Keras 2 wrote it), converted both ways. The reference is
independent of the rules: the Keras model run in Keras against its PyTorch twin
(fixtures/models.py) run in PyTorch, loaded strictly from the converted file, at the check's
default float32 tolerances; round trips are bit-exact.
"""
from __future__ import annotations

import json
from dataclasses import replace

import h5py
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs torch: pip install '.[check]'")
keras = pytest.importorskip("keras")

import keras_twins  # noqa: E402  (fixtures/, on sys.path via conftest)
import make_fixtures  # noqa: E402
import models  # noqa: E402
from conftest import FIXTURES, assert_bit_exact, assert_close  # noqa: E402
from transcoder.checks.compare import FAIL, SUCCESS  # noqa: E402
from transcoder.checks.layers import check_layers  # noqa: E402
from transcoder.pipeline import read  # noqa: E402
from transcoder.rules import registry  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5          # the check's float32 defaults
MODELS, TWINS = FIXTURES / "models.py", FIXTURES / "keras_twins.py"


def run_torch(module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module.eval()(torch.from_numpy(x)).numpy()


def load_torch(cls, path) -> torch.nn.Module:
    module = cls()
    module.load_state_dict(torch.load(path, weights_only=True), strict=True)
    return module


def model_weights(model) -> dict[str, np.ndarray]:
    return {w.path: np.asarray(w.numpy()) for w in model.weights}


def assert_same_weights(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for name in a:
        assert_bit_exact(b[name], a[name], name)


# ---------------------------------------------------------------- SeparableConv / DepthwiseConv

SEPARABLE = [("separable_net_2d", models.SeparableNet2d, (3, 4, 11, 13)),
             ("separable_net_1d", models.SeparableNet1d, (3, 4, 20))]


@pytest.fixture(scope="module", params=[(n, cls, shape, s) for n, cls, shape in SEPARABLE
                                        for s in (".h5", ".keras")],
                ids=lambda p: p[0] + p[3])
def separable(request, tmp_path_factory):
    name, cls, shape, suffix = request.param
    tmp = tmp_path_factory.mktemp(name)
    return name, cls, shape, make_fixtures.write_keras_model(tmp, name, suffix), tmp


def test_keras_separable_and_depthwise_to_pytorch_compute_the_same(separable, cli):
    name, cls, shape, src, tmp = separable
    code, out, err = cli(src, tmp / "m.pt", "--force")
    assert code == 0, err
    assert f"SUCCESS\tsep\tSeparableConv{len(shape) - 2}d" in out   # the per-layer check
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    reference = keras.models.load_model(src, compile=False)
    expected = np.asarray(reference(np.moveaxis(x, 1, -1)))
    assert_close(run_torch(load_torch(cls, tmp / "m.pt"), x), expected, RTOL, ATOL, name)


def test_keras_separable_round_trip_through_pytorch_is_bit_exact(separable, cli):
    """Keras -> .pt -> Keras through the Keras model (the twin pairs our two convolutions with
    its SeparableConv and our grouped one with its DepthwiseConv): every weight bit for bit."""
    name, _, _, src, tmp = separable
    assert cli(src, tmp / "rt.pt", "--force")[0] == 0
    for back in ("back.weights.h5", "back.h5"):
        code, out, err = cli(tmp / "rt.pt", tmp / back, "--force", "--keras-model",
                             f"{TWINS}:{name}")
        assert code == 0, err
        assert "SeparableConv" in out and "DepthwiseConv" in out     # the pairing table
        model = getattr(keras_twins, name)()
        if back == "back.h5":
            model.load_weights(tmp / back, by_name=True)
        else:
            model.load_weights(tmp / back)
        original = keras.models.load_model(src, compile=False)
        assert_same_weights(model_weights(original), model_weights(model))


def test_a_module_of_its_own_names_pairs_by_order_with_separable_and_depthwise(tmp_path, cli):
    """--model with timm-like names (conv_dw, conv_pw, block.2 + block.3) and a Keras twin with
    SeparableConv2D/DepthwiseConv2D: paired by order, written through Keras, checked whole."""
    torch.manual_seed(3)
    module = models.MobileSep2d().eval()
    torch.save(module.state_dict(), tmp_path / "mobile.pt")
    code, out, err = cli(tmp_path / "mobile.pt", tmp_path / "mobile.keras", "--model",
                         f"{MODELS}:MobileSep2d", "--keras-model", f"{TWINS}:separable_net_2d",
                         "--input-shape", "2,4,11,13", "--channels-last")
    assert code == 0, err
    assert "conv_dw + conv_pw\tConv2D + Conv2D\tsep\tSeparableConv2D\torder" in out
    assert "block.2 + block.3\tConv2D + Conv2D\tsep_nb\tSeparableConv2D\torder" in out
    x = np.random.default_rng(1).standard_normal((3, 4, 11, 13)).astype(np.float32)
    model = keras.models.load_model(tmp_path / "mobile.keras")
    assert_close(np.asarray(model(np.moveaxis(x, 1, -1))), run_torch(module, x), RTOL, ATOL)
    code, _, err = cli(tmp_path / "mobile.keras", tmp_path / "back.pt", "--model",
                       f"{MODELS}:MobileSep2d", "--input-shape", "2,4,11,13", "--channels-last")
    assert code == 0, err
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    assert list(back) == list(module.state_dict())
    for k, v in module.state_dict().items():
        assert_bit_exact(back[k].numpy(), v.numpy(), k)


def _weights_only_h5(path, layers: dict[str, dict[str, np.ndarray]]) -> None:
    """A legacy weights-only .h5 with no class names (tf.keras 2 ``save_weights``)."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([n.encode() for n in layers])
        f.attrs["keras_version"], f.attrs["backend"] = b"2.15.0", b"tensorflow"
        for name, weights in layers.items():
            group = f.create_group(name)
            group.attrs["weight_names"] = np.array([f"{name}/{w}:0".encode() for w in weights])
            for w, value in weights.items():
                group.create_dataset(f"{name}/{w}:0", data=value)


def test_depthwise_recognised_from_shapes_only_when_they_say_it(tmp_path):
    rng = np.random.default_rng(0)
    k = rng.standard_normal((3, 3, 4, 2)).astype(np.float32)
    _weights_only_h5(tmp_path / "w.h5", {
        "block1": {"kernel": k, "bias": np.ones(8, np.float32)},      # bias C*m: depthwise
        "conv_dw_2": {"kernel": k},                                    # bias-free, named so
        "conv3": {"kernel": k},                                        # a plain Conv2D
        "conv4": {"kernel": k[:, :, :1], "bias": np.ones(2, np.float32)}})  # C = 1: alike
    from transcoder.rules.plan import plan_to_torch

    with read(tmp_path / "w.h5") as ckpt:
        plan = plan_to_torch(ckpt)
        assert {n: layer.rule for n, layer in plan.layers.items()} == {
            "block1": "DepthwiseConv2d", "conv_dw_2": "DepthwiseConv2d", "conv3": "Conv2d",
            "conv4": "Conv2d"}
        out = plan.apply(ckpt)
        assert out["block1.weight"].shape == (8, 1, 3, 3)
        assert out["conv3.weight"].shape == (2, 4, 3, 3)
        report = check_layers(ckpt, plan)
    assert [e.status for e in report.entries] == [SUCCESS] * 4


RULES = """
[[layer]]
match = "sep"
kind = "SeparableConv2d"
depth_multiplier = 2
[[layer]]
match = "dw"
kind = "DepthwiseConv2d"
depth_multiplier = 3
[[layer]]
match = "sep_nb"
kind = "SeparableConv2d"
depth_multiplier = 1
"""


def test_rules_write_the_keras_layout_without_the_keras_model(tmp_path, cli):
    """--rules states the kinds: the .h5 holds SeparableConv2D/DepthwiseConv2D weights, loads by
    name into the Keras model, each layer is checked, and the way back is bit-exact."""
    src = make_fixtures.write_keras_model(tmp_path, "separable_net_2d", ".keras")
    assert cli(src, tmp_path / "m.pt")[0] == 0
    (tmp_path / "rules.toml").write_text(RULES)
    code, out, err = cli(tmp_path / "m.pt", tmp_path / "m.h5", "--rules", tmp_path / "rules.toml")
    assert code == 0, err
    assert "SUCCESS\tsep\tSeparableConv2d -> SeparableConv2D" in out
    assert "SUCCESS\tdw\tDepthwiseConv2d -> DepthwiseConv2D" in out
    model = keras_twins.separable_net_2d()
    model.load_weights(tmp_path / "m.h5", by_name=True)
    assert_same_weights(model_weights(keras.models.load_model(src)), model_weights(model))
    assert cli(tmp_path / "m.h5", tmp_path / "back.pt")[0] == 0
    original, back = (torch.load(tmp_path / p, weights_only=True) for p in ("m.pt", "back.pt"))
    assert list(back) == list(original)
    for k in original:
        assert_bit_exact(back[k].numpy(), original[k].numpy(), k)


def test_a_depthwise_without_its_multiplier_is_refused(tmp_path, cli):
    torch.save({"dw.weight": torch.zeros(8, 1, 3, 3)}, tmp_path / "m.pt")
    (tmp_path / "r.toml").write_text('[[layer]]\nmatch = "dw"\nkind = "DepthwiseConv2d"\n')
    code, _, err = cli(tmp_path / "m.pt", tmp_path / "m.h5", "--rules", tmp_path / "r.toml")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "dw.weight" in err and "depth_multiplier" in err
    assert not (tmp_path / "m.h5").exists()


def test_the_layer_check_fails_a_wrong_depthwise_layout(monkeypatch, tmp_path):
    """C and m swapped in the depthwise kernel: the check fails where a guess would pass."""
    src = make_fixtures.write_keras_model(tmp_path, "separable_net_2d", ".h5")

    op = type(registry.TABLE.by_name("DepthwiseConv2d").params[0].op)
    original = op.inverse

    def swapped(self, ys):
        return original(self, [np.ascontiguousarray(np.swapaxes(ys[0], -1, -2))])
    monkeypatch.setattr(op, "inverse", swapped)
    with read(src) as ckpt:
        report = check_layers(ckpt)
    status = {e.name: e.status for e in report.entries}
    assert status["dw"] == FAIL and status["sep"] == FAIL and status["fc"] == SUCCESS


# ---------------------------------------------------------------- PReLU with shared_axes

@pytest.fixture(scope="module")
def face(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("face")
    return tmp, [make_fixtures.write_keras_model(tmp, "face_prelu", s) for s in (".h5", ".keras")]


@pytest.mark.parametrize("which", [0, 1], ids=[".h5", ".keras"])
def test_keras_prelu_with_shared_axes_to_pytorch_and_back(face, which, cli):
    tmp, files = face
    src = files[which]
    code, out, err = cli(src, tmp / f"face{which}.pt", "--force")
    assert code == 0, err
    assert "SUCCESS\tprelu1\tPReLU -> PReLU" in out                  # checked, not skipped
    module = load_torch(models.FacePReLU, tmp / f"face{which}.pt")   # alpha back to (C,)
    assert module.prelu1.weight.shape == (10,)
    x = np.random.default_rng(2).standard_normal((3, 3, 12, 12)).astype(np.float32)
    reference = keras.models.load_model(src, compile=False)
    assert_close(run_torch(module, x), np.asarray(reference(np.moveaxis(x, 1, -1))), RTOL, ATOL)
    for back in ("back.h5", "back.weights.h5"):
        code, _, err = cli(tmp / f"face{which}.pt", tmp / back, "--force", "--keras-model",
                           f"{TWINS}:face_prelu")
        assert code == 0, err
        twin = keras_twins.face_prelu()
        twin.load_weights(tmp / back, **({"by_name": True} if back == "back.h5" else {}))
        assert_same_weights(model_weights(reference), model_weights(twin))


def test_rules_keras_shape_is_written_and_checked(tmp_path, cli):
    torch.manual_seed(0)
    torch.save({"act.weight": torch.rand(6)}, tmp_path / "p.pt")
    (tmp_path / "r.toml").write_text('[[layer]]\nmatch = "act"\nkind = "PReLU"\n'
                                     'keras_shape = [1, 1, 6]\n')
    code, out, err = cli(tmp_path / "p.pt", tmp_path / "p.h5", "--rules", tmp_path / "r.toml")
    assert code == 0, err
    assert "SUCCESS\tact\tPReLU -> PReLU" in out and "(2, 6, 3, 4)" in out
    with h5py.File(tmp_path / "p.h5") as f:
        assert f["act/act/alpha"].shape == (1, 1, 6)
    assert cli(tmp_path / "p.h5", tmp_path / "back.pt")[0] == 0
    assert torch.load(tmp_path / "back.pt", weights_only=True)["act.weight"].shape == (6,)


def test_a_keras_prelu_varying_along_two_axes_is_refused(tmp_path, cli):
    _weights_only_h5(tmp_path / "p.h5", {"prelu": {"alpha": np.ones((1, 5, 6), np.float32)}})
    code, _, err = cli(tmp_path / "p.h5", tmp_path / "p.pt")
    assert code == 2 and "prelu" in err and "[1, 5, 6]" in err and "shared_axes" in err
    assert not (tmp_path / "p.pt").exists()


def test_the_rebuild_with_prelu_and_ceil_pooling_is_checked_and_comes_back(tmp_path, cli):
    """The MTCNN-like stem: PReLU (alpha (1, 1, C) in the rebuild) and ceil_mode pooling;
    .pt -> .keras (rebuilt) -> .pt restores every tensor bit for bit."""
    src = make_fixtures.write_ceil_pool(tmp_path)
    spec = ["--model", f"{MODELS}:CeilPoolNet", "--input-shape", "2,3,23,17"]
    code, out, err = cli(src, tmp_path / "stem.keras", *spec)
    assert code == 0, err
    assert "check passed" in out
    module = load_torch(models.CeilPoolNet, src)
    model = keras.models.load_model(tmp_path / "stem.keras")
    assert model.get_layer("prelu1").get_weights()[0].shape == (1, 1, 8)
    x = np.random.default_rng(3).standard_normal((3, 3, 23, 17)).astype(np.float32)
    assert_close(np.asarray(model(x)), run_torch(module, x), RTOL, ATOL, "stem")
    code, _, err = cli(tmp_path / "stem.keras", tmp_path / "back.pt", *spec)
    assert code == 0, err
    original, back = torch.load(src, weights_only=True), torch.load(tmp_path / "back.pt",
                                                                      weights_only=True)
    for k in original:
        assert_bit_exact(back[k].numpy(), original[k].numpy(), k)


# ---------------------------------------------------------------- Keras 2 CuDNNLSTM / CuDNNGRU

def tf_keras_loads(weights: list[np.ndarray], gates: int) -> list[np.ndarray]:
    """tf.keras' ``_convert_rnn_weights`` (legacy hdf5_format), cuDNN -> LSTM/GRU, transcribed
    here on its own: the reference the conversion is measured against."""
    def transform_kernels(kernels, func):
        return np.hstack([func(k) for k in np.hsplit(kernels, gates)])
    kernel = transform_kernels(weights[0], lambda k: k.T.reshape(k.shape, order="F"))
    recurrent = transform_kernels(weights[1], lambda k: k.T)
    bias = np.sum(np.split(weights[2], 2, axis=0), axis=0) if gates == 4 \
        else np.array(weights[2]).reshape((2, -1))
    return [kernel, recurrent, bias]


def keras_reference(path) -> object:
    """The Keras 3 model tf.keras makes of the cuDNN file: LSTM/GRU loaded as tf.keras does."""
    model = keras_twins.char_rnn()
    with h5py.File(path) as f:
        for name, layer in ((n, model.get_layer(n)) for _, n, _, v in make_fixtures.CUDNN_LAYERS
                            if v):
            group = f["model_weights"][name]
            values = [np.asarray(group[w.decode()]) for w in group.attrs["weight_names"]]
            gates = {"LSTM": 4, "GRU": 3}.get(type(getattr(layer, "forward_layer", layer)).__name__)
            if gates:
                values = [v for i in range(0, len(values), 3)
                          for v in tf_keras_loads(values[i:i + 3], gates)]
            layer.set_weights(values)
    return model


@pytest.fixture(scope="module")
def cudnn_file(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cudnn")
    return tmp, make_fixtures.write_cudnn_h5(tmp)


def test_cudnn_file_to_pytorch_computes_what_tf_keras_loads(cudnn_file, cli):
    tmp, src = cudnn_file
    code, out, err = cli(src, tmp / "char.pt", "--force")
    assert code == 0, err
    for layer in ("cu_dnnlstm_1\tCuDNNLSTM", "bidirectional_1\tCuDNNLSTM", "cu_dnngru_1\tCuDNNGRU"):
        assert f"SUCCESS\t{layer}" in out
    state = torch.load(tmp / "char.pt", weights_only=True)
    assert state["cu_dnnlstm_1.bias_ih_l0"].shape == (32,)            # not (64,)
    tokens = np.random.default_rng(4).integers(0, 20, (5, 7))
    expected = np.asarray(keras_reference(src)(tokens))
    assert_close(run_torch(load_torch(models.CharRNN, tmp / "char.pt"), tokens), expected,
                 RTOL, ATOL, "char rnn")


def test_cudnn_through_pytorch_to_keras_lstm_and_back_to_cudnn(cudnn_file, cli):
    """.pt -> .h5 writes LSTM/GRU that load by name into the Keras 3 model; with --rules the
    cuDNN layout is written again, bit for bit the original datasets."""
    tmp, src = cudnn_file
    assert cli(src, tmp / "c.pt", "--force")[0] == 0
    assert cli(tmp / "c.pt", tmp / "lstm.h5", "--force")[0] == 0
    model = keras_twins.char_rnn()
    model.load_weights(tmp / "lstm.h5", by_name=True)
    tokens = np.random.default_rng(5).integers(0, 20, (4, 7))
    assert_close(np.asarray(model(tokens)), np.asarray(keras_reference(src)(tokens)), RTOL, ATOL)
    (tmp / "r.toml").write_text("".join(
        f'[[layer]]\nmatch = "{m}"\nkind = "{k}"\n' for m, k in (
            ("cu_dnnlstm_1", "CuDNNLSTM"), ("bidirectional_1", "CuDNNLSTM"),
            ("cu_dnngru_1", "CuDNNGRU"))))
    code, out, err = cli(tmp / "c.pt", tmp / "cudnn.h5", "--force", "--rules", tmp / "r.toml")
    assert code == 0, err
    assert "SUCCESS\tcu_dnngru_1\tCuDNNGRU -> CuDNNGRU" in out
    with h5py.File(src) as a, h5py.File(tmp / "cudnn.h5") as b:
        for _, name, _, variables in make_fixtures.CUDNN_LAYERS:
            group = a["model_weights"][name]
            for w, _ in variables:
                ours = b[name][f"{name}/{w.replace('_cu_dnnlstm_2', '')}"]
                assert_bit_exact(np.asarray(ours), np.asarray(group[f"{name}/{w}:0"]), w)


def test_a_cudnn_bias_under_an_lstm_class_is_refused(tmp_path, cli):
    src = make_fixtures.write_cudnn_h5(tmp_path)
    with h5py.File(src, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        config["config"]["layers"][1]["class_name"] = "LSTM"
        f.attrs["model_config"] = json.dumps(config).encode()
    code, _, err = cli(src, tmp_path / "x.pt")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "cu_dnnlstm_1" in err and "[32]" in err and "CuDNNLSTM" in err
    assert not (tmp_path / "x.pt").exists()


def test_a_cudnn_layout_is_recognised_by_its_bias_when_the_class_is_unknown(tmp_path):
    rng = np.random.default_rng(6)
    _weights_only_h5(tmp_path / "w.h5", {
        "rnn": {"kernel": rng.standard_normal((5, 32), dtype=np.float32),
                "recurrent_kernel": rng.standard_normal((8, 32), dtype=np.float32),
                "bias": rng.standard_normal(64, dtype=np.float32)},
        "gru": {"kernel": rng.standard_normal((8, 18), dtype=np.float32),
                "recurrent_kernel": rng.standard_normal((6, 18), dtype=np.float32),
                "bias": rng.standard_normal(36, dtype=np.float32)}})
    with read(tmp_path / "w.h5") as ckpt:
        report = check_layers(ckpt)
    assert [(e.name, e.extra["rule"], e.status) for e in report.entries] == [
        ("rnn", "CuDNNLSTM", SUCCESS), ("gru", "CuDNNGRU", SUCCESS)]


def test_the_layer_check_fails_a_wrong_cudnn_block_layout(monkeypatch, cudnn_file):
    """Kernel blocks transposed instead of read in place (the plain LSTM layout): FAIL."""
    _, src = cudnn_file
    family = registry.TABLE.by_name("CuDNNGRU")
    wrong = replace(family.params[0], op=registry.TABLE.by_name("GRU").params[0].op)
    monkeypatch.setattr(registry, "TABLE", registry.TABLE.replaced(
        "CuDNNGRU", params=(wrong, *family.params[1:])))
    with read(src) as ckpt:
        report = check_layers(ckpt)
    status = {e.name: e.status for e in report.entries}
    assert status["cu_dnngru_1"] == FAIL and status["cu_dnnlstm_1"] == SUCCESS
