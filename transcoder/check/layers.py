"""Per-layer check for weights-only conversions: no architecture, only the weights and the plan.

For every Keras layer a plan maps, the layer is built twice from its rule family and its tensor
shapes alone (:data:`BUILDERS`): a PyTorch module loaded with the PyTorch tensors and a Keras
layer loaded with the Keras tensors. One of the two sets is the original, the other went
through the rule table; both get the same seeded random input (channels-first for PyTorch,
channels-last for Keras where the layer has channels) and their outputs are compared. A wrong
rule (a permutation, a gate order, a transposed kernel) shows up here without the model.

What the weights cannot say is fixed, the same on both sides: stride 1, no padding, groups 1
unless the module's options say otherwise (``--model``, ``options=``), eps 1e-5 (1e-6 for
RMSNorm), tanh for a plain RNN. Everything is computed in float32 (both sides cast exactly
from the stored dtype). A family without a builder, or a layer the builder cannot make, is
reported SKIPPED with the reason, never passed silently.

torch and keras are imported only when :func:`check_layers` runs.
"""
from __future__ import annotations

import os
import re
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..checkpoint import LAYOUT_KERAS, LAYOUT_TORCH, Checkpoint
from ..errors import MissingDependencyError, UsageError
from ..frameworks import numpy_from_torch
from ..rules.plan import COPY, Plan, make_plan
from .compare import FAIL, SKIPPED, Comparison, coarsest, compare, resolve_tolerance
from .report import CheckReport

BATCH = 2
RECURRENT_NAME = re.compile(r"(weight|bias)_(ih|hh)(?:_l\d+)?(_reverse)?")
STACKED_LAYER = re.compile(r"(.+)\.l(\d+)")


# ------------------------------------------------------------------ frameworks

def import_torch():
    """``torch``, or MissingDependencyError naming the extra to install."""
    try:
        import torch
    except ImportError:
        raise MissingDependencyError("the forward check needs torch",
                                     hint="pip install 'transcoder[check]'") from None
    return torch


