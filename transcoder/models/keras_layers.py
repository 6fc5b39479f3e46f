"""Small Keras layers for PyTorch ops that have no built-in Keras layer.

Every layer here is registered with Keras (package ``transcoder``) and has a ``get_config``,
so a rebuilt model saved as ``.keras`` loads with ``keras.models.load_model(path)`` once
``transcoder.models`` is imported. None of them is a ``Lambda``: the function a
:class:`TensorOp` or :class:`Scalar` runs is looked up by name in :data:`FUNCTIONS`, a fixed
table of ``keras.ops`` calls, so loading a file never runs code from the file.
"""
from __future__ import annotations

import math

import keras
from keras import ops

PACKAGE = "transcoder"


def _norm(x, p=2.0, axis=None, keepdims=False):
    """``torch.norm`` / ``torch.linalg.vector_norm`` over ``axis`` (all axes if None)."""
    axis = tuple(axis) if isinstance(axis, list) else axis
    if p == 2:
        return ops.sqrt(ops.sum(ops.square(x), axis=axis, keepdims=keepdims))
    if p == 1:
        return ops.sum(ops.abs(x), axis=axis, keepdims=keepdims)
    if p == math.inf:
        return ops.max(ops.abs(x), axis=axis, keepdims=keepdims)
    return ops.power(ops.sum(ops.power(ops.abs(x), p), axis=axis, keepdims=keepdims), 1.0 / p)


def _normalize(x, p=2.0, axis=1, eps=1e-12):
    """``F.normalize``: x / max(||x||_p, eps) along ``axis``."""
    return x / ops.maximum(_norm(x, p, [axis], keepdims=True), eps)


def _clip(x, low=None, high=None):
    """``torch.clamp``: either bound may be missing."""
    x = x if low is None else ops.maximum(x, low)
    return x if high is None else ops.minimum(x, high)


