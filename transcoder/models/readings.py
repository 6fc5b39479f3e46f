"""Keras layers that hold our layers' bytes in other shapes: what pairing with a twin may join.

Our plan writes one Keras layer per PyTorch module, in the shapes the weights alone give. A
user's Keras model may hold the same bytes in other shapes, or one layer for two of ours; the
family of their layer's class says when (``LayerRule.holds_ours`` and ``LayerRule.joins``):

- a ``PReLU`` with ``shared_axes``: alpha ``(1, .., 1, C)`` for our ``(C,)``;
- a ``DepthwiseConv{n}D``: kernel ``(k.., C, m)`` for our ``Conv{n}D`` kernel ``(k.., 1, C*m)``;
- a ``SeparableConv{n}D``: our depthwise ``Conv{n}D`` without bias, then our pointwise one.

Each reading only reshapes: the bytes, and so the numbers, are the same. Functions here see
class names and shapes only (no Keras).
"""
from __future__ import annotations

from ..rules import registry

Shape = tuple[int, ...]


def same_bytes(ours: tuple[str | None, list[Shape]], theirs: tuple[str | None, list[Shape]]
               ) -> bool:
    """Do their weights (class, shapes) hold our layer's bytes in other shapes?"""
    family = registry.TABLE.for_keras_kind(theirs[0] or "")
    return family is not None and family.holds_ours(ours, theirs)


def joins(first: tuple[str | None, list[Shape]], second: tuple[str | None, list[Shape]],
          theirs: tuple[str | None, list[Shape]]) -> bool:
    """Are our two layers (a depthwise Conv without bias, then a pointwise Conv) their one
    layer (a SeparableConv)?"""
    family = registry.TABLE.for_keras_kind(theirs[0] or "")
    return family is not None and family.joins(first, second, theirs)
