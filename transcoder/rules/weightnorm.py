"""PyTorch weight norm, folded into a plain Keras kernel (Keras has no such layer).

Both PyTorch APIs keep ``weight`` as two tensors and compute ``weight = g * v / ||v||``, the
norm taken over every axis where ``g`` has size 1 (every axis but ``dim``: ``dim=0`` gives
``g`` of shape ``(out, 1, ..)``; ``dim=None`` a scalar ``g`` and the norm of the whole ``v``):

- ``torch.nn.utils.weight_norm``: ``<module>.weight_g`` and ``<module>.weight_v``;
- ``torch.nn.utils.parametrizations.weight_norm``:
  ``<module>.parametrizations.weight.original0`` (g) and ``...original1`` (v).

The families that can take it (``LayerRule.weight_norm``: Linear, Conv, ConvTranspose) write
the folded weight through their own permutation (:class:`WeightNorm`) and carry ``g`` and ``v``
verbatim, so the way back restores them bit for bit while the Keras kernel still folds from
them; a kernel changed since (or a file we did not write) gives ``v = weight, g = ||weight||``
(the same weight up to rounding), and a note says so. The plan says the weights were folded,
and the per-layer check builds the PyTorch module with weight norm (the API its names use), so
the folded kernel is checked against what PyTorch computes.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from ..checkpoint import TensorRef
from ..errors import MappingError
from .ops import Op, register_op
from .transpose import permute_array

#: (g, v) local names of each API
OLD_API = ("weight_g", "weight_v")
NEW_API = ("parametrizations.weight.original0", "parametrizations.weight.original1")
#: the tensors of a new-API module's ``parametrizations.weight`` child
PARAMETRIZATION, ORIGINALS = "parametrizations.weight", frozenset({"original0", "original1"})


def names(params) -> tuple[str, str] | None:
    """The local (g, v) names when a module's tensors are weight norm's (either API)."""
    return next((api for api in (OLD_API, NEW_API) if set(api) <= set(params)
                 and "weight" not in params), None)


def plain(params: dict[str, TensorRef]) -> dict[str, TensorRef]:
    """The module's tensors as if it had a plain ``weight`` (``v``'s shape), for inference."""
    found = names(params)
    if found is None:
        return params
    rest = {n: ref for n, ref in params.items() if n not in found}
    return {"weight": params[found[1]], **rest}


def _norm_axes(g_shape: tuple, v_shape: tuple) -> tuple[int, ...]:
    if not g_shape:
        return tuple(range(len(v_shape)))
    if len(g_shape) != len(v_shape) or any(g not in (1, v) for g, v in zip(g_shape, v_shape)):
        raise MappingError(f"weight norm g {list(g_shape)} does not fit v {list(v_shape)} "
                           f"(g has v's size along dim and 1 elsewhere)")
    return tuple(a for a, g in enumerate(g_shape) if g == 1)


def fold(g: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``g * v / ||v||`` as PyTorch's ``_weight_norm`` computes it (``v * (g / norm)``), in
    float64 then rounded to v's dtype."""
    wide = v.astype(np.float64)
    axes = _norm_axes(g.shape, v.shape)
    norm = np.sqrt(np.sum(wide * wide, axis=axes, keepdims=True))
    with np.errstate(divide="ignore", invalid="ignore"):   # a zero v: NaN, as in PyTorch
        return (wide * (g.astype(np.float64) / norm)).astype(v.dtype)


def unfold(weight: np.ndarray, g_shape: tuple) -> list[np.ndarray]:
    """(g, v) giving ``weight`` back: v = weight, g = its norm over g's unit axes."""
    wide = weight.astype(np.float64)
    norm = np.sqrt(np.sum(wide * wide, axis=_norm_axes(g_shape, weight.shape), keepdims=True))
    return [norm.reshape(g_shape).astype(weight.dtype), weight]


@register_op
@dataclass(frozen=True)
class WeightNorm(Op):
    """PyTorch (g, v) -> Keras kernel = the fold permuted by ``axes`` (() copies), and g and v
    carried as two more Keras-side tensors."""

    kind: ClassVar[str] = "weight_norm"
    rounds: ClassVar[bool] = True
    arity: ClassVar[tuple[int, int]] = (2, 3)
    axes: tuple[int, ...] = ()

    def _kernel(self, weight: np.ndarray) -> np.ndarray:
        return permute_array(weight, self.axes) if self.axes else weight

    def _weight(self, kernel: np.ndarray) -> np.ndarray:
        return permute_array(kernel, tuple(np.argsort(self.axes))) if self.axes else kernel

    def forward(self, xs):
        return [self._kernel(fold(xs[0], xs[1])), xs[0], xs[1]]

    def carried_fold(self, ys: list[np.ndarray]) -> bool:
        """Do the carried (g, v) still fold, bit for bit, into the Keras kernel?"""
        if len(ys) != 3 or ys[2].dtype != ys[0].dtype:
            return False
        folded = self._kernel(fold(ys[1], ys[2]))
        return folded.shape == ys[0].shape and folded.tobytes() == ys[0].tobytes()

    def inverse(self, ys):
        if self.carried_fold(ys):
            return [ys[1], ys[2]]
        return unfold(self._weight(ys[0]), tuple(ys[1].shape))

    def forward_shapes(self, shapes):
        g, v = (tuple(s) for s in shapes)
        _norm_axes(g, v)
        kernel = tuple(v[a] for a in self.axes) if self.axes else v
        return [kernel, g, v]

    def inverse_shapes(self, shapes):
        if len(shapes) != 3:
            raise MappingError("a weight-normed kernel needs its g and v carried beside it")
        return [tuple(shapes[1]), tuple(shapes[2])]

    def inverse_note(self, refs: list, step) -> str | None:
        if self.carried_fold([r.load() for r in refs]):
            return None
        return (f"{step.keras[0]}: not the fold of the g and v carried with it (changed since, "
                f"or not carried); {step.torch[1]} = the kernel and {step.torch[0]} = its norm "
                f"(the same weight)")

    def describe(self) -> str:
        then = f", permute{self.axes}" if self.axes else ""
        return f"fold g * v / ||v||{then} (g, v carried)"

    def spec(self) -> dict:
        return {"op": self.kind, "axes": list(self.axes)}


def note(path: str, found: tuple[str, str]) -> str:
    return (f"{path}: weight norm ({found[0]}, {found[1]}) folded into its Keras kernel "
            f"(g * v / ||v||); g and v carried for the way back")


# ---------------------------------------------------------------- the per-layer check

def _dim(g_shape: tuple, v_shape: tuple) -> int | None:
    """The ``dim`` argument that gives g this shape (None: one norm over everything)."""
    if not g_shape:
        return None
    kept = [a for a, (g, v) in enumerate(zip(g_shape, v_shape)) if g != 1]
    return kept[0] if len(kept) == 1 else 0


def check(build, c):
    """Build the family's plain module from v's shape, then apply weight norm to it with the
    API its names use: its state dict is then the case's own (g, v) names."""
    found = names(c.torch)
    g, v = (c.torch[n] for n in found)
    rest = {n: a for n, a in c.torch.items() if n not in found}
    built = build(replace(c, torch={"weight": v, **rest}))
    utils = c.nn.utils
    apply = utils.weight_norm if found == OLD_API else utils.parametrizations.weight_norm
    with warnings.catch_warnings():   # the old API is deprecated, not gone
        warnings.simplefilter("ignore")
        apply(built.torch_module, dim=_dim(g.shape, v.shape))
    built.note = "; ".join(n for n in (built.note, "weight norm folded") if n)
    return built
