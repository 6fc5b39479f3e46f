"""The LayerScale family (``rules/families/layer_scale.py``): timm's per-channel ``gamma``.

A family added as one module, one registry line and our Keras layer (``models/keras_layers.py``).
Proven end to end: a PyTorch state dict holding a timm-style ``LayerScale`` goes to ``.h5`` and
``.weights.h5`` and back bit-exact; the per-layer check builds both sides and passes, and fails
on a sabotaged gamma; Keras files holding our ``LayerScale`` (``.keras`` and legacy ``.h5``,
saved by Keras) convert to PyTorch, where the model computes what the Keras model computes.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs torch: pip install '.[check]'")
keras = pytest.importorskip("keras")

from conftest import ROOT, assert_bit_exact, assert_close, torch_state  # noqa: E402
from transcoder.checkpoint import TensorRef  # noqa: E402
from transcoder.models.keras_layers import LayerScale as KerasLayerScale  # noqa: E402
from transcoder.rules import registry  # noqa: E402
from transcoder.rules.infer import infer_keras_kind, infer_torch_kind  # noqa: E402

DIM, TOKENS = 8, 5


class LayerScale(torch.nn.Module):
    """timm.layers.LayerScale, as timm writes it (the class name is what --model sees)."""

    def __init__(self, dim: int, init_values: float = 1e-5) -> None:
        super().__init__()
        self.gamma = torch.nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class Block(torch.nn.Module):
    """``x + ls1(fc(x))``, the residual branch of a ViT block, cut down."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(DIM, DIM)
        self.ls1 = LayerScale(DIM)

    def forward(self, x):
        return x + self.ls1(self.fc(x))


KERAS_BLOCK = textwrap.dedent('''
    import keras
    from transcoder.models.keras_layers import LayerScale

    def block():
        x = keras.Input((5, 8))
        y = LayerScale(name="ls1")(keras.layers.Dense(8, name="fc")(x))
        return keras.Model(x, keras.layers.Add()([x, y]))
''')


@pytest.fixture
def block_pt(tmp_path):
    torch.manual_seed(0)
    block = Block()
    with torch.no_grad():
        block.ls1.gamma.copy_(torch.randn(DIM))   # not the init value: a trained one
    path = tmp_path / "block.pt"
    torch.save(block.state_dict(), path)
    return path


def _keras_block_spec(tmp_path) -> str:
    (tmp_path / "keras_block.py").write_text(KERAS_BLOCK)
    return f"{tmp_path / 'keras_block.py'}:block"


