"""Normalisation layers: BatchNorm, LayerNorm, RMSNorm, GroupNorm and InstanceNorm.

Their tensors are renamed, never permuted. LayerNorm, GroupNorm and affine InstanceNorm share
one (weight, bias) pair of the channel size: the bytes do not say which of the three a module
is, though each computes different numbers. What the weights cannot say is set on the Keras
side (epsilon, groups, momentum): see each family's note.
"""
from __future__ import annotations

from ..checkcase import BATCH, Built, LayerCase, Skip
from ..table import LayerRule, Param


def _eps(c: LayerCase, default: float = 1e-5) -> float:
    return float(c.options.get("eps") or default)


def _norm_shape(c: LayerCase) -> tuple[int, ...]:
    return c.shape("weight") if c.has("weight") else c.shape("bias")


def check_batch_norm(c: LayerCase) -> Built:
    (channels,) = c.shape("running_mean")
    affine = c.has("weight")
    if affine and not c.has("bias"):
        raise Skip("a BatchNorm with a weight but no bias")
    module = c.nn.BatchNorm1d(channels, eps=_eps(c), affine=affine)
    layer = c.layers.BatchNormalization(epsilon=_eps(c), center=c.has("bias"), scale=affine)
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


def _affine(name: str, kinds: tuple[str, ...], keras: str, note: str, stats: bool = False,
            **more) -> LayerRule:
    params = [Param("weight", "gamma", required=False), Param("bias", "beta", required=False)]
    if stats:
        params += [Param("running_mean", "moving_mean"), Param("running_var", "moving_variance")]
    return LayerRule(name, kinds, keras, tuple(params),
                     carried=("num_batches_tracked",) if stats else (), note=note, **more)


BATCH_NORM = _affine("BatchNorm", ("BatchNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
                                   "SyncBatchNorm"), "BatchNormalization",
                     "set Keras epsilon=1e-5 and momentum=1-torch momentum", stats=True,
                     proof=(("running_mean", "running_var"), "running statistics"),
                     check=check_batch_norm)
LAYER_NORM = _affine("LayerNorm", ("LayerNorm",), "LayerNormalization", "set Keras epsilon=1e-5",
                     hints=("ln", "layernorm", "layer_norm", "ln_f", "ln1", "ln2", "ln_1",
                            "ln_2"), check=check_layer_norm)
RMS_NORM = LayerRule(
    "RMSNorm", ("RMSNorm",), "RMSNormalization", (Param("weight", "scale"),),
    note="Keras RMSNormalization(epsilon=...); not LayerNormalization(rms_scaling=True), which "
         "scales by the variance", hints=("rms", "rmsnorm"), check=check_rms_norm)
GROUP_NORM = _affine("GroupNorm", ("GroupNorm",), "GroupNormalization", "set Keras epsilon=1e-5",
                     hints=("gn", "group", "groupnorm"), check=check_group_norm)
INSTANCE_NORM = _affine("InstanceNorm", ("InstanceNorm", "InstanceNorm1d", "InstanceNorm2d",
                                         "InstanceNorm3d"), "GroupNormalization",
                        "affine weights only; Keras GroupNormalization(groups=-1, epsilon=1e-5)",
                        hints=("instance", "instancenorm", "inorm"), check=check_instance_norm)

FAMILIES = (BATCH_NORM, LAYER_NORM, RMS_NORM, GROUP_NORM, INSTANCE_NORM)
