"""Keras layers that hold our layers' bytes in other shapes: what pairing with a twin may join.

Our plan writes one Keras layer per PyTorch module, in the shapes the weights alone give. A
user's Keras model may hold the same bytes in other shapes, or one layer for two of ours:

- ``PReLU``: alpha ``(C,)`` here, ``(1, .., 1, C)`` in a Keras PReLU with ``shared_axes``
  (unit axes only: one slope per channel either way).
- a depthwise PyTorch convolution (``groups`` = input channels ``C``, weight ``(C*m, 1, k..)``):
  our ``Conv{n}D`` kernel ``(k.., 1, C*m)`` is a Keras ``DepthwiseConv{n}D`` kernel
  ``(k.., C, m)``, byte for byte (output channel ``c*m + j`` is depthwise ``[c, j]``).
- a depthwise convolution without bias, then a pointwise (1x1) one: our two ``Conv{n}D`` are one
  Keras ``SeparableConv{n}D`` (``depthwise_kernel (k.., C, m)``, ``pointwise_kernel (1..,
  C*m, out)``, ``bias``).

Each reading only reshapes: the bytes, and so the numbers, are the same. Functions here see
class names and shapes only (no Keras).
"""
from __future__ import annotations

import math
import re

Shape = tuple[int, ...]

CONV = re.compile(r"Conv([123])D")
DEPTHWISE = re.compile(r"DepthwiseConv([123])D")
SEPARABLE = re.compile(r"SeparableConv([123])D")


def _squeezed(shape: Shape) -> Shape:
    return tuple(d for d in shape if d != 1)


def _depthwise_kernel(ours: Shape, theirs: Shape) -> bool:
    """Our depthwise Conv kernel (k.., 1, C*m) holds their (k.., C, m)."""
    return (len(ours) == len(theirs) and ours[:-2] == theirs[:-2] and ours[-2] == 1
            and ours[-1] == theirs[-2] * theirs[-1])


def _dims(name: str | None, pattern: re.Pattern) -> int | None:
    found = pattern.fullmatch(name or "")
    return int(found.group(1)) if found else None


def same_bytes(ours: tuple[str | None, list[Shape]], theirs: tuple[str | None, list[Shape]]
               ) -> bool:
    """Do their weights (class, shapes) hold our layer's bytes in other shapes?"""
    (our_class, our_shapes), (their_class, their_shapes) = ours, theirs
    if len(our_shapes) != len(their_shapes):
        return False
    if our_class == their_class == "PReLU":
        return _squeezed(our_shapes[0]) == _squeezed(their_shapes[0])
    n = _dims(their_class, DEPTHWISE)
    if n is None or _dims(our_class, CONV) != n:
        return False
    return _depthwise_kernel(our_shapes[0], their_shapes[0]) and our_shapes[1:] == their_shapes[1:]


def joins(first: tuple[str | None, list[Shape]], second: tuple[str | None, list[Shape]],
          theirs: tuple[str | None, list[Shape]]) -> bool:
    """Are our two layers (a depthwise Conv without bias, then a pointwise Conv) their one
    SeparableConv?"""
    n = _dims(theirs[0], SEPARABLE)
    if n is None or _dims(first[0], CONV) != n or _dims(second[0], CONV) != n:
        return False
    if len(first[1]) != 1 or len(theirs[1]) != len(second[1]) + 1:
        return False
    depthwise, pointwise = theirs[1][0], theirs[1][1:]
    return (_depthwise_kernel(first[1][0], depthwise) and list(pointwise) == list(second[1])
            and math.prod(second[1][0][:-2]) == 1)
