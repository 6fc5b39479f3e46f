"""The Keras rebuild of a PyTorch module computes what PyTorch computes, with the rules' weights.

Each model is rebuilt from one example batch, then compared with PyTorch on fresh random inputs
(another batch size too, where the batch stays dynamic), saved as .keras, loaded back with
keras.models.load_model and compared again.
"""
from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
torch = pytest.importorskip("torch", reason="needs torch: pip install '.[check]'")  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

keras = pytest.importorskip("keras")

import transcoder.models  # noqa: E402,F401  (registers our Keras layers)
from conftest import one_child  # noqa: E402
from transcoder.errors import UnsupportedError  # noqa: E402
from transcoder.models.rebuild import (keras_checkpoint, rebuild, supported,  # noqa: E402
                                       weights_from_checkpoint)

RTOL, ATOL = 1e-4, 1e-5


def _numpy(outputs):
    if isinstance(outputs, (tuple, list)):
        return [_numpy(o) for o in outputs]
    return np.asarray(outputs)


def _run_keras(model, inputs):
    arrays = [x.numpy() for x in inputs]
    return _numpy(model(arrays[0] if len(arrays) == 1 else arrays))


def _run_torch(module, inputs):
    with torch.no_grad():
        out = module(*inputs)
    return [o.numpy() for o in out] if isinstance(out, tuple) else out.numpy()


def assert_matches(keras_out, torch_out, what):
    if isinstance(torch_out, list):
        assert isinstance(keras_out, list) and len(keras_out) == len(torch_out), what
        for i, (k, t) in enumerate(zip(keras_out, torch_out)):
            assert_matches(k, t, f"{what} output {i}")
        return
    assert keras_out.shape == torch_out.shape, f"{what}: {keras_out.shape} != {torch_out.shape}"
    np.testing.assert_allclose(keras_out, torch_out, rtol=RTOL, atol=ATOL, err_msg=what)


def check(module, make_inputs, tmp_path, batches=(2, 3), **options):
    """Rebuild from a batch of 2, compare on fresh inputs of each batch size, save, load,
    compare again. Returns the rebuilt model."""
    module.eval()
    model = rebuild(module, make_inputs(2), **options)
    for n in batches:
        inputs = make_inputs(n)
        assert_matches(_run_keras(model, inputs), _run_torch(module, inputs), f"batch {n}")
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    inputs = make_inputs(batches[-1])
    assert_matches(_run_keras(loaded, inputs), _run_torch(module, inputs), "loaded model")
    return model


def assert_weights_from_rules(module, model):
    """Every Keras layer the rule table names holds exactly the weights the table produced."""
    ckpt = keras_checkpoint(module)
    names = [layer["name"] for layer in ckpt.meta["keras_layers"]]
    assert names
    for name in names:
        got = model.get_layer(name).get_weights()
        want = weights_from_checkpoint(ckpt, name)
        assert len(got) == len(want), name
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g.reshape(w.shape), w, err_msg=name)


def randomize_batch_norms(module):
    """Non-trivial running statistics and affine parameters (fresh BNs are the identity)."""
    g = torch.Generator().manual_seed(1)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.25)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))
    return module


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def floats(*shape):
    return lambda n: (torch.randn(n, *shape),)


def tokens(vocab, length):
    return lambda n: (torch.randint(0, vocab, (n, length)),)


# ---------------------------------------------------------------- the six models of the issue

def test_fixture_encoder(tmp_path):
    from models import Encoder   # fixtures/models.py (on sys.path via conftest)

    module = Encoder()
    model = check(module, floats(10, 128), tmp_path, batches=(4, 7))
    assert model.inputs[0].shape == (None, 10, 128)   # b, t, c = x.shape: batch stays dynamic
    assert_weights_from_rules(module, model)


def test_names_load_the_pipelines_h5_by_name(tmp_path):
    """Layer names are module paths: `transcode encoder.pt encoder.h5` loads into the rebuild."""
    from conftest import FIXTURES
    from models import Encoder

    from transcoder.pipeline import transcode

    module = Encoder()
    module.load_state_dict(torch.load(FIXTURES / "encoder.pt", weights_only=True))
    model = rebuild(module.eval(), (torch.randn(4, 10, 128),))
    for layer in model.layers:
        layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])
    transcode(FIXTURES / "encoder.pt", tmp_path / "encoder.h5")
    model.load_weights(tmp_path / "encoder.h5", by_name=True)
    x = torch.randn(4, 10, 128)
    assert_matches(_run_keras(model, [x]), _run_torch(module, [x]), "loaded by name")


