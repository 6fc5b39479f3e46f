"""Recurrent (LSTM, GRU, RNN and cells) and attention (MultiheadAttention) rules, checked against
Keras 3.15 numerically in both directions, plus bit-exact round trips through stored plans.

Everything goes through the Checkpoint / plan API (``make_plan``, ``plan.apply``); one test
writes a legacy .h5 and loads it into a Keras twin by layer name.
"""
from __future__ import annotations

import re

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from dataclasses import dataclass, field  # noqa: E402

import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
torch = pytest.importorskip("torch", reason="needs torch: pip install '.[check]'")  # noqa: E402
from torch import nn  # noqa: E402

from conftest import assert_bit_exact, assert_close, to_numpy  # noqa: E402
from transcoder.checkpoint import LAYOUT_KERAS, LAYOUT_TORCH, Checkpoint, TensorRef  # noqa: E402
from transcoder.errors import AmbiguousError, MappingError, UnsupportedError  # noqa: E402
from transcoder.rules import UserRules, make_plan  # noqa: E402
from transcoder.rules.ops import op_from_spec  # noqa: E402
from transcoder.rules.user import LayerHint  # noqa: E402

keras = pytest.importorskip("keras")
L = keras.layers
RTOL, ATOL = 1e-5, 1e-5
B, T, I, H = 2, 5, 3, 4   # batch, time steps, input width, hidden size (I != H catches swaps)


def torch_ckpt(module: nn.Module, path: str, meta: dict | None = None) -> Checkpoint:
    tensors = {f"{path}.{k}" if path else k: to_numpy(v) for k, v in module.state_dict().items()}
    return Checkpoint({k: TensorRef.from_array(k, v) for k, v in tensors.items()}, LAYOUT_TORCH,
                      meta=dict(meta or {}))


def to_keras(ckpt: Checkpoint, user: UserRules | None = None):
    plan = make_plan(ckpt, LAYOUT_KERAS, user)
    return plan, plan.apply(ckpt)


def set_keras_weights(model, kc: Checkpoint) -> None:
    for entry in kc.meta["keras_layers"]:
        layer = model.get_layer(entry["name"])
        layer.set_weights([kc[f"{entry['name']}/{w}"].load() for w in entry["weights"]])


def long_paths(layer) -> list[str]:
    """Keras' own weight paths below the layer: ``seq/rnn.l0/forward_lstm/lstm_cell/kernel`` ->
    ``forward_lstm/lstm_cell/kernel``."""
    out = []
    for w in layer.weights:
        parts = w.path.split("/")
        out.append("/".join(parts[len(parts) - parts[::-1].index(layer.name):]))
    return out


def short_paths(layer) -> list[str]:
    """Keras' own weight paths in the checkpoint convention: ``forward_lstm/lstm_cell/kernel`` ->
    ``forward/kernel``, ``lstm_cell/kernel`` -> ``kernel``, ``query/kernel`` unchanged."""
    out = []
    for path in long_paths(layer):
        parts = [p for p in path.split("/") if not p.endswith("_cell")]
        parts[0] = parts[0].split("_")[0] if parts[0].startswith(("forward_", "backward_")) else parts[0]
        out.append("/".join(parts))
    return out


def keras_ckpt(model, long: bool = False, classes: bool = True) -> Checkpoint:
    """What a reader makes of a Keras-written file: ``<layer>/<weight path>`` + keras_layers."""
    tensors, layers = {}, []
    for layer in model.layers:
        if not layer.weights:
            continue
        paths = long_paths(layer) if long else short_paths(layer)
        for p, value in zip(paths, layer.get_weights()):
            tensors[f"{layer.name}/{p}"] = TensorRef.from_array(f"{layer.name}/{p}", value)
        layers.append({"name": layer.name, "weights": paths,
                       "class_name": type(layer).__name__ if classes else None})
    return Checkpoint(tensors, LAYOUT_KERAS, meta={"keras_layers": layers})


