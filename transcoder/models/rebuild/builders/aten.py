"""The ATen ops of a ``torch.export`` graph, mostly through the builders of the other families.

A model torch.fx cannot trace (every Hugging Face model) is exported instead (``exported.py``)
and its graph holds ``torch.ops.aten`` calls with positional arguments in ATen's order. Most
map onto a builder of ``arith``/``shape``/``activation``/``pool`` with the same arguments;
what has no ``torch.nn.functional`` twin there (attention, ``linear`` on a bare weight, slicing
by dim, ``embedding`` on a bare table) is here. A call inside a module of a rule family
(``nn.Linear``, ``nn.Conv1d``, ``nn.LayerNorm``, ``nn.Embedding``...) never reaches these: the
exported rebuilder calls the module's own builder (a Keras built-in layer, weights from the
rule table); these run for the same op on bare tensors (weights as constants named by their
parameter path).
"""
from __future__ import annotations

import torch
from keras import layers as L

from ...keras_layers import Slice
from ..core import ATEN, Build, Value, aten, identity
from . import activation, arith, pool, resize, shape
from .activation import call_form

A = torch.ops.aten
BIG = 2 ** 62   # an ATen slice's "to the end"


def _same(name: str):
    return call_form(lambda b: b.new(L.Activation, name))


def _unary(name: str):
    return call_form(arith._tensor_op(name))


# ---------------------------------------------------------------- element-wise and reductions

for _ops, _builder in [
    ((A.add.Tensor, A.add.Scalar), arith._binary("add")),
    ((A.sub.Tensor, A.sub.Scalar), arith._binary("subtract")),
    ((A.mul.Tensor, A.mul.Scalar), arith._binary("multiply")),
    ((A.div.Tensor, A.div.Scalar), arith._binary("divide")),
    ((A.pow.Tensor_Scalar, A.pow.Tensor_Tensor), arith._binary("power")),
    ((A.maximum.default,), arith._binary("maximum")),
    ((A.minimum.default,), arith._binary("minimum")),
    ((A.mm.default, A.bmm.default, A.matmul.default), arith._binary("matmul")),
    ((A.eq.Tensor, A.eq.Scalar), arith._binary("equal")),
    ((A.ne.Tensor, A.ne.Scalar), arith._binary("not_equal")),
    ((A.lt.Tensor, A.lt.Scalar), arith._binary("less")),
    ((A.le.Tensor, A.le.Scalar), arith._binary("less_equal")),
    ((A.gt.Tensor, A.gt.Scalar), arith._binary("greater")),
    ((A.ge.Tensor, A.ge.Scalar), arith._binary("greater_equal")),
    ((A.logical_and.default, A.bitwise_and.Tensor, A.__and__.Tensor),
     arith._binary("logical_and")),
    ((A.logical_or.default, A.bitwise_or.Tensor, A.__or__.Tensor), arith._binary("logical_or")),
    ((A.exp.default,), _unary("exp")), ((A.log.default,), _unary("log")),
    ((A.sqrt.default,), _unary("sqrt")), ((A.rsqrt.default,), _unary("rsqrt")),
    ((A.abs.default,), _unary("abs")), ((A.erf.default,), _unary("erf")),
    ((A.neg.default,), _unary("negative")), ((A.sin.default,), _unary("sin")),
    ((A.cos.default,), _unary("cos")), ((A.logical_not.default,), _unary("logical_not")),
    ((A.relu.default,), _same("relu")), ((A.sigmoid.default,), _same("sigmoid")),
    ((A.tanh.default,), _same("tanh")), ((A.silu.default,), _same("silu")),
    ((A.gelu.default,), call_form(activation.gelu)),
    ((A.hardtanh.default,), call_form(activation.hardtanh)),
    ((A.leaky_relu.default,), call_form(activation.leaky_relu)),
    ((A.mean.dim, A.mean.default), arith._reduce("mean")),
    ((A.sum.dim_IntList, A.sum.default), arith._reduce("sum")),
    ((A.amax.default,), arith._reduce("max")), ((A.amin.default,), arith._reduce("min")),
    ((A.any.dim, A.any.dims, A.any.default), arith._reduce("any")),
    ((A.view.default, A._unsafe_view.default, A.reshape.default, A.unsqueeze.default,
      A.squeeze.dim, A.squeeze.dims, A.squeeze.default, A.flatten.using_ints),
     shape.reshape_fn),
    ((A.transpose.int,), shape.transpose), ((A.permute.default,), shape.permute),
    ((A.clone.default, A.alias.default, A.contiguous.default, A.detach.default,
      A.lift_fresh_copy.default), shape.same),
    ((A._to_copy.default, A.to.dtype, A.type_as.default), arith.convert),
    ((A.cat.default,), shape.cat), ((A.stack.default,), shape.stack),
    ((A.split.Tensor, A.split_with_sizes.default), shape.split),
    ((A.expand.default,), shape.expand),
    ((A.repeat.default,), shape.repeat),
    ((A.max_pool1d.default,), pool.pooling("max", 1)[1]),
    ((A.max_pool2d.default,), pool.pooling("max", 2)[1]),
    ((A.avg_pool1d.default,), pool.pooling("avg", 1)[1]),
    ((A.avg_pool2d.default,), pool.pooling("avg", 2)[1]),
    ((A.adaptive_avg_pool1d.default,), pool.pooling("avg", 1, adaptive=True)[1]),
    ((A.adaptive_avg_pool2d.default,), pool.pooling("avg", 2, adaptive=True)[1]),
    ((A.sym_size.int,), arith.concrete),
]:
    aten(*_ops)(_builder)


