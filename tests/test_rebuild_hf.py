"""Hugging Face architectures (tiny configs, random weights: ``fixtures/hf_models.py``) through
``--model``: rebuilt from ``torch.export`` (torch.fx traces none of them), checked by the
conversion itself, then loaded here with each framework's own API (``keras.models.load_model``
after ``import transcoder``, ``tf.saved_model.load``, ``tf.lite.Interpreter``) and compared
with PyTorch on fresh inputs, within 1e-4 of the output's magnitude.

Plus the single ops the issue met in real models (``torch.max`` with indices,
``Tensor.repeat``), module calls built as Keras built-ins named by module path, the
channels-last layout, and the one-line error naming an uncovered op and its module.
"""
from __future__ import annotations

import os
import warnings

os.environ["USE_TF"] = "0"   # before transformers is imported (it would import TensorFlow)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

torch = pytest.importorskip("torch", reason="needs torch: pip install '.[check]'")
tf = pytest.importorskip("tensorflow", reason="needs tensorflow: pip install '.[check]'")
pytest.importorskip("transformers", reason="needs transformers")

import keras  # noqa: E402
from torch import nn  # noqa: E402

import transcoder  # noqa: E402  (registers our Keras layers)
from conftest import FIXTURES  # noqa: E402
from transcoder.checks.artifacts import QUANTIZED_TOLERANCES  # noqa: E402
from transcoder.errors import UnsupportedError  # noqa: E402
from transcoder.models.rebuild import keras_checkpoint, rebuild, weights_from_checkpoint  # noqa: E402
from transcoder.models.torch_side import plain_outputs  # noqa: E402

import hf_models  # noqa: E402  (fixtures/, on sys.path through conftest)

SPECS = FIXTURES / "hf_models.py"
NAMES = list(hf_models.INPUTS)
EXPORTED = list(NAMES)                             # every model: .savedmodel and .tflite
#: float16 weights err in proportion to the output: wav2vec2's GroupNorm over 80 time steps of
#: a random model by 3.5e-3 (PyTorch itself, with the weights rounded to float16 and float32
#: arithmetic: 2.9e-3, 1.0e-3 of the output's magnitude), ResNet's by 3.1e-3 on outputs up to
#: 18. The float16 default atol scales with the output's magnitude, as float32's does.
FLOAT16 = list(NAMES)
MAGNITUDE = 1e-4                                   # of the output's largest absolute value


class Artifacts:
    """Each model's checkpoint, module and artifacts, made once per test module."""

    def __init__(self, folder) -> None:
        self.folder, self.done, self.modules = folder, {}, {}

    def module(self, name: str):
        if name not in self.modules:
            self.modules[name] = getattr(hf_models, name)()
        return self.modules[name]

    def checkpoint(self, name: str):
        path = self.folder / f"{name}.pt"
        if not path.exists():
            torch.save(self.module(name).state_dict(), path)
        return path

    def get(self, name: str, suffix: str, quantize: str | None = None):
        key = (name, suffix, quantize)
        if key not in self.done:
            shape, dtype = hf_models.INPUTS[name]
            path = self.folder / f"{name}{'-' + quantize if quantize else ''}.{suffix}"
            options = {"quantize": quantize} if quantize else {}
            result = transcoder.convert(self.checkpoint(name), path, model=f"{SPECS}:{name}",
                                        input_shape=[shape], input_dtype=[dtype], **options)
            self.done[key] = (path, result)
        return self.done[key]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    return Artifacts(tmp_path_factory.mktemp("hf"))


def fresh_input(name: str, seed: int = 11) -> np.ndarray:
    shape, dtype = hf_models.INPUTS[name]
    dims = tuple(map(int, shape.split(",")))
    rng = np.random.default_rng(seed)
    if dtype == "int64":
        return rng.integers(0, 50, size=dims).astype(np.int64)
    return rng.standard_normal(dims).astype(np.float32)


