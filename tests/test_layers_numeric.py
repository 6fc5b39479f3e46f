"""One small model per rule: PyTorch -> .h5 (from .pt and from .safetensors) -> a hand-written
Keras twin loaded by layer name computes the same outputs; and every file round trip is bit-exact.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
torch = pytest.importorskip("torch", reason="needs torch: pip install '.[check]'")
from safetensors.torch import save_file
from torch import nn

from conftest import assert_bit_exact, assert_close, one_child, to_numpy, torch_state
from transcoder.pipeline import transcode

keras = pytest.importorskip("keras")
L = keras.layers


@dataclass
class Case:
    name: str                          # module path = Keras layer name
    torch_layer: Callable[[], nn.Module]
    keras_layer: Callable[[str], object]
    input_shape: tuple                 # PyTorch layout, batch included
    channels_first: bool = False       # move axis 1 to the end for Keras
    integer_input: int = 0             # > 0: integer inputs below this


CASES = [
    Case("fc", lambda: nn.Linear(6, 4), lambda n: L.Dense(4, name=n), (3, 6)),
    Case("proj", lambda: nn.Linear(6, 4, bias=False), lambda n: L.Dense(4, use_bias=False, name=n), (3, 6)),
    Case("conv1d", lambda: nn.Conv1d(4, 6, 3, groups=2),
         lambda n: L.Conv1D(6, 3, groups=2, name=n), (2, 4, 9), True),
    Case("dwconv", lambda: nn.Conv1d(4, 8, 3, groups=4, bias=False),
         lambda n: L.Conv1D(8, 3, groups=4, use_bias=False, name=n), (2, 4, 9), True),
    Case("conv2d", lambda: nn.Conv2d(4, 6, 3, stride=2, groups=2),
         lambda n: L.Conv2D(6, 3, strides=2, groups=2, name=n), (2, 4, 9, 7), True),
    Case("conv3d", lambda: nn.Conv3d(2, 3, 2), lambda n: L.Conv3D(3, 2, name=n), (2, 2, 4, 5, 3), True),
    Case("deconv1d", lambda: nn.ConvTranspose1d(4, 3, 3, stride=2),
         lambda n: L.Conv1DTranspose(3, 3, strides=2, name=n), (2, 4, 6), True),
    Case("deconv2d", lambda: nn.ConvTranspose2d(4, 3, 2, stride=2),
         lambda n: L.Conv2DTranspose(3, 2, strides=2, name=n), (2, 4, 5, 3), True),
    Case("deconv3d", lambda: nn.ConvTranspose3d(2, 3, 2, stride=2),
         lambda n: L.Conv3DTranspose(3, 2, strides=2, name=n), (2, 2, 3, 2, 2), True),
    Case("bn1", lambda: nn.BatchNorm1d(5), lambda n: L.BatchNormalization(epsilon=1e-5, name=n), (4, 5)),
    Case("bn2", lambda: nn.BatchNorm2d(3),
         lambda n: L.BatchNormalization(epsilon=1e-5, name=n), (2, 3, 4, 4), True),
    Case("bn3", lambda: nn.BatchNorm3d(3, affine=False),
         lambda n: L.BatchNormalization(epsilon=1e-5, center=False, scale=False, name=n),
         (2, 3, 2, 2, 2), True),
    Case("ln", lambda: nn.LayerNorm(6), lambda n: L.LayerNormalization(epsilon=1e-5, name=n), (3, 6)),
    Case("rms_norm", lambda: nn.RMSNorm(6, eps=1e-5),
         lambda n: L.RMSNormalization(epsilon=1e-5, name=n), (3, 6)),
    Case("gn", lambda: nn.GroupNorm(2, 6),
         lambda n: L.GroupNormalization(groups=2, epsilon=1e-5, name=n), (2, 6, 3, 3), True),
    Case("instance_norm", lambda: nn.InstanceNorm2d(4, affine=True),
         lambda n: L.GroupNormalization(groups=-1, epsilon=1e-5, name=n), (2, 4, 3, 3), True),
    Case("embedding", lambda: nn.Embedding(10, 4), lambda n: L.Embedding(10, 4, name=n), (3, 5),
         integer_input=10),
    Case("prelu", lambda: nn.PReLU(6), lambda n: L.PReLU(name=n), (3, 6)),
]


def build_torch(case: Case) -> nn.Module:
    torch.manual_seed(len(case.name))
    model = one_child(case.torch_layer(), case.name).eval()
    with torch.no_grad():  # non-trivial affine weights and running statistics
        for pname, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) + 0.5 if "var" in pname or "weight" in pname
                             and tensor.ndim == 1 else torch.randn_like(tensor))
    return model


def make_input(case: Case) -> np.ndarray:
    rng = np.random.default_rng(7)
    if case.integer_input:
        return rng.integers(0, case.integer_input, case.input_shape).astype(np.int64)
    return rng.standard_normal(case.input_shape).astype(np.float32)


def keras_twin(case: Case):
    shape = case.input_shape[1:]
    if case.channels_first:
        shape = shape[1:] + shape[:1]
    inputs = keras.Input(shape=shape, dtype="int32" if case.integer_input else "float32")
    return keras.Model(inputs, case.keras_layer(case.name)(inputs))


def keras_output(model, case: Case, x: np.ndarray) -> np.ndarray:
    y = np.asarray(model(np.moveaxis(x, 1, -1) if case.channels_first else x))
    return np.moveaxis(y, -1, 1) if case.channels_first else y


@pytest.fixture(scope="module", params=CASES, ids=lambda c: c.name)
def converted(request, tmp_path_factory):
    case = request.param
    tmp = tmp_path_factory.mktemp(case.name)
    model = build_torch(case)
    state = model.state_dict()
    torch.save(state, tmp / "m.pt")
    save_file({k: v.contiguous() for k, v in state.items()}, tmp / "m.safetensors")
    transcode(tmp / "m.pt", tmp / "from_pt.h5")
    transcode(tmp / "m.safetensors", tmp / "from_st.h5")
    return case, model, tmp


@pytest.mark.parametrize("source", ["from_pt.h5", "from_st.h5"])
def test_h5_loads_by_name_into_keras_twin_and_matches(converted, source):
    case, model, tmp = converted
    x = make_input(case)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    twin = keras_twin(case)
    twin.load_weights(tmp / source, by_name=True)
    assert_close(keras_output(twin, case, x), expected, rtol=1e-5, atol=1e-5, what=case.name)


@pytest.mark.parametrize("via", [".h5", ".safetensors"])
def test_round_trip_is_bit_exact(converted, via):
    case, model, tmp = converted
    middle, back = tmp / f"rt{via}", tmp / f"rt_back{via}.pt"
    transcode(tmp / "m.pt", middle, force=True)
    transcode(middle, back, force=True)
    original, restored = torch_state(tmp / "m.pt"), torch_state(back)
    assert list(restored) == list(original)
    for name, tensor in original.items():
        assert_bit_exact(to_numpy(restored[name]), to_numpy(tensor), name)
