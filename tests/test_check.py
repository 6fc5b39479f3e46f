"""The forward check: tolerances and statuses, the per-layer check of weights-only conversions
(and that it catches a sabotaged rule), the full-model check with hand-written Keras twins
(and that it names the layer that diverges), and the JSON / JUnit / terminal reports.
"""
from __future__ import annotations

import io
import json
import os
import xml.etree.ElementTree as ET
from dataclasses import replace

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
torch = pytest.importorskip("torch", reason="needs torch: pip install '.[check]'")  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from conftest import FRAMEWORKS, assert_imports_none_of, to_numpy  # noqa: E402
from models import Encoder  # noqa: E402  (fixtures/models.py)
from transcoder.checks import (FAIL, INACCURATE, NOT_CHECKED, SKIPPED, SUCCESS,  # noqa: E402
                               CheckReport,
                               check_layers, check_models, compare, default_tolerance, print_table)
from transcoder.models.inputs import (InputSpec, embedding_ranges, make_inputs,  # noqa: E402
                                      parse_input_specs)
from transcoder.checkpoint import LAYOUT_KERAS, LAYOUT_TORCH, Checkpoint, TensorRef  # noqa: E402
from transcoder.errors import CheckFailed, UsageError  # noqa: E402
from transcoder.models.torch_side import module_kinds, module_options  # noqa: E402
from transcoder.rules import make_plan, registry  # noqa: E402
from transcoder.rules.ops import Permute  # noqa: E402
from transcoder.rules.table import Param  # noqa: E402

keras = pytest.importorskip("keras")
L, ops = keras.layers, keras.ops


def torch_ckpt(module: nn.Module) -> Checkpoint:
    """A weights-only torch-layout checkpoint, with the kinds --model would record."""
    tensors = {k: to_numpy(v) for k, v in module.state_dict().items()}
    return Checkpoint({k: TensorRef.from_array(k, v) for k, v in tensors.items()}, LAYOUT_TORCH,
                      meta={"module_kinds": module_kinds(module),
                            "module_options": module_options(module)})


def keras_target(module: nn.Module) -> Checkpoint:
    src = torch_ckpt(module)
    return make_plan(src, LAYOUT_KERAS).apply(src)


def set_weights(model, kc: Checkpoint) -> None:
    """Load a keras-layout checkpoint (our plan's target) into a twin by layer name."""
    for entry in kc.meta["keras_layers"]:
        model.get_layer(entry["name"]).set_weights(
            [kc[f"{entry['name']}/{w}"].load() for w in entry["weights"]])


def randomize_norms(module: nn.Module, var: tuple[float, float] = (0.5, 2.0)) -> None:
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(*var)
                m.weight.normal_(1, 0.2)
                m.bias.normal_(0, 0.2)


# ------------------------------------------------------------------ compare

def test_compare_uses_absolute_errors_never_signed():
    expected = np.ones((3, 4), np.float32)
    assert compare("x", expected, expected).status == SUCCESS
    far_below = compare("x", expected - 5.0, expected)   # max(a - e) < tol would pass this
    assert far_below.status == FAIL and far_below.max_abs_error == pytest.approx(5.0)
    assert far_below.max_rel_error == pytest.approx(5.0) and far_below.mismatched == 12


def test_compare_statuses_and_tolerance_bound():
    e = np.linspace(-2, 2, 50).astype(np.float32)
    atol, rtol = default_tolerance(np.float32)
    assert (atol, rtol) == (1e-5, 1e-4)
    bound = atol + rtol * np.abs(e)
    assert compare("x", e + 0.9 * bound, e).status == SUCCESS
    inexact = compare("x", e + 5 * bound, e)
    assert inexact.status == INACCURATE and 4 < inexact.worst_ratio < 6
    assert compare("x", e + 20 * bound, e).status == FAIL
    assert compare("x", e + 0.01, e, atol=0.02, rtol=0).status == SUCCESS   # user tolerance
    shape = compare("x", e[:-1], e)
    assert shape.status == FAIL and "shape [49]" in shape.message


