"""Shared test helpers: running the CLI in-process, exact tensor comparison, fixture paths,
"imports nothing heavy" in a fresh interpreter, a one-child PyTorch model; and the markers.

Markers (registered in pyproject.toml; CONTRIBUTING.md has the commands):

- ``live``: the test imports torch or TensorFlow/Keras when they are installed (it needs them,
  or it runs the forward check because they are there). Set here from what a test imports:
  every test of a module that imports a framework at its top (``torch =
  pytest.importorskip("torch")``), every test that uses a fixture named ``torch``, ``keras``
  or ``tensorflow``, every test whose own code imports one (``pytest.importorskip("keras")``
  in its body). Tests that reach a framework only through transcoder (the default check)
  carry ``@pytest.mark.live`` themselves. A test without the mark that imports a framework
  fails, naming the framework, so the mark cannot go missing unnoticed (it is seen when the
  framework is not yet imported: always under ``-m "not live"``).
- ``slow``: the test takes more than about 5 s on a quiet 2-core machine. Set by hand.

``pytest -m "not slow and not live"`` is the quick subset: it imports no framework.
"""
from __future__ import annotations

import functools
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterable

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
sys.path.insert(0, str(FIXTURES))  # the fixture models (fixtures/models.py)

#: The frameworks whose import makes a test ``live`` (and a command slow to start).
FRAMEWORKS = ("torch", "tensorflow", "keras")


#: A test's own code importing a framework (its body, not what it calls).
_IMPORTS_A_FRAMEWORK = re.compile(r"importorskip\(\s*[\"'](?:torch|tensorflow|keras)\b"
                                  r"|^\s*(?:import|from)\s+(?:torch|tensorflow|keras)\b", re.M)


def pytest_collection_modifyitems(items) -> None:
    """Mark ``live`` what imports a framework: see the module docstring."""
    for item in items:
        if _is_live(item):
            item.add_marker(pytest.mark.live)


def _is_live(item) -> bool:
    module = getattr(item, "module", None)
    function = getattr(item, "function", None)
    return ((module is not None and _module_imports_a_framework(module))
            or bool(set(getattr(item, "fixturenames", ())) & set(FRAMEWORKS))
            or (function is not None and _code_imports_a_framework(function))
            or any(_code_imports_a_framework(f) for f in _fixture_functions(item)))


def _fixture_functions(item) -> list:
    """The functions of the fixtures ``item`` uses (one that imports a framework makes it
    live: alone, the test would import it in its set-up)."""
    info = getattr(item, "_fixtureinfo", None)
    defs = getattr(info, "name2fixturedefs", {}) if info is not None else {}
    return [d.func for fixturedefs in defs.values() for d in fixturedefs]


def _module_imports_a_framework(module) -> bool:
    names = (getattr(value, "__name__", "") for value in vars(module).values()
             if isinstance(value, type(sys)))
    return any(name.split(".")[0] in FRAMEWORKS for name in names)


@functools.cache
def _code_imports_a_framework(function) -> bool:
    try:
        return bool(_IMPORTS_A_FRAMEWORK.search(inspect.getsource(function)))
    except (OSError, TypeError):
        return False


_FRAMEWORKS_BEFORE = pytest.StashKey[set]()


def _loaded_frameworks() -> set[str]:
    return {name for name in FRAMEWORKS if name in sys.modules}


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item) -> None:
    item.stash[_FRAMEWORKS_BEFORE] = _loaded_frameworks()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """A test not marked ``live`` that imported a framework fails (the mark was missing)."""
    result = yield
    imported = _loaded_frameworks() - item.stash.get(_FRAMEWORKS_BEFORE, set())
    if imported and item.get_closest_marker("live") is None:
        pytest.fail(f"imported {', '.join(sorted(imported))}: mark the test "
                    "@pytest.mark.live (tests/conftest.py)", pytrace=False)
    return result


@pytest.fixture
def cli(capsys):
    """Run ``transcode ARGS`` in-process; returns (exit code, stdout, stderr)."""
    from transcoder.cli import main

    def run(*args: object) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def assert_imports_none_of(code: str, forbidden: Iterable[str], *argv: object,
                           timeout: float = 120) -> str:
    """Run ``code`` in a fresh interpreter (``sys.argv[1:]`` = ``argv``, from the project root)
    and assert that it succeeds and that none of ``forbidden`` is in ``sys.modules`` afterwards.
    Returns its standard output (the report line removed)."""
    forbidden = tuple(forbidden)
    report = (f"\nimport sys as _sys\nprint('imported:', "
              f"[m for m in {forbidden!r} if m in _sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code + report, *map(str, argv)],
                          capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    *out, last = proc.stdout.rstrip("\n").split("\n")
    assert last == "imported: []", f"{last} (forbidden: {forbidden})"
    return "\n".join(out)


def one_child(child, name: str = "block"):
    """A PyTorch model whose only layer is ``child``, at the module path ``name`` (state dict
    keys ``name.weight`` ...), and whose forward calls it: one layer seen inside a model."""
    return _one_child_class()(name, child)


@functools.cache
def _one_child_class():
    from torch import nn

    class OneChild(nn.Module):
        def __init__(self, name: str, child) -> None:
            super().__init__()
            self.child_name = name
            self.add_module(name, child)

        def forward(self, x):
            return getattr(self, self.child_name)(x)

    return OneChild


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
