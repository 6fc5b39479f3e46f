"""Layer kinds from names and shapes, when no architecture says them.

Only readings that cannot change the numbers are made silently (a 4-D ``weight`` is a
convolution: Conv2d and ConvTranspose2d share the permutation). Where the reading changes
the result (a bias-free 2-D ``weight`` is a Linear to transpose or an Embedding to keep) the
module name must say which, or the user must (``--rules``); otherwise :class:`AmbiguousError`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..checkpoint import TensorRef
from ..errors import AmbiguousError

RULES_HINT = "state the kind with --rules (a [[layer]] entry with match and kind), or pass --model"

#: name fragments that identify a module family, checked as whole words of the module path.
HINTS: dict[str, tuple[str, ...]] = {
    "Embedding": ("embed", "embeds", "embedding", "embeddings", "emb", "wte", "wpe", "tok",
                  "token", "tokens", "vocab", "lookup", "word", "words", "position", "positions"),
    "Linear": ("fc", "linear", "lin", "proj", "dense", "head", "classifier", "out", "mlp", "lm",
               "query", "key", "value", "q", "k", "v", "o", "gate", "up", "down", "ffn", "fc1",
               "fc2", "w1", "w2", "w3", "c_fc", "c_proj", "c_attn", "attn", "logits", "score"),
    "ConvTranspose": ("deconv", "convt", "transpose", "transposed", "upconv", "tconv"),
    "PReLU": ("prelu", "act", "activation"),
    "RMSNorm": ("rms", "rmsnorm"),
    "GroupNorm": ("gn", "group", "groupnorm"),
    "InstanceNorm": ("instance", "instancenorm", "inorm"),
    "LayerNorm": ("ln", "norm", "layernorm", "layer_norm", "ln_f", "ln1", "ln2", "ln_1", "ln_2"),
}


@dataclass(frozen=True)
class Inference:
    kind: str | None    # a rule family name, or None: no rule fits (the tensors are carried)
    reason: str


def _words(path: str) -> set[str]:
    """Words of a module path: ``encoder.tok_embeddings`` -> {encoder, tok, embeddings, ...}."""
    parts = re.split(r"[._\-]", path.lower())
    words = set(parts) | {p.rstrip("0123456789") for p in parts}
    return words | {path.lower().rsplit(".", 1)[-1]}


def _hinted(path: str, family: str) -> bool:
    return bool(_words(path) & set(HINTS[family]))


def infer_torch_kind(path: str, params: dict[str, TensorRef]) -> Inference:
    """The rule family for the PyTorch module at ``path`` holding ``params`` (name -> tensor)."""
    names = set(params)
    if not path:
        return Inference(None, "top-level tensor, not inside a module")
    if {"running_mean", "running_var"} <= names:
        return Inference("BatchNorm", "running statistics")
    weight, bias = params.get("weight"), params.get("bias")
    if weight is None or not names <= {"weight", "bias"}:
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
    if _hinted(path, "ConvTranspose"):
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


def infer_keras_kind(layer: str, weights: dict[str, TensorRef]) -> Inference:
    """The Keras class of a layer known only by its weight names and shapes."""
    names = set(weights)
    kernel = weights.get("kernel")
    if kernel is not None and names <= {"kernel", "bias"}:
        ndim = len(kernel.shape)
        by_rank = {2: "Dense", 3: "Conv1D", 4: "Conv2D", 5: "Conv3D"}
        if ndim in by_rank:
            return Inference(by_rank[ndim], f"{ndim}-d kernel")
    if {"moving_mean", "moving_variance"} <= names:
        return Inference("BatchNormalization", "moving statistics")
    if names and names <= {"gamma", "beta"}:
        return Inference("LayerNormalization", "gamma/beta (GroupNormalization maps alike)")
    if names == {"embeddings"}:
        return Inference("Embedding", "embeddings")
    if names == {"alpha"}:
        return Inference("PReLU", "alpha")
    return Inference(None, f"no rule for Keras weights {sorted(names)}")
