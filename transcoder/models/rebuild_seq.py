"""Builders for sequence modules: LSTM / GRU / RNN, MultiheadAttention, Transformer encoders.

Recurrent modules follow the rule table's naming: one Keras layer per stacked layer, ``M``
for a single layer and ``M.l0``, ``M.l1``, ... otherwise; a bidirectional layer is a Keras
``Bidirectional``. The call returns PyTorch's tuple: ``(out, h_n)`` or ``(out, (h_n, c_n))``.
``TransformerEncoderLayer`` / ``TransformerEncoder`` are rebuilt as one unit from their
parts, each Keras layer named by its sub-module path (``enc.self_attn``, ``enc.linear1``...).
"""
from __future__ import annotations

from keras import layers as L
from torch import nn

from ..errors import UnsupportedError
from .rebuild_core import Build, Refused, Value, identity, modules

RECURRENT = {nn.LSTM: L.LSTM, nn.GRU: L.GRU, nn.RNN: L.SimpleRNN}
SEQUENCE_FIRST = (1, 0, 2)   # PyTorch (T, N, F) held as Keras (N, T, F)


def _cell_options(m) -> dict:
    if isinstance(m, nn.RNN):
        return {"activation": m.nonlinearity}
    if isinstance(m, nn.GRU):
        return {"reset_after": True, "recurrent_activation": "sigmoid"}
    return {"recurrent_activation": "sigmoid"}


@modules(nn.LSTM, nn.GRU, nn.RNN)
def recurrent(b: Build, m, x, hx=None):
    x = b.as_value(x)
    if hx is not None:
        raise b.unsupported("an initial state argument")
    if getattr(m, "proj_size", 0):
        raise b.unsupported("proj_size (Keras LSTM has no projection)")
    if x.rank != 3:
        raise b.unsupported(f"an input of rank {x.rank} (unbatched or packed)")
    perm = identity(3) if m.batch_first else SEQUENCE_FIRST
    y, states = b.view(x, perm), []
    for k in range(m.num_layers):
        name = b.path if m.num_layers == 1 else f"{b.path}.l{k}"
        options = dict(units=m.hidden_size, use_bias=m.bias, return_sequences=True,
                       return_state=True, **_cell_options(m))
        if m.bidirectional:
            layer = b.new(L.Bidirectional, RECURRENT[type(m)](**options), name=name)
        else:
            layer = b.new(RECURRENT[type(m)], name=name, **options)
        b.weights(layer, name)
        y, *layer_states = layer(y)
        states.append(layer_states)
    out = b.value(y, perm)
    per_state = 2 if isinstance(m, nn.LSTM) else 1   # (h, c) or (h,), per direction
    stacked = [_stack(b, [s[i::per_state] for s in states], suffix) for i, suffix in
               enumerate(("h_n", "c_n")[:per_state])]
    return (out, tuple(stacked)) if isinstance(m, nn.LSTM) else (out, stacked[0])


def _stack(b: Build, groups: list[list], suffix: str) -> Value:
    """PyTorch's h_n: (layers * directions, N, H), forward before backward per layer."""
    return b.value(b.op("stack", [t for group in groups for t in group], axis=0, suffix=suffix),
                   name=f"{b.name}.{suffix}")


@modules(nn.MultiheadAttention)
def multihead_attention(b: Build, m, query, key, value, key_padding_mask=None, need_weights=True,
                        attn_mask=None, average_attn_weights=True, is_causal=False):
    if key_padding_mask is not None or attn_mask is not None or is_causal:
        raise b.unsupported("attention masks (attn_mask, key_padding_mask, is_causal)")
    if m.bias_k is not None:
        raise b.unsupported("add_bias_kv=True")
    perm = identity(3) if m.batch_first else SEQUENCE_FIRST
    q, k, v = (b.view(t, perm) for t in (query, key, value))
    layer = b.new(L.MultiHeadAttention, num_heads=m.num_heads, key_dim=m.head_dim,
                  value_dim=m.head_dim, use_bias=m.in_proj_bias is not None, dropout=m.dropout)
    b.weights(layer)
    out = b.value(layer(q, v, key=k), perm)
    weights = Refused(UnsupportedError(
        f"nn.MultiheadAttention in {b.path}: its attention weights (call it with "
        f"need_weights=False, or do not use the second output)")) if need_weights else None
    return out, weights


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