def test_compare_nan_and_inf():
    e = np.array([1.0, np.nan, np.inf, -np.inf], np.float32)
    assert compare("x", e.copy(), e).status == SUCCESS           # same NaN and Infs: fine
    a = e.copy()
    a[0] = np.nan
    bad = compare("x", a, e)
    assert bad.status == FAIL and "1 NaN where the reference has none" in bad.message
    flipped = e.copy()
    flipped[2] = -np.inf
    assert compare("x", flipped, e).status == FAIL
    finite = np.nan_to_num(e)
    assert compare("x", finite, e).status == FAIL                 # reference NaN, actual not


def test_default_tolerances_per_dtype():
    import ml_dtypes
    f16, bf16 = default_tolerance(np.float16), default_tolerance(ml_dtypes.bfloat16)
    f32, f64 = default_tolerance(np.float32), default_tolerance(np.float64)
    assert f64 < f32 < f16 <= bf16
    assert default_tolerance(np.int64) == (0.0, 0.0)
    assert compare("ids", np.array([1, 2]), np.array([1, 3])).status == FAIL
    zero = np.zeros(2, ml_dtypes.bfloat16)
    rel = compare("x", zero + np.array([0, 1e-3], ml_dtypes.bfloat16), zero).max_rel_error
    assert rel > 1e30                                             # |a - e| / max(|e|, tiny)


# ------------------------------------------------------------------ per-layer check

class Mixed(nn.Module):
    """Weights only: never run. Non-square kernels and in != out everywhere."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.token_embedding = nn.Embedding(20, 8)
        self.conv1 = nn.Conv1d(8, 12, 3)
        self.conv2 = nn.Conv2d(4, 6, (3, 2))
        self.square = nn.Conv2d(3, 5, 3)
        self.bn1 = nn.BatchNorm1d(12)
        self.ln = nn.LayerNorm(12)
        self.fc = nn.Linear(12, 5)
        self.rnn = nn.LSTM(8, 6, num_layers=2, bidirectional=True)
        self.gru = nn.GRU(12, 7, batch_first=True)
        randomize_norms(self)


def test_layer_check_passes_for_a_mixed_weights_only_checkpoint():
    report = check_layers(torch_ckpt(Mixed()), seed=3)
    statuses = {e.name: e.status for e in report.entries}
    assert statuses == {n: SUCCESS for n in ("token_embedding", "conv1", "conv2", "square", "bn1",
                                             "ln", "fc", "rnn.l0", "rnn.l1", "gru")}
    assert report.passed and report.exit_code == 0 and report.skipped == 0
    worst = max(e.max_abs_error for e in report.entries)
    assert worst < 1e-5
    kinds = {e.name: (e.torch_kind, e.keras_kind) for e in report.entries}
    assert kinds["bn1"] == ("BatchNorm1d", "BatchNormalization")
    assert kinds["rnn.l1"] == ("LSTM", "Bidirectional")


def test_layer_check_of_a_keras_source_replays_the_stored_plan():
    kc = keras_target(Mixed())
    report = check_layers(kc)
    assert report.reference == LAYOUT_KERAS and report.passed, report.summary()
    assert len(report.entries) == 10


def _sabotage(monkeypatch, family: str, rule) -> None:
    monkeypatch.setattr(registry, "TABLE", registry.TABLE.replaced(family, rule))


def _swapped_gru_gates():
    """The GRU family with PyTorch's gate order kept (r, z, n where Keras wants z, r, h)."""
    gru = registry.TABLE.by_name("GRU")
    return replace(gru, params=tuple(replace(p, op=replace(p.op, order=(0, 1, 2)))
                                     for p in gru.params))


