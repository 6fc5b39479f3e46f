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

Memory: the written tensor is read whole (a 4096x4096 float32 kernel: 64 MiB) and compared
with its source a block of :data:`CHUNK` bytes at a time, never two copies of the tensor. A
copied or permuted tensor is compared by permuting the written one back a block at a time,
in the source's order, each block's pages of a mapped source let go once compared
(:mod:`.memory`): the source's map never holds the whole tensor resident beside the written
one. The other ops' expected bytes are streamed through the plan's op block by block.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from ..checkpoint import Checkpoint
from ..rules.steps import TO_KERAS
from ..rules.transpose import permuted_blocks
from .compare import SUCCESS, Comparison
from .memory import drop_pages

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
        if not self.same_layer(steps):
            return None
        names = [n for s in steps for n in self._written_names(s)]
        size = sum(int(np.prod(self.written[n].shape, dtype=np.int64)) for n in names)
        return Comparison(layer.name, SUCCESS, max_abs_error=0.0, max_rel_error=0.0, size=size,
                          message=f"written bytes are the mapped source, bit for bit; the same "
                                  f"mapping as {first}, checked numerically",
                          extra={"proven_by": first}, **labels)

    def record(self, key: str, entry: Comparison) -> None:
        if entry.status == SUCCESS and not entry.extra.get("proven_by"):
            self.proven.setdefault(key, entry.name)

    def _written_names(self, step) -> tuple:
        return step.keras if self.direction == TO_KERAS else step.torch

    def _same(self, name: str, step) -> bool:
        if name not in self.written.tensors or name not in self.expected.tensors:
            return False
        a, b = self.expected[name], self.written[name]
        if (a.dtype, tuple(a.shape)) != (b.dtype, tuple(b.shape)):
            return False
        source, back = self._moved_from(step, a)
        if source is not None:
            return rows_match(source.load(), b.load(), back)
        return streams_like(a, b.load())

    def _moved_from(self, step, expected) -> tuple:
        """(the source TensorRef, the axes that take the written tensor back to it) when the
        step copies or permutes one tensor to one of the same dtype; else (None, None)."""
        if step.op.kind not in ("identity", "permute") or len(step.torch) != 1 \
                or len(step.keras) != 1:
            return None, None
        to_keras = self.direction == TO_KERAS
        source = self.torch_ckpt[step.torch[0]] if to_keras else self.keras_ckpt[step.keras[0]]
        if source.dtype != expected.dtype or len(source.shape) != len(expected.shape):
            return None, None
        axes = tuple(step.op.axes) if step.op.kind == "permute" else tuple(range(len(source.shape)))
        back = tuple(int(i) for i in np.argsort(axes)) if to_keras else axes
        if tuple(expected.shape[i] for i in back) != tuple(source.shape):
            return None, None
        return source, back

    def same_layer(self, steps: list) -> bool:
        """Whether every tensor this layer was written to holds the bytes the ops make of its
        source."""
        pairs = [(n, s) for s in steps for n in self._written_names(s)]
        return bool(pairs) and all(self._same(n, s) for n, s in pairs)


def streams_like(expected, written: np.ndarray) -> bool:
    """Whether the bytes ``expected`` (a TensorRef) streams, block by block, are the bytes of
    ``written`` (NaNs and signed zeros included)."""
    data = np.ascontiguousarray(written).reshape(-1).view(np.uint8)
    scratch, at = np.empty(min(CHUNK, max(data.size, 1)), np.uint8), 0
    for block in expected.blocks(scratch):
        block = block.reshape(-1).view(np.uint8)
        if not same_bytes(block, data[at:at + block.size]):
            return False
        at += block.size
    return at == data.size


def rows_match(source: np.ndarray, written: np.ndarray, back: tuple) -> bool:
    """Whether ``written.transpose(back)`` holds the bytes of ``source`` (NaNs and signed
    zeros included): the written tensor permuted a block at a time (the tiled kernel) and each
    block compared with the source's bytes there, whose pages are then let go where mapped."""
    data = np.ascontiguousarray(source).reshape(-1).view(np.uint8)
    scratch, at = np.empty(min(CHUNK, max(data.size, 1)), np.uint8), 0
    for block in permuted_blocks(np.ascontiguousarray(written), back, scratch):
        block = block.reshape(-1).view(np.uint8)   # the whole tensor where nothing moves
        for i in range(0, block.size, CHUNK):
            part = data[at + i:at + i + CHUNK]
            if not same_bytes(block[i:i + CHUNK], part):
                return False
            drop_pages(part)
        at += block.size
    return at == data.size


def same_bytes(x: np.ndarray, y: np.ndarray) -> bool:
    """Whether two arrays of one dtype and shape hold the same bytes (NaNs and signed zeros
    included), compared a chunk at a time."""
    x = np.ascontiguousarray(x).reshape(-1).view(np.uint8)
    y = np.ascontiguousarray(y).reshape(-1).view(np.uint8)
    if x.size != y.size:
        return False
    return all(np.array_equal(x[i:i + CHUNK], y[i:i + CHUNK]) for i in range(0, x.size, CHUNK))
