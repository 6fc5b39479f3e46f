"""Layers of one class proven once: the per-layer check's shortcut at scale (numpy only).

The rules map a layer's tensors by ops that depend on the family, the shapes, the dtypes and
the options only, never on the values (a permutation moves every value by its position). So
once one layer of a class (same family and Keras class, same ops, tensor names, shapes and
dtypes on both sides, same options) has passed the numeric check, another layer of that class
is proven when its written tensors hold the bytes the same ops make of its source: the
numeric check proved the ops right for the class, and the bytes prove this layer went through
them. Its entry says which layer the numeric proof was made on.

A layer whose bytes differ (a tensor written wrongly, or a mapping that is not the class's)
gets the numeric check of its own, so its error is measured and named like any other.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from ..checkpoint import Checkpoint
from ..rules.steps import TO_KERAS
from .compare import SUCCESS, Comparison

#: bytes compared at a time (the two arrays are compared by these chunks of their bytes)
CHUNK = 8 << 20


@dataclass
class Proofs:
    """The classes proven so far in one per-layer check, and what their bytes are checked
    against: ``expected``, the plan applied to the source (lazily), and ``written``."""

    expected: Checkpoint
    written: Checkpoint
    direction: str
    torch_ckpt: Checkpoint
    keras_ckpt: Checkpoint
    proven: dict[str, str] = field(default_factory=dict)   # class -> the layer checked numerically

    def key(self, layer, steps: list, options: dict) -> str:
        """The class of a layer: what the ops it goes through depend on."""
        def tensors(ckpt: Checkpoint, names) -> list:
            return [[n.rpartition(".")[2] if ckpt is self.torch_ckpt else n.rpartition("/")[2],
                     list(ckpt[n].shape), ckpt[n].dtype] for n in names if n in ckpt.tensors]
        parts = [[s.op.spec(), tensors(self.torch_ckpt, s.torch), tensors(self.keras_ckpt, s.keras)]
                 for s in steps]
        return json.dumps([layer.rule, layer.class_name, parts, options], sort_keys=True,
                          default=str)

    def by_bytes(self, key: str, layer, steps: list, labels: dict) -> Comparison | None:
        """SUCCESS when a layer of this class passed numerically and every tensor this layer
        was written to holds the bytes the ops make of its source; else None (check it)."""
        first = self.proven.get(key)
        if first is None:
            return None
        names = [n for s in steps for n in (s.keras if self.direction == TO_KERAS else s.torch)]
        if not names or not all(self._same(n) for n in names):
            return None
        size = sum(int(np.prod(self.written[n].shape, dtype=np.int64)) for n in names)
        return Comparison(layer.name, SUCCESS, max_abs_error=0.0, max_rel_error=0.0, size=size,
                          message=f"written bytes are the mapped source, bit for bit; the same "
                                  f"mapping as {first}, checked numerically",
                          extra={"proven_by": first}, **labels)

    def record(self, key: str, entry: Comparison) -> None:
        if entry.status == SUCCESS and not entry.extra.get("proven_by"):
            self.proven.setdefault(key, entry.name)

    def _same(self, name: str) -> bool:
        if name not in self.written.tensors or name not in self.expected.tensors:
            return False
        a, b = self.expected[name], self.written[name]
        if (a.dtype, tuple(a.shape)) != (b.dtype, tuple(b.shape)):
            return False
        return same_bytes(a.load(), b.load())


def same_bytes(x: np.ndarray, y: np.ndarray) -> bool:
    """Whether two arrays of one dtype and shape hold the same bytes (NaNs and signed zeros
    included), compared a chunk at a time."""
    x = np.ascontiguousarray(x).reshape(-1).view(np.uint8)
    y = np.ascontiguousarray(y).reshape(-1).view(np.uint8)
    if x.size != y.size:
        return False
    return all(np.array_equal(x[i:i + CHUNK], y[i:i + CHUNK]) for i in range(0, x.size, CHUNK))