def randomize_keras(model, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        layer.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in layer.get_weights()])


def load_torch(module: nn.Module, tc: Checkpoint, path: str) -> None:
    from transcoder.frameworks import torch_from_numpy
    state = {k[len(path) + 1:]: torch_from_numpy(tc[k].load()) for k in tc.tensors}
    module.load_state_dict(state, strict=True)


# ------------------------------------------------------------------ recurrent layers

@dataclass
class Rnn:
    family: str                 # LSTM, GRU, RNN
    layers: int = 1
    bidirectional: bool = False
    bias: bool = True
    nonlinearity: str = "tanh"
    id: str = field(default="", init=False)

    def __post_init__(self) -> None:
        self.id = (f"{self.family}-{self.layers}l{'-bi' if self.bidirectional else ''}"
                   f"{'' if self.bias else '-nobias'}{'-relu' if self.nonlinearity == 'relu' else ''}")

    def torch(self) -> nn.Module:
        extra = {"nonlinearity": self.nonlinearity} if self.family == "RNN" else {}
        torch.manual_seed(3)
        return getattr(nn, self.family)(I, H, self.layers, bias=self.bias, batch_first=True,
                                        bidirectional=self.bidirectional, **extra).eval()

    def keras_cell(self, **name):
        make = {"LSTM": lambda: L.LSTM(H, return_sequences=True, use_bias=self.bias, **name),
                "GRU": lambda: L.GRU(H, return_sequences=True, use_bias=self.bias, reset_after=True,
                                     **name),
                "RNN": lambda: L.SimpleRNN(H, return_sequences=True, use_bias=self.bias,
                                           activation=self.nonlinearity, **name)}
        return make[self.family]()

    def keras(self, path: str):
        names = [path] if self.layers == 1 else [f"{path}.l{k}" for k in range(self.layers)]
        layers = [L.Bidirectional(self.keras_cell(), name=n) if self.bidirectional
                  else self.keras_cell(name=n) for n in names]
        return keras.Sequential([keras.Input((T, I))] + layers)


RNN_CASES = [Rnn("LSTM"), Rnn("LSTM", 2, True), Rnn("LSTM", bias=False), Rnn("LSTM", 3),
             Rnn("GRU"), Rnn("GRU", 2, True), Rnn("GRU", bias=False),
             Rnn("RNN"), Rnn("RNN", nonlinearity="relu"), Rnn("RNN", 2, True, nonlinearity="relu")]


def inputs(shape=(B, T, I), seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def torch_out(module: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x))[0].numpy()


@pytest.mark.parametrize("case", RNN_CASES, ids=lambda c: c.id)
def test_recurrent_torch_to_keras_computes_the_same(case):
    module, x = case.torch(), inputs()
    plan, kc = to_keras(torch_ckpt(module, "rnn"))
    twin = case.keras("rnn")
    for entry in kc.meta["keras_layers"]:  # our weight order is Keras' own
        assert entry["weights"] == short_paths(twin.get_layer(entry["name"])), entry["name"]
        assert entry["class_name"] == ("Bidirectional" if case.bidirectional
                                       else {"RNN": "SimpleRNN"}.get(case.family, case.family))
    set_keras_weights(twin, kc)
    assert_close(np.asarray(twin(x)), torch_out(module, x), RTOL, ATOL, case.id)


