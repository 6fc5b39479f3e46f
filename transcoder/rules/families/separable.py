"""Keras DepthwiseConv1D/2D and SeparableConv1D/2D <-> PyTorch convolutions with groups.

PyTorch has no such layers; it writes them as convolutions:

- ``DepthwiseConv{n}D(k, depth_multiplier=m)`` on ``C`` channels is ``Conv{n}d(C, C*m, k,
  groups=C)``. Keras ``kernel (k.., C, m)`` <-> PyTorch ``weight (C*m, 1, k..)``: output channel
  ``c*m + j`` is Keras' ``[.., c, j]``, so the Keras kernel is the Conv permutation's ``(k.., 1,
  C*m)`` read as ``(k.., C, m)``, the same bytes (:class:`DepthwiseKernel`). ``bias (C*m,)``.
- ``SeparableConv{n}D(out, k, depth_multiplier=m)`` is that depthwise convolution without bias,
  then a pointwise one, ``Conv{n}d(C*m, out, 1)``. A Keras layer ``sep`` maps to the PyTorch
  tensors ``sep.depthwise.weight (C*m, 1, k..)``, ``sep.pointwise.weight (out, C*m, 1..)`` and
  ``sep.pointwise.bias (out,)``: a module ``sep`` with children ``depthwise`` and ``pointwise``.

Keras -> PyTorch maps them by class, or from the weights when the class is unknown and they
say it: a ``depthwise_kernel`` is a SeparableConv; a kernel ``(k.., C, m)`` with a bias of
``C*m`` (not ``m``) is a DepthwiseConv; a bias-free kernel only when the layer is named so
(``depthwise``, ``dw``...). PyTorch -> Keras writes convolutions (``Conv{n}D(groups=)``, the
same numbers) unless told: a ``--keras-model`` twin holding a DepthwiseConv or SeparableConv
pairs with them (``models/readings.py``), and a ``--rules`` ``[[layer]]`` entry with ``kind =
"DepthwiseConv2d"`` (on the convolution) or ``"SeparableConv2d"`` (on the parent of
``depthwise`` and ``pointwise``) writes the Keras layout itself; ``depth_multiplier`` comes
from the entry, or from ``groups`` with ``--model``.
"""
from __future__ import annotations

import math
import re
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import ClassVar

from ...errors import MappingError
from ..checkcase import BATCH, Built, LayerCase, Skip, spatial_sizes
from ..ops import Op, Permute, register_op
from ..table import Inference, LayerRule, Option, Param, Shapes
from ..transpose import permute_array

#: words of a Keras layer name that say "depthwise" (Keras' own default names included)
DEPTHWISE_WORDS = ("depthwise", "dw", "dwconv", "depthwise_conv1d", "depthwise_conv2d")


def _conv_axes(ndim: int) -> tuple[int, ...]:
    return tuple(range(2, ndim)) + (1, 0)


