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
from .ops import Identity
from .table import AFFINE, MATRIX, MATRIX_AND_BIAS, NORM, VECTOR, Inference, kernel

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
    rank = len(weight.shape)
    if bias is not None and bias.shape == weight.shape:
        return _affine(path)
    if _reading(kernel(rank)):
        return _conv(path, rank, bias, weight)
    if rank == 2 and bias is not None and bias.shape == weight.shape[:1]:
        return Inference(_reading(MATRIX_AND_BIAS)[0], "2-d weight with a bias of its output size")
    if rank == 2 and bias is None:
        return _linear_or_embedding(path, weight)
    if rank == 1 and bias is None:
        return _bias_free_vector(path)
    return Inference(None, f"no rule for a weight of shape {list(weight.shape)} with this bias")


def _reading(reading: str) -> list[str]:
    """The families read from ``reading``, in table order."""
    return [f.name for f in registry.TABLE if reading in f.inferred_from]


#: Words that say "a normalisation" without saying which.
NORM_WORDS = ("norm", "normalization", "normalisation")


def _affine(path: str) -> Inference:
    """A name whose last word ends with a family's long hint decides it (``self_attn_layer_norm``
    is a LayerNorm: its bias rules an RMSNorm out), except inside a convolution block, where
    such names also hold GroupNorms (wav2vec2's ``conv_layers.0.layer_norm``)."""
    candidates = _reading(AFFINE)
    parents, _, last = path.lower().rpartition(".")
    ending = [f for f in candidates if any(last.endswith(h) for h in
                                           registry.TABLE.by_name(f).hints if len(h) >= 8)]
    if len(ending) == 1 and "conv" not in parents:
        return Inference(ending[0], f"weight and bias of one shape, named like {_a(ending[0])}")
    return _named_or_open(path, candidates, "weight and bias of one shape")


def _named_or_open(path: str, candidates: list[str], what: str) -> Inference:
    """The one candidate the name hints at; else the first, with the others as alternatives."""
    named = [family for family in candidates if _hinted(path, family)]
    if len(named) == 1:
        return Inference(named[0], f"{what}, named like {_a(named[0])}")
    open_ = tuple(named) or tuple(candidates)
    return Inference(open_[0], f"{what}: {_a(', '.join(open_[:-1]))} or {open_[-1]}, and the "
                               f"name does not say which (they map alike)", open_[1:])


def _a(words: str) -> str:
    return f"{'an' if words[:1] in 'AEIOU' else 'a'} {words}"


def _conv(path: str, rank: int, bias: TensorRef | None = None,
          weight: TensorRef | None = None) -> Inference:
    """A convolution, or a transposed one when named so or when its bias has the size of the
    weight's axis 1 times the groups (out channels of a transposed one)."""
    conv, transposed = _reading(kernel(rank))[0], _reading(kernel(rank, True))[0]
    if _hinted(path, transposed):
        return Inference(transposed, f"{rank}-d weight, named like a transposed convolution")
    if bias is not None and weight is not None and len(bias.shape) == 1 \
            and bias.shape[0] != weight.shape[0] and weight.shape[1] \
            and bias.shape[0] % weight.shape[1] == 0:
        return Inference(transposed, f"{rank}-d weight whose bias {list(bias.shape)} is "
                                     f"its axis 1 (out channels of a transposed one)")
    return Inference(conv, f"{rank}-d weight ({transposed} maps with the same permutation)")


def _what_it_does(family: str) -> str:
    weight = registry.TABLE.by_name(family).param("weight")
    return "kept as is" if weight is None or isinstance(weight.op, Identity) else "transposed"


def _linear_or_embedding(path: str, weight: TensorRef) -> Inference:
    candidates = _reading(MATRIX)
    named = [family for family in candidates if _hinted(path, family)]
    if len(named) == 1:
        return Inference(named[0], f"bias-free 2-d weight, named like {_a(named[0])}")
    either = " or ".join(f"{_a(f)} ({_what_it_does(f)})" for f in candidates)
    raise AmbiguousError(
        f"a bias-free 2-d weight {list(weight.shape)} is either {either}, and the name does "
        f"not tell", tensor=weight.name, hint=RULES_HINT)


def _bias_free_vector(path: str) -> Inference:
    """A family the name hints at, except the first's (a bias-free LayerNorm is rare, and
    RMSNorms are often named ``input_layernorm``); a normalisation's name leaves the
    normalisations open; else all of them, the first written."""
    vectors = _reading(VECTOR)
    for family in vectors[1:]:
        if _hinted(path, family):
            return Inference(family, f"1-d weight without bias, named like {_a(family)}")
    normish = _words(path) & set(NORM_WORDS + registry.TABLE.by_name(vectors[0]).hints)
    candidates = [f for f in vectors if NORM in registry.TABLE.by_name(f).inferred_from] \
        if normish else vectors
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