@aten(A._assert_tensor_metadata.default, A._assert_scalar.default,
      A.sym_constrain_range_for_size.default, A._assert_async.msg)
def nothing(b: Build, *args, **kwargs):
    """Export's own checks of shapes and dtypes: no layer."""
    return None


@aten(A.max.dim)
def max_dim(b: Build, x, dim, keepdim=False):
    return arith.max_with_indices(b, x, dim, keepdim)


@aten(A.max.default)
def max_all(b: Build, x):
    return arith._reduce("max")(b, x)


@aten(A._softmax.default, A.softmax.int)
def softmax(b: Build, x, dim, half_to_float_or_dtype=None):
    return activation.softmax(b, x, dim)


@aten(A._log_softmax.default, A.log_softmax.int)
def log_softmax(b: Build, x, dim, half_to_float_or_dtype=None):
    return activation.softmax(b, x, dim, log=True)


@aten(A.linalg_vector_norm.default)
def vector_norm(b: Build, x, ord=2, dim=None, keepdim=False, *, dtype=None):
    return arith.norm(b, x, ord, dim, keepdim)


@aten(A.clamp.default)
def clamp(b: Build, x, min=None, max=None):
    return activation.clamp(b, x, min, max)


@aten(A.upsample_nearest1d.vec, A.upsample_nearest2d.vec)
def upsample_nearest(b: Build, x, output_size=None, scale_factors=None):
    return resize.upsample(b, x, "nearest")


@aten(A.upsample_bilinear2d.vec)
def upsample_bilinear(b: Build, x, output_size=None, align_corners=False, scale_factors=None):
    return resize.upsample(b, x, "bilinear", align_corners)


@aten(A.clamp_min.default)
def clamp_min(b: Build, x, min):
    return activation.clamp(b, x, min, None)


@aten(A.clamp_max.default)
def clamp_max(b: Build, x, max):
    return activation.clamp(b, x, None, max)


@aten(A.full_like.default, A.ones_like.default, A.zeros_like.default)
def full_like(b: Build, x, *args, **kwargs):
    """A tensor of one value shaped like ``x``: a constant at the traced shapes."""
    if b.grow is not None:
        b.static(None)
    return b.constant(b.result)


@aten(A.where.self)
def where(b: Build, condition, x, y):
    xs = [b.as_value(v) for v in (condition, x, y)]
    return b.value(b.op("where", [b.view(v, identity(v.rank)) for v in xs]))


@aten(A.gather.default)
def gather(b: Build, x, dim, index, *, sparse_grad=False):
    xs = [b.as_value(x), b.as_value(index)]
    views = [b.view(v, identity(v.rank)) for v in xs]
    return b.value(b.op("take_along_axis", views, axis=dim % xs[0].rank))


@aten(A.cumsum.default)
def cumsum(b: Build, x, dim, *, dtype=None):
    x = b.as_value(x)
    return b.elementwise(b.new(arith.TensorOp, "cumsum", {"axis": b.axis(x, dim)}), x)


# ---------------------------------------------------------------- indexing

def _take(b: Build, x: Value, dim: int, item) -> Value:
    x = b.as_value(x)
    key = [[None, None, None]] * (dim % x.rank) + [item]
    return b.value(b.new(Slice, key)(b.view(x, identity(x.rank))))


@aten(A.slice.Tensor)
def slice_(b: Build, x, dim=0, start=None, end=None, step=1):
    x = b.as_value(x)
    size = x.shape[dim % x.rank]
    end = None if end is None or (size is not None and end >= size) or end >= BIG else end
    if start in (0, None) and end is None and step == 1:
        return x
    return _take(b, x, dim, [start, end, step])


