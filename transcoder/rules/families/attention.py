"""PyTorch ``nn.MultiheadAttention`` <-> Keras ``MultiHeadAttention``.

The module ``M`` (with its child ``M.out_proj``) becomes the Keras layer ``M`` with weights, in
Keras 3.15's order: ``query/kernel (E_q, heads, E/heads)``, ``query/bias (heads, E/heads)``,
then ``key/...``, ``value/...``, ``attention_output/kernel (heads, E/heads, E)`` and
``attention_output/bias (E,)``. PyTorch packs q, k, v in ``in_proj_weight (3E, E)`` or, when
kdim/vdim differ from E, keeps ``q_proj_weight``, ``k_proj_weight``, ``v_proj_weight``; the
biases are always packed in ``in_proj_bias (3E,)``. The head count cannot be read from the
PyTorch weights: it comes from ``--rules`` (``num_heads = 8``) or ``--model``. Keras' weights
do carry it (the kernels' middle axis).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from ...checkpoint import TensorRef
from ...errors import AmbiguousError, MappingError, UnsupportedError, UsageError
from ..checkcase import BATCH, Built, LayerCase, Skip
from ..ops import Op, register_op
from ..steps import Step, check_shapes
from ..table import Inference, LayerRule, Option, Param

PROJECTIONS = ("query", "key", "value")
SEPARATE = ("q_proj_weight", "k_proj_weight", "v_proj_weight")
UNSUPPORTED = {"bias_k": "add_bias_kv=True", "bias_v": "add_bias_kv=True"}
OUT = "attention_output"
#: every tensor name a MultiheadAttention may hold (its out_proj joined in)
TORCH_NAMES = frozenset({"in_proj_weight", *SEPARATE, "in_proj_bias", "bias_k", "bias_v",
                         "out_proj.weight", "out_proj.bias"})
KERAS_NAMES = frozenset(f"{p}/{w}" for p in PROJECTIONS + (OUT,) for w in ("kernel", "bias"))
IN_KERAS = tuple(f"{p}/{w}" for p in PROJECTIONS for w in ("kernel", "bias"))


def _heads_of(rows: int, heads: int, what: str) -> int:
    if heads <= 0 or rows % heads:
        raise MappingError(f"{what} has {rows} output features, not divisible by num_heads={heads}")
    return rows // heads


@register_op
@dataclass(frozen=True)
class InProjection(Op):
    """q, k, v weights (each (E, E_in)) and their packed bias -> Keras ``kernel (E_in, heads,
    E/heads)`` and ``bias (heads, E/heads)`` per projection, interleaved as Keras orders them.
    ``packed``: one ``in_proj_weight (3E, E)``; else three tensors (kdim/vdim)."""

    kind: ClassVar[str] = "in_projection"
    arity: ClassVar[tuple[int, int]] = (2, 6)  # (1..4, 3..6) with packing and bias
    heads: int = 0   # 0 in the table: the plan fills in the module's head count
    packed: bool = True
    bias: bool = True

    def _split(self, xs: list) -> tuple[list, list]:
        weights = list(np.split(xs[0], 3)) if self.packed else list(xs[:3])
        biases = list(np.split(xs[-1], 3)) if self.bias else []
        return weights, biases

    def forward(self, xs):
        weights, biases = self._split(xs)
        out = []
        for i, w in enumerate(weights):
            out.append(np.ascontiguousarray(w.T).reshape(w.shape[1], self.heads, -1))
            out += [biases[i].reshape(self.heads, -1)] if self.bias else []
        return out

    def inverse(self, ys):
        kernels = ys[0::2] if self.bias else ys
        weights = [np.ascontiguousarray(k.reshape(k.shape[0], -1).T) for k in kernels]
        out = [np.concatenate(weights)] if self.packed else weights
        return out + ([np.concatenate([b.reshape(-1) for b in ys[1::2]])] if self.bias else [])

    def forward_shapes(self, shapes):
        weights = [(s[0] // 3, s[1]) for s in shapes[:1] * 3] if self.packed else shapes[:3]
        if any(len(s) != 2 for s in weights) or (self.packed and shapes[0][0] % 3):
            raise MappingError(f"in-projection weights {[list(s) for s in shapes]} are not (3E, E)")
        e = weights[0][0]
        if any(w[0] != e for w in weights) or (self.bias and tuple(shapes[-1]) != (3 * e,)):
            raise MappingError(f"in-projection shapes {[list(s) for s in shapes]} do not fit E={e}")
        head_dim = _heads_of(e, self.heads, "the query projection")
        out = []
        for w in weights:
            out += [(w[1], self.heads, head_dim)] + ([(self.heads, head_dim)] if self.bias else [])
        return out

    def inverse_shapes(self, shapes):
        kernels = shapes[0::2] if self.bias else shapes
        weights = [(k[1] * k[2], k[0]) for k in kernels]
        out = [(3 * weights[0][0], weights[0][1])] if self.packed else weights
        return out + ([(3 * weights[0][0],)] if self.bias else [])

    def describe(self) -> str:
        return "split q,k,v; transpose; reshape (E_in, heads, E/heads)"

    def spec(self) -> dict:
        return {"op": self.kind, "heads": self.heads, "packed": self.packed, "bias": self.bias}


@register_op
@dataclass(frozen=True)
class OutProjection(Op):
    """``out_proj.weight (E, E)`` -> Keras ``attention_output/kernel (heads, E/heads, E)``."""

    kind: ClassVar[str] = "out_projection"
    heads: int = 0

    def forward(self, xs):
        return [np.ascontiguousarray(xs[0].T).reshape(self.heads, -1, xs[0].shape[0])]

    def inverse(self, ys):
        return [np.ascontiguousarray(ys[0].reshape(-1, ys[0].shape[-1]).T)]

    def forward_shapes(self, shapes):
        if len(shapes[0]) != 2:
            raise MappingError(f"out_proj.weight must be 2-d, not {list(shapes[0])}")
        return [(self.heads, _heads_of(shapes[0][1], self.heads, "out_proj input"), shapes[0][0])]

    def inverse_shapes(self, shapes):
        if len(shapes[0]) != 3:
            raise MappingError(f"attention_output/kernel must be 3-d, not {list(shapes[0])}")
        return [(shapes[0][2], shapes[0][0] * shapes[0][1])]

    def describe(self) -> str:
        return "transpose; reshape (heads, E/heads, E)"

    def spec(self) -> dict:
        return {"op": self.kind, "heads": self.heads}


def _rules_hint(path: str) -> str:
    return (f'give the head count in a --rules file, one key per line: [[layer]] match = "{path}" '
            f'kind = "MultiheadAttention" num_heads = <heads>; or pass --model')


@dataclass(frozen=True)
class AttentionRule(LayerRule):
    """Its first param is the packed in-projection; ``separate`` is the kdim/vdim one, used
    instead when the module has q/k/v_proj_weight. Bias-free modules drop the bias names."""

    separate: Param | None = None

    def recognise(self, path: str, params: dict[str, TensorRef]) -> Inference | None:
        names = set(params)
        if names <= TORCH_NAMES and names & {"in_proj_weight", "q_proj_weight"}:
            return Inference(self.name, "in_proj/out_proj tensors of a MultiheadAttention")
        return None

    def rows(self) -> list[dict]:
        rows = super().rows()
        sep = self.separate
        rows.insert(1, self._row(", ".join(sep.torch), ", ".join(sep.keras), sep.op.describe(),
                                 "instead of in_proj_weight when kdim/vdim differ from E"))
        return rows

    def _projections(self, packed: bool, bias: bool, heads: int) -> list[Param]:
        """The params that run for this module, bias names dropped when it has none."""
        inp, out_w, out_b = self.params
        inp = inp if packed else self.separate
        if not bias:
            inp = replace(inp, torch=tuple(n for n in inp.torch if "bias" not in n),
                          keras=tuple(n for n in inp.keras if "bias" not in n))
        return [replace(inp, op=replace(inp.op, heads=heads, bias=bias)),
                replace(out_w, op=replace(out_w.op, heads=heads))] + ([out_b] if bias else [])

    def recognise_keras(self, layer: str, weights: dict[str, TensorRef]) -> Inference | None:
        return keras_kind(weights)

    def time_major(self, module) -> bool:
        return not getattr(module, "batch_first", True)

    # ------------------------------------------------------------ PyTorch -> Keras

    def plan_from_torch(self, plan, path: str, params: dict[str, TensorRef], options: dict,
                        reason: str) -> None:
        _refuse_unsupported(params)
        heads = _num_heads(path, params, options)
        weights = _in_weights(path, params)
        in_bias, out_w, out_b = (params.get(n) for n in ("in_proj_bias", "out_proj.weight",
                                                        "out_proj.bias"))
        if out_w is None:
            raise MappingError(f"{path}: a MultiheadAttention needs out_proj.weight",
                               tensor=weights[0].name)
        if (in_bias is None) != (out_b is None):
            raise UnsupportedError(f"{path}: Keras MultiHeadAttention has biases on all projections "
                                   f"or none", tensor=(in_bias or out_b).name)
        used = set()
        for param in self._projections(len(weights) == 1, in_bias is not None, heads):
            refs = [params[n] for n in param.torch]
            step = Step(tuple(r.name for r in refs), tuple(f"{path}/{k}" for k in param.keras),
                        param.op, self.name, path)
            check_shapes(step, [r.shape for r in refs])
            plan.add(step, self.keras_kind, reason)
            used.update(step.torch)
        _carry_rest(plan, path, params, used)

    # ------------------------------------------------------------ Keras -> PyTorch

    def plan_from_keras(self, plan, layer: dict, weights: dict[str, TensorRef],
                        reason: str) -> None:
        name = layer["name"]
        found = _keras_weights(name, weights)
        kernels = [found[f"{p}/kernel"] for p in PROJECTIONS]
        heads, packed = _keras_geometry(name, kernels, found[f"{OUT}/kernel"])
        for param in self._projections(packed, f"{OUT}/bias" in found, heads):
            plan.add(Step(tuple(f"{name}.{t}" for t in param.torch),
                          tuple(f"{name}/{found[k][0]}" for k in param.keras), param.op,
                          self.name, name), self.keras_kind, reason)


def check_attention(c: LayerCase) -> Built:
    heads = c.options.get("num_heads")
    if heads is None:
        heads = next((getattr(s.op, "heads", None) for s in c.steps if getattr(s.op, "heads", 0)),
                     None)
    if not heads:
        raise Skip("the head count is not known (give num_heads in --rules or --model)")
    embed = c.shape("out_proj.weight")[0]
    packed = c.has("in_proj_weight")
    kdim = embed if packed else c.shape("k_proj_weight")[1]
    vdim = embed if packed else c.shape("v_proj_weight")[1]
    bias = c.has("in_proj_bias")
    module = c.nn.MultiheadAttention(embed, heads, bias=bias, kdim=kdim, vdim=vdim,
                                     batch_first=True)
    layer = c.layers.MultiHeadAttention(heads, embed // heads, use_bias=bias)
    xs = [c.normal((BATCH, 5, embed)), c.normal((BATCH, 6, kdim)), c.normal((BATCH, 6, vdim))]
    return Built(module, layer, xs,
                 torch_call=lambda m, t: m(*t, need_weights=False)[0],
                 keras_call=lambda layer, a: layer(a[0], a[2], key=a[1]))


def keras_kind(weights: dict[str, TensorRef]) -> Inference | None:
    """A Keras layer whose weights are all q/k/v/attention_output kernels and biases."""
    if weights and {"/".join(w.split("/")[-2:]) for w in weights} <= KERAS_NAMES:
        return Inference("MultiHeadAttention", "query/key/value/attention_output weights")
    return None


def _refuse_unsupported(params: dict[str, TensorRef]) -> None:
    for pname, what in UNSUPPORTED.items():
        if pname in params:
            raise UnsupportedError(f"a MultiheadAttention with {what} has no Keras counterpart",
                                   tensor=params[pname].name)


def _num_heads(path: str, params: dict[str, TensorRef], options: dict) -> int:
    first = next(iter(params.values())).name
    heads = options.get("num_heads")
    if heads is None:
        raise AmbiguousError("a MultiheadAttention's head count cannot be read from its weights",
                             tensor=first, hint=_rules_hint(path))
    if isinstance(heads, bool) or not isinstance(heads, int) or heads <= 0:
        raise UsageError(f"{path}: num_heads must be a positive integer, not {heads!r}", tensor=first)
    return heads


def _in_weights(path: str, params: dict[str, TensorRef]) -> list[TensorRef]:
    if "in_proj_weight" in params:
        return [params["in_proj_weight"]]
    missing = [n for n in SEPARATE if n not in params]
    if missing:
        raise MappingError(f"{path}: a MultiheadAttention needs in_proj_weight or all of "
                           f"{', '.join(SEPARATE)} (missing {', '.join(missing)})",
                           tensor=next(iter(params.values())).name)
    return [params[n] for n in SEPARATE]


def _carry_rest(plan, path: str, params: dict[str, TensorRef], used: set[str]) -> None:
    rest = [ref.name for ref in params.values() if ref.name not in used]
    plan.carry(rest, f"{path}: kept verbatim, no Keras weight in a MultiheadAttention: "
                     f"{', '.join(rest)}")


def _keras_weights(name: str, weights: dict[str, TensorRef]) -> dict[str, tuple[str, TensorRef]]:
    """``{"query/kernel": (weight path, ref), ...}`` by the last two parts of each path."""
    found = {"/".join(w.split("/")[-2:]): (w, ref) for w, ref in weights.items()}
    known = {f"{p}/{w}" for p in PROJECTIONS + (OUT,) for w in ("kernel", "bias")}
    unknown = [w for w, _ in found.values() if "/".join(w.split("/")[-2:]) not in known]
    missing = [f"{p}/kernel" for p in PROJECTIONS + (OUT,) if f"{p}/kernel" not in found]
    biases = {f"{p}/bias" in found for p in PROJECTIONS + (OUT,)}
    if unknown or missing or len(found) != len(weights) or len(biases) > 1:
        raise UnsupportedError(f"Keras layer {name!r} is not a MultiHeadAttention PyTorch can hold "
                               f"(weights {sorted(weights)}; needs q/k/v/attention_output kernels, "
                               f"biases on all or none)")
    return found


def _keras_geometry(name: str, kernels: list, out: tuple[str, TensorRef]) -> tuple[int, bool]:
    """(heads, packed) of a Keras MultiHeadAttention; refuses what nn.MultiheadAttention lacks."""
    shapes = [ref.shape for _, ref in kernels]
    out_shape = out[1].shape
    if any(len(s) != 3 for s in shapes) or len(out_shape) != 3:
        raise MappingError(f"Keras layer {name!r}: attention kernels must be 3-d, "
                           f"not {[list(s) for s in shapes]} and {list(out_shape)}")
    heads, head_dim = shapes[0][1:]
    e = heads * head_dim
    if any(s[1:] != (heads, head_dim) for s in shapes) or out_shape != (heads, head_dim, e) \
            or shapes[0][0] != e:
        raise UnsupportedError(
            f"Keras layer {name!r}: nn.MultiheadAttention needs key_dim = value_dim = E/heads and "
            f"query and output width E = heads*key_dim; kernels are {[list(s) for s in shapes]}, "
            f"output {list(out_shape)}")
    return heads, shapes[1][0] == e and shapes[2][0] == e


# ---------------------------------------------------------------- the Keras rebuild (b: a Build)

def rebuild_attention(b, m, query, key, value, *args, **kwargs):
    """Self- or cross-attention without masks; the attention weights (the second output) are
    refused only if the model uses them."""
    a = b.bind(m.forward, query, key, value, *args, **kwargs)
    if a["key_padding_mask"] is not None or a["attn_mask"] is not None or a["is_causal"]:
        raise b.unsupported("attention masks (attn_mask, key_padding_mask, is_causal)")
    if m.bias_k is not None:
        raise b.unsupported("add_bias_kv=True")
    perm = b.sequence(m.batch_first)
    q, k, v = (b.view(t, perm) for t in (query, key, value))
    layer = b.new(b.layers.MultiHeadAttention, num_heads=m.num_heads, key_dim=m.head_dim,
                  value_dim=m.head_dim, use_bias=m.in_proj_bias is not None, dropout=m.dropout)
    b.weights(layer)
    out = b.value(layer(q, v, key=k), perm)
    weights = b.refused("its attention weights (call it with need_weights=False, or do not use "
                        "the second output)") if a["need_weights"] else None
    return out, weights


# ---------------------------------------------------------------- the family

MULTIHEAD_ATTENTION = AttentionRule(
    "MultiheadAttention", ("MultiheadAttention",), "MultiHeadAttention",
    (Param(("in_proj_weight", "in_proj_bias"), IN_KERAS, InProjection()),
     Param("out_proj.weight", f"{OUT}/kernel", OutProjection()),
     Param("out_proj.bias", f"{OUT}/bias", required=False)),
    note="needs num_heads (--rules [[layer]] num_heads = N, or --model); out_proj joins the layer; "
         "no biases: the bias names drop out; add_bias_kv is refused",
    nested=(("in_proj_weight", "out_proj"), ("q_proj_weight", "out_proj")),
    check=check_attention, rebuild=rebuild_attention,
    keras_options={"num_heads": Option("num_heads")},
    separate=Param((*SEPARATE, "in_proj_bias"), IN_KERAS, InProjection(packed=False)))

FAMILIES = (MULTIHEAD_ATTENTION,)