class CNN1d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(6, 16, 5, padding=2)
        self.bn1 = nn.BatchNorm1d(16, eps=1e-5)
        self.conv2 = nn.Conv1d(16, 16, 4, stride=2, padding=1, groups=4)   # even kernel, stride 2
        self.bn2 = nn.BatchNorm1d(16, eps=1e-5)
        self.pool = nn.MaxPool1d(3, stride=2, padding=1)
        self.gap = nn.AdaptiveAvgPool1d(1)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.pool(F.gelu(self.bn2(self.conv2(x))))
        return self.head(self.gap(x).squeeze(-1))


def test_cnn1d_batch_norm_padding(tmp_path):
    module = randomize_batch_norms(CNN1d())
    model = check(module, floats(6, 33), tmp_path)
    bn = model.get_layer("bn1")
    assert bn.epsilon == pytest.approx(1e-5) and bn.momentum == pytest.approx(0.9)
    assert model.get_layer("conv2").padding == "valid"   # explicit ZeroPadding, never "same"
    assert_weights_from_rules(module, model)


class CNN2d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)          # depthwise
        self.pw = nn.Conv2d(8, 16, 1)
        self.bn = nn.BatchNorm2d(16)
        self.act = nn.Hardswish()
        self.up = nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1)
        self.gn = nn.GroupNorm(2, 8)
        self.pool = nn.AvgPool2d(2)
        self.flat = nn.Flatten()
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        x = F.silu(self.stem(x))
        x = self.act(self.bn(self.pw(F.relu6(self.dw(x)))))
        x = self.pool(self.gn(self.up(x)))
        return self.fc(self.drop(self.flat(x)))


def test_cnn2d_depthwise_transposed_flatten(tmp_path):
    module = randomize_batch_norms(CNN2d())
    model = check(module, floats(3, 16, 16), tmp_path)
    assert_weights_from_rules(module, model)


@pytest.mark.parametrize("make, shape", [(CNN2d, (3, 16, 16)), (CNN1d, (6, 33))])
def test_channels_last(make, shape):
    """Inputs and outputs channels last; no transposes but the one before Flatten/squeeze."""
    module = randomize_batch_norms(make()).eval()
    model = rebuild(module, (torch.randn(2, *shape),), channels_last=True)
    assert model.inputs[0].shape == (None, *shape[1:], shape[0])
    x = torch.randn(3, *shape)
    out = _run_keras(model, [x.movedim(1, -1).contiguous()])
    assert_matches(out, _run_torch(module, [x]), "channels_last")
    permutes = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Permute)]
    assert permutes == {CNN2d: ["pool.torch_order"], CNN1d: ["gap.torch_order"]}[make]


