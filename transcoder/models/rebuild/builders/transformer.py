"""Transformer encoders: ``nn.TransformerEncoderLayer`` and ``nn.TransformerEncoder``.

Rebuilt as one unit from their parts, each part through its own builder (``b.sub``:
MultiheadAttention and Linear from their rule families, the norms, dropout, the activation),
so each Keras layer is named by its sub-module path (``enc.self_attn``, ``enc.linear1``...).
"""
from __future__ import annotations

from keras import layers as L
from torch import nn

from ..core import Build, Value, modules


def _add(b: Build, x: Value, y: Value, suffix: str) -> Value:
    perm = x.perm
    return b.value(b.new(L.Add, suffix=suffix)([b.view(x, perm), b.view(y, perm)]), perm)


@modules(nn.TransformerEncoderLayer)
def encoder_layer(b: Build, m, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
    """PyTorch's forward, step by step (post-norm, or pre-norm with ``norm_first``)."""
    if src_mask is not None or src_key_padding_mask is not None or is_causal:
        raise b.unsupported("masks (src_mask, src_key_padding_mask, is_causal)")

    def self_attention(x):
        return b.sub("dropout1", b.sub("self_attn", x, x, x, need_weights=False)[0])

    def feed_forward(x):
        hidden = b.sub("dropout", b.sub("activation", b.sub("linear1", x)))
        return b.sub("dropout2", b.sub("linear2", hidden))

    x = b.as_value(src)
    if m.norm_first:
        x = _add(b, x, self_attention(b.sub("norm1", x)), "add1")
        return _add(b, x, feed_forward(b.sub("norm2", x)), "add2")
    x = b.sub("norm1", _add(b, x, self_attention(x), "add1"))
    return b.sub("norm2", _add(b, x, feed_forward(x), "add2"))


@modules(nn.TransformerEncoder)
def encoder(b: Build, m, src, mask=None, src_key_padding_mask=None, is_causal=None):
    if mask is not None or src_key_padding_mask is not None or is_causal:
        raise b.unsupported("masks (mask, src_key_padding_mask, is_causal)")
    x = src
    for i in range(len(m.layers)):
        x = b.sub(f"layers.{i}", x)
    return b.sub("norm", x) if m.norm is not None else x
