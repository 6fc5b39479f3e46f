"""Importing the frameworks for the parts that need a live model.

TensorFlow's C++ start-up prints absl notices ("oneDNN custom operations are on ...", CUDA
drivers, CPU features, ``absl::InitializeLog``) straight to the stderr file descriptor, past
``TF_CPP_MIN_LOG_LEVEL``. The command promises one-line messages, so ``TF_CPP_MIN_LOG_LEVEL``
is set to 3 before TensorFlow is imported, the first import runs with that descriptor
pointed at /dev/null, and absl's Python logger (SavedModel exports' "WARNING:absl:...") is
set to errors only; Python errors still propagate as exceptions. A user who set
``TF_CPP_MIN_LOG_LEVEL`` themselves gets none of that: they asked for those lines.

While the frameworks load (seconds), a terminal shows "loading torch and TensorFlow..."
(:mod:`.progress`).
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager, nullcontext
from typing import Iterator

from . import progress
from .errors import MissingDependencyError

#: the user's own TF_CPP_MIN_LOG_LEVEL, read before we set ours (False: not read yet)
_user_log_level: "str | None | bool" = False


@contextmanager
def _stderr_silenced() -> Iterator[None]:
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def native_stderr_silenced():
    """A context in which what C++ code writes to the stderr descriptor (TensorFlow's and
    LiteRT's notices, the TFLite converter's MLIR dumps) is dropped; Python errors still
    propagate."""
    return _stderr_silenced()


#: Set before Keras is first imported: the TensorFlow backend, and no C++ start-up logging.
QUIET_FRAMEWORKS = {"KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
CHECK_EXTRA = "pip install 'transcoder[check]'"


#: set by :func:`prefer_keras_backend` (the command, for a check deployed nowhere): Keras may
#: load without ``torch._dynamo`` (see :func:`_without_dynamo`)
_lean_keras = False


def prefer_keras_backend(name: str) -> None:
    """Run Keras on ``name`` ("torch") in this process unless Keras is loaded already or the
    user chose a backend (``KERAS_BACKEND``). Only the command calls this, for checks whose
    Keras side deploys nowhere: a library must not pick its user's backend. Nothing compiles
    in that process: Keras loads there without torch's compiler (:func:`_without_dynamo`)."""
    global _lean_keras
    if sys.modules.get("keras") is None:
        os.environ.setdefault("KERAS_BACKEND", name)
        _lean_keras = True


def _dynamo_disable(fn=None, recursive=True, **kwargs):
    """``torch._dynamo.disable`` where nothing is compiled: the function as it is."""
    return fn if fn is not None else (lambda f: f)


def _real_dynamo(stand_in):
    """The real ``torch._dynamo``, for anything a Keras asks of it beyond ``disable`` (a later
    Keras): imported then, at its full cost."""
    import importlib

    if sys.modules.get("torch._dynamo") is stand_in:
        del sys.modules["torch._dynamo"]
    return importlib.import_module("torch._dynamo")


@contextmanager
def _without_dynamo() -> Iterator[None]:
    """Keras' torch backend imports ``torch._dynamo`` (torch's compiler stack, sympy: 72 MiB
    resident of the check's 335, measured) only to mark two functions ``@dynamo.disable()``
    when its modules load, which matters only under ``torch.compile``. Where the command chose
    that backend (:func:`prefer_keras_backend`), nothing compiles: while Keras loads, a
    stand-in module whose ``disable()`` leaves functions as they are; taken out after, so a
    later ``import torch._dynamo`` gets the real one."""
    if not (_lean_keras and os.environ.get("KERAS_BACKEND") == "torch"
            and sys.modules.get("keras") is None and "torch._dynamo" not in sys.modules):
        yield
        return
    import types

    import torch  # noqa: F401  (before the stand-in: torch's own import is untouched)

    stand_in = types.ModuleType("torch._dynamo", "stand-in while Keras loads (frameworks.py)")
    stand_in.disable = _dynamo_disable
    stand_in.__getattr__ = lambda name: getattr(_real_dynamo(stand_in), name)
    sys.modules["torch._dynamo"] = stand_in
    try:
        yield
    finally:
        if sys.modules.get("torch._dynamo") is stand_in:
            del sys.modules["torch._dynamo"]


def quiet_framework_environment() -> None:
    """Environment defaults read when Keras and TensorFlow are first imported."""
    global _user_log_level
    if _user_log_level is False:
        _user_log_level = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
    for name, value in QUIET_FRAMEWORKS.items():
        os.environ.setdefault(name, value)


def _quiet() -> bool:
    """Whether TensorFlow's start-up lines are ours to hide (the user set no log level)."""
    return _user_log_level in (None, False)


@contextmanager
def _loading(names: list[str]) -> Iterator[None]:
    """The first import of ``names``: a line on a terminal, TensorFlow's start-up silenced."""
    missing = [n for n in names if sys.modules.get(n) is None]
    if not missing:
        yield
        return
    shown = [LABELS.get(n, n) for n in missing]
    if "keras" in missing and os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow" \
            and sys.modules.get("tensorflow") is None:
        shown.append("TensorFlow")
    with progress.status(f"loading {' and '.join(shown)}..."), \
            _stderr_silenced() if _quiet() else nullcontext():
        yield
    _silence_absl()


def _silence_absl() -> None:
    """absl's Python logger (TensorFlow's "WARNING:absl:..." lines) to errors only, unless the
    user chose a TensorFlow log level."""
    absl_logging = sys.modules.get("absl.logging")
    if absl_logging is not None and _quiet():
        absl_logging.set_verbosity(absl_logging.ERROR)


LABELS = {"torch": "torch", "keras": "Keras"}


def import_frameworks() -> None:
    """Import torch and keras (TensorFlow backend) once, without TensorFlow's start-up noise;
    MissingDependencyError when either is not installed."""
    if all(sys.modules.get(name) is not None for name in ("keras", "torch")):
        return
    quiet_framework_environment()
    try:
        with _loading(["torch", "keras"]), _without_dynamo():
            import keras  # noqa: F401
            import torch  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(f"a live model needs torch and keras ({exc.name} is not "
                                     f"installed)", hint=CHECK_EXTRA) from None


def import_torch():
    """``torch``, or MissingDependencyError naming the extra to install."""
    try:
        with _loading(["torch"]):
            import torch
    except ImportError:
        raise MissingDependencyError("the forward check needs torch", hint=CHECK_EXTRA) from None
    return torch


def import_keras():
    """``keras`` on the TensorFlow backend (unless KERAS_BACKEND says otherwise), quietly."""
    quiet_framework_environment()
    try:
        with _loading(["keras"]), _without_dynamo():
            import keras
    except ImportError:
        raise MissingDependencyError("the forward check needs keras (tensorflow-cpu)",
                                     hint=CHECK_EXTRA) from None
    return keras


def to_numpy(value):
    """A framework tensor (torch or a Keras backend's) as a numpy array, values exact."""
    import numpy as np

    if hasattr(value, "detach"):          # torch
        return numpy_from_torch(value)
    if hasattr(value, "numpy") and not isinstance(value, np.ndarray):
        return np.asarray(value.numpy())
    return np.asarray(value)


def torch_from_numpy(array):
    """A torch tensor with the array's exact values (bfloat16 through an int16 view)."""
    import ml_dtypes
    import numpy as np
    import torch

    array = np.array(array)  # a writable, contiguous copy: torch shares its memory
    if array.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def numpy_from_torch(tensor):
    """A numpy array with the tensor's exact values (bfloat16 as ml_dtypes.bfloat16)."""
    import ml_dtypes
    import torch

    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()