def torch_outputs(module, x: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        out = plain_outputs(module(torch.from_numpy(x)))
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


def assert_within_magnitude(got: list, want: list, what: str, fraction: float = MAGNITUDE):
    assert len(got) == len(want), f"{what}: {len(got)} outputs, PyTorch gives {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        g = np.asarray(g)
        assert g.shape == w.shape, f"{what} output {i}: {g.shape} != {w.shape}"
        bound = fraction * float(np.abs(w).max())
        err = float(np.abs(g - w).max())
        assert err <= bound, f"{what} output {i}: error {err:.3g} > {bound:.3g}"


def as_list(outputs) -> list:
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


# ---------------------------------------------------------------- every model, .keras

@pytest.mark.parametrize("name", NAMES)
def test_model_rebuilds_to_keras_checks_and_loads(artifacts, name):
    path, result = artifacts.get(name, "keras")
    assert result.report.passed and result.report.kind == "model"
    loaded = keras.models.load_model(path)   # our layers: registered by `import transcoder`
    x = fresh_input(name)
    got = as_list(loaded(x, training=False))
    assert_within_magnitude(got, torch_outputs(artifacts.module(name), x), f"{name}.keras")


# ---------------------------------------------------------------- exports, a subset

def run_savedmodel(path, x):
    signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    (input_name,) = signature.structured_input_signature[1]
    out = signature(**{input_name: tf.constant(x)})
    return [out[k].numpy() for k in sorted(out, key=lambda k: int(k.split("_")[-1]))]


def run_tflite(path, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=str(path))
    runner = interpreter.get_signature_runner("serving_default")
    (input_name,) = runner.get_input_details()
    dtype = runner.get_input_details()[input_name]["dtype"]
    out = runner(**{input_name: x.astype(dtype)})
    return [out[k] for k in sorted(out, key=lambda k: int(k.split("_")[-1]))]


CASES = [(name, suffix, None) for name in EXPORTED for suffix in ("savedmodel", "tflite")] + \
    [(name, "tflite", "float16") for name in FLOAT16]


@pytest.mark.parametrize("name,suffix,quantize", CASES)
def test_model_exports_check_on_the_artifact_and_load(artifacts, name, suffix, quantize):
    path, result = artifacts.get(name, suffix, quantize)
    assert result.report.passed and result.report.artifact["format"] == suffix
    x = fresh_input(name)
    got = (run_savedmodel if suffix == "savedmodel" else run_tflite)(path, x)
    fraction = MAGNITUDE if quantize is None else QUANTIZED_TOLERANCES[quantize][1]
    assert_within_magnitude(got, torch_outputs(artifacts.module(name), x), path.name, fraction)


# ---------------------------------------------------------------- a dynamic batch

def batch_input(name: str, batch: int, seed: int = 5) -> np.ndarray:
    """A fresh input of ``name``'s shape with another batch size."""
    shape, dtype = hf_models.INPUTS[name]
    dims = (batch, *map(int, shape.split(",")[1:]))
    rng = np.random.default_rng(seed + batch)
    if dtype == "int64":
        return rng.integers(0, 50, size=dims).astype(np.int64)
    return rng.standard_normal(dims).astype(np.float32)


@pytest.mark.parametrize("name", NAMES)
def test_the_exported_keras_model_takes_any_batch(artifacts, name):
    """The export keeps the batch a ``torch.export.Dim``: the ``.keras`` rebuilt at batch 2
    takes batch 1 and 3 and agrees with transformers there (ViT's cls token, BERT's default
    token types, the default masks Llama's and GPT-2's ``create_causal_mask`` makes with
    ``arange(batch)``: computed in PyTorch, one row repeated along the batch, each is that
    row broadcast to the batch where it meets the inputs)."""
    path, _ = artifacts.get(name, "keras")
    loaded = keras.models.load_model(path)
    assert loaded.inputs[0].shape[0] is None
    for batch in (1, 3):
        x = batch_input(name, batch)
        got = as_list(loaded(x, training=False))
        assert_within_magnitude(got, torch_outputs(artifacts.module(name), x),
                                f"{name}.keras at batch {batch}")


class SizeValued(nn.Module):
    """Values computed from the batch size, not one row repeated: the batch stays fixed.
    ``float(batch)``: torch.export specialises it; ``arange(batch)``: it exports with a
    dynamic batch, but the rows differ, so the rebuild cannot broadcast one."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.fc, self.how = nn.Linear(4, 3), how

    def forward(self, x):
        if x.shape[1] > 2:   # torch.fx cannot trace this; torch.export can
            x = x * 2
        if self.how == "float":
            return self.fc(x) + torch.full((x.shape[0], 3), float(x.shape[0]))
        return self.fc(x) + torch.arange(x.shape[0])[:, None].float()


@pytest.mark.parametrize("how,why", [("float", "torch.export specialises it"),
                                     ("arange", "a value computed from the batch size")])
def test_a_value_of_the_batch_size_keeps_the_batch_fixed_and_says_why(how, why):
    torch.manual_seed(0)
    module = SizeValued(how).eval()
    x = torch.randn(2, 4)
    model = rebuild(module, (x,))
    assert tuple(model.inputs[0].shape) == (2, 4)
    assert why in model.fixed_batch
    with torch.no_grad():
        np.testing.assert_allclose(np.asarray(model(x.numpy())), module(x).numpy(), rtol=1e-6,
                                   atol=1e-6)


# ---------------------------------------------------------------- what the rebuild makes

def test_module_calls_are_keras_built_ins_named_by_path_with_the_rules_weights():
    module = hf_models.bert()
    model = rebuild(module, (torch.from_numpy(fresh_input("bert")),))
    kinds = {"encoder.layer.0.attention.self.query": "Dense",
             "encoder.layer.1.output.dense": "Dense", "embeddings.word_embeddings": "Embedding",
             "embeddings.position_embeddings": "Embedding", "embeddings.LayerNorm":
             "LayerNormalization", "encoder.layer.0.output.LayerNorm": "LayerNormalization"}
    for path, kind in kinds.items():
        assert type(model.get_layer(path)).__name__ == kind, path
    ckpt = keras_checkpoint(module)
    names = [layer["name"] for layer in ckpt.meta["keras_layers"]]
    assert len(names) == 21
    for name in names:   # every layer of the rule table is in the model, with its weights
        want = weights_from_checkpoint(ckpt, name)
        got = model.get_layer(name).get_weights()
        assert len(got) == len(want) and all(np.array_equal(g, w) for g, w in zip(got, want))
    assert not [layer for layer in model.layers if type(layer).__name__ == "Lambda"]


def test_what_the_export_folds_comes_from_the_checkpoint_not_the_module():
    """ViT's cls token is expanded to the batch before it meets the inputs: a constant. The
    conversion rebuilds the module as built (its own random weights) with the checkpoint's
    weights: the constant must hold the checkpoint's cls token."""
    x = torch.from_numpy(fresh_input("vit"))
    source, built = hf_models.vit(), hf_models.vit()
    assert not torch.equal(source.embeddings.cls_token, built.embeddings.cls_token)
    before = {k: v.clone() for k, v in built.state_dict().items()}
    model = rebuild(built, (x,), keras_ckpt=keras_checkpoint(source))
    assert_within_magnitude(as_list(model(x.numpy())), torch_outputs(source, x.numpy()), "vit")
    assert all(torch.equal(v, before[k]) for k, v in built.state_dict().items())   # restored


def test_weight_norm_the_rules_cannot_fold_is_a_conv1d_of_the_live_weight():
    """wav2vec2's positional convolution is weight-normed over dim 2: the rule table carries
    its g and v; the rebuild's Conv1D holds the rule table's mapping of the module's weight."""
    module = hf_models.wav2vec2()
    model = rebuild(module, (torch.from_numpy(fresh_input("wav2vec2")),))
    conv = module.encoder.pos_conv_embed.conv
    kernel, bias = model.get_layer("encoder.pos_conv_embed.conv").get_weights()
    with torch.no_grad():   # the rule table folds g * v / ||v|| itself: float32 rounding apart
        np.testing.assert_allclose(kernel, conv.weight.permute(2, 1, 0).numpy(), rtol=1e-6,
                                   atol=1e-7)
    np.testing.assert_array_equal(bias, conv.bias.detach().numpy())
    g = module.state_dict()["encoder.pos_conv_embed.conv.parametrizations.weight.original0"]
    assert g.shape == (1, 1, 4)   # over dim 2: what the rule table cannot fold


def test_channels_last_takes_and_returns_the_deployment_layout():
    module = hf_models.resnet()
    x = fresh_input("resnet")
    model = rebuild(module, (torch.from_numpy(x),), channels_last=True)
    assert tuple(model.inputs[0].shape) == (None, 32, 32, 3)   # the batch left dynamic
    got = as_list(model(np.moveaxis(x, 1, -1)))
    want = torch_outputs(module, x)
    assert_within_magnitude([np.moveaxis(g, -1, 1) for g in got], want, "channels last")


class MaxRepeat(nn.Module):
    """The two single ops the issue met in real models: torch.max with indices (a Thai
    tokenizer's CNN) and Tensor.repeat (a bat-call detector)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x):
        values, indices = torch.max(self.fc(x), dim=1)
        return values.repeat(1, 3), indices, x.max(-1).values, torch.max(x)


class ShapeBranch(MaxRepeat):
    """The same, behind a branch on a size: torch.fx cannot trace it, torch.export can."""

    def forward(self, x):
        if x.shape[1] > 2:
            x = x * 2
        return super().forward(x)


@pytest.mark.parametrize("cls", [MaxRepeat, ShapeBranch])
def test_max_with_indices_and_repeat(cls):
    torch.manual_seed(0)
    module = cls().eval()
    x = torch.randn(2, 5, 6)
    model = rebuild(module, (x,))
    got = as_list(model(x.numpy()))
    with torch.no_grad():
        want = [t.numpy() for t in module(x)]
    assert [np.asarray(g).dtype for g in got][1] == np.int64
    np.testing.assert_array_equal(np.asarray(got[1]), want[1])   # the indices, exactly
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-5, atol=1e-6)


class Uncovered(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Linear(4, 4), Flip())

    def forward(self, x):
        if x.shape[0] > 1:   # torch.fx cannot trace this
            x = x + 1
        return self.block(x)


class Flip(nn.Module):
    def forward(self, x):
        return torch.flip(x, dims=[1])


def test_an_uncovered_op_is_one_error_naming_the_op_and_the_module():
    with pytest.raises(UnsupportedError, match=r"aten\.flip\.default \(in block\.1, a Flip\)"):
        rebuild(Uncovered().eval(), (torch.randn(2, 4),))


class BranchGRU(nn.Module):
    """A GRU (its module returns (output, h); ATen's op the same, flat) after F.normalize
    (clamp_min in ATen), behind a branch on a size: through torch.export."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(6, 5, batch_first=True)

    def forward(self, x):
        if x.shape[1] > 2:
            x = torch.nn.functional.normalize(x, dim=-1)
        out, h = self.gru(x)
        return out, h


def test_a_module_returning_a_tuple_is_one_keras_layer_through_the_export():
    torch.manual_seed(0)
    module = BranchGRU().eval()
    x = torch.randn(2, 5, 6)
    model = rebuild(module, (x,))
    assert type(model.get_layer("gru")).__name__ == "GRU"
    with torch.no_grad():
        want = [t.numpy() for t in module(x)]
    got = as_list(model(x.numpy()))
    assert_within_magnitude(got, want, "BranchGRU")


def test_more_models_of_the_same_families_need_no_special_code():
    """RoBERTa (position ids from the token ids: cumsum, gather) and ConvNeXt (F.layer_norm
    on its own weight over channels first), tiny configs."""
    import transformers as T

    torch.manual_seed(0)
    ids = torch.randint(2, 50, (2, 7))
    cases = [(T.RobertaModel(T.RobertaConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=40, pad_token_id=1, bos_token_id=0,
        eos_token_id=2)), ids),
        (T.ConvNextModel(T.ConvNextConfig(num_channels=3, hidden_sizes=[8, 16], depths=[1, 1],
                                          num_stages=2, image_size=32)), torch.randn(2, 3, 32, 32))]
    for module, x in cases:
        module.eval()
        model = rebuild(module, (x,))
        got = as_list(model(x.numpy()))
        assert_within_magnitude(got, torch_outputs(module, x.numpy()), type(module).__name__)
    # a weight multiplied in directly is one Constant layer named by its path; F.layer_norm
    # in ConvNextLayerNorm (an nn.LayerNorm subclass whose call is nn.LayerNorm's forward on
    # its input) a Keras LayerNormalization named by its path, holding its weight
    scale = model.get_layer("encoder.stages.0.layers.0.layer_scale_parameter")
    assert type(scale).__name__ == "Constant"
    np.testing.assert_array_equal(scale.get_weights()[0], module.state_dict()[
        "encoder.stages.0.layers.0.layer_scale_parameter"].numpy())
    norm = model.get_layer("embeddings.layernorm")
    assert type(norm).__name__ == "LayerNormalization"
    np.testing.assert_array_equal(norm.get_weights()[0], module.state_dict()[
        "embeddings.layernorm.weight"].numpy())