@pytest.mark.parametrize("case", RNN_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("long_paths", [False, True], ids=["short", "keras-paths"])
def test_keras_written_recurrent_loads_strictly_into_torch(case, long_paths):
    twin = case.keras("rnn")
    randomize_keras(twin)
    kc = keras_ckpt(twin, long=long_paths, classes=not long_paths)
    tc = make_plan(kc, LAYOUT_TORCH).apply(kc)
    module = case.torch()
    load_torch(module, tc, "rnn")
    assert list(tc.tensors) == [f"rnn.{k}" for k in module.state_dict()]  # PyTorch's own order
    x = inputs(seed=2)
    assert_close(torch_out(module, x), np.asarray(twin(x)), RTOL, ATOL, case.id)


@pytest.mark.parametrize("family", ["LSTM", "GRU", "RNN"])
def test_cells_map_to_the_keras_layer_of_their_kind(family):
    torch.manual_seed(4)
    cell = getattr(nn, f"{family}Cell")(I, H).eval()
    plan, kc = to_keras(torch_ckpt(cell, "cell"))
    twin = Rnn(family).keras("cell")
    assert kc.meta["keras_layers"][0]["weights"] == short_paths(twin.get_layer("cell"))
    set_keras_weights(twin, kc)
    x = inputs()
    h = torch.zeros(B, H)
    state = (h, torch.zeros(B, H)) if family == "LSTM" else h
    outs = []
    with torch.no_grad():
        for t in range(T):
            state = cell(torch.from_numpy(x[:, t]), state)
            outs.append((state[0] if family == "LSTM" else state).numpy())
    assert_close(np.asarray(twin(x)), np.stack(outs, 1), RTOL, ATOL, f"{family}Cell")


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16, np.float64])
@pytest.mark.parametrize("case", [Rnn("LSTM", 2, True), Rnn("GRU", 2, True), Rnn("RNN", 2, True)],
                         ids=lambda c: c.id)
def test_recurrent_round_trip_is_bit_exact(case, dtype):
    module = case.torch()
    src = torch_ckpt(module, "enc.rnn")
    src = Checkpoint({k: TensorRef.from_array(k, r.load().astype(dtype)) for k, r in src.tensors.items()},
                     LAYOUT_TORCH)
    _, kc = to_keras(src)
    back_plan = make_plan(kc, LAYOUT_TORCH)
    back = back_plan.apply(kc)
    assert list(back.tensors) == list(src.tensors)
    for name, ref in src.tensors.items():
        assert_bit_exact(back[name].load(), ref.load(), name)
    assert back_plan.notes == []
    assert all(op_from_spec(s.op.spec()) == s.op for s in back_plan.steps)


def test_lstm_bias_pair_is_carried_and_summed():
    module = Rnn("LSTM", 2).torch()
    plan, kc = to_keras(torch_ckpt(module, "rnn"))
    sd = module.state_dict()
    assert set(plan.carried) == {f"rnn.bias_{g}_l{k}" for g in ("ih", "hh") for k in (0, 1)}
    assert_bit_exact(kc["rnn.l1/bias"].load(), to_numpy(sd["bias_ih_l1"] + sd["bias_hh_l1"]))
    assert [e["name"] for e in kc.meta["keras_layers"]] == ["rnn.l0", "rnn.l1"]
    assert kc.meta["keras_layers"][0]["weights"] == ["kernel", "recurrent_kernel", "bias"]


def test_lstm_bias_changed_in_keras_goes_to_bias_ih_with_a_note():
    module = Rnn("LSTM").torch()
    _, kc = to_keras(torch_ckpt(module, "rnn"))
    new_bias = kc["rnn/bias"].load() + np.float32(0.25)  # fine-tuned in Keras
    kc.tensors["rnn/bias"] = TensorRef.from_array("rnn/bias", new_bias)
    plan = make_plan(kc, LAYOUT_TORCH)
    back = plan.apply(kc)
    assert_bit_exact(back["rnn.bias_ih_l0"].load(), new_bias)
    assert_bit_exact(back["rnn.bias_hh_l0"].load(), np.zeros_like(new_bias))
    assert any("rnn.bias_ih_l0" in n and "no longer sums" in n for n in plan.notes), plan.notes


def test_keras_written_lstm_note_says_bias_hh_is_zero():
    twin = Rnn("LSTM").keras("rnn")
    randomize_keras(twin)
    plan = make_plan(keras_ckpt(twin), LAYOUT_TORCH)
    assert any("rnn.bias_hh_l0 zeros" in n for n in plan.notes), plan.notes


