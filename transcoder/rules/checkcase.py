"""What a family's per-layer check builder gets and gives (numpy only).

The per-layer check (``transcoder.checks.layers``) builds every mapped layer twice from its
weights alone: a PyTorch module and a Keras layer. It hands the family's builder a
:class:`LayerCase` (the layer's tensors on both sides, its options, and ``torch.nn`` /
``keras.layers`` to build with) and gets back a :class:`Built`; a builder that cannot make this
layer raises :class:`Skip` with the reason.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

#: The batch size of a per-layer check's inputs.
BATCH = 2


class Skip(Exception):
    """A builder cannot make this layer; the message is the reason."""


@dataclass
class LayerCase:
    """What a builder gets: the tensors of one Keras layer on both sides."""

    name: str                       # Keras layer name
    module: str                     # PyTorch module path
    family: str                     # rule family
    torch: dict[str, np.ndarray]    # local PyTorch names (recurrent: normalised to _l0), float32
    keras: list[np.ndarray]         # Keras weights in Keras order, float32
    options: dict
    rng: np.random.Generator
    nn: Any = None                  # torch.nn
    layers: Any = None              # keras.layers
    steps: list = field(default_factory=list)

    def normal(self, shape) -> np.ndarray:
        return self.rng.standard_normal(shape).astype(np.float32)

    def has(self, name: str) -> bool:
        return name in self.torch

    def keras_has(self, weight: str) -> bool:
        """Whether the Keras layer holds a weight of this short name (``gamma``, ``bias``)."""
        return any(k.rsplit("/", 1)[-1] == weight for s in self.steps for k in s.keras)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.torch[name].shape)


@dataclass
class Built:
    """A PyTorch module and a Keras layer that should compute the same, and their input."""

    torch_module: Any
    keras_layer: Any
    inputs: list[np.ndarray]                  # PyTorch layout
    channels_last: bool = False               # Keras takes and gives the channel axis last
    torch_call: Callable | None = None        # (module, [tensors]) -> tensor
    keras_call: Callable | None = None        # (layer, [arrays]) -> tensor
    #: the Keras weights as the Keras layer loads them, when their layout has no Keras 3 layer
    #: (a Keras 2 CuDNNLSTM's, converted as tf.keras converts them)
    keras_weights: Callable[[list[np.ndarray]], list[np.ndarray]] | None = None
    note: str = ""


def spatial_sizes(kernel: tuple[int, ...], extra: int = 3) -> list[int]:
    """Input sizes a little larger than the kernel, all different (non-square)."""
    return [k + extra + i for i, k in enumerate(kernel)]
