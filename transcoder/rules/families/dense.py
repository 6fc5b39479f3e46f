"""Linear <-> Dense and Embedding <-> Embedding.

A Linear's weight (out, in) is the Dense kernel transposed; an Embedding's (num, dim) table is
kept as it is. A bias-free 2-d weight is either, and the two readings give different bytes:
kind inference (``rules/infer.py``) takes it from the module name or refuses to guess.
"""
from __future__ import annotations

import numpy as np

from ..checkcase import BATCH, Built, LayerCase
from ...checkpoint import TensorRef
from ..table import MATRIX, MATRIX_AND_BIAS, T, Inference, LayerRule, Param
from .conv import kernel_of_rank


def check_linear(c: LayerCase) -> Built:
    out, inn = c.shape("weight")
    bias = c.has("bias")
    return Built(c.nn.Linear(inn, out, bias=bias), c.layers.Dense(out, use_bias=bias),
                 [c.normal((BATCH, inn))])


def check_embedding(c: LayerCase) -> Built:
    num, dim = c.shape("weight")
    tokens = c.rng.integers(0, num, size=(BATCH, 7)).astype(np.int64)
    return Built(c.nn.Embedding(num, dim), c.layers.Embedding(num, dim), [tokens])


# ---------------------------------------------------------------- the Keras rebuild (b: a Build)

def rebuild_linear(b, m, x):
    perm = b.last_axes(x)
    layer = b.new(b.layers.Dense, m.out_features, use_bias=m.bias is not None)
    b.weights(layer)
    return b.value(layer(b.view(x, perm)), perm)


def rebuild_embedding(b, m, x):
    if m.max_norm is not None:
        raise b.unsupported("max_norm (renormalises the table at lookup)")
    x = b.as_value(x)
    layer = b.new(b.layers.Embedding, m.num_embeddings, m.embedding_dim)
    b.weights(layer)
    return b.value(layer(b.view(x, b.identity(x.rank))))


def _embeddings(rule: LayerRule, weights: dict[str, TensorRef]) -> Inference | None:
    return Inference(rule.keras_kind, "embeddings") if set(weights) == {"embeddings"} else None


LINEAR = LayerRule(
    "Linear", ("Linear", "LazyLinear", "NonDynamicallyQuantizableLinear"), "Dense",
    (Param("weight", "kernel", T), Param("bias", "bias", required=False)),
    note="(out, in) -> (in, out)", bias_of=0,
    hints=("fc", "linear", "lin", "proj", "dense", "head", "classifier", "out", "mlp", "lm",
           "query", "key", "value", "q", "k", "v", "o", "gate", "up", "down", "ffn", "fc1", "fc2",
           "w1", "w2", "w3", "c_fc", "c_proj", "c_attn", "attn", "logits", "score"),
    check=check_linear, rebuild=rebuild_linear, weight_norm=True, guess_keras=kernel_of_rank(2),
    fused_activation=True, inferred_from=(MATRIX, MATRIX_AND_BIAS),
    units={"torch": {"weight": 0, "bias": 0}, "keras": {"kernel": 1, "bias": 0}},
    cannot={"rebuild:LazyLinear": "a LazyLinear becomes a Linear at its first call; before, it "
                                  "has no weights",
            "rebuild:NonDynamicallyQuantizableLinear": "only a MultiheadAttention's out_proj, "
                                                       "rebuilt with its attention layer"})

EMBEDDING = LayerRule(
    "Embedding", ("Embedding", "EmbeddingBag"), "Embedding", (Param("weight", "embeddings"),),
    note="(num, dim) unchanged: never transposed",
    hints=("embed", "embeds", "embedding", "embeddings", "emb", "wte", "wpe", "tok", "token",
           "tokens", "vocab", "lookup", "word", "words", "position", "positions"),
    check=check_embedding, rebuild=rebuild_embedding, guess_keras=_embeddings,
    inferred_from=(MATRIX,), units={"torch": {"weight": 0}, "keras": {"embeddings": 0}},
    cannot={"rebuild:EmbeddingBag": "it reduces bags of lookups (offsets, per_sample_weights); "
                                    "no Keras layer does"})