def test_keras_gru_without_bias_notes_the_reset_after_assumption():
    twin = keras.Sequential([keras.Input((T, I)), L.GRU(H, use_bias=False, name="g")])
    plan = make_plan(keras_ckpt(twin), LAYOUT_TORCH)
    assert len(plan.notes) == 1 and "reset_after=True" in plan.notes[0]


@pytest.mark.parametrize("classes", [True, False], ids=["class", "inferred"])
def test_keras_gru_without_reset_after_is_refused(classes):
    twin = keras.Sequential([keras.Input((T, I)), L.GRU(H, reset_after=False, name="old_gru")])
    kc = keras_ckpt(twin, classes=classes)
    with pytest.raises(UnsupportedError, match="old_gru.*reset_after=False"):
        make_plan(kc, LAYOUT_TORCH)


@pytest.mark.parametrize("layer, why", [
    (lambda: L.GRU(H, reset_after=False, name="twin"), "reset_after=False"),
    (lambda: L.Bidirectional(L.GRU(H, reset_after=False), name="twin"), "reset_after=False"),
    (lambda: L.LSTM(H, recurrent_activation="hard_sigmoid", name="twin"),
     "recurrent_activation='hard_sigmoid'")])
def test_a_keras_model_twin_pytorch_cannot_compute_is_refused(layer, why):
    """--keras-model: the family's ``computable`` refuses a live layer as it refuses a file's
    config (the GRU refusal was written twice; an LSTM with hard_sigmoid gates got through)."""
    from transcoder.models.keras_side import LayerInfo, pair

    twin = keras.Sequential([keras.Input((T, I)), layer()])
    live = twin.get_layer("twin")
    theirs = [LayerInfo("twin", type(live).__name__, [w.path for w in live.weights],
                        [tuple(w.shape) for w in live.weights], live)]
    with pytest.raises(UnsupportedError, match=f"'twin'.*{re.escape(why)}"):
        pair([], theirs)


@pytest.mark.parametrize("case, kind", [(Rnn("LSTM", 2, True), "LSTM"), (Rnn("GRU"), "GRU"),
                                        (Rnn("RNN"), "SimpleRNN")], ids=lambda v: getattr(v, "id", v))
def test_recurrent_kinds_are_inferred_from_names_and_gate_multiples(case, kind):
    plan, _ = to_keras(torch_ckpt(case.torch(), "seq"))
    expected = "Bidirectional" if case.bidirectional else kind
    assert {layer.class_name for layer in plan.layers.values()} == {expected}
    assert ("tanh" in " ".join(plan.notes)) == (case.family == "RNN")


def test_rnn_activation_note_is_silenced_by_known_nonlinearity():
    module = Rnn("RNN", nonlinearity="relu").torch()
    plan, _ = to_keras(torch_ckpt(module, "rnn", {"module_kinds": {"rnn": "RNN"},
                                                  "module_options": {"rnn": {"nonlinearity": "relu"}}}))
    assert plan.notes == []


def test_lstm_with_projection_is_refused_with_the_tensor_name():
    module = nn.LSTM(I, H, proj_size=2)
    with pytest.raises(UnsupportedError, match="proj_size") as err:
        to_keras(torch_ckpt(module, "rnn"))
    assert "rnn.weight_hr_l0" in str(err.value)


def test_a_hint_that_does_not_fit_the_gates_names_the_tensor():
    user = UserRules((LayerHint("rnn", "GRU"),))
    with pytest.raises(MappingError, match="rnn.weight_hh_l0"):
        to_keras(torch_ckpt(Rnn("LSTM").torch(), "rnn"), user)


# ------------------------------------------------------------------ multi-head attention