def _attention(q, k, v, mask=None, scale=None, is_causal=False, enable_gqa=False):
    """``F.scaled_dot_product_attention`` at inference (no dropout): softmax(q k^T * scale
    + mask) v over the last two axes; a boolean mask says where to attend; with
    ``enable_gqa`` each key/value head serves ``q_heads // kv_heads`` query heads."""
    if enable_gqa and k.shape[-3] != q.shape[-3]:
        k = ops.repeat(k, q.shape[-3] // k.shape[-3], axis=-3)
        v = ops.repeat(v, q.shape[-3] // v.shape[-3], axis=-3)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = ops.matmul(q, ops.swapaxes(k, -1, -2)) * scale
    if is_causal:
        lq, lk = q.shape[-2], k.shape[-2]
        mask = ops.tril(ops.ones((lq, lk), dtype="bool"))
    if mask is not None and mask.dtype == "bool":
        scores = ops.where(mask, scores, float("-inf"))
    elif mask is not None:
        scores = scores + mask
    return ops.matmul(ops.softmax(scores, axis=-1), v)


def _layer_norm(x, weight=None, bias=None, axes=(-1,), eps=1e-5):
    """``F.layer_norm`` over the trailing ``axes`` (biased variance, like PyTorch)."""
    axes = tuple(axes)
    mean = ops.mean(x, axis=axes, keepdims=True)
    var = ops.mean(ops.square(x - mean), axis=axes, keepdims=True)
    y = (x - mean) * ops.rsqrt(var + eps)
    y = y if weight is None else y * weight
    return y if bias is None else y + bias


def _linear(x, weight, bias=None):
    """``F.linear``: x @ weight^T + bias, weight in PyTorch's (out, in)."""
    y = ops.matmul(x, ops.transpose(weight))
    return y if bias is None else y + bias


def _max_with_index(x, axis, keepdims=False):
    """``torch.max(x, dim)``'s indices (int64, first maximum like PyTorch)."""
    y = ops.cast(ops.argmax(x, axis=axis), "int64")
    return ops.expand_dims(y, axis) if keepdims else y


def _reduce(fn):
    def reduce(x, axis=None, keepdims=False):
        return fn(x, axis=tuple(axis) if isinstance(axis, list) else axis, keepdims=keepdims)
    return reduce


#: name -> function(*tensors, **kwargs). The only functions a TensorOp or Scalar can run.
FUNCTIONS = {
    # unary, element-wise
    "relu": ops.relu, "relu6": ops.relu6, "sigmoid": ops.sigmoid, "tanh": ops.tanh,
    "silu": ops.silu, "softplus": ops.softplus, "selu": ops.selu,
    "mish": lambda x: x * ops.tanh(ops.softplus(x)),
    "hard_sigmoid": ops.hard_sigmoid, "hard_silu": ops.hard_silu, "softsign": ops.softsign,
    "gelu": lambda x, approximate=False: ops.gelu(x, approximate=approximate),
    "elu": lambda x, alpha=1.0: ops.elu(x, alpha=alpha),
    "leaky_relu": lambda x, negative_slope=0.01: ops.leaky_relu(x, negative_slope=negative_slope),
    "exp": ops.exp, "log": ops.log, "sqrt": ops.sqrt, "rsqrt": ops.rsqrt, "abs": ops.abs,
    "negative": ops.negative, "square": ops.square, "erf": ops.erf, "sin": ops.sin, "cos": ops.cos,
    "clip": _clip, "logical_not": ops.logical_not,
    "cast": lambda x, dtype: ops.cast(x, dtype),
    # along axes
    "softmax": lambda x, axis=-1: ops.softmax(x, axis=axis),
    "log_softmax": lambda x, axis=-1: ops.log_softmax(x, axis=axis),
    "mean": _reduce(ops.mean), "sum": _reduce(ops.sum), "max": _reduce(ops.max),
    "min": _reduce(ops.min),
    "norm": _norm, "normalize": _normalize, "argmax": _max_with_index,
    "any": _reduce(ops.any),
    "cumsum": lambda x, axis=0: ops.cumsum(x, axis=axis),
    "layer_norm": _layer_norm, "attention": _attention,
    # shape
    "reshape": lambda x, shape: ops.reshape(x, tuple(shape)),
    "transpose": lambda x, axes: ops.transpose(x, tuple(axes)),
    "broadcast_to": lambda x, shape: ops.broadcast_to(x, tuple(shape)),
    "tile": lambda x, repeats: ops.tile(x, list(repeats)),
    # x's one row repeated to the batch of ``like`` (a constant expanded to a dynamic batch)
    "batch_like": lambda x, like: ops.broadcast_to(x, (ops.shape(like)[0], *x.shape[1:])),
    "expand_batch": lambda x, shape: ops.broadcast_to(x, (ops.shape(x)[0], *shape)),
    "pad": lambda x, pad_width, mode="constant", value=0.0: ops.pad(
        x, [tuple(w) for w in pad_width], mode=mode,
        **({"constant_values": value} if mode == "constant" else {})),
    # several tensors
    "concatenate": lambda *xs, axis=0: ops.concatenate(list(xs), axis=axis),
    "stack": lambda *xs, axis=0: ops.stack(list(xs), axis=axis),
    "add": ops.add, "subtract": ops.subtract, "multiply": ops.multiply, "divide": ops.divide,
    "floor_divide": ops.floor_divide, "power": ops.power, "maximum": ops.maximum,
    "minimum": ops.minimum, "matmul": ops.matmul, "linear": _linear,
    "addmm": lambda bias, a, b: bias + ops.matmul(a, b), "take": lambda table, ids: ops.take(
        table, ids, axis=0), "where": ops.where,
    "take_along_axis": lambda x, index, axis: ops.take_along_axis(x, index, axis=axis),
    "equal": ops.equal, "not_equal": ops.not_equal,
    "less": ops.less, "less_equal": ops.less_equal, "greater": ops.greater,
    "greater_equal": ops.greater_equal, "logical_and": ops.logical_and,
    "logical_or": ops.logical_or,
}


def _function(op: str):
    if op not in FUNCTIONS:
        raise ValueError(f"unknown transcoder op {op!r}; known: {', '.join(sorted(FUNCTIONS))}")
    return FUNCTIONS[op]


@keras.saving.register_keras_serializable(package=PACKAGE)
class TensorOp(keras.layers.Layer):
    """``FUNCTIONS[op](*inputs, **kwargs)``: one PyTorch function or method call."""

    def __init__(self, op: str, kwargs: dict | None = None, **base):
        super().__init__(**base)
        self.fn = _function(op)
        self.op, self.op_kwargs = op, dict(kwargs or {})

    def call(self, inputs):
        tensors = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        return self.fn(*tensors, **self.op_kwargs)

    def get_config(self):
        return {**super().get_config(), "op": self.op, "kwargs": self.op_kwargs}


@keras.saving.register_keras_serializable(package=PACKAGE)
class Scalar(keras.layers.Layer):
    """A binary op with a Python number: ``op(x, value)``, or ``op(value, x)`` if ``reverse``."""

    def __init__(self, op: str, value: float, reverse: bool = False, **base):
        super().__init__(**base)
        self.fn = _function(op)
        self.op, self.value, self.reverse = op, value, reverse

    def call(self, x):
        return self.fn(self.value, x) if self.reverse else self.fn(x, self.value)

    def get_config(self):
        return {**super().get_config(), "op": self.op, "value": self.value, "reverse": self.reverse}


def _key_item(item):
    if item is None:
        return None                       # new axis
    if item == "...":
        return Ellipsis
    if isinstance(item, list):
        return slice(*item)
    return int(item)


@keras.saving.register_keras_serializable(package=PACKAGE)
class Slice(keras.layers.Layer):
    """Basic indexing ``x[key]``. ``key`` is a list of ints (index), ``[start, stop, step]``
    (slice), ``None`` (new axis) and ``"..."``, in PyTorch axis order."""

    def __init__(self, key: list, **base):
        super().__init__(**base)
        self.key = list(key)

    def call(self, x):
        return x[tuple(_key_item(k) for k in self.key)]

    def get_config(self):
        return {**super().get_config(), "key": self.key}


@keras.saving.register_keras_serializable(package=PACKAGE)
class Constant(keras.layers.Layer):
    """A tensor that does not depend on the inputs (a bare parameter, a buffer, a constant the
    trace folded), held as the weight ``value``. Its input only places it in the graph."""

    def __init__(self, shape: list, value_dtype: str = "float32", **base):
        super().__init__(**base)
        self.value_shape, self.value_dtype = tuple(shape), value_dtype
        self.value = self.add_weight(shape=self.value_shape, dtype=value_dtype, name="value",
                                     initializer="zeros", trainable=self.trainable)

    def call(self, x):
        return ops.convert_to_tensor(self.value)

    def compute_output_spec(self, x):
        return keras.KerasTensor(self.value_shape, dtype=self.value_dtype)

    def get_config(self):
        return {**super().get_config(), "shape": list(self.value_shape),
                "value_dtype": self.value_dtype}


@keras.saving.register_keras_serializable(package=PACKAGE)
class LayerScale(keras.layers.Layer):
    """``x * gamma``: a learnt scale per channel of the last axis, timm's ``LayerScale`` (the
    ``LayerScale`` family, ``rules/families/layer_scale.py``). ``gamma`` starts at
    ``init_value``, as timm's ``init_values``."""

    def __init__(self, init_value: float = 1e-5, **base):
        super().__init__(**base)
        self.init_value = init_value

    def build(self, input_shape):
        self.gamma = self.add_weight(shape=(input_shape[-1],), name="gamma",
                                     initializer=keras.initializers.Constant(self.init_value))

    def call(self, x):
        return x * ops.cast(self.gamma, x.dtype)

    def get_config(self):
        return {**super().get_config(), "init_value": self.init_value}