def test_layer_check_fails_a_wrong_conv_permutation(monkeypatch):
    conv2d = registry.TABLE.by_name("Conv2d")
    wrong = replace(conv2d, params=(Param("weight", "kernel", Permute((3, 2, 1, 0))),
                                    conv2d.params[1]))       # kh and kw swapped
    _sabotage(monkeypatch, "Conv2d", wrong)
    report = check_layers(torch_ckpt(Mixed()))
    by_name = {e.name: e for e in report.entries}
    assert by_name["conv2"].status == FAIL                      # (3, 2) kernel: shapes differ
    assert "do not fit" in by_name["conv2"].message
    assert by_name["square"].status == FAIL                     # 3x3: numbers differ
    assert by_name["square"].max_abs_error > 0.1
    assert all(e.status == SUCCESS for n, e in by_name.items() if n not in ("conv2", "square"))
    assert not report.passed and report.exit_code == 1
    assert report.first_divergence["name"] == "conv2"
    assert report.first_divergence["message"].startswith("first divergence: conv2 (Conv2d -> Conv2D)")


def test_layer_check_fails_swapped_gru_gates(monkeypatch):
    _sabotage(monkeypatch, "GRU", _swapped_gru_gates())
    report = check_layers(torch_ckpt(Mixed()))
    failed = [e.name for e in report.entries if e.status != SUCCESS]
    assert failed == ["gru"]
    assert report.first_divergence["name"] == "gru" and report.first_divergence["max_abs_error"] > 1e-2
    with pytest.raises(CheckFailed, match="first divergence: gru") as err:
        report.raise_for_status()
    assert err.value.exit_code == 1


def test_layer_check_skips_what_it_cannot_build_and_says_why():
    module = nn.Module()
    module.up = nn.ConvTranspose2d(4, 6, 2, groups=2)
    module.fc = nn.Linear(3, 2)
    report = check_layers(torch_ckpt(module))
    up = report.entries[0]
    assert up.status == SKIPPED and "no groups" in up.message
    assert report.skipped == 1 and report.passed      # what was compared passed; the skip is shown
    del module.fc
    only_skipped = check_layers(torch_ckpt(module))
    assert only_skipped.status == SKIPPED and not only_skipped.passed and only_skipped.exit_code == 1


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_layer_check_of_half_precision_weights_uses_their_tolerance(dtype):
    import ml_dtypes
    torch.manual_seed(8)
    module = nn.Sequential(nn.Linear(5, 4), nn.LSTM(4, 3, batch_first=True))
    np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float16
    src = Checkpoint({k: TensorRef.from_array(k, to_numpy(v).astype(np_dtype))
                      for k, v in module.state_dict().items()}, LAYOUT_TORCH,
                     meta={"module_kinds": {"0": "Linear", "1": "LSTM"}})
    report = check_layers(src)   # the LSTM's two biases are summed in half precision: rounds
    assert report.passed, report.summary()
    lstm = report.entries[1]
    assert (lstm.atol, lstm.rtol) == default_tolerance(np_dtype) and dtype in lstm.message


def test_layer_check_of_attention_takes_the_head_count_from_the_plan():
    from transcoder.rules import UserRules
    from transcoder.rules.user import LayerHint
    torch.manual_seed(9)
    layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
    src = Checkpoint({k: TensorRef.from_array(k, to_numpy(v)) for k, v in layer.state_dict().items()},
                     LAYOUT_TORCH)
    plan = make_plan(src, LAYOUT_KERAS,
                     UserRules((LayerHint("self_attn", "MultiheadAttention", {"num_heads": 2}),)))
    report = check_layers(src, plan)
    assert {e.name: e.status for e in report.entries} == {   # norm1: a LayerNorm, GroupNorm or
        "self_attn": SUCCESS, "linear1": SUCCESS, "linear2": SUCCESS,   # InstanceNorm by name
        "norm1": NOT_CHECKED, "norm2": NOT_CHECKED}

# ------------------------------------------------------------------ full-model check

def encoder_twin(kc: Checkpoint, activation: str | None = "relu"):
    """Conv1D(64, 1, relu, no bias) on a (40, 1, 128) view of the L2-normalised (4, 10, 128)."""
    x = keras.Input(batch_shape=(4, 10, 128))
    h = L.UnitNormalization(axis=-1)(x)
    h = L.Lambda(lambda t: ops.reshape(t, (-1, 1, 128)))(h)
    h = L.Conv1D(filters=64, kernel_size=1, activation=activation, use_bias=False,
                 name="conv1d_U")(h)
    model = keras.Model(x, L.Lambda(lambda t: ops.reshape(t, (4, 10, 64)))(h))
    set_weights(model, kc)
    return model


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(1)
    module = Encoder().eval()
    return module, keras_target(module)


