"""Running the two models of a full-model check: the same inputs through PyTorch and Keras,
outputs as numpy (nested outputs flattened in a fixed order)."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import UsageError, one_line
from ..frameworks import to_numpy, torch_from_numpy
from ..models.torch_side import forward


def run_torch(module, inputs: list[np.ndarray]):
    """The module's output on ``inputs`` (PyTorch layout), as a tree of numpy arrays."""
    return numpy_tree(forward(module, [torch_from_numpy(x) for x in inputs]))


def run_keras(model, inputs: list[np.ndarray]):
    """The Keras model's output on ``inputs`` (in its layout), as a tree of numpy arrays."""
    try:
        return numpy_tree(model(inputs[0] if len(inputs) == 1 else list(inputs), training=False))
    except Exception as exc:  # noqa: BLE001
        raise UsageError(f"the Keras model fails on inputs of shapes "
                         f"{[list(x.shape) for x in inputs]} ({one_line(exc)})",
                         hint="a channels-last Keras model needs --channels-last") from None


def numpy_tree(value):
    if isinstance(value, dict):
        return {k: numpy_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [numpy_tree(v) for v in value]
    if value is None or isinstance(value, (int, float, bool)):
        return None if value is None else np.asarray(value)
    return to_numpy(value)


def flatten_outputs(value: Any, prefix: str = "output") -> list[tuple[str, Any]]:
    """Tensors of a (nested) output in order: tuples/lists by index, dicts by sorted key."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [item for key in sorted(value, key=str)
                for item in flatten_outputs(value[key], f"{prefix}.{key}")]
    if isinstance(value, (list, tuple)):
        return [item for i, v in enumerate(value) for item in flatten_outputs(v, f"{prefix}[{i}]")]
    return [(prefix, value)]