@register_op
@dataclass(frozen=True)
class DepthwiseKernel(Op):
    """PyTorch ``(C*m, 1, k..)`` -> Keras ``(k.., C, m)``: the Conv permutation, whose output
    ``(k.., 1, C*m)`` holds the same bytes. ``multiplier`` is m (0 in the table: the plan
    fills it in); the inverse reads it from the Keras shape."""

    kind: ClassVar[str] = "depthwise_kernel"
    streams: ClassVar[bool] = True
    multiplier: int = 0

    def _torch(self, shape: tuple) -> None:
        if len(shape) < 3 or shape[1] != 1 or self.multiplier <= 0 or shape[0] % self.multiplier:
            raise MappingError(f"a depthwise weight must be (C*m, 1, k..) with m = "
                               f"{self.multiplier}, not {list(shape)}")

    def _keras(self, shape: tuple) -> None:
        if len(shape) < 3:
            raise MappingError(f"a depthwise kernel must be (k.., C, m), not {list(shape)}")

    def forward(self, xs):
        self._torch(xs[0].shape)
        y = permute_array(xs[0], _conv_axes(xs[0].ndim))
        return [y.reshape(self.forward_shapes([xs[0].shape])[0])]

    def inverse(self, ys):
        self._keras(ys[0].shape)
        flat = ys[0].reshape(*ys[0].shape[:-2], 1, -1)
        return [permute_array(flat, Permute(_conv_axes(flat.ndim)).inverse_axes)]

    def forward_shapes(self, shapes):
        self._torch(shapes[0])
        n = shapes[0][0]
        return [(*shapes[0][2:], n // self.multiplier, self.multiplier)]

    def inverse_shapes(self, shapes):
        self._keras(shapes[0])
        return [(shapes[0][-2] * shapes[0][-1], 1, *shapes[0][:-2])]

    def forward_blocks(self, xs, scratch, part=None):
        self._torch(xs[0].shape)
        return Permute(_conv_axes(xs[0].ndim)).forward_blocks(xs, scratch, part)

    def inverse_blocks(self, ys, scratch, part=None):
        self._keras(ys[0].shape)
        flat = ys[0].reshape(*ys[0].shape[:-2], 1, -1)
        return Permute(_conv_axes(flat.ndim)).inverse_blocks([flat], scratch, part)

    def describe(self) -> str:
        return "permute as a Conv, read as (k.., C, m)"

    def spec(self) -> dict:
        return {"op": self.kind, "multiplier": self.multiplier}


def _multiplier(ref, options: dict, family: str) -> int:
    """m for a PyTorch depthwise weight (C*m, 1, k..): ``depth_multiplier``, or C*m / groups
    (``groups`` of the convolution itself, from --model)."""
    channels = ref.shape[0] if ref.shape else 0
    given = options.get("depth_multiplier")
    if given is not None:
        if not isinstance(given, int) or isinstance(given, bool) or given <= 0:
            raise MappingError(f"depth_multiplier must be a positive integer, not {given!r}",
                               tensor=ref.name)
        return given
    if isinstance(options.get("groups"), int) and options["groups"] > 0:
        return channels // options["groups"]
    raise MappingError(f"a {family} needs its depth_multiplier, which the weight "
                       f"{list(ref.shape)} does not say", tensor=ref.name,
                       hint="add depth_multiplier = <m> to its [[layer]] entry in --rules")


def _depthwise_kernel(ours: tuple[int, ...], theirs: tuple[int, ...]) -> bool:
    """Our depthwise Conv kernel (k.., 1, C*m) holds their (k.., C, m)."""
    return (len(ours) == len(theirs) and ours[:-2] == theirs[:-2] and ours[-2] == 1
            and ours[-1] == theirs[-2] * theirs[-1])


class DepthwiseRule(LayerRule):
    """Fills in the depth multiplier of its DepthwiseKernel op; recognises Keras weights; a
    user's Keras layer of the family holds our convolutions' bytes in other shapes."""

    @property
    def _conv_kind(self) -> str:
        """The Keras class our plan writes for the PyTorch convolutions of the family."""
        return f"Conv{self.name[-2]}D"

    def holds_ours(self, ours: Shapes, theirs: Shapes) -> bool:
        """Their DepthwiseConv kernel (k.., C, m) is our Conv kernel (k.., 1, C*m)."""
        (our_class, our_shapes), (_, their_shapes) = ours, theirs
        if self.parts or our_class != self._conv_kind or len(our_shapes) != len(their_shapes):
            return False
        return _depthwise_kernel(our_shapes[0], their_shapes[0]) \
            and our_shapes[1:] == their_shapes[1:]

    def joins(self, first: Shapes, second: Shapes, theirs: Shapes) -> bool:
        """Their SeparableConv is our depthwise Conv without bias, then a pointwise Conv."""
        if not self.parts or first[0] != self._conv_kind or second[0] != self._conv_kind:
            return False
        if len(first[1]) != 1 or len(theirs[1]) != len(second[1]) + 1:
            return False
        depthwise, pointwise = theirs[1][0], theirs[1][1:]
        return (_depthwise_kernel(first[1][0], depthwise) and list(pointwise) == list(second[1])
                and math.prod(second[1][0][:-2]) == 1)

    def _op(self, op, ref, options):
        if isinstance(op, DepthwiseKernel):
            return replace(op, multiplier=_multiplier(ref, options, self.name))
        return super()._op(op, ref, options)

    def recognise_keras(self, layer: str, weights: dict) -> Inference | None:
        n = int(self.name[-2])
        if "depthwise_kernel" in weights:
            kernel = weights["depthwise_kernel"]
            return (Inference(self.keras_kind, "a depthwise_kernel and a pointwise_kernel")
                    if self.parts and len(kernel.shape) == n + 2 else None)
        kernel, bias = weights.get("kernel"), weights.get("bias")
        if self.parts or kernel is None or set(weights) - {"kernel", "bias"} \
                or len(kernel.shape) != n + 2:
            return None
        if bias is not None and kernel.shape[-2] > 1 \
                and tuple(bias.shape) == (kernel.shape[-2] * kernel.shape[-1],):
            return Inference(self.keras_kind, f"kernel {list(kernel.shape)} with a bias of "
                                              f"C*m = {bias.shape[0]}: only a depthwise kernel")
        words = set(re.split(r"[./_\-]", layer.lower())) | {layer.lower()}
        if bias is None and words & set(DEPTHWISE_WORDS):
            return Inference(self.keras_kind, "a bias-free kernel, named like a depthwise one")
        return None


# ---------------------------------------------------------------- the per-layer check

def _channels(c: LayerCase, kernel_index: int = 0) -> tuple[int, int]:
    """(C, m) from the Keras depthwise kernel: PyTorch's weight holds only C*m. (From a Keras
    source this is the original; from PyTorch, the multiplier the plan was told.)"""
    shape = tuple(c.keras[kernel_index].shape)
    if len(shape) < 3:
        raise Skip(f"a depthwise kernel of shape {list(shape)}")
    return shape[-2], shape[-1]


def _check_depthwise(n: int):
    def build(c: LayerCase) -> Built:
        channels, m = _channels(c)
        kernel, bias = c.shape("weight")[2:], c.has("bias")
        module = getattr(c.nn, f"Conv{n}d")(channels, channels * m, kernel, groups=channels,
                                            bias=bias)
        layer = getattr(c.layers, f"DepthwiseConv{n}D")(kernel, depth_multiplier=m,
                                                        use_bias=bias)
        return Built(module, layer, [c.normal((BATCH, channels, *spatial_sizes(kernel)))], True)
    return build


def _check_separable(n: int):
    def build(c: LayerCase) -> Built:
        channels, m = _channels(c)
        kernel, bias = c.shape("depthwise.weight")[2:], c.has("pointwise.bias")
        out = c.shape("pointwise.weight")[0]
        conv = getattr(c.nn, f"Conv{n}d")
        module = c.nn.Sequential(OrderedDict([
            ("depthwise", conv(channels, channels * m, kernel, groups=channels, bias=False)),
            ("pointwise", conv(channels * m, out, 1, bias=bias))]))
        layer = getattr(c.layers, f"SeparableConv{n}D")(out, kernel, depth_multiplier=m,
                                                        use_bias=bias)
        return Built(module, layer, [c.normal((BATCH, channels, *spatial_sizes(kernel)))], True)
    return build


# ---------------------------------------------------------------- the families

NO_MODULE = ("PyTorch has no {what} module: it is a Conv{n}d with groups = in_channels{more}, "
             "which the Conv{n}d family rebuilds (Keras Conv{n}D(groups=))")


DEPTH = {"depth_multiplier": Option("depth_multiplier", missing=1)}


def _depthwise(n: int) -> DepthwiseRule:
    name = f"DepthwiseConv{n}d"
    return DepthwiseRule(
        name, (name,), f"DepthwiseConv{n}D",
        (Param("weight", "kernel", DepthwiseKernel()), Param("bias", "bias", required=False)),
        note="(C*m, 1, k..) -> (k.., C, m), the Conv permutation's bytes; PyTorch Conv with "
             "groups=C; depth_multiplier from --rules or groups",
        check=_check_depthwise(n), keras_options=DEPTH, fused_activation=True,
        cannot={"rebuild": NO_MODULE.format(what="depthwise", n=n, more="")})


def _separable(n: int) -> DepthwiseRule:
    name = f"SeparableConv{n}d"
    return DepthwiseRule(
        name, (name,), f"SeparableConv{n}D",
        (Param("depthwise.weight", "depthwise_kernel", DepthwiseKernel()),
         Param("pointwise.weight", "pointwise_kernel", Permute(_conv_axes(n + 2))),
         Param("pointwise.bias", "bias", required=False)),
        note="module M = M.depthwise (Conv, groups=C, no bias) then M.pointwise (1x1 Conv)",
        check=_check_separable(n), parts=("depthwise", "pointwise"), keras_options=DEPTH,
        fused_activation=True,
        cannot={"rebuild": NO_MODULE.format(what="separable", n=n,
                                            more=" followed by a 1x1 Conv{n}d".format(n=n))})


FAMILIES = (*(_depthwise(n) for n in (1, 2)), *(_separable(n) for n in (1, 2)))