@dataclass
class Mha:
    id: str
    embed: int = 8
    heads: int = 2
    bias: bool = True
    kdim: int | None = None
    vdim: int | None = None

    def torch(self) -> nn.MultiheadAttention:
        torch.manual_seed(5)
        m = nn.MultiheadAttention(self.embed, self.heads, bias=self.bias, kdim=self.kdim,
                                  vdim=self.vdim, batch_first=True).eval()
        with torch.no_grad():  # the biases start at zero: make them count
            for p in m.parameters():
                p.copy_(torch.randn_like(p) * 0.3)
        return m

    def keras(self, name: str):
        q = keras.Input((T, self.embed))
        k = keras.Input((T + 1, self.kdim or self.embed))
        v = keras.Input((T + 1, self.vdim or self.embed))
        mha = L.MultiHeadAttention(self.heads, self.embed // self.heads, use_bias=self.bias, name=name)
        return keras.Model([q, k, v], mha(q, v, key=k))

    def inputs(self, seed: int = 1):
        return [inputs((B, T, self.embed), seed), inputs((B, T + 1, self.kdim or self.embed), seed + 1),
                inputs((B, T + 1, self.vdim or self.embed), seed + 2)]


MHA_CASES = [Mha("packed"), Mha("no-bias", bias=False), Mha("kdim-vdim", kdim=3, vdim=5),
             Mha("kdim-vdim-no-bias", bias=False, kdim=6, vdim=3), Mha("4-heads", 12, 4)]
HEADS = lambda n: UserRules((LayerHint("attn", "MultiheadAttention", {"num_heads": n}),))  # noqa: E731


def torch_mha(module, xs) -> np.ndarray:
    with torch.no_grad():
        return module(*(torch.from_numpy(x) for x in xs), need_weights=False)[0].numpy()


@pytest.mark.parametrize("case", MHA_CASES, ids=lambda c: c.id)
def test_attention_torch_to_keras_computes_the_same(case):
    module = case.torch()
    plan, kc = to_keras(torch_ckpt(module, "attn"), HEADS(case.heads))
    twin = case.keras("attn")
    (entry,) = kc.meta["keras_layers"]
    assert entry["class_name"] == "MultiHeadAttention"
    assert entry["weights"] == short_paths(twin.get_layer("attn"))  # Keras' own order
    assert plan.carried == []
    set_keras_weights(twin, kc)
    xs = case.inputs()
    assert_close(np.asarray(twin(xs)), torch_mha(module, xs), RTOL, ATOL, case.id)


@pytest.mark.parametrize("case", MHA_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("classes", [True, False], ids=["class", "inferred"])
def test_keras_written_attention_loads_strictly_into_torch(case, classes):
    twin = case.keras("attn")
    randomize_keras(twin)
    kc = keras_ckpt(twin, classes=classes)
    tc = make_plan(kc, LAYOUT_TORCH).apply(kc)
    module = case.torch()
    load_torch(module, tc, "attn")
    xs = case.inputs(seed=4)
    assert_close(torch_mha(module, xs), np.asarray(twin(xs)), RTOL, ATOL, case.id)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16])
@pytest.mark.parametrize("case", MHA_CASES[:3], ids=lambda c: c.id)
def test_attention_round_trip_is_bit_exact(case, dtype):
    src = torch_ckpt(case.torch(), "attn")
    src = Checkpoint({k: TensorRef.from_array(k, r.load().astype(dtype)) for k, r in src.tensors.items()},
                     LAYOUT_TORCH)
    _, kc = to_keras(src, HEADS(case.heads))
    back = make_plan(kc, LAYOUT_TORCH).apply(kc)
    assert list(back.tensors) == list(src.tensors)
    for name, ref in src.tensors.items():
        assert_bit_exact(back[name].load(), ref.load(), name)


