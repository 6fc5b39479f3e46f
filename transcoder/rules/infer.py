"""Layer kinds from names and shapes, when no architecture says them.

Families whose tensor names are their own (recurrent, attention) recognise themselves
(``LayerRule.recognise``); for the rest, the shapes narrow the choice and the family ``hints``
(words of the module path) settle it. Three outcomes:

- The evidence decides (a 4-D ``weight`` is a convolution: Conv2d and ConvTranspose2d share
  the permutation, which the check verifies either way).
- The candidates map the tensors to the same bytes but compute different numbers (a (weight,
  bias) pair is a LayerNorm, a GroupNorm or an InstanceNorm; a bias-free 1-d weight a
  LayerNorm, an RMSNorm or a PReLU) and the name does not say which: the first is written,
  the others are listed as ``alternatives``, and the check reports the layer NOT CHECKED.
- The reading changes the written numbers (a bias-free 2-D ``weight`` is a Linear to transpose
  or an Embedding to keep) and the name does not say which: :class:`AmbiguousError`, naming
  the ways to say more (``--rules``, ``--model``).
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
        return _conv(path, len(weight.shape) - 2, bias, weight)
    if len(weight.shape) == 2 and bias is not None and bias.shape == weight.shape[:1]:
        return Inference("Linear", "2-d weight with a bias of its output size")
    if len(weight.shape) == 2 and bias is None:
        return _linear_or_embedding(path, weight)
    if len(weight.shape) == 1 and bias is None:
        return _bias_free_vector(path, weight)
    return Inference(None, f"no rule for a weight of shape {list(weight.shape)} with this bias")


#: Families that map a (weight, bias) pair of one shape alike, and a bias-free 1-d weight.
AFFINE_NORMS = ("LayerNorm", "GroupNorm", "InstanceNorm")
VECTORS = ("LayerNorm", "RMSNorm", "PReLU")
#: Words that say "a normalisation" without saying which.
NORM_WORDS = ("norm", "normalization", "normalisation")


def _affine_norm(path: str) -> Inference:
    return _named_or_open(path, AFFINE_NORMS, "weight and bias of one shape")


def _named_or_open(path: str, candidates: tuple[str, ...], what: str) -> Inference:
    """The one candidate the name hints at; else the first, with the others as alternatives."""
    named = [family for family in candidates if _hinted(path, family)]
    if len(named) == 1:
        return Inference(named[0], f"{what}, named like {_a(named[0])}")
    open_ = tuple(named) or candidates
    return Inference(open_[0], f"{what}: {_a(', '.join(open_[:-1]))} or {open_[-1]}, and the "
                               f"name does not say which (they map alike)", open_[1:])


def _a(words: str) -> str:
    return f"{'an' if words[:1] in 'AEIOU' else 'a'} {words}"


def _conv(path: str, n: int, bias: TensorRef | None = None,
          weight: TensorRef | None = None) -> Inference:
    if _hinted(path, f"ConvTranspose{n}d"):
        return Inference(f"ConvTranspose{n}d", f"{n + 2}-d weight, named like a transposed convolution")
    if bias is not None and weight is not None and len(bias.shape) == 1 \
            and bias.shape[0] != weight.shape[0] and weight.shape[1] \
            and bias.shape[0] % weight.shape[1] == 0:
        return Inference(f"ConvTranspose{n}d", f"{n + 2}-d weight whose bias {list(bias.shape)} is "
                                               f"its axis 1 (out channels of a transposed one)")
    return Inference(f"Conv{n}d", f"{n + 2}-d weight (ConvTranspose{n}d maps with the same permutation)")


def _linear_or_embedding(path: str, weight: TensorRef) -> Inference:
    embedding, linear = _hinted(path, "Embedding"), _hinted(path, "Linear")
    if embedding != linear:
        kind = "Embedding" if embedding else "Linear"
        return Inference(kind, f"bias-free 2-d weight, named like {_a(kind)}")
    raise AmbiguousError(
        f"a bias-free 2-d weight {list(weight.shape)} is either a Linear (transposed) or an "
        f"Embedding (kept as is), and the name does not tell", tensor=weight.name, hint=RULES_HINT)


def _bias_free_vector(path: str, weight: TensorRef) -> Inference:
    """An RMSNorm or a PReLU when named so; a LayerNorm name does not decide (a bias-free
    LayerNorm is rare, and RMSNorms are often named ``input_layernorm``)."""
    for family in ("RMSNorm", "PReLU"):
        if _hinted(path, family):
            return Inference(family, f"1-d weight without bias, named like {_a(family)}")
    normish = _words(path) & set(NORM_WORDS + registry.TABLE.by_name("LayerNorm").hints)
    candidates = VECTORS[:2] if normish else VECTORS
    found = _named_or_open("", candidates, "1-d weight without bias")
    return Inference(found.kind, found.reason, found.alternatives)


# ---------------------------------------------------------------- Keras

def infer_keras_kind(layer: str, weights: dict[str, TensorRef]) -> Inference:
    """The Keras class of a layer known only by its weight names and shapes: the first family
    whose ``recognise_keras`` proves it, else the first whose ``guess_keras`` reads it."""
    for family in registry.TABLE:
        found = family.recognise_keras(layer, weights)
        if found is not None:
            return found
    for family in registry.TABLE:
        found = family.guess_keras(family, weights) if family.guess_keras else None
        if found is not None:
            return found
    return Inference(None, f"no rule for Keras weights {sorted(set(weights))}")
