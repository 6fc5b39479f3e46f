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

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..checkpoint import TensorRef
from ..errors import AmbiguousError, MappingError, UnsupportedError, UsageError
from .ops import Identity, Op, register_op
from .plan import Plan, Step, check_shapes
from .table import NESTED, LayerRule, Param, register

PROJECTIONS = ("query", "key", "value")
SEPARATE = ("q_proj_weight", "k_proj_weight", "v_proj_weight")
UNSUPPORTED = {"bias_k": "add_bias_kv=True", "bias_v": "add_bias_kv=True"}
OUT = "attention_output"


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
    heads: int = 0
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
    """``params`` describe the family (``transcode rules``); ``expand`` / ``expand_keras`` plan."""

    # ------------------------------------------------------------ PyTorch -> Keras

    def expand(self, plan: Plan, path: str, params: dict[str, TensorRef], options: dict,
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
        bias = in_bias is not None
        torch_in = weights + ([in_bias] if bias else [])
        keras_in = [f"{path}/{p}/{w}" for p in PROJECTIONS for w in ("kernel", "bias")[:1 + bias]]
        steps = [(Step(tuple(r.name for r in torch_in), tuple(keras_in),
                       InProjection(heads, len(weights) == 1, bias), self.name, path), torch_in),
                 (Step((out_w.name,), (f"{path}/{OUT}/kernel",), OutProjection(heads), self.name,
                       path), [out_w])]
        steps += [(Step((out_b.name,), (f"{path}/{OUT}/bias",), Identity(), self.name, path),
                   [out_b])] if bias else []
        for step, refs in steps:
            check_shapes(step, [r.shape for r in refs])
            plan.add(step, self.keras_kind, reason)
        _carry_rest(plan, path, params, {r.name for _, refs in steps for r in refs})

    # ------------------------------------------------------------ Keras -> PyTorch

    def expand_keras(self, plan: Plan, layer: dict, weights: dict[str, TensorRef],
                     reason: str) -> None:
        name = layer["name"]
        found = _keras_weights(name, weights)
        kernels = [found[f"{p}/kernel"] for p in PROJECTIONS]
        heads, packed = _keras_geometry(name, kernels, found[f"{OUT}/kernel"])
        bias = f"{OUT}/bias" in found
        keras_in = [found[f"{p}/{w}"][0] for p in PROJECTIONS for w in ("kernel", "bias")[:1 + bias]]
        torch_in = ["in_proj_weight"] if packed else list(SEPARATE)
        torch_in += ["in_proj_bias"] if bias else []
        steps = [Step(tuple(f"{name}.{t}" for t in torch_in), tuple(f"{name}/{k}" for k in keras_in),
                      InProjection(heads, packed, bias), self.name, name),
                 Step((f"{name}.out_proj.weight",), (f"{name}/{found[f'{OUT}/kernel'][0]}",),
                      OutProjection(heads), self.name, name)]
        steps += [Step((f"{name}.out_proj.bias",), (f"{name}/{found[f'{OUT}/bias'][0]}",),
                       Identity(), self.name, name)] if bias else []
        for step in steps:
            plan.add(step, self.keras_kind, reason)


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


def _carry_rest(plan: Plan, path: str, params: dict[str, TensorRef], used: set[str]) -> None:
    rest = [ref.name for ref in params.values() if ref.name not in used]
    plan.carried.extend(rest)
    if rest:
        plan.notes.append(f"{path}: kept verbatim, no Keras weight in a MultiheadAttention: "
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


NESTED.update({"in_proj_weight": "out_proj", "q_proj_weight": "out_proj"})

MULTIHEAD_ATTENTION = register(AttentionRule(
    "MultiheadAttention", ("MultiheadAttention",), "MultiHeadAttention",
    (Param("in_proj_weight | q/k/v_proj_weight, in_proj_bias",
           "query/kernel, query/bias, key/kernel, key/bias, value/kernel, value/bias",
           InProjection(), required=False),
     Param("out_proj.weight", f"{OUT}/kernel", OutProjection()),
     Param("out_proj.bias", f"{OUT}/bias", required=False)),
    note="needs num_heads (--rules [[layer]] num_heads = N, or --model); out_proj joins the layer; "
         "kdim/vdim -> q/k/v_proj_weight; add_bias_kv is refused"))