def test_encoder_twin_passes(encoder):
    module, kc = encoder
    report = check_models(module, encoder_twin(kc), [(4, 10, 128)], seed=7)
    (out,) = report.entries
    assert out.status == SUCCESS and out.shape == [4, 10, 64] and out.max_abs_error < 1e-6
    assert report.passed and report.trace == [] and report.first_divergence is None
    assert report.input_shapes == [[4, 10, 128]] and report.input_dtypes == ["float32"]


def test_encoder_twin_without_activation_fails_after_the_conv(encoder):
    module, kc = encoder
    report = check_models(module, encoder_twin(kc, activation=None), [(4, 10, 128)])
    assert report.status == FAIL and report.exit_code == 1
    (conv,) = report.trace
    assert conv.name == "conv1d_U" and conv.status == SUCCESS    # (40, 64, 1) vs (40, 1, 64)
    assert "channel axis moved last" in conv.message
    assert report.first_divergence["after"] == "conv1d_U"
    assert "after conv1d_U" in report.summary()


class BnNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.fc1 = nn.Linear(8, 6)
        self.bn1 = nn.BatchNorm1d(6)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(6, 3)
        randomize_norms(self, var=(1e-4, 1e-3))   # small running_var: epsilon matters

    def forward(self, x):
        return self.fc2(self.act(self.bn1(self.fc1(x))))


def bn_twin(kc: Checkpoint, epsilon: float = 1e-5, activation: str = "relu"):
    x = keras.Input((8,))
    h = L.BatchNormalization(epsilon=epsilon, name="bn1")(L.Dense(6, name="fc1")(x))
    out = L.Dense(3, name="fc2")(L.Activation(activation, name="act")(h))
    model = keras.Model(x, out)
    set_weights(model, kc)
    return model


@pytest.fixture(scope="module")
def bn_net():
    module = BnNet().eval()
    return module, keras_target(module)


def test_bn_twin_passes_and_trace_follows_execution_order(bn_net):
    module, kc = bn_net
    report = check_models(module, bn_twin(kc), [(5, 8)], localise="always")
    assert report.passed
    assert [e.name for e in report.trace] == ["fc1", "bn1", "act", "fc2"]
    assert all(e.status == SUCCESS for e in report.trace)


def test_wrong_batchnorm_epsilon_is_named(bn_net):
    module, kc = bn_net
    report = check_models(module, bn_twin(kc, epsilon=1e-3), [(5, 8)], seed=1)
    assert report.status == FAIL
    statuses = {e.name: e.status for e in report.trace}
    assert statuses["fc1"] == SUCCESS and statuses["bn1"] == FAIL
    div = report.first_divergence
    assert div["name"] == "bn1" and div["max_abs_error"] > 1e-2
    assert div["message"].startswith("first divergence: bn1 (BatchNorm1d -> BatchNormalization): "
                                     "max abs error")


def test_missing_activation_is_named(bn_net):
    module, kc = bn_net
    report = check_models(module, bn_twin(kc, activation="linear"), [(5, 8)])
    assert report.status == FAIL
    assert report.first_divergence["name"] == "act"
    assert "act (ReLU -> Activation)" in report.first_divergence["message"]


class GruNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.emb = nn.Embedding(30, 8)
        self.gru = nn.GRU(8, 6, batch_first=True)
        self.fc = nn.Linear(6, 4)

    def forward(self, tokens):
        out, _ = self.gru(self.emb(tokens))
        return self.fc(out)


def gru_twin(kc: Checkpoint):
    x = keras.Input((5,), dtype="int64")
    h = L.GRU(6, return_sequences=True, reset_after=True, name="gru")(L.Embedding(30, 8, name="emb")(x))
    model = keras.Model(x, L.Dense(4, name="fc")(h))
    set_weights(model, kc)
    return model