def _same_state(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for name in a:
        assert_bit_exact(a[name].numpy(), b[name].numpy(), name)


def _line(out: str, layer: str) -> list[str]:
    """The per-layer check's row of ``layer``: status, name, kinds, max abs error ..."""
    rows = [line.split("\t") for line in out.splitlines()]
    return next(r for r in rows if len(r) > 3 and r[1] == layer and r[0].isupper())


@pytest.mark.parametrize("target", ["b.h5", "b.weights.h5"])
def test_a_layer_scale_goes_to_keras_and_back_bit_exact(cli, tmp_path, block_pt, target):
    keras_model = ["--keras-model", _keras_block_spec(tmp_path)] if "weights" in target else []
    code, out, err = cli(block_pt, tmp_path / target, "--force", *keras_model)
    assert code == 0, err
    status = _line(out, "ls1")
    assert status[0] == "SUCCESS" and status[2] == "LayerScale -> LayerScale", out
    assert float(status[3]) == 0.0                 # x * gamma, the same float32 product
    code, out, err = cli(tmp_path / target, tmp_path / "back.pt", "--force")
    assert code == 0, err
    _same_state(torch_state(block_pt), torch_state(tmp_path / "back.pt"))


def test_the_keras_3_file_names_the_gamma_by_the_family(cli, tmp_path, block_pt):
    """Keras 3 stores ``layers/layer_scale/vars/0`` unnamed: the family names it ``gamma``."""
    cli(block_pt, tmp_path / "b.weights.h5", "--force", "--keras-model",
        _keras_block_spec(tmp_path), "--no-check")
    with h5py.File(tmp_path / "b.weights.h5") as f:
        stored = np.asarray(f["layers/layer_scale/vars/0"])
    assert_bit_exact(stored, torch_state(block_pt)["ls1.gamma"].numpy())
    code, out, err = cli("inspect", tmp_path / "b.weights.h5")
    assert code == 0, err
    assert "ls1/gamma\t(8)\tfloat32\tLayerScale\tcopy\tls1.gamma\t(8)" in out


def test_a_sabotaged_gamma_fails_the_per_layer_check(cli, tmp_path, block_pt):
    assert cli(block_pt, tmp_path / "b.h5", "--force", "--no-check")[0] == 0
    with h5py.File(tmp_path / "b.h5", "r+") as f:
        gamma = f["ls1/ls1/gamma"]
        gamma[3] = gamma[3] * 1.5
    code, out, err = cli("check", block_pt, tmp_path / "b.h5")
    assert code == 1, out + err
    status = _line(out, "ls1")
    assert status[0] == "FAIL" and float(status[3]) > 1e-3
    assert _line(out, "fc")[0] == "SUCCESS"


@pytest.mark.parametrize("saved", ["k.keras", "k.h5"])
def test_keras_files_with_our_layer_scale_convert_to_pytorch(cli, tmp_path, saved):
    """Keras writes our layer's class as ``transcoder>LayerScale`` in the config: the family's
    ``keras_package`` finds it. The PyTorch model computes what the Keras model computes."""
    x = keras.Input((TOKENS, DIM))
    y = KerasLayerScale(name="ls1")(keras.layers.Dense(DIM, name="fc")(x))
    model = keras.Model(x, keras.layers.Add()([x, y]))
    gamma = np.random.default_rng(0).standard_normal(DIM).astype("f4")
    model.get_layer("ls1").set_weights([gamma])
    model.save(tmp_path / saved)
    code, out, err = cli(tmp_path / saved, tmp_path / "k.pt", "--force")
    assert code == 0, err
    assert _line(out, "ls1")[0] == "SUCCESS"
    state = torch_state(tmp_path / "k.pt")
    assert_bit_exact(state["ls1.gamma"].numpy(), gamma)
    block = Block()
    block.load_state_dict(state, strict=True)
    inputs = np.random.default_rng(1).standard_normal((2, TOKENS, DIM)).astype("f4")
    with torch.no_grad():
        ours = block(torch.from_numpy(inputs)).numpy()
    assert_close(ours, np.asarray(model(inputs)), rtol=1e-5, atol=1e-6)


def _ref(name: str, shape: tuple) -> TensorRef:
    return TensorRef(name, shape, "float32", lambda: np.zeros(shape, "f4"))


def test_a_lone_gamma_is_a_layer_scale_only_where_the_name_says_so():
    gamma = {"gamma": _ref("blocks.0.ls1.gamma", (8,))}
    assert infer_torch_kind("blocks.0.ls1", gamma).kind == "LayerScale"
    assert infer_torch_kind("encoder.layer_scale", gamma).kind == "LayerScale"
    assert infer_torch_kind("blocks.0.mlp", gamma).kind is None          # carried, as before
    assert infer_torch_kind("blocks.0.ls1", {"gamma": _ref("g", (8, 1, 1))}).kind is None
    assert infer_keras_kind("blocks.0.ls1", gamma).kind == "LayerScale"
    assert infer_keras_kind("norm", gamma).kind == "LayerNormalization"  # as before


def test_the_family_is_one_module_and_one_registry_line():
    family = registry.TABLE.by_name("LayerScale")
    assert family.__module__.endswith("rules.families.layer_scale")
    assert registry.TABLE.for_keras_kind("transcoder>LayerScale") is family
    assert registry.TABLE.keras_kinds().count("LayerScale") == 1
    assert "rebuild" in family.cannot                       # timm's class is not torch.nn


def test_our_layers_register_after_a_find_spec_probe_of_keras():
    """The check asks ``importlib.util.find_spec("keras")`` before importing Keras; that probe
    used to use up the registering hook, so our layers were unknown to Keras afterwards."""
    probe = ("import importlib.util, transcoder; importlib.util.find_spec('keras'); "
             "import keras; print(keras.saving.get_registered_object('transcoder>LayerScale'))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.stdout.strip().endswith("LayerScale'>"), done.stdout + done.stderr


def test_keras_applications_convnext_layer_scale_maps_too(cli, tmp_path):
    """Keras' own ConvNeXt (``keras.applications``) has a LayerScale of its own, ``x * gamma``
    on the channels-last axis: the family reads it by class, no code of ours involved."""
    convnext = pytest.importorskip("keras.src.applications.convnext")
    x = keras.Input((4, 4, DIM))
    y = convnext.LayerScale(1e-6, DIM, name="stages.0.ls")(keras.layers.Conv2D(DIM, 1)(x))
    model = keras.Model(x, y)
    gamma = np.random.default_rng(2).standard_normal(DIM).astype("f4")
    model.get_layer("stages.0.ls").set_weights([gamma])
    model.save(tmp_path / "cnx.keras")
    code, out, err = cli(tmp_path / "cnx.keras", tmp_path / "cnx.pt", "--force")
    assert code == 0, err
    assert _line(out, "stages.0.ls")[0] == "SUCCESS"
    assert_bit_exact(torch_state(tmp_path / "cnx.pt")["stages.0.ls.gamma"].numpy(), gamma)
