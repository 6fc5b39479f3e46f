"""Operations between PyTorch tensors and Keras weights. Each one knows its inverse.

An op maps a list of PyTorch-side arrays to a list of Keras-side arrays (``forward``) and
back (``inverse``); ``forward_shapes`` / ``inverse_shapes`` predict shapes without data so
plans can be printed and checked before anything is read. ``spec()`` gives a JSON form that
our writers store, so a later reverse conversion replays the exact inverse.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Iterator

import numpy as np

from ..checkpoint import Piece
from ..errors import MappingError
from .transpose import permute_array, permuted_pieces

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Op:
    """Base class: identity on one tensor."""

    kind: ClassVar[str] = "identity"
    arity: ClassVar[tuple[int, int]] = (1, 1)  # (torch tensors, keras tensors)
    #: one tensor to one whose blocks methods are right: writers may stream it
    streams: ClassVar[bool] = False
    #: computes new values (a sum, a fold) that round in the tensors' dtype, instead of only
    #: moving them (a copy, permutation, reshape, split, reorder: every value kept exactly)
    rounds: ClassVar[bool] = False

    def forward(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        return list(xs)

    def inverse(self, ys: list[np.ndarray]) -> list[np.ndarray]:
        return list(ys)

    def forward_shapes(self, shapes: list[Shape]) -> list[Shape]:
        return list(shapes)

    def inverse_shapes(self, shapes: list[Shape]) -> list[Shape]:
        return list(shapes)

    def forward_blocks(self, xs: list[np.ndarray], scratch: np.ndarray,
                       part: tuple[int, int] | None = None) -> Iterator[Piece]:
        """The one Keras-side tensor's C-order bytes as ``(offset, block)`` pieces, written
        into ``scratch`` where data moves: all of them in order when ``part`` is None, else
        share ``part`` = (k, n) in any order (see :func:`.transpose.permuted_pieces`); only
        for ops with ``streams`` set."""
        return _pieces(xs[0], tuple(range(xs[0].ndim)), scratch, part)

    def inverse_blocks(self, ys: list[np.ndarray], scratch: np.ndarray,
                       part: tuple[int, int] | None = None) -> Iterator[Piece]:
        """The same for the one PyTorch-side tensor."""
        return _pieces(ys[0], tuple(range(ys[0].ndim)), scratch, part)

    def inverse_note(self, refs: list, step) -> str | None:
        """What the inverse will do when that depends on the data (a note for the plan)."""
        return None

    def describe(self) -> str:
        return "copy"

    def spec(self) -> dict:
        return {"op": self.kind}


@dataclass(frozen=True)
class Identity(Op):
    """Same array on both sides (renames only)."""

    streams: ClassVar[bool] = True


@dataclass(frozen=True)
class Permute(Op):
    """``keras = torch.transpose(axes)``; the inverse uses the inverse permutation."""

    kind: ClassVar[str] = "permute"
    streams: ClassVar[bool] = True
    axes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if sorted(self.axes) != list(range(len(self.axes))):
            raise ValueError(f"not a permutation: {self.axes}")

    @property
    def inverse_axes(self) -> tuple[int, ...]:
        return tuple(int(i) for i in np.argsort(self.axes))

    def _check(self, shape: Shape) -> None:
        if len(shape) != len(self.axes):
            raise MappingError(f"expected a {len(self.axes)}-d tensor for permutation "
                               f"{self.axes}, got shape {list(shape)}")

    def forward(self, xs):
        self._check(xs[0].shape)
        return [permute_array(xs[0], self.axes)]

    def inverse(self, ys):
        self._check(ys[0].shape)
        return [permute_array(ys[0], self.inverse_axes)]

    def forward_blocks(self, xs, scratch, part=None):
        self._check(xs[0].shape)
        return _pieces(xs[0], self.axes, scratch, part)

    def inverse_blocks(self, ys, scratch, part=None):
        self._check(ys[0].shape)
        return _pieces(ys[0], self.inverse_axes, scratch, part)

    def forward_shapes(self, shapes):
        self._check(shapes[0])
        return [tuple(shapes[0][a] for a in self.axes)]

    def inverse_shapes(self, shapes):
        self._check(shapes[0])
        return [tuple(shapes[0][a] for a in self.inverse_axes)]

    def describe(self) -> str:
        return "transpose" if self.axes == (1, 0) else f"permute{self.axes}"

    def spec(self) -> dict:
        return {"op": self.kind, "axes": list(self.axes)}


@dataclass(frozen=True)
class Reshape(Op):
    """``keras = torch.reshape(keras_shape)``; the torch shape is restored on the way back."""

    kind: ClassVar[str] = "reshape"
    streams: ClassVar[bool] = True  # the bytes stay in the same order
    keras_shape: tuple[int, ...] = ()
    torch_shape: tuple[int, ...] = ()

    def forward(self, xs):
        return [xs[0].reshape(self.keras_shape)]

    def inverse(self, ys):
        return [ys[0].reshape(self.torch_shape)]

    def forward_shapes(self, shapes):
        return [tuple(self.keras_shape)]

    def inverse_shapes(self, shapes):
        return [tuple(self.torch_shape)]

    def describe(self) -> str:
        return f"reshape{tuple(self.keras_shape)}"

    def spec(self) -> dict:
        return {"op": self.kind, "keras_shape": list(self.keras_shape),
                "torch_shape": list(self.torch_shape)}


def _pieces(x: np.ndarray, axes: tuple[int, ...], scratch: np.ndarray,
            part: tuple[int, int] | None) -> Iterator[Piece]:
    return permuted_pieces(x, axes, scratch, part or (0, 1), ordered=part is None)


#: op name -> class, for rebuilding ops from stored specs (``op_from_spec``).
OPS: dict[str, type[Op]] = {cls.kind: cls for cls in (Identity, Permute, Reshape)}


def register_op(cls: type[Op]) -> type[Op]:
    """Class decorator for ops defined in other modules (recurrent, attention)."""
    OPS[cls.kind] = cls
    return cls


def op_from_spec(spec: dict) -> Op:
    """Rebuild an op from ``Op.spec()``; lists become tuples."""
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items() if k != "op"}
    try:
        return OPS[spec["op"]](**params)
    except (KeyError, TypeError, ValueError) as exc:
        raise MappingError(f"unknown or malformed stored operation {spec!r} ({exc})") from None