def test_gru_twin_passes_with_tokens_inside_the_embedding():
    module = GruNet().eval()
    report = check_models(module, gru_twin(keras_target(module)), [InputSpec((3, 5), "int64")])
    assert report.passed and report.notes == []
    assert report.input_dtypes == ["int64"]


def test_swapped_gru_gates_are_named(monkeypatch):
    module = GruNet().eval()
    _sabotage(monkeypatch, "GRU", _swapped_gru_gates())
    twin = gru_twin(keras_target(module))
    report = check_models(module, twin, [InputSpec((3, 5), "int64")])
    assert report.status == FAIL
    assert [(e.name, e.status) for e in report.trace] == [("emb", SUCCESS), ("gru", FAIL),
                                                           ("fc", FAIL)]
    assert report.first_divergence["name"] == "gru"
    assert "gru (GRU -> GRU)" in report.summary()


class TwoTables(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.big = nn.Embedding(1000, 4)
        self.small = nn.Embedding(7, 4)

    def forward(self, a, b):
        return self.big(a) + self.small(b[:, :3])


def test_integer_inputs_are_drawn_inside_the_embedding_they_feed():
    specs = [InputSpec((2, 3), "int64"), InputSpec((2, 6), "int32")]
    highs, notes = embedding_ranges(torch, TwoTables(), specs)
    assert highs == {0: 1000, 1: 7} and notes == []
    a, b = make_inputs(specs, seed=0, highs=highs)
    assert b.dtype == np.int32 and b.max() < 7 and a.max() < 1000
    with pytest.raises(UsageError, match="int64:HIGH"):
        embedding_ranges(torch, nn.Linear(2, 2), [InputSpec((2,), "int64")])


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.conv = nn.Conv2d(3, 8, 3, padding=0)
        self.bn = nn.BatchNorm2d(8)
        self.rnn = nn.LSTM(8, 5, num_layers=2, bidirectional=True, batch_first=True)
        randomize_norms(self)

    def forward(self, image):                         # (N, 3, 9, 7)
        x = F.relu(self.bn(self.conv(image)))         # (N, 8, 7, 5)
        seq = x.mean(dim=3).transpose(1, 2)           # (N, 7, 8)
        return x, self.rnn(seq)[0]


def conv_twin(kc: Checkpoint):
    """Channels-last: takes (N, 9, 7, 3), gives (N, 7, 5, 8) and the sequence."""
    x = keras.Input((9, 7, 3))
    h = L.ReLU()(L.BatchNormalization(epsilon=1e-5, name="bn")(L.Conv2D(8, 3, name="conv")(x)))
    seq = L.Lambda(lambda t: ops.mean(t, axis=2))(h)
    for k in range(2):
        seq = L.Bidirectional(L.LSTM(5, return_sequences=True), name=f"rnn.l{k}")(seq)
    model = keras.Model(x, [h, seq])
    set_weights(model, kc)
    return model


def test_channels_last_twin_with_stacked_rnn_pairs_layout_aware():
    module = ConvNet().eval()
    report = check_models(module, conv_twin(keras_target(module)), [(2, 3, 9, 7)],
                          keras_layout="channels_last", localise="always")
    assert [e.name for e in report.entries] == ["output[0]", "output[1]"]
    assert report.passed, report.summary()
    trace = {e.name: e for e in report.trace}
    assert trace["conv"].status == SUCCESS and "channel axis moved last" in trace["conv"].message
    assert trace["rnn"].keras_name == "rnn.l1" and trace["rnn"].status == SUCCESS


class LinearRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.fc = nn.Linear(4, 3)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.fc(x))


def test_a_keras_dense_with_its_activation_is_traced_after_it():
    """The families' ``fused_activation``: a Dense(activation="relu") pairs with the Linear,
    whose output is compared after the relu; numbers, not just the pairing."""
    module = LinearRelu().eval()
    x = keras.Input((4,))
    twin = keras.Model(x, L.Dense(3, activation="relu", name="fc")(x))
    set_weights(twin, keras_target(module))
    report = check_models(module, twin, [(6, 4)], localise="always")
    trace = {e.name: e for e in report.trace}
    assert report.passed and trace["fc"].status == SUCCESS, report.summary()
    assert "compared after the Keras layer's relu" in trace["fc"].message
    assert trace["fc"].max_abs_error < 1e-6