class BiLSTMText(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.lstm = nn.LSTM(16, 12, num_layers=2, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(24, 3)

    def forward(self, tokens):
        out, _ = self.lstm(self.embed(tokens))
        return self.fc(out[:, -1])


def test_bidirectional_lstm_text(tmp_path):
    module = BiLSTMText()
    model = check(module, tokens(50, 9), tmp_path)
    assert isinstance(model.get_layer("lstm.l1"), keras.layers.Bidirectional)
    assert_weights_from_rules(module, model)


class GRUTagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(30, 8)
        self.gru = nn.GRU(8, 10, batch_first=True)
        self.tag = nn.Linear(10, 6)

    def forward(self, tokens):
        out, _ = self.gru(self.embed(tokens))
        return F.log_softmax(self.tag(out), dim=-1)


def test_gru_tagger(tmp_path):
    module = GRUTagger()
    model = check(module, tokens(30, 7), tmp_path)
    assert model.get_layer("gru").reset_after
    assert_weights_from_rules(module, model)


class Transformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.1, batch_first=True)

    def forward(self, x):
        return self.block(x)


def test_transformer_block(tmp_path):
    module = Transformer()
    model = check(module, floats(5, 16), tmp_path)
    assert isinstance(model.get_layer("block.self_attn"), keras.layers.MultiHeadAttention)
    assert_weights_from_rules(module, model)


# ---------------------------------------------------------------- wider op coverage

class ImageOps(nn.Module):
    """Functional and layout-sensitive ops on NCHW tensors held channels last."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 6, (3, 2), padding="same", dilation=(1, 2))
        self.norm = nn.InstanceNorm2d(6, affine=True)
        self.prelu = nn.PReLU(6)
        self.deconv = nn.ConvTranspose1d(6, 4, 3, stride=2, padding=1, output_padding=1)
        self.scale = nn.Parameter(torch.randn(1, 6, 1, 1))
        self.ln = nn.LayerNorm([4, 16])
        self.pool = nn.AdaptiveMaxPool2d((2, 4))
        self.conv3 = nn.Conv3d(2, 3, 3, padding=1)
        self.bn3 = nn.BatchNorm3d(3)

    def forward(self, x):
        y = self.prelu(self.norm(self.conv(x))) * self.scale          # a bare parameter
        y = F.normalize(y, dim=1) + 0.5 * y.softmax(dim=1)             # axis 1 while NHWC
        a, b = y.chunk(2, dim=1)
        y = torch.cat([F.leaky_relu(a, 0.2), F.elu(b) - 1.0], dim=1)
        pooled = self.pool(F.interpolate(y, scale_factor=2))            # (N, 6, 2, 4)
        stats = y.mean(dim=(2, 3)) + torch.norm(y, dim=(2, 3)) / 10 - y.sum(dim=-1).amax(-1)
        seq = y.permute(0, 2, 1, 3).flatten(2).transpose(1, 2)          # (N, 6*W, H)
        seq = self.deconv(F.pad(seq.transpose(1, 2)[:, :6, 1:-1], (1, 2)))
        vol = self.bn3(self.conv3(y[:, :4].reshape(y.shape[0], 2, 2, y.shape[2], y.shape[3])))
        return (pooled.flatten(1), stats, self.ln(seq[:, :, :16]), F.gelu(vol, approximate="tanh"),
                (1 - torch.sigmoid(stats)) ** 2 / 2)


def test_image_ops(tmp_path):
    module = randomize_batch_norms(ImageOps())
    model = check(module, floats(4, 8, 8), tmp_path)
    assert_weights_from_rules(module, model)


class SequenceOps(nn.Module):
    """Sequence-first recurrent and attention modules, states, stacking and matmul."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 6, num_layers=2)                      # (T, N, F)
        self.rnn = nn.RNN(8, 5, nonlinearity="relu", batch_first=True, bidirectional=True)
        self.attn = nn.MultiheadAttention(8, 2)                       # sequence first
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(8, 2, 16, batch_first=True, norm_first=True,
                                       activation="gelu"), num_layers=2, enable_nested_tensor=False)
        self.register_buffer("positions", torch.arange(7.0).unsqueeze(-1) / 7, persistent=False)

    def forward(self, x):                                             # x: (N, T, F)
        seq_first = x.transpose(0, 1)
        out, (h, c) = self.lstm(seq_first)
        attended, _ = self.attn(seq_first, seq_first, seq_first, need_weights=False)
        r, h_r = self.rnn(x + self.positions)
        encoded = self.encoder(x)
        scores = torch.matmul(encoded, encoded.transpose(1, 2)).softmax(-1)
        return (out.transpose(0, 1), h[-1] + c.sum(0), attended, r, h_r.permute(1, 0, 2),
                torch.stack([encoded, scores @ x], dim=1))


def test_sequence_ops(tmp_path):
    module = SequenceOps()
    model = check(module, floats(7, 8), tmp_path)
    assert [model.get_layer(n).name for n in ("lstm.l0", "lstm.l1", "rnn")]
    assert_weights_from_rules(module, model)


