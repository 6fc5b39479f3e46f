"""Normalisation layers: BatchNorm, LayerNorm, RMSNorm, GroupNorm and InstanceNorm.

Their tensors are renamed, never permuted. A Keras BatchNormalization with ``scale=False`` (no
gamma) or ``center=False`` (no beta), as InceptionV3 is built, has no exact PyTorch BatchNorm
but the affine one with weight 1 or bias 0: those come with the moving statistic of their
shape (:class:`WithConstant`), and go back to Keras only while they still hold that constant. LayerNorm, GroupNorm and affine InstanceNorm share
one (weight, bias) pair of the channel size: the bytes do not say which of the three a module
is, though each computes different numbers. What the weights cannot say is set on the Keras
side (epsilon, groups, momentum): see each family's note.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ...checkpoint import TensorRef
from ...errors import MappingError
from ..checkcase import BATCH, Built, LayerCase, Skip
from ..ops import Op, register_op
from ..steps import Step
from ..table import AFFINE, NORM, VECTOR, Allowed, Inference, LayerRule, Option, Param


@register_op
@dataclass(frozen=True)
class WithConstant(Op):
    """PyTorch ``(x, c)`` <-> Keras ``x``: ``c`` is a tensor of x's shape that Keras does not
    store because it holds one value (a BatchNorm's weight 1 or bias 0)."""

    kind: ClassVar[str] = "with_constant"
    arity: ClassVar[tuple[int, int]] = (2, 1)
    value: float = 1.0

    def forward(self, xs):
        if not np.all(xs[1] == self.value):
            raise MappingError(f"holds values other than {self.value:g}, which the Keras layer "
                               f"does not store")
        return [xs[0]]

    def inverse(self, ys):
        return [ys[0], np.full_like(ys[0], self.value)]

    def forward_shapes(self, shapes):
        if tuple(shapes[0]) != tuple(shapes[1]):
            raise MappingError(f"shapes {list(shapes[0])} and {list(shapes[1])} differ")
        return [shapes[0]]

    def inverse_shapes(self, shapes):
        return [shapes[0], shapes[0]]

    def describe(self) -> str:
        return f"copy; the other is {self.value:g} (not stored by Keras)"

    def spec(self) -> dict:
        return {"op": self.kind, "value": self.value}


#: Keras weight absent -> (PyTorch tensor it leaves constant, the Keras statistic of its shape
#: it travels with, that statistic's PyTorch name, the constant)
ABSENT = {"gamma": ("weight", "moving_mean", "running_mean", 1.0),
          "beta": ("bias", "moving_variance", "running_var", 0.0)}


@dataclass(frozen=True)
class BatchNormRule(LayerRule):
    """BatchNorm, with Keras' ``scale=False`` / ``center=False`` layers (see the module
    docstring): PyTorch's affine BatchNorm gets the missing weight as 1 or bias as 0."""

    def plan_from_keras(self, plan, layer: dict, weights: dict[str, TensorRef],
                        reason: str) -> None:
        absent = [w for w in ABSENT if w not in weights]
        if len(absent) != 1 or not {"moving_mean", "moving_variance"} <= set(weights):
            super().plan_from_keras(plan, layer, weights, reason)
            return
        const, stat, torch_stat, value = ABSENT[absent[0]]
        name = layer["name"]
        for param in self.params:   # in Keras weight order: the file loads by position
            if param.keras[0] == stat:
                step = Step((f"{name}.{torch_stat}", f"{name}.{const}"), (f"{name}/{stat}",),
                            WithConstant(value), self.name, name)
            elif param.keras[0] in weights:
                step = Step((f"{name}.{param.torch[0]}",), (f"{name}/{param.keras[0]}",),
                            param.op, self.name, name)
            else:
                continue
            plan.add(step, self.keras_kind, reason)


@dataclass(frozen=True)
class GroupNormRule(LayerRule):
    """A Keras ``GroupNormalization(groups=-1)`` has one group per channel."""

    def options_from_config(self, config: dict, weights: dict[str, TensorRef]) -> dict[str, Any]:
        found = super().options_from_config(config, weights)
        if found.get("num_groups") == -1:
            found["num_groups"] = next((ref.shape[0] for ref in weights.values()
                                        if len(ref.shape) == 1), None)
        return found


# ---------------------------------------------------------------- what a Keras config says

def torch_momentum(value: Any) -> Any:
    """Keras' moving-average momentum is PyTorch's 1 - momentum."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)
    return round(1 - value, 12) if number else None


EPSILON = {"epsilon": Option("eps")}
RMS_SCALING = {"rms_scaling": Allowed((False,), False, "it scales by the variance, which no "
                                                       "PyTorch layer does")}


def _eps(c: LayerCase, default: float = 1e-5) -> float:
    return float(c.options.get("eps") or default)


def _norm_shape(c: LayerCase) -> tuple[int, ...]:
    return c.shape("weight") if c.has("weight") else c.shape("bias")


def check_batch_norm(c: LayerCase) -> Built:
    """The Keras layer holds what the Keras side holds (a Keras layer with scale=False maps to
    a PyTorch BatchNorm whose weight is 1)."""
    (channels,) = c.shape("running_mean")
    affine = c.has("weight")
    if affine and not c.has("bias"):
        raise Skip("a BatchNorm with a weight but no bias")
    module = c.nn.BatchNorm1d(channels, eps=_eps(c), affine=affine)
    layer = c.layers.BatchNormalization(epsilon=_eps(c), center=c.keras_has("beta"),
                                        scale=c.keras_has("gamma"))
    return Built(module, layer, [c.normal((BATCH, channels, 4))], True)


def check_layer_norm(c: LayerCase) -> Built:
    shape = _norm_shape(c)
    if not c.has("weight"):
        raise Skip("a LayerNorm with a bias but no weight")
    module = c.nn.LayerNorm(shape, eps=_eps(c), elementwise_affine=True, bias=c.has("bias"))
    axis = -1 if len(shape) == 1 else tuple(range(-len(shape), 0))
    layer = c.layers.LayerNormalization(axis=axis, epsilon=_eps(c), center=c.has("bias"))
    return Built(module, layer, [c.normal((BATCH, 3, *shape))])


def check_rms_norm(c: LayerCase) -> Built:
    shape = c.shape("weight")
    if len(shape) != 1:
        raise Skip(f"an RMSNorm over {len(shape)} axes")
    module = c.nn.RMSNorm(shape, eps=_eps(c, 1e-6))
    layer = c.layers.RMSNormalization(epsilon=_eps(c, 1e-6))
    return Built(module, layer, [c.normal((BATCH, 3, *shape))])


def check_group_norm(c: LayerCase) -> Built:
    (channels,) = _norm_shape(c)
    if not (c.has("weight") and c.has("bias")):
        raise Skip("a GroupNorm with only one of weight and bias")
    groups = int(c.options.get("num_groups", 1))
    module = c.nn.GroupNorm(groups, channels, eps=_eps(c))
    layer = c.layers.GroupNormalization(groups=groups, axis=-1, epsilon=_eps(c))
    note = "" if "num_groups" in c.options else "groups=1 assumed (not in the weights)"
    return Built(module, layer, [c.normal((BATCH, channels, 5))], True, note=note)


def check_instance_norm(c: LayerCase) -> Built:
    (channels,) = _norm_shape(c)
    if not (c.has("weight") and c.has("bias")):
        raise Skip("an InstanceNorm with only one of weight and bias")
    module = c.nn.InstanceNorm1d(channels, eps=_eps(c), affine=True)
    layer = c.layers.GroupNormalization(groups=-1, axis=-1, epsilon=_eps(c))
    return Built(module, layer, [c.normal((BATCH, channels, 6))], True)


# ---------------------------------------------------------------- the Keras rebuild (b: a Build)

INSTANCE_NORM_AXES = {"InstanceNorm1d": 1, "InstanceNorm2d": 2, "InstanceNorm3d": 3}


def rebuild_batch_norm(b, m, x):
    if m.running_mean is None:
        raise b.unsupported("track_running_stats=False (it normalises with batch statistics)")
    x = b.as_value(x)
    perm = b.channels_last(x.rank)
    momentum = 0.1 if m.momentum is None else m.momentum   # None: cumulative; inference only
    layer = b.new(b.layers.BatchNormalization, axis=-1, epsilon=m.eps, momentum=1 - momentum,
                  center=m.affine, scale=m.affine)
    b.weights(layer)
    return b.value(layer(b.view(x, perm)), perm)


def rebuild_layer_norm(b, m, x):
    k = len(m.normalized_shape)
    perm = b.last_axes(x, k)
    layer = b.new(b.layers.LayerNormalization, axis=list(range(-k, 0)) if k > 1 else -1,
                  epsilon=m.eps, center=getattr(m, "bias", None) is not None,
                  scale=m.weight is not None)
    b.weights(layer)
    return b.value(layer(b.view(x, perm)), perm)


def rebuild_rms_norm(b, m, x):
    if len(m.normalized_shape) != 1:
        raise b.unsupported("RMSNorm over more than one axis")
    if m.weight is None:
        raise b.unsupported("elementwise_affine=False (Keras RMSNormalization always scales)")
    eps = float(np.finfo(np.float32).eps) if m.eps is None else m.eps   # PyTorch's default
    perm = b.last_axes(x)
    layer = b.new(b.layers.RMSNormalization, axis=-1, epsilon=eps)
    b.weights(layer)
    return b.value(layer(b.view(x, perm)), perm)


def rebuild_group_norm(b, m, x):
    perm = b.channels_last(b.as_value(x).rank)
    layer = b.new(b.layers.GroupNormalization, groups=m.num_groups, axis=-1, epsilon=m.eps,
                  center=m.affine, scale=m.affine)
    b.weights(layer)
    return b.value(layer(b.view(x, perm)), perm)


def rebuild_instance_norm(b, m, x):
    if m.track_running_stats:
        raise b.unsupported("track_running_stats=True")
    perm = b.spatial(x, INSTANCE_NORM_AXES[type(m).__name__])
    layer = b.new(b.layers.GroupNormalization, groups=-1, axis=-1, epsilon=m.eps,
                  center=m.affine, scale=m.affine)
    b.weights(layer)
    return b.value(layer(b.view(x, perm)), perm)


# ---------------------------------------------------------------- the families

def _moving_statistics(rule: LayerRule, weights: dict[str, TensorRef]) -> Inference | None:
    if {"moving_mean", "moving_variance"} <= set(weights):
        return Inference(rule.keras_kind, "moving statistics")
    return None


def _gamma_beta(rule: LayerRule, weights: dict[str, TensorRef]) -> Inference | None:
    if weights and set(weights) <= {"gamma", "beta"}:
        return Inference(rule.keras_kind, "gamma/beta: a LayerNormalization or a "
                         "GroupNormalization (they map alike)", ("GroupNormalization",))
    return None


def _affine(name: str, kinds: tuple[str, ...], keras: str, note: str, stats: bool = False,
            rule: type = LayerRule, **more) -> LayerRule:
    params = [Param("weight", "gamma", required=False), Param("bias", "beta", required=False)]
    if stats:
        params += [Param("running_mean", "moving_mean"), Param("running_var", "moving_variance")]
    rule = BatchNormRule if stats else rule
    return rule(name, kinds, keras, tuple(params),
                carried=("num_batches_tracked",) if stats else (), note=note, **more)


BATCH_NORM = _affine("BatchNorm", ("BatchNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
                                   "SyncBatchNorm"), "BatchNormalization",
                     "set Keras epsilon=1e-5 and momentum=1-torch momentum; a Keras layer "
                     "with scale=False (center=False) gives weight 1 (bias 0)", stats=True,
                     proof=(("running_mean", "running_var"), "running statistics"),
                     check=check_batch_norm, rebuild=rebuild_batch_norm,
                     keras_options={**EPSILON, "momentum": Option("momentum", torch_momentum)},
                     guess_keras=_moving_statistics)
LAYER_NORM = _affine("LayerNorm", ("LayerNorm",), "LayerNormalization", "set Keras epsilon=1e-5",
                     hints=("ln", "layernorm", "layer_norm", "ln_f", "ln1", "ln2", "ln_1",
                            "ln_2"), check=check_layer_norm, rebuild=rebuild_layer_norm,
                     keras_options=EPSILON, computable=RMS_SCALING, guess_keras=_gamma_beta,
                     inferred_from=(AFFINE, VECTOR, NORM))
RMS_NORM = LayerRule(
    "RMSNorm", ("RMSNorm",), "RMSNormalization", (Param("weight", "scale"),),
    note="Keras RMSNormalization(epsilon=...); not LayerNormalization(rms_scaling=True), which "
         "scales by the variance", hints=("rms", "rmsnorm"), check=check_rms_norm,
    rebuild=rebuild_rms_norm, keras_options=EPSILON, inferred_from=(VECTOR, NORM))
GROUP_NORM = _affine("GroupNorm", ("GroupNorm",), "GroupNormalization", "set Keras epsilon=1e-5",
                     hints=("gn", "group", "groupnorm"), check=check_group_norm,
                     rebuild=rebuild_group_norm, rule=GroupNormRule,
                     keras_options={**EPSILON, "groups": Option("num_groups")},
                     inferred_from=(AFFINE,))
INSTANCE_NORM = _affine("InstanceNorm", ("InstanceNorm", "InstanceNorm1d", "InstanceNorm2d",
                                         "InstanceNorm3d"), "GroupNormalization",
                        "affine weights only; Keras GroupNormalization(groups=-1, epsilon=1e-5)",
                        hints=("instance", "instancenorm", "inorm"), check=check_instance_norm,
                        rebuild=rebuild_instance_norm, inferred_from=(AFFINE,))

FAMILIES = (BATCH_NORM, LAYER_NORM, RMS_NORM, GROUP_NORM, INSTANCE_NORM)
