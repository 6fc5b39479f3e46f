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


#: gate blocks in weight_hh (G*H, H) / recurrent_kernel (H, G*H) -> PyTorch family, Keras class.
RECURRENT_GATES: dict[int, tuple[str, str]] = {4: ("LSTM", "LSTM"), 3: ("GRU", "GRU"),
                                               1: ("RNN", "SimpleRNN")}
RECURRENT_NAME = re.compile(r"(weight|bias)_(ih|hh|hr)(_l\d+)?(_reverse)?")
ATTENTION_NAMES = {"in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight",
                   "in_proj_bias", "bias_k", "bias_v", "out_proj.weight", "out_proj.bias"}
ATTENTION_KERAS = {f"{p}/{w}" for p in ("query", "key", "value", "attention_output")
                   for w in ("kernel", "bias")}


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
    if names and all(RECURRENT_NAME.fullmatch(n) for n in names):
        return _recurrent(params)
    if names <= ATTENTION_NAMES and names & {"in_proj_weight", "q_proj_weight"}:
        return Inference("MultiheadAttention", "in_proj/out_proj tensors of a MultiheadAttention")
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


def _recurrent(params: dict[str, TensorRef]) -> Inference:
    """LSTM, GRU or RNN (layers or cells) from the gate multiple of ``weight_hh``."""
    if any("_hr" in n for n in params):
        return Inference("LSTM", "projection weights (weight_hr) exist only in an LSTM")
    hh = params.get("weight_hh_l0", params.get("weight_hh"))
    gates = _gates(hh.shape if hh is not None else (), rows_are_gates=True)
    if gates not in RECURRENT_GATES:
        return Inference(None, "recurrent tensor names without a weight_hh of shape (G*H, H)")
    kind = RECURRENT_GATES[gates][0]
    extra = " (tanh assumed: relu maps the same weights alike)" if kind == "RNN" else ""
    return Inference(kind, f"recurrent names, weight_hh {list(hh.shape)} has {gates} gate(s){extra}")


def _gates(shape: tuple, rows_are_gates: bool) -> int | None:
    """G of a (G*H, H) recurrent weight (PyTorch) or a (H, G*H) recurrent kernel (Keras)."""
    if len(shape) != 2:
        return None
    big, h = shape if rows_are_gates else shape[::-1]
    return big // h if h and big % h == 0 else None


def _keras_recurrent(weights: dict[str, TensorRef]) -> Inference:
    rk = next(ref for w, ref in weights.items() if w.rsplit("/", 1)[-1] == "recurrent_kernel")
    gates = _gates(rk.shape, rows_are_gates=False)
    if gates not in RECURRENT_GATES:
        return Inference(None, f"a recurrent_kernel of shape {list(rk.shape)} fits no gate count")
    return Inference(RECURRENT_GATES[gates][1], f"recurrent_kernel {list(rk.shape)}: {gates} gate(s)")


def infer_keras_kind(layer: str, weights: dict[str, TensorRef]) -> Inference:
    """The Keras class of a layer known only by its weight names and shapes."""
    names = set(weights)
    if any(w.rsplit("/", 1)[-1] == "recurrent_kernel" for w in names):
        return _keras_recurrent(weights)
    if names and {"/".join(w.split("/")[-2:]) for w in names} <= ATTENTION_KERAS:
        return Inference("MultiHeadAttention", "query/key/value/attention_output weights")
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