class BuiltInOps(nn.Module):
    """Ops a Keras built-in layer computes exactly: residual arithmetic of one shape, numbers
    (add, subtract both ways, multiply, divide by a power of two), global means and maxima,
    L2 normalisation, log-softmax over the last axis; and their near misses, which keep ours."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):                                             # x: (N, 3, 5, 5)
        y = self.conv(x)
        z = torch.relu(y) + y * 0.5 - torch.sigmoid(y)                 # Add, Subtract, Rescaling
        z = torch.maximum(z - 1, 2 - z) / 4 - z.amax(dim=(2, 3), keepdim=True)
        pooled = z.mean(dim=(2, 3))                                    # GlobalAveragePooling2D
        rows = z.mean(dim=2)                                           # over one spatial axis: ours
        return (F.normalize(pooled, dim=-1), F.log_softmax(pooled, dim=-1), rows / 3,
                F.normalize(rows, p=1.0, dim=1), z.flatten(1) - z.flatten(1).mean(dim=1, keepdim=True))


def test_built_in_layers_where_they_compute_the_same(tmp_path):
    model = check(BuiltInOps(), floats(3, 5, 5), tmp_path)
    classes = {}
    for layer in model.layers:
        classes.setdefault(type(layer).__name__, []).append(getattr(layer, "op", None))
    for built_in in ("Add", "Maximum", "Subtract", "Rescaling", "GlobalAveragePooling2D",
                     "GlobalMaxPooling2D", "UnitNormalization", "Activation"):
        assert built_in in classes, built_in
    # a mean over one of two spatial axes or over a rank-2 tensor, broadcasting subtractions,
    # a division by 3, an L1 norm: no built-in computes them exactly, so ours do
    assert sorted(classes["TensorOp"]) == ["mean", "mean", "normalize", "subtract", "subtract"]
    assert classes["Scalar"] == ["divide"]
    rescalings = [(layer.scale, layer.offset) for layer in model.layers
                  if type(layer).__name__ == "Rescaling"]
    assert (0.5, -0.0) in rescalings and (1.0, -1.0) in rescalings and (-1.0, 2.0) in rescalings
    assert (0.25, -0.0) in rescalings


# ---------------------------------------------------------------- shapes, errors

class BatchMean(nn.Module):
    def forward(self, x):
        return x.sum(0) / x.shape[0] + x.view(2, -1).mean(1)[0]


def test_batch_dependent_number_fixes_the_shapes(tmp_path):
    module = BatchMean()
    model = rebuild(module, (torch.randn(2, 3),))
    assert model.inputs[0].shape == (2, 3)   # x.shape[0] is used as a number: batch fixed
    x = torch.randn(2, 3)
    assert_matches(_run_keras(model, [x]), _run_torch(module, [x]), "fixed batch")


class CumSum(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return torch.cumsum(self.fc(x), dim=1)


class Wrapper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = CumSum()
        self.head = nn.Bilinear(4, 4, 2)

    def forward(self, x):
        return self.head(x, x)


def test_unsupported_function_names_op_and_module():
    with pytest.raises(UnsupportedError, match=r"torch\.cumsum.*in block"):
        rebuild(one_child(CumSum()), (torch.randn(2, 4),))


def test_unsupported_module_names_class_and_path():
    with pytest.raises(UnsupportedError, match=r"nn\.Bilinear.*head"):
        rebuild(Wrapper(), (torch.randn(2, 4),))


def test_unsupported_option_is_refused():
    module = one_child(nn.MaxPool2d(3, padding=1, dilation=2))
    with pytest.raises(UnsupportedError, match=r"nn\.MaxPool2d in block: dilation"):
        rebuild(module, (torch.randn(2, 3, 6, 6),))


def test_supported_lists_the_tables():
    table = supported()
    assert {"Conv2d", "LSTM", "TransformerEncoderLayer"} <= set(table["modules"])
    assert "F.normalize" in table["functions"] and "view" in table["methods"]


class Activations(nn.Module):
    """Every activation module and function the tables map, on one input."""

    def __init__(self) -> None:
        super().__init__()
        self.acts = nn.ModuleList([
            nn.ReLU(), nn.ReLU6(), nn.LeakyReLU(0.1), nn.ELU(0.7), nn.GELU(), nn.GELU("tanh"),
            nn.Sigmoid(), nn.Tanh(), nn.SiLU(), nn.Mish(), nn.Hardswish(), nn.Hardsigmoid(),
            nn.SELU(), nn.Softsign(), nn.Softplus(), nn.Hardtanh(-0.5, 0.5), nn.Softmax(dim=1),
            nn.LogSoftmax(dim=-1), nn.PReLU(), nn.PReLU(3), nn.Identity()])

    def forward(self, x):
        outs = [act(x) for act in self.acts]
        outs += [F.relu6(x), F.hardswish(x), F.silu(x), torch.tanh(x), x.sigmoid(), F.mish(x),
                 F.gelu(x, approximate="tanh"), F.leaky_relu(x), F.elu(x, 0.5), F.softplus(x),
                 torch.clamp(x, min=-0.2), x.clamp(max=0.3), F.hardtanh(x), torch.exp(x / 4),
                 torch.sqrt(x.abs() + 1), (x.abs() + 1).log(),
                 torch.rsqrt(x.abs() + 1), torch.erf(x), -x, x.softmax(-1), F.log_softmax(x, 1)]
        return torch.stack(outs, dim=1)


def test_activations(tmp_path):
    module = Activations()
    with torch.no_grad():
        module.acts[19].weight.copy_(torch.tensor([0.1, -0.3, 0.5]))
    model = check(module, floats(3, 4, 5), tmp_path)
    assert_weights_from_rules(module, model)
