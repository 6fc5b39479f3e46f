"""Layer kinds from names and shapes, when no architecture says them.

Families whose tensor names are their own (recurrent, attention) recognise themselves
(``LayerRule.recognise``); for the rest, the shapes narrow the choice and the family ``hints``
(words of the module path) settle it. Only readings that cannot change the numbers are made
silently (a 4-D ``weight`` is a convolution: Conv2d and ConvTranspose2d share the
permutation). Where the reading changes the result (a bias-free 2-D ``weight`` is a Linear to
transpose or an Embedding to keep) the module name must say which, or the user must
(``--rules``); otherwise :class:`AmbiguousError`.
"""
from __future__ import annotations

import re

from ..checkpoint import TensorRef
from ..errors import AmbiguousError
from . import registry
from .table import Inference

RULES_HINT = "state the kind with --rules (a [[layer]] entry with match and kind), or pass --model"


def _words(path: str) -> set[str]:
    """Words of a module path: ``encoder.tok_embeddings`` -> {encoder, tok, embeddings, ...}."""
    parts = re.split(r"[._\-]", path.lower())
    words = set(parts) | {p.rstrip("0123456789") for p in parts}
    return words | {path.lower().rsplit(".", 1)[-1]}


def _hinted(path: str, family: str) -> bool:
    return bool(_words(path) & set(registry.TABLE.by_name(family).hints))


def infer_torch_kind(path: str, params: dict[str, TensorRef]) -> Inference:
    """The rule family for the PyTorch module at ``path`` holding ``params`` (name -> tensor)."""
    if not path:
        return Inference(None, "top-level tensor, not inside a module")
    for family in registry.TABLE:
        found = family.recognise(path, params)
        if found is not None:
            return found
    return _by_shapes(path, params)


def _by_shapes(path: str, params: dict[str, TensorRef]) -> Inference:
    weight, bias = params.get("weight"), params.get("bias")
    if weight is None or not set(params) <= {"weight", "bias"}:
        return Inference(None, "no rule matches these tensor names")
    if bias is not None and bias.shape == weight.shape:
        return _affine_norm(path)
    if len(weight.shape) in (3, 4, 5):
        return _conv(path, len(weight.shape) - 2)
    if len(weight.shape) == 2 and bias is not None and bias.shape == weight.shape[:1]:
        return Inference("Linear", "2-d weight with a bias of its output size")
    if len(weight.shape) == 2 and bias is None:
        return _linear_or_embedding(path, weight)
    if len(weight.shape) == 1 and bias is None:
        return _bias_free_vector(path, weight)
    return Inference(None, f"no rule for a weight of shape {list(weight.shape)} with this bias")


def _affine_norm(path: str) -> Inference:
    for family in ("GroupNorm", "InstanceNorm"):
        if _hinted(path, family):
            return Inference(family, f"weight and bias of one shape, named like a {family}")
    return Inference("LayerNorm", "weight and bias of one shape (GroupNorm and InstanceNorm map alike)")


def _conv(path: str, n: int) -> Inference:
    if _hinted(path, f"ConvTranspose{n}d"):
        return Inference(f"ConvTranspose{n}d", f"{n + 2}-d weight, named like a transposed convolution")
    return Inference(f"Conv{n}d", f"{n + 2}-d weight (ConvTranspose{n}d maps with the same permutation)")


def _linear_or_embedding(path: str, weight: TensorRef) -> Inference:
    embedding, linear = _hinted(path, "Embedding"), _hinted(path, "Linear")
    if embedding != linear:
        kind = "Embedding" if embedding else "Linear"
        return Inference(kind, f"bias-free 2-d weight, named like an {kind}")
    raise AmbiguousError(
        f"a bias-free 2-d weight {list(weight.shape)} is either a Linear (transposed) or an "
        f"Embedding (kept as is), and the name does not tell", tensor=weight.name, hint=RULES_HINT)


def _bias_free_vector(path: str, weight: TensorRef) -> Inference:
    for family in ("PReLU", "RMSNorm", "LayerNorm"):
        if _hinted(path, family):
            return Inference(family, f"1-d weight without bias, named like a {family}")
    raise AmbiguousError(
        "a 1-d weight without bias is a PReLU, an RMSNorm or a bias-free LayerNorm, and the name "
        "does not tell", tensor=weight.name, hint=RULES_HINT)


# ---------------------------------------------------------------- Keras

KERNEL_RANKS = {2: "Dense", 3: "Conv1D", 4: "Conv2D", 5: "Conv3D"}


def infer_keras_kind(layer: str, weights: dict[str, TensorRef]) -> Inference:
    """The Keras class of a layer known only by its weight names and shapes."""
    for family in registry.TABLE:
        found = family.recognise_keras(layer, weights)
        if found is not None:
            return found
    names = set(weights)
    kernel = weights.get("kernel")
    if kernel is not None and names <= {"kernel", "bias"} and len(kernel.shape) in KERNEL_RANKS:
        return Inference(KERNEL_RANKS[len(kernel.shape)], f"{len(kernel.shape)}-d kernel")
    if {"moving_mean", "moving_variance"} <= names:
        return Inference("BatchNormalization", "moving statistics")
    if names and names <= {"gamma", "beta"}:
        return Inference("LayerNormalization", "gamma/beta (GroupNormalization maps alike)")
    if names == {"embeddings"}:
        return Inference("Embedding", "embeddings")
    if names == {"alpha"}:
        return Inference("PReLU", "alpha")
    return Inference(None, f"no rule for Keras weights {sorted(names)}")
