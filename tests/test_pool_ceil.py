"""Max and average pooling with ``ceil_mode=True`` in the Keras rebuild, against PyTorch itself:
odd sizes, strides and padding, so that the last window is partial; average pooling divides
as PyTorch does (``count_include_pad`` both ways, ``divisor_override``)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs torch: pip install '.[check]'")
keras = pytest.importorskip("keras")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from conftest import assert_close, one_child  # noqa: E402
from transcoder.models.rebuild import rebuild  # noqa: E402
from transcoder.models.rebuild.builders.pool import Window  # noqa: E402


def _matches_torch(module, x, what: str) -> None:
    module.eval()
    model = rebuild(module, (x,))
    ours = [type(layer).__name__ for layer in model.layers
            if type(layer).__module__.startswith("transcoder.")]
    if "Avg" in what:   # zero padding and Rescaling; max pooling pads with a TensorOp
        assert not ours, f"{what}: built with our own layers {ours}; Keras' built-ins do it"
    with torch.no_grad():
        expected = module(x).numpy()
    got = np.asarray(model(x.numpy()))
    assert got.shape == expected.shape, what
    assert_close(got, expected, rtol=1e-5, atol=1e-6, what=what)


POOLS_2D = [(kind, k, s, p, cip)
            for kind, k, s, p, cip in itertools.product(("max", "avg"), (2, 3), (1, 2, 3), (0, 1),
                                                        (True, False))
            if p <= k // 2 and (kind == "avg" or cip)]


@pytest.mark.parametrize("kind,k,s,p,cip", POOLS_2D)
def test_ceil_mode_pooling_2d_computes_what_pytorch_computes(kind, k, s, p, cip):
    torch.manual_seed(0)
    pool = (nn.MaxPool2d(k, s, p, ceil_mode=True) if kind == "max" else
            nn.AvgPool2d(k, s, p, ceil_mode=True, count_include_pad=cip))
    for size in ((7, 9), (8, 5)):
        _matches_torch(one_child(pool), torch.randn(2, 3, *size), f"{pool} on {size}")


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_ceil_mode_pooling_1d_and_3d(n, kind):
    torch.manual_seed(1)
    cls = getattr(nn, f"{kind.capitalize()}Pool{n}d")
    extra = {} if kind == "max" else {"count_include_pad": False}
    size = (11,) if n == 1 else (5, 7, 6)
    _matches_torch(one_child(cls(3, 2, 1, ceil_mode=True, **extra)), torch.randn(2, 3, *size), cls.__name__)


def test_functional_pooling_with_ceil_mode_and_divisor_override():
    class Net(nn.Module):
        def forward(self, x):
            a = F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, divisor_override=4)
            b = F.max_pool2d(x, 2, 2, 1, ceil_mode=True)
            return a, b

    torch.manual_seed(2)
    x = torch.randn(2, 3, 9, 8)
    model = rebuild(Net().eval(), (x,))
    got = [np.asarray(y) for y in model(x.numpy())]
    for g, e in zip(got, Net()(x)):
        assert_close(g, e.numpy(), rtol=1e-5, atol=1e-6, what="functional pooling")


def test_window_sizes_follow_pytorchs_rule():
    """The last window must start inside the input or its left padding: 5 with k=2, s=2, p=1
    gives 3 windows (4 would start past the padding), as PyTorch says."""
    for size, k, s, p in itertools.product(range(3, 12), (2, 3, 4), (1, 2, 3), (0, 1, 2)):
        if p > k // 2 or size + 2 * p < k:
            continue
        out = F.max_pool1d(torch.zeros(1, 1, size), k, s, p, ceil_mode=True).shape[-1]
        assert Window(size, k, s, p, True).out == out, (size, k, s, p)
