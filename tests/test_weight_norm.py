"""Weight norm in both PyTorch APIs (``weight_g``/``weight_v`` and
``parametrizations.weight.original0/1``): folded into plain Keras kernels, said so, checked
against the PyTorch module with weight norm, and restored bit for bit on the way back.

The fixture is a vocoder-like stack (make_fixtures.write_weight_norm): Conv1d, ConvTranspose1d,
a bias-free Conv1d normed over the whole weight (dim=None) and a Linear. The independent
reference is a hand-written Keras model of plain layers (keras_twins.weight_norm_net) loaded
with the converted file, against the PyTorch module with weight norm.
"""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs torch: pip install '.[check]'")
keras = pytest.importorskip("keras")

import keras_twins  # noqa: E402
import make_fixtures  # noqa: E402
import models  # noqa: E402
from conftest import FIXTURES, assert_bit_exact, assert_close  # noqa: E402
from transcoder.checks.compare import FAIL  # noqa: E402
from transcoder.checks.layers import check_layers  # noqa: E402
from transcoder.pipeline import read  # noqa: E402
from transcoder.rules import weightnorm  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*weight_norm.*deprecated:FutureWarning")
RTOL, ATOL = 1e-4, 1e-5
LAYERS = ("pre", "up", "post", "proj")
APIS = {"old": False, "new": True}


def module_of(new_api: bool, path) -> torch.nn.Module:
    module = models.WeightNormNet(new_api=new_api).eval()
    module.load_state_dict(torch.load(path, weights_only=True), strict=True)
    return module


@pytest.fixture(scope="module", params=list(APIS))
def normed(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"wn_{request.param}")
    return APIS[request.param], make_fixtures.write_weight_norm(tmp, APIS[request.param]), tmp


def test_folded_said_checked_and_computing_what_pytorch_computes(normed, cli):
    new_api, src, tmp = normed
    code, out, err = cli(src, tmp / "wn.h5", "--force")
    assert code == 0, err
    for name in LAYERS:
        assert f"{name}: weight norm (" in err and "folded into its Keras kernel" in err
        line = next(line for line in out.splitlines() if line.startswith(f"SUCCESS\t{name}\t"))
        assert "weight norm folded" in line
    twin = keras_twins.weight_norm_net()
    twin.load_weights(tmp / "wn.h5", by_name=True)
    x = np.random.default_rng(0).standard_normal((3, 4, 9)).astype(np.float32)
    with torch.no_grad():
        expected = module_of(new_api, src)(torch.from_numpy(x)).numpy()
    assert_close(np.asarray(twin(np.moveaxis(x, 1, -1))), expected, RTOL, ATOL, "folded")


def test_the_way_back_restores_g_and_v_bit_for_bit(normed, cli):
    new_api, src, tmp = normed
    assert cli(src, tmp / "rt.h5", "--force")[0] == 0
    code, _, err = cli(tmp / "rt.h5", tmp / "rt.pt", "--force")
    assert code == 0, err
    original, back = (torch.load(p, weights_only=True) for p in (src, tmp / "rt.pt"))
    assert list(back) == list(original)
    for name, tensor in original.items():
        assert_bit_exact(back[name].numpy(), tensor.numpy(), name)
    module_of(new_api, tmp / "rt.pt")     # loads strictly into the weight-normed module


def test_rebuilt_in_keras_from_the_module_with_weight_norm(normed, cli):
    new_api, src, tmp = normed
    model = "WeightNormNetP" if new_api else "WeightNormNet"
    code, out, err = cli(src, tmp / "wn.keras", "--force", "--model",
                         f"{FIXTURES / 'models.py'}:{model}", "--input-shape", "2,4,9")
    assert code == 0, err
    assert "check passed" in out
    rebuilt = keras.models.load_model(tmp / "wn.keras")
    x = np.random.default_rng(1).standard_normal((2, 4, 9)).astype(np.float32)
    with torch.no_grad():
        expected = module_of(new_api, src)(torch.from_numpy(x)).numpy()
    assert_close(np.asarray(rebuilt(x)), expected, RTOL, ATOL, "rebuilt")


def test_a_kernel_changed_in_keras_comes_back_as_v_with_its_norm(tmp_path, cli):
    src = make_fixtures.write_weight_norm(tmp_path, new_api=True)
    assert cli(src, tmp_path / "wn.h5")[0] == 0
    with h5py.File(tmp_path / "wn.h5", "r+") as f:
        kernel = f["proj/proj/kernel"]
        kernel[...] = kernel[...] * 2
        changed = np.asarray(kernel)
    code, _, err = cli(tmp_path / "wn.h5", tmp_path / "back.pt", "--no-check")
    assert code == 0, err
    assert "proj/kernel: not the fold of the g and v carried with it" in err
    module = module_of(True, tmp_path / "back.pt")
    assert_close(module.proj.weight.detach().numpy(), changed.T, 1e-6, 1e-7, "refolded")
    original = torch.load(src, weights_only=True)
    assert_bit_exact(module.pre.parametrizations.weight.original0.detach().numpy(),
                     original["pre.parametrizations.weight.original0"].numpy(), "untouched g")


def test_the_layer_check_fails_a_fold_that_forgets_g(monkeypatch, tmp_path):
    src = make_fixtures.write_weight_norm(tmp_path)
    monkeypatch.setattr(weightnorm, "fold", lambda g, v: v)
    with read(src) as ckpt:
        report = check_layers(ckpt)
    assert {e.name: e.status for e in report.entries} == {n: FAIL for n in LAYERS}


def test_weight_norm_on_a_family_that_cannot_fold_it_is_not_checked(tmp_path, cli):
    embedding = torch.nn.utils.parametrizations.weight_norm(torch.nn.Embedding(6, 3))
    state = {f"embedding.{k}": v for k, v in embedding.state_dict().items()}
    state.update({"fc.weight": torch.ones(2, 3), "fc.bias": torch.zeros(2)})
    torch.save(state, tmp_path / "e.pt")
    code, out, err = cli(tmp_path / "e.pt", tmp_path / "e.h5")
    assert code == 0, err
    assert ("embedding: weights carried verbatim, not mapped (weight norm is folded for Linear, "
            "Conv and ConvTranspose only, not Embedding)") in err
    assert "NOT CHECKED\tembedding" in out and "SUCCESS\tfc" in out
    assert "only 1 of 2 layers verified" in out


def test_the_rule_table_shows_weight_norm(cli):
    code, out, _ = cli("rules", "--json")
    assert code == 0
    rows = [r for r in json.loads(out)["rows"] if "weight_g" in r["torch tensor"]]
    assert {r["rule"] for r in rows} == {"Linear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d",
                                         "ConvTranspose2d", "ConvTranspose3d"}
    assert all("parametrizations.weight.original0" in r["torch tensor"] for r in rows)
    assert all(r["op"].startswith("fold g * v / ||v||") for r in rows)
