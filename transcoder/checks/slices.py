"""The cut of a wide layer its class is proven on: the first units only (numpy only).

The numeric proof of a class (:mod:`.layers`, :mod:`.proven`) runs both sides in float64: a
Linear(4096, 4096) would hold a 128 MiB float64 copy of its weight on each side in turn. A
wide layer of a family that declares its units axes (``LayerRule.units``: a Linear's, an
Embedding's) is proven on its first :data:`KEPT` output
units instead (every input kept): each side's tensors are cut by that framework's own layout
of the layer (a Linear's weight is (out, in): rows; a Dense kernel is (in, out): columns),
never by the mapping under test, and each side builds the smaller layer from its cut.

Why the cut proves the mapping of the whole layer. A mapping that only permutes axes (or
copies) treats every index of an axis alike: the value at (i0, i1, ...) goes to the permuted
position, whatever the indices. Then:

- a wrong axis order or a forgotten transpose sends another source axis to the Keras units
  axis, so the Keras cut holds other values than the PyTorch cut (a square 4096x4096 weight
  included: W[:k, :] transposed is not W[:, :k]), and the outputs differ by O(|output|), as
  in the full proof;
- the axes the cut keeps whole (the inputs, a kernel's spatial axes) are all there, so a flip,
  a swapped spatial axis or a wrong input order shows exactly as in the full proof;
- the cut then holds for units k.. by the argument above, and the proven layer's written
  bytes are compared with its mapped source in full (as every further layer of the class is),
  so every byte went through the proven mapping.

Ops that move values between units (a gate reorder, a split, a reshape, a weight-norm fold)
are not index-uniform along the units axis (a swapped gate order moves units k..2k): a layer
mapped by any of them is proven whole, never cut. So is a narrow layer (under
:data:`CUT_FROM_ELEMENTS` elements) and a layer whose options change the units' meaning
(``groups``, ``keras_shape``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: ops that move every index of an axis alike (see the module docstring)
UNIFORM_OPS = ("identity", "permute")
#: units kept in the cut
KEPT = 64
#: a layer of fewer weight elements than this is proven whole (float64: 8 MiB)
CUT_FROM_ELEMENTS = 1 << 20
#: options that change what a unit is
NOT_CUT_WITH = ("groups", "keras_shape")


@dataclass(frozen=True)
class Cut:
    """Keep units ``[0, kept)`` of ``units``: ``torch`` / ``keras`` give each tensor's axis by
    its short name."""

    kept: int
    units: int
    torch: dict
    keras: dict

    def torch_part(self, short: str, array: np.ndarray) -> np.ndarray:
        return _first(array, self.torch[short], self.kept)

    def keras_part(self, short: str, array: np.ndarray) -> np.ndarray:
        return _first(array, self.keras[short], self.kept)

    def keras_shape(self, short: str, shape: tuple) -> tuple:
        axis = self.keras[short] % len(shape)
        return tuple(self.kept if i == axis else d for i, d in enumerate(shape))

    def describe(self) -> str:
        return f"checked on its first {self.kept} of {self.units} units (every input)"


def short(name: str) -> str:
    """A tensor's short name: ``fc.weight`` -> weight, ``fc/kernel:0`` -> kernel."""
    tail = name.rpartition("/")[2] if "/" in name else name.rpartition(".")[2]
    return tail.partition(":")[0]


def cut_for(axes: dict, steps: list, torch_shapes: dict, keras_shapes: dict,
            options: dict) -> Cut | None:
    """The cut of this layer (``axes``: its family's ``units``; ``*_shapes``: ``{full name:
    shape}`` of each side's tensors), or None when it is proven whole: a family without units,
    an op that moves values between units, a narrow layer, options that change the units,
    tensors that disagree on the count."""
    if not axes or any(o in options for o in NOT_CUT_WITH) \
            or any(s.op.kind not in UNIFORM_OPS for s in steps):
        return None
    sides = [(torch_shapes, axes["torch"]), (keras_shapes, axes["keras"])]
    if any(short(n) not in table or len(shape) <= table[short(n)]
           for shapes, table in sides for n, shape in shapes.items()):
        return None
    counts = {shape[table[short(n)]] for shapes, table in sides for n, shape in shapes.items()}
    if len(counts) != 1 or sum(int(np.prod(s)) for s in torch_shapes.values()) < CUT_FROM_ELEMENTS:
        return None
    units = counts.pop()
    return Cut(KEPT, units, axes["torch"], axes["keras"]) if units > KEPT else None


def _first(array: np.ndarray, axis: int, kept: int) -> np.ndarray:
    index = [slice(None)] * array.ndim
    index[axis] = slice(0, kept)
    return array[tuple(index)]
