"""Shared test helpers: running the CLI in-process, exact tensor comparison, fixture paths."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
sys.path.insert(0, str(FIXTURES))  # the fixture models (fixtures/models.py)


@pytest.fixture
def cli(capsys):
    """Run ``transcode ARGS`` in-process; returns (exit code, stdout, stderr)."""
    from transcoder.cli import main

    def run(*args: object) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def assert_bit_exact(a: np.ndarray, b: np.ndarray, what: str = "") -> None:
    """Same dtype, shape and bytes (NaNs and signed zeros included)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype, f"{what}: dtype {a.dtype} != {b.dtype}"
    assert a.shape == b.shape, f"{what}: shape {a.shape} != {b.shape}"
    assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes(), f"{what}: bytes differ"


def assert_close(actual, expected, rtol: float = 1e-5, atol: float = 1e-6, what: str = "") -> None:
    """|actual - expected| <= atol + rtol * |expected| everywhere (absolute, never signed)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    err = np.abs(actual - expected)
    bound = atol + rtol * np.abs(expected)
    worst = float(np.max(err - bound)) if err.size else 0.0
    assert np.all(err <= bound), f"{what}: max abs error {err.max():.3g} exceeds tolerance by {worst:.3g}"


def torch_state(path: Path) -> dict:
    """A state dict as torch itself loads it (the reference for round trips)."""
    import torch

    return torch.load(path, weights_only=True)


def to_numpy(tensor) -> np.ndarray:
    """Exact numpy copy of a torch tensor (bfloat16 through ml_dtypes)."""
    import ml_dtypes
    import torch

    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.detach().numpy()