def test_bad_input_shapes_are_usage_errors(bn_net):
    module, kc = bn_net
    with pytest.raises(UsageError, match="PyTorch model fails"):
        check_models(module, bn_twin(kc), [(5, 9)])
    assert [s.shape for s in parse_input_specs(["4,10,128", "2x5"], ["float32", "int64:30"])] == \
        [(4, 10, 128), (2, 5)]
    assert parse_input_specs(["2,5"], ["int64:3:30"])[0].low == 3
    with pytest.raises(UsageError):
        parse_input_specs(["2,5", "3"], ["int64", "float32", "float32"])


# ------------------------------------------------------------------ reports

@pytest.fixture(scope="module")
def failed_report(bn_net) -> CheckReport:
    module, kc = bn_net
    report = check_models(module, bn_twin(kc, epsilon=1e-3), [(5, 8)], seed=11)
    report.trace.append(replace(report.trace[0], name="ghost", status=SKIPPED,
                                message="no Keras layer named 'ghost'"))
    return report


def test_json_report_has_the_documented_fields(failed_report, tmp_path):
    path = failed_report.write_json(tmp_path / "out" / "report.json")
    data = json.loads(path.read_text())
    for key in ("status", "seed", "input_shapes", "versions", "atol", "rtol", "entries", "trace",
                "first_divergence", "skipped", "exit_code"):
        assert key in data, key
    assert data["status"] == FAIL and data["seed"] == 11 and data["input_shapes"] == [[5, 8]]
    assert data["exit_code"] == 1 and data["first_divergence"]["name"] == "bn1"
    assert set(data["versions"]) == {"torch", "keras", "tensorflow", "numpy", "transcoder"}
    assert data["versions"]["torch"].startswith("2.") and data["versions"]["keras"].startswith("3.")
    entry = data["entries"][0]
    for key in ("name", "kind", "status", "max_abs_error", "max_rel_error", "atol", "rtol", "shape"):
        assert key in entry, key
    # the default atol is scaled by the output's magnitude, max(1, max |expected|)
    scale = entry["extra"]["atol_scale"]
    assert scale > 1 and entry["atol"] == pytest.approx(1e-5 * scale)
    assert entry["rtol"] == 1e-4 and entry["shape"] == [5, 3]
    assert json.loads(json.dumps(data)) == data
    assert not list(path.parent.glob(".*tmp"))                  # atomic: no temp file left


def test_junit_report_parses_and_has_the_failure(failed_report, tmp_path):
    path = failed_report.write_junit(tmp_path / "junit.xml")
    root = ET.parse(path).getroot()
    (suite,) = root.findall("testsuite")
    cases = suite.findall("testcase")
    assert int(suite.get("tests")) == len(cases) == 1 + len(failed_report.trace)
    failures = [c for c in cases if c.find("failure") is not None]
    assert int(suite.get("failures")) == len(failures) >= 2
    names = [c.get("name") for c in failures]
    assert "bn1 (BatchNorm1d -> BatchNormalization)" in names
    message = failures[0].find("failure").get("message")
    assert message.startswith("FAIL: max abs error")
    assert suite.get("skipped") == "1" and any(c.find("skipped") is not None for c in cases)
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["seed"] == "11" and props["status"] == FAIL


def test_rich_table_renders(failed_report):
    from rich.console import Console
    console = Console(file=io.StringIO(), width=220, force_terminal=True, color_system="standard")
    print_table(failed_report, console)
    text = console.file.getvalue()
    assert "FAIL" in text and "SUCCESS" in text and "SKIPPED" in text and "bn1" in text
    assert "\x1b[" in text                                        # colour-coded
    assert "first divergence: bn1" in text


def test_importing_the_check_package_imports_no_framework():
    assert_imports_none_of("import transcoder.checks, transcoder.checks.verify", FRAMEWORKS)