@aten(A.select.int)
def select(b: Build, x, dim, index):
    return _take(b, x, dim, int(index))


# ---------------------------------------------------------------- layers on bare tensors

@aten(A.linear.default)
def linear(b: Build, x, weight, bias=None):
    """``F.linear`` on a weight the trace holds as a tensor (not an ``nn.Linear``'s)."""
    x = b.as_value(x)
    tensors = [b.view(x, identity(x.rank)), b.as_value(weight).tensor]
    if bias is not None:
        tensors.append(b.as_value(bias).tensor)
    return b.value(b.op("linear", tensors))


@aten(A.addmm.default)
def addmm(b: Build, bias, x, weight, *, beta=1, alpha=1):
    """``bias + x @ weight`` (transformers' ``Conv1D``, GPT-2's projections)."""
    if beta != 1 or alpha != 1:
        raise b.unsupported("beta or alpha")
    tensors = [b.view(b.as_value(t), identity(b.as_value(t).rank)) for t in (bias, x, weight)]
    return b.value(b.op("addmm", tensors))


@aten(A.embedding.default)
def embedding(b: Build, table, ids, padding_idx=-1, scale_grad_by_freq=False, sparse=False):
    ids = b.as_value(ids)
    table = b.as_value(table)
    return b.value(b.op("take", [table.tensor, b.view(ids, identity(ids.rank))]))


@aten(A.layer_norm.default)
def layer_norm(b: Build, x, normalized_shape, weight=None, bias=None, eps=1e-5,
               cudnn_enable=True):
    """Keras ``LayerNormalization`` over the trailing axes, its weights the tensors given."""
    k = len(normalized_shape)
    perm = b.last_axes(x, k)
    if any(isinstance(t, Value) for t in (weight, bias)):
        raise b.unsupported("a weight or bias computed from the inputs")
    layer = b.new(L.LayerNormalization, axis=list(range(-k, 0)) if k > 1 else -1, epsilon=eps,
                  center=bias is not None, scale=weight is not None)
    b.weights(layer, [t.detach().numpy() for t in (weight, bias) if t is not None])
    return b.value(layer(b.view(x, perm)), perm)


@aten(A.conv1d.default, A.conv2d.default, A.conv3d.default, A.conv1d.padding,
      A.conv2d.padding, A.conv3d.padding)
def conv(b: Build, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """``F.conv{n}d`` on a weight the trace holds as a tensor: Keras ``Conv{n}D`` with that
    weight, explicit zero padding."""
    if isinstance(weight, Value) or isinstance(bias, Value):
        raise b.unsupported("a weight computed from the inputs")
    n = weight.dim() - 2
    perm = b.spatial(x, n)
    stride, dilation = pool.ntuple(stride, n), pool.ntuple(dilation, n)
    kernel = tuple(weight.shape[2:])
    if padding == "same":
        totals = [d * (k - 1) for d, k in zip(dilation, kernel)]
        pads = [(t // 2, t - t // 2) for t in totals]
    elif padding == "valid":
        pads = [(0, 0)] * n
    else:
        pads = [(p, p) for p in pool.ntuple(padding, n)]
    layer = b.new(getattr(L, f"Conv{n}D"), weight.shape[0], kernel, strides=stride,
                  padding="valid", dilation_rate=dilation, groups=groups,
                  use_bias=bias is not None)
    arrays = [weight.detach().permute(*range(2, n + 2), 1, 0).numpy()]
    b.weights(layer, arrays + ([bias.detach().numpy()] if bias is not None else []))
    return b.value(layer(b.zero_pad(b.view(x, perm), pads)), perm)


@aten(A.scaled_dot_product_attention.default)
def attention(b: Build, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, *, scale=None,
              enable_gqa=False):
    """``F.scaled_dot_product_attention`` at inference (our ``attention`` op): a mask the
    trace folded (transformers' default masks) is a constant."""
    xs = [b.as_value(t) for t in (q, k, v)]
    if attn_mask is not None:
        xs.append(b.as_value(attn_mask))
    tensors = [b.view(t, identity(t.rank)) for t in xs]
    kwargs = {"is_causal": bool(is_causal), "scale": scale, "enable_gqa": bool(enable_gqa)}
    return b.value(b.op("attention", tensors, **kwargs))


def covered() -> list[str]:
    """The ATen overloads the tables cover, as ``aten.name.overload``."""
    return sorted(str(op) for op in ATEN)