def import_keras():
    """``keras`` on the TensorFlow backend (unless KERAS_BACKEND says otherwise), quietly."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import keras
    except ImportError:
        raise MissingDependencyError("the forward check needs keras (tensorflow-cpu)",
                                     hint="pip install 'transcoder[check]'") from None
    return keras


def to_numpy(value) -> np.ndarray:
    """A framework tensor (torch or Keras backend) as a numpy array; bfloat16 through float32."""
    if hasattr(value, "detach"):          # torch
        return numpy_from_torch(value)
    if hasattr(value, "numpy") and not isinstance(value, np.ndarray):
        return np.asarray(value.numpy())
    return np.asarray(value)


# ------------------------------------------------------------------ builders

class Skip(Exception):
    """A builder cannot make this layer; the message is the reason."""


@dataclass
class LayerCase:
    """What a builder gets: the tensors of one Keras layer on both sides."""

    name: str                       # Keras layer name
    module: str                     # PyTorch module path
    family: str                     # rule family
    torch: dict[str, np.ndarray]    # local PyTorch names (recurrent: normalised to _l0), float32
    keras: list[np.ndarray]         # Keras weights in Keras order, float32
    options: dict
    rng: np.random.Generator
    nn: Any = None                  # torch.nn
    layers: Any = None              # keras.layers
    steps: list = field(default_factory=list)

    def normal(self, shape) -> np.ndarray:
        return self.rng.standard_normal(shape).astype(np.float32)

    def has(self, name: str) -> bool:
        return name in self.torch

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.torch[name].shape)


@dataclass
class Built:
    torch_module: Any
    keras_layer: Any
    inputs: list[np.ndarray]                  # PyTorch layout
    channels_first: bool = False              # Keras takes and gives the channel axis last
    torch_call: Callable | None = None        # (module, [tensors]) -> tensor
    keras_call: Callable | None = None        # (layer, [arrays]) -> tensor
    note: str = ""


def _spatial(kernel: tuple[int, ...], extra: int = 3) -> list[int]:
    """Input sizes a little larger than the kernel, all different (non-square)."""
    return [k + extra + i for i, k in enumerate(kernel)]


def _linear(c: LayerCase) -> Built:
    out, inn = c.shape("weight")
    bias = c.has("bias")
    return Built(c.nn.Linear(inn, out, bias=bias), c.layers.Dense(out, use_bias=bias),
                 [c.normal((BATCH, inn))])


def _conv(n: int) -> Callable[[LayerCase], Built]:
    def build(c: LayerCase) -> Built:
        shape = c.shape("weight")
        if len(shape) != n + 2:
            raise Skip(f"a Conv{n}d weight must be {n + 2}-d, not {list(shape)}")
        groups = int(c.options.get("groups", 1))
        out, kernel, bias = shape[0], shape[2:], c.has("bias")
        inn = shape[1] * groups
        module = getattr(c.nn, f"Conv{n}d")(inn, out, kernel, groups=groups, bias=bias)
        layer = getattr(c.layers, f"Conv{n}D")(out, kernel, groups=groups, use_bias=bias)
        note = "" if "groups" in c.options else "groups=1 assumed (not in the weights)"
        return Built(module, layer, [c.normal((BATCH, inn, *_spatial(kernel)))], True, note=note)
    return build


def _conv_transpose(n: int) -> Callable[[LayerCase], Built]:
    def build(c: LayerCase) -> Built:
        shape = c.shape("weight")
        groups = int(c.options.get("groups", 1))
        if groups != 1:
            raise Skip("a grouped ConvTranspose has no Keras counterpart (Keras Conv*DTranspose "
                       "has no groups)")
        inn, out, kernel, bias = shape[0], shape[1], shape[2:], c.has("bias")
        module = getattr(c.nn, f"ConvTranspose{n}d")(inn, out, kernel, bias=bias)
        layer = getattr(c.layers, f"Conv{n}DTranspose")(out, kernel, use_bias=bias)
        return Built(module, layer, [c.normal((BATCH, inn, *_spatial(kernel)))], True)
    return build


def _eps(c: LayerCase, default: float = 1e-5) -> float:
    return float(c.options.get("eps") or default)


def _batch_norm(c: LayerCase) -> Built:
    (channels,) = c.shape("running_mean")
    affine = c.has("weight")
    module = c.nn.BatchNorm1d(channels, eps=_eps(c), affine=affine)
    if affine and not c.has("bias"):
        raise Skip("a BatchNorm with a weight but no bias")
    layer = c.layers.BatchNormalization(epsilon=_eps(c), center=c.has("bias"), scale=affine)
    return Built(module, layer, [c.normal((BATCH, channels, 4))], True)


def _norm_shape(c: LayerCase) -> tuple[int, ...]:
    return c.shape("weight") if c.has("weight") else c.shape("bias")


def _layer_norm(c: LayerCase) -> Built:
    shape = _norm_shape(c)
    module = c.nn.LayerNorm(shape, eps=_eps(c), elementwise_affine=True, bias=c.has("bias"))
    axis = -1 if len(shape) == 1 else tuple(range(-len(shape), 0))
    if not c.has("weight"):
        raise Skip("a LayerNorm with a bias but no weight")
    layer = c.layers.LayerNormalization(axis=axis, epsilon=_eps(c), center=c.has("bias"))
    return Built(module, layer, [c.normal((BATCH, 3, *shape))])


def _rms_norm(c: LayerCase) -> Built:
    shape = c.shape("weight")
    if len(shape) != 1:
        raise Skip(f"an RMSNorm over {len(shape)} axes")
    module = c.nn.RMSNorm(shape, eps=_eps(c, 1e-6))
    layer = c.layers.RMSNormalization(epsilon=_eps(c, 1e-6))
    return Built(module, layer, [c.normal((BATCH, 3, *shape))])


def _group_norm(c: LayerCase) -> Built:
    (channels,) = _norm_shape(c)
    if not (c.has("weight") and c.has("bias")):
        raise Skip("a GroupNorm with only one of weight and bias")
    groups = int(c.options.get("num_groups", 1))
    module = c.nn.GroupNorm(groups, channels, eps=_eps(c))
    layer = c.layers.GroupNormalization(groups=groups, axis=-1, epsilon=_eps(c))
    note = "" if "num_groups" in c.options else "groups=1 assumed (not in the weights)"
    return Built(module, layer, [c.normal((BATCH, channels, 5))], True, note=note)


def _instance_norm(c: LayerCase) -> Built:
    (channels,) = _norm_shape(c)
    if not (c.has("weight") and c.has("bias")):
        raise Skip("an InstanceNorm with only one of weight and bias")
    module = c.nn.InstanceNorm1d(channels, eps=_eps(c), affine=True)
    layer = c.layers.GroupNormalization(groups=-1, axis=-1, epsilon=_eps(c))
    return Built(module, layer, [c.normal((BATCH, channels, 6))], True)


def _embedding(c: LayerCase) -> Built:
    num, dim = c.shape("weight")
    tokens = c.rng.integers(0, num, size=(BATCH, 7)).astype(np.int64)
    return Built(c.nn.Embedding(num, dim), c.layers.Embedding(num, dim), [tokens])


def _prelu(c: LayerCase) -> Built:
    (channels,) = c.shape("weight")
    if channels == 1:
        return Built(c.nn.PReLU(1), c.layers.PReLU(shared_axes=[1]), [c.normal((BATCH, 5))])
    return Built(c.nn.PReLU(channels), c.layers.PReLU(), [c.normal((BATCH, channels))])


def _recurrent(c: LayerCase) -> Built:
    w_ih, w_hh = c.shape("weight_ih_l0"), c.shape("weight_hh_l0")
    hidden, inputs = w_hh[1], w_ih[1]
    bias, bidirectional = c.has("bias_ih_l0"), c.has("weight_ih_l0_reverse")
    nonlinearity = str(c.options.get("nonlinearity", "tanh"))
    torch_class = {"LSTM": c.nn.LSTM, "GRU": c.nn.GRU, "RNN": c.nn.RNN}[c.family]
    extra = {"nonlinearity": nonlinearity} if c.family == "RNN" else {}
    module = torch_class(inputs, hidden, 1, bias=bias, batch_first=True,
                         bidirectional=bidirectional, **extra)
    keras_cell = {"LSTM": lambda: c.layers.LSTM(hidden, return_sequences=True, use_bias=bias),
                  "GRU": lambda: c.layers.GRU(hidden, return_sequences=True, use_bias=bias,
                                              reset_after=True),
                  "RNN": lambda: c.layers.SimpleRNN(hidden, return_sequences=True, use_bias=bias,
                                                    activation=nonlinearity)}[c.family]()
    layer = c.layers.Bidirectional(keras_cell) if bidirectional else keras_cell
    note = ("tanh assumed (the activation is not in the weights)"
            if c.family == "RNN" and "nonlinearity" not in c.options else "")
    return Built(module, layer, [c.normal((BATCH, 6, inputs))],
                 torch_call=lambda m, xs: m(*xs)[0], note=note)


def _attention(c: LayerCase) -> Built:
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


#: rule family -> builder of the (PyTorch module, Keras layer, input) triple.
BUILDERS: dict[str, Callable[[LayerCase], Built]] = {
    "Linear": _linear,
    **{f"Conv{n}d": _conv(n) for n in (1, 2, 3)},
    **{f"ConvTranspose{n}d": _conv_transpose(n) for n in (1, 2, 3)},
    "BatchNorm": _batch_norm,
    "LayerNorm": _layer_norm,
    "RMSNorm": _rms_norm,
    "GroupNorm": _group_norm,
    "InstanceNorm": _instance_norm,
    "Embedding": _embedding,
    "PReLU": _prelu,
    "LSTM": _recurrent,
    "GRU": _recurrent,
    "RNN": _recurrent,
    "MultiheadAttention": _attention,
}


# ------------------------------------------------------------------ the check

def check_layers(src: Checkpoint, plan: Plan | None = None, target: Checkpoint | None = None, *,
                 seed: int = 0, atol: float | None = None, rtol: float | None = None,
                 options: dict[str, dict] | None = None) -> CheckReport:
    """Check every Keras layer of ``plan`` by building it on both sides from the weights alone.

    ``src`` is the original checkpoint (either layout); ``plan`` defaults to
    ``make_plan(src, <the other layout>)`` and ``target`` to ``plan.apply(src)``. ``options``
    adds hyper-parameters per PyTorch module path (``{"attn": {"num_heads": 8}}``) to those
    the checkpoint's metadata holds (``module_options``, from ``--model``). The original side
    is the reference. Returns a :class:`CheckReport` of kind ``"layers"``.
    """
    if src.layout not in (LAYOUT_TORCH, LAYOUT_KERAS):
        raise UsageError(f"cannot check a checkpoint of layout {src.layout!r}")
    other = LAYOUT_KERAS if src.layout == LAYOUT_TORCH else LAYOUT_TORCH
    plan = plan if plan is not None else make_plan(src, other)
    report = CheckReport("layers", seed=seed, atol=atol, rtol=rtol, reference=src.layout,
                         keras_layout="channels_last")
    if plan.direction == COPY:
        report.notes.append("source and target have the same layout: nothing was mapped")
        return report
    target = target if target is not None else plan.apply(src)
    torch_ckpt, keras_ckpt = (src, target) if src.layout == LAYOUT_TORCH else (target, src)
    torch, keras = import_torch(), import_keras()
    kinds = src.meta.get("module_kinds", {})
    known = {**src.meta.get("module_options", {})}
    for path, opts in (options or {}).items():
        known[path] = {**known.get(path, {}), **opts}
    for name, layer in plan.layers.items():
        steps = [s for s in plan.steps if s.layer == name]
        module = _module_path(name, steps)
        labels = {"kind": "layer", "torch_kind": kinds.get(module, layer.rule),
                  "keras_kind": layer.class_name}
        entry = _check_one(name, module, layer, steps, torch_ckpt, keras_ckpt, known.get(module, {}),
                           seed, atol, rtol, src.layout, torch, keras, labels)
        entry.extra.update(module=module, rule=layer.rule)
        report.entries.append(entry)
    report.first_divergence = _first_failure(report.entries)
    return report


def _module_path(name: str, steps: list) -> str:
    torch_names = [n for s in steps for n in s.torch]
    if all(n.startswith(name + ".") for n in torch_names):
        return name
    found = STACKED_LAYER.fullmatch(name)
    return found.group(1) if found else name


def _local_torch(module: str, steps: list, torch_ckpt: Checkpoint, family: str
                 ) -> dict[str, np.ndarray]:
    """``{local name: float32 array}``; recurrent names normalised to layer 0."""
    out = {}
    for full in dict.fromkeys(n for s in steps for n in s.torch):
        local = full[len(module) + 1:] if module else full
        if family in ("LSTM", "GRU", "RNN"):
            found = RECURRENT_NAME.fullmatch(local)
            if found:
                local = f"{found.group(1)}_{found.group(2)}_l0{found.group(3) or ''}"
        out[local] = _float32(torch_ckpt[full].load())
    return out


def _float32(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype.kind not in "fc" and array.dtype.name != "bfloat16":
        raise Skip(f"a {array.dtype} weight (only floating weights are checked)")
    return np.ascontiguousarray(array.astype(np.float32))


def _check_one(name, module, layer, steps, torch_ckpt, keras_ckpt, options, seed, atol, rtol,
               reference, torch, keras, labels) -> Comparison:
    family = layer.rule
    builder = BUILDERS.get(family)
    if builder is None:
        why = ("mapped by a --rules [[tensor]] entry" if family == "--rules"
               else f"no per-layer builder for the {family or 'unknown'} family")
        return Comparison.skipped(name, why, **labels)
    if "keras_shape" in options:
        return Comparison.skipped(name, "reshaped by a --rules keras_shape: the Keras geometry "
                                        "is the user's", **labels)
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    try:
        case = LayerCase(name, module, family, _local_torch(module, steps, torch_ckpt, family),
                         [_float32(keras_ckpt[f"{name}/{w}"].load()) for w in layer.weights],
                         options, rng, torch.nn, keras.layers, steps)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            built = builder(case)
    except Skip as exc:
        return Comparison.skipped(name, str(exc), **labels)
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        return Comparison.skipped(name, f"cannot build a {family} from these tensors ({exc})",
                                  **labels)
    torch_mapped = reference != LAYOUT_TORCH
    try:
        _load_torch(torch, built.torch_module, case.torch)
    except (RuntimeError, ValueError) as exc:
        message = f"the {'mapped ' if torch_mapped else ''}PyTorch tensors do not fit a {family}: {_one_line(exc)}"
        return (Comparison(name, FAIL, message=message, **labels) if torch_mapped
                else Comparison.skipped(name, message, **labels))
    keras_inputs = [_to_keras_layout(x, built.channels_first) for x in built.inputs]
    keras_call = built.keras_call or (lambda lay, xs: lay(*xs))
    try:
        keras_call(built.keras_layer, keras_inputs)   # builds the layer
        built.keras_layer.set_weights(case.keras)
    except (ValueError, TypeError) as exc:
        message = (f"the {'' if torch_mapped else 'mapped '}Keras weights do not fit a "
                   f"{layer.class_name or family}: {_one_line(exc)}")
        return (Comparison.skipped(name, message, **labels) if torch_mapped
                else Comparison(name, FAIL, message=message, **labels))
    torch_out = _run_torch(torch, built, case)
    keras_out = to_numpy(keras_call(built.keras_layer, keras_inputs))
    if built.channels_first and keras_out.ndim >= 3:
        keras_out = np.moveaxis(keras_out, -1, 1)
    actual, expected = (torch_out, keras_out) if torch_mapped else (keras_out, torch_out)
    # computed in float32, but the mapped weights are only as exact as their stored dtype (an
    # LSTM's two biases summed in float16 round): the coarser of the two sets the tolerance
    stored = coarsest({torch_ckpt[n].dtype for s in steps for n in s.torch} | {"float32"})
    atol, rtol = resolve_tolerance(stored, atol, rtol)
    entry = compare(name, actual, expected, atol, rtol, **labels)
    note = f"{stored} weights: {stored} tolerances" if stored != "float32" else ""
    entry.message = "; ".join(m for m in (entry.message, built.note, note) if m)
    entry.extra["input_shapes"] = [list(x.shape) for x in built.inputs]
    return entry


def _load_torch(torch, module, tensors: dict[str, np.ndarray]) -> None:
    state = {k: torch.from_numpy(v) for k, v in tensors.items()}
    expected = module.state_dict()
    state.update({k: v for k, v in expected.items() if k not in state and k.endswith(
        "num_batches_tracked")})
    module.load_state_dict(state, strict=True)
    module.eval()


def _run_torch(torch, built: Built, case: LayerCase) -> np.ndarray:
    call = built.torch_call or (lambda m, xs: m(*xs))
    with torch.no_grad():
        return to_numpy(call(built.torch_module, [torch.from_numpy(x) for x in built.inputs]))


def _to_keras_layout(x: np.ndarray, channels_first: bool) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(x, 1, -1)) if channels_first and x.ndim >= 3 else x


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def _first_failure(entries: list[Comparison]) -> dict | None:
    for e in entries:
        if e.status != SKIPPED and e.diverged:
            return divergence(e)
    return None


def divergence(e: Comparison) -> dict:
    """The ``first_divergence`` record of a report for entry ``e``."""
    error = (f"max abs error {e.max_abs_error:.2g}" if e.max_abs_error is not None
             else e.message)
    return {"name": e.name, "keras_name": e.keras_name or e.name, "torch_kind": e.torch_kind,
            "keras_kind": e.keras_kind, "status": e.status, "max_abs_error": e.max_abs_error,
            "max_rel_error": e.max_rel_error, "message": f"first divergence: {e.label}: {error}"}
