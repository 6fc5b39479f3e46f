"""Live models: the user's PyTorch module (``torch_side``) and its Keras rebuild.

Importing this package registers our Keras layers (``keras_layers``) and nothing heavier, so
``keras.models.load_model("model.keras")`` loads a rebuilt model after ``import
transcoder.models`` without torch. The rebuild itself (torch + keras) is
``from transcoder.models.rebuild import rebuild``; ``keras_checkpoint``,
``weights_from_checkpoint`` and ``supported`` are also reachable from here, loaded on first use.
"""
from __future__ import annotations

from . import keras_layers  # noqa: F401  (registers the layers with Keras)

_LAZY = ("keras_checkpoint", "weights_from_checkpoint", "supported")


def __getattr__(name: str):
    if name in _LAZY:
        from .rebuild import keras_checkpoint, supported, weights_from_checkpoint
        return {"keras_checkpoint": keras_checkpoint, "supported": supported,
                "weights_from_checkpoint": weights_from_checkpoint}[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
