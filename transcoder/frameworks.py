"""Importing the frameworks for the parts that need a live model.

TensorFlow's C++ start-up prints absl notices ("oneDNN custom operations are on ...") straight
to the stderr file descriptor, past ``TF_CPP_MIN_LOG_LEVEL``. The command promises one-line
messages, so the first import runs with that descriptor pointed at /dev/null; Python errors
still propagate as exceptions.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator


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


def import_frameworks() -> None:
    """Import torch and keras (TensorFlow backend) once, without TensorFlow's start-up noise."""
    if "keras" in sys.modules:
        return
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with _stderr_silenced():
        import keras  # noqa: F401
        import torch  # noqa: F401


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