def test_attention_without_head_count_says_how_to_give_it():
    with pytest.raises(AmbiguousError) as err:
        to_keras(torch_ckpt(Mha("x").torch(), "enc.attn"))
    message = str(err.value)
    assert "[[layer]]" in message and 'match = "enc.attn"' in message and "num_heads" in message
    assert "\n" not in message


def test_attention_head_count_from_module_options():
    meta = {"module_options": {"attn": {"num_heads": 2}}}
    plan, kc = to_keras(torch_ckpt(Mha("x").torch(), "attn", meta))
    assert kc["attn/query/kernel"].shape == (8, 2, 4)


def test_attention_with_add_bias_kv_is_refused():
    module = nn.MultiheadAttention(8, 2, add_bias_kv=True)
    with pytest.raises(UnsupportedError, match="attn.bias_k"):
        to_keras(torch_ckpt(module, "attn"), HEADS(2))


def test_keras_attention_torch_cannot_hold_is_refused():
    q = keras.Input((T, 8))
    out = L.MultiHeadAttention(2, 3, name="wide")(q, q)  # key_dim 3 != 8 / 2
    with pytest.raises(UnsupportedError, match="wide"):
        make_plan(keras_ckpt(keras.Model(q, out)), LAYOUT_TORCH)


def test_transformer_encoder_layer_maps_completely_and_computes_the_same():
    torch.manual_seed(6)
    E, F = 8, 16
    enc = nn.TransformerEncoderLayer(E, 2, F, dropout=0.0, batch_first=True).eval()
    plan, kc = to_keras(torch_ckpt(enc, ""),
                        UserRules((LayerHint("self_attn", "MultiheadAttention", {"num_heads": 2}),)))
    assert plan.carried == []
    assert {n: layer.class_name for n, layer in plan.layers.items()} == {
        "self_attn": "MultiHeadAttention", "linear1": "Dense", "linear2": "Dense",
        "norm1": "LayerNormalization", "norm2": "LayerNormalization"}
    x = keras.Input((T, E))
    a = L.MultiHeadAttention(2, E // 2, name="self_attn")(x, x)
    h = L.LayerNormalization(epsilon=1e-5, name="norm1")(x + a)
    f = L.Dense(E, name="linear2")(L.Dense(F, activation="relu", name="linear1")(h))
    twin = keras.Model(x, L.LayerNormalization(epsilon=1e-5, name="norm2")(h + f))
    set_keras_weights(twin, kc)
    xs = inputs((B, T, E))
    with torch.no_grad():
        expected = enc(torch.from_numpy(xs)).numpy()
    assert_close(np.asarray(twin(xs)), expected, RTOL, ATOL, "TransformerEncoderLayer")


# ------------------------------------------------------------------ listing and files

def test_rules_listing_shows_recurrent_and_attention_families():
    from transcoder.cli.tables import rule_rows
    rules = {row["rule"] for row in rule_rows()}
    assert {"LSTM", "GRU", "RNN", "MultiheadAttention"} <= rules


def test_legacy_h5_loads_by_name_into_bidirectional_two_layer_lstm(tmp_path):
    keras_h5 = pytest.importorskip("transcoder.formats.keras_h5")
    case = Rnn("LSTM", 2, True)
    module = case.torch()
    src = torch_ckpt(module, "rnn")
    _, kc = to_keras(src)
    keras_h5.write(kc, tmp_path / "m.h5")
    twin = case.keras("rnn")
    twin.load_weights(tmp_path / "m.h5", by_name=True)
    x = inputs()
    assert_close(np.asarray(twin(x)), torch_out(module, x), RTOL, ATOL, "h5 by name")
    from transcoder.formats import ReadOptions
    with keras_h5.read(tmp_path / "m.h5", ReadOptions()) as back_kc:
        back = make_plan(back_kc, LAYOUT_TORCH).apply(back_kc)
        assert list(back.tensors) == list(src.tensors)
        for name, ref in src.tensors.items():
            assert_bit_exact(back[name].load(), ref.load(), name)
