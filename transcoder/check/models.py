"""Full-model check: the same seeded inputs through the PyTorch module and the Keras model,
every output compared, and, when they differ, the first paired layer that diverges named.

Inputs are described in PyTorch layout (:class:`InputSpec`). Floating inputs are N(0, 1);
integer inputs are drawn in ``[low, high)``, ``high`` defaulting to the size of the first
``nn.Embedding`` the input feeds (found by running the module once with zeros and watching
which embedding receives a view of that input). With ``keras_layout="channels_last"`` the
Keras model takes floating inputs of rank >= 3 with axis 1 moved last, and its outputs are
moved back before they are compared.

Localisation pairs PyTorch modules with Keras layers: by default the Keras layer named like
the module path (a stacked RNN ``M`` pairs with Keras ``M.l<last>``), or the explicit
``pairs``. Intermediate outputs are matched layout-aware: the same shape; the channel axis
moved last (ambiguous square shapes decided by the Keras layer's ``data_format``/``axis``,
else by ``keras_layout``); a recurrent or attention module's first output (the sequence),
made batch-first; the last step of a unidirectional RNN when the Keras layer returns only it.
A Keras Dense/Conv with a fused activation is compared with that activation applied to the
PyTorch module's output. Pairs that cannot be matched are SKIPPED with the reason.

torch and keras are imported only when :func:`check_models` runs.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from ..checkpoint import DTYPES
from ..errors import UsageError
from ..frameworks import torch_from_numpy
from .compare import FAIL, SKIPPED, SUCCESS, Comparison, compare
from .layers import Skip, divergence, import_keras, import_torch, to_numpy
from .report import CheckReport

LAYOUTS = ("torch", "channels_last")
LOCALISE = ("auto", "always", "never")
RECURRENT = ("RNN", "LSTM", "GRU")
FUSED_ACTIVATION = re.compile(r"(Dense|EinsumDense|Conv\dD|Conv\dDTranspose|DepthwiseConv\dD|"
                              r"SeparableConv\dD)$")
TORCH_WITH_FUSED = re.compile(r"(Lazy)?(Linear|Conv\dd|ConvTranspose\dd)$")


# ------------------------------------------------------------------ inputs

@dataclass(frozen=True)
class InputSpec:
    """One model input, PyTorch layout, batch included. Integer inputs are drawn in
    ``[low, high)``; ``high`` None: the size of the embedding the input feeds."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    low: int | None = None
    high: int | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise UsageError(f"unknown input dtype {self.dtype!r}; known: {', '.join(DTYPES)}")
        if any(not isinstance(d, int) or d < 0 for d in self.shape):
            raise UsageError(f"an input shape needs non-negative integers, not {list(self.shape)}")

    @property
    def is_integer(self) -> bool:
        return DTYPES[self.dtype].kind in "iu"

    @property
    def is_float(self) -> bool:
        return DTYPES[self.dtype].kind == "f" or self.dtype == "bfloat16"


def parse_shape(text: str) -> tuple[int, ...]:
    """``"4,10,128"``, ``"4x10x128"`` or ``"(4, 10, 128)"`` -> ``(4, 10, 128)``."""
    parts = [p for p in re.split(r"[x,\s()\[\]]+", text.strip().lower()) if p]
    try:
        return tuple(int(p) for p in parts)
    except ValueError:
        raise UsageError(f"--input-shape {text!r} is not a list of integers like 4,10,128") from None


def parse_dtype(text: str) -> tuple[str, int | None, int | None]:
    """``"float32"``, ``"int64:HIGH"`` or ``"int64:LOW:HIGH"`` -> ``(dtype, low, high)``."""
    name, *bounds = text.strip().split(":")
    try:
        numbers = [int(b) for b in bounds]
    except ValueError:
        raise UsageError(f"--input-dtype {text!r}: bounds must be integers (int64:HIGH or "
                         f"int64:LOW:HIGH)") from None
    if len(numbers) > 2:
        raise UsageError(f"--input-dtype {text!r}: at most LOW:HIGH after the dtype")
    if len(numbers) == 2:
        return name, numbers[0], numbers[1]
    return name, None, numbers[0] if numbers else None


def parse_input_specs(shapes: Sequence[str], dtypes: Sequence[str] = ()) -> list[InputSpec]:
    """Specs from the CLI's repeated ``--input-shape`` and ``--input-dtype``: no dtype means
    float32 for all, one dtype applies to all, else one per shape."""
    if not shapes:
        raise UsageError("the forward check needs --input-shape (PyTorch layout, batch "
                         "included, e.g. --input-shape 4,10,128)")
    dtypes = list(dtypes) or ["float32"]
    if len(dtypes) == 1:
        dtypes *= len(shapes)
    if len(dtypes) != len(shapes):
        raise UsageError(f"{len(shapes)} --input-shape but {len(dtypes)} --input-dtype: give one "
                         f"dtype for all or one per shape")
    specs = []
    for shape, dtype in zip(shapes, dtypes):
        name, low, high = parse_dtype(dtype)
        specs.append(InputSpec(parse_shape(shape), name, low, high))
    return specs


def as_specs(specs: Iterable[Any]) -> list[InputSpec]:
    """InputSpecs from InputSpecs, shapes ``(4, 10, 128)`` or ``(shape, dtype)`` pairs."""
    out = []
    for spec in specs:
        if isinstance(spec, InputSpec):
            out.append(spec)
        elif isinstance(spec, dict):
            out.append(InputSpec(tuple(spec["shape"]), spec.get("dtype", "float32"),
                                 spec.get("low"), spec.get("high")))
        elif len(spec) == 2 and isinstance(spec[1], str):
            out.append(InputSpec(tuple(spec[0]), spec[1]))
        else:
            out.append(InputSpec(tuple(int(d) for d in spec)))
    if not out:
        raise UsageError("the forward check needs at least one input shape")
    return out


def embedding_ranges(torch, module, specs: list[InputSpec]) -> tuple[dict[int, int], list[str]]:
    """``{input index: num_embeddings}`` for integer inputs without ``high``, and notes."""
    wanted = [i for i, s in enumerate(specs) if s.is_integer and s.high is None]
    if not wanted:
        return {}, []
    embeddings = [(p, m) for p, m in module.named_modules()
                  if isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag))]
    if not embeddings:
        raise UsageError(f"integer input {wanted[0]} feeds no nn.Embedding: give its range "
                         f"(--input-dtype int64:HIGH)")
    probes = [torch.zeros(s.shape, dtype=_torch_dtype(torch, s.dtype)) for s in specs]
    fed: dict[int, int] = {}

    def hook(m, args):
        for i in wanted:
            if i not in fed and args and _shares_storage(args[0], probes[i]):
                fed[i] = m.num_embeddings

    handles = [m.register_forward_pre_hook(hook) for _, m in embeddings]
    notes = []
    try:
        with torch.no_grad():
            module(*probes)
    except Exception as exc:  # noqa: BLE001 - the probe is best effort; the real run reports
        notes.append(f"could not trace which embedding the integer inputs feed ({_one_line(exc)})")
    finally:
        for h in handles:
            h.remove()
    smallest = min(m.num_embeddings for _, m in embeddings)
    for i in wanted:
        if i not in fed:
            fed[i] = smallest
            notes.append(f"input {i}: no nn.Embedding receives it directly; drawn below {smallest},"
                         f" the smallest embedding (give --input-dtype int64:HIGH to set it)")
    return fed, notes


def _shares_storage(a, b) -> bool:
    try:
        return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr() and b.numel() > 0
    except (AttributeError, RuntimeError):
        return False


def make_inputs(specs: list[InputSpec], seed: int, highs: dict[int, int] | None = None
                ) -> list[np.ndarray]:
    """Seeded inputs in PyTorch layout: N(0, 1) floats, integers in [low, high), random bools."""
    rng = np.random.default_rng(seed)
    arrays = []
    for i, spec in enumerate(specs):
        dtype = DTYPES[spec.dtype]
        if spec.is_float:
            arrays.append(rng.standard_normal(spec.shape).astype(dtype))
        elif spec.is_integer:
            low = spec.low or 0
            high = spec.high if spec.high is not None else (highs or {}).get(i)
            if high is None or high <= low:
                raise UsageError(f"input {i}: integer range [{low}, {high}) is empty or unknown")
            arrays.append(rng.integers(low, high, size=spec.shape).astype(dtype))
        elif spec.dtype == "bool":
            arrays.append(rng.integers(0, 2, size=spec.shape).astype(bool))
        else:
            raise UsageError(f"input {i}: cannot draw random {spec.dtype} inputs")
    return arrays


def _torch_dtype(torch, name: str):
    return getattr(torch, name)


def to_keras_layout(array: np.ndarray, spec: InputSpec, keras_layout: str) -> np.ndarray:
    if keras_layout == "channels_last" and spec.is_float and array.ndim >= 3:
        return np.ascontiguousarray(np.moveaxis(array, 1, -1))
    return array


# ------------------------------------------------------------------ outputs

def flatten_outputs(value: Any, prefix: str = "output") -> list[tuple[str, Any]]:
    """Tensors of a (nested) output in order: tuples/lists by index, dicts by sorted key."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [item for key in sorted(value, key=str)
                for item in flatten_outputs(value[key], f"{prefix}.{key}")]
    if isinstance(value, (list, tuple)):
        return [item for i, v in enumerate(value) for item in flatten_outputs(v, f"{prefix}[{i}]")]
    return [(prefix, value)]


def _keras_outputs_in_torch_layout(keras_out: np.ndarray, torch_shape: tuple, keras_layout: str
                                   ) -> tuple[np.ndarray, str]:
    if keras_layout != "channels_last" or keras_out.ndim < 3:
        return keras_out, ""
    moved = np.moveaxis(keras_out, -1, 1)
    if moved.shape == tuple(torch_shape):
        return moved, ""
    return keras_out, "not moved back: its shape fits the PyTorch output as it is"


# ------------------------------------------------------------------ the check

def check_models(torch_module, keras_model, input_specs: Iterable[Any], *, seed: int = 0,
                 atol: float | None = None, rtol: float | None = None,
                 keras_layout: str = "torch", pairs: Sequence[tuple[str, str]] | None = None,
                 localise: str = "auto", reference: str = "torch") -> CheckReport:
    """Run both models on the same seeded inputs and compare every output.

    ``input_specs``: :class:`InputSpec`, shapes or ``(shape, dtype)`` pairs, PyTorch layout.
    ``keras_layout``: ``"torch"`` (the Keras model takes and gives PyTorch-layout tensors) or
    ``"channels_last"``. ``pairs``: ``(module path, Keras layer name)`` for localisation
    (default: by name). ``localise``: ``"auto"`` (when an output differs), ``"always"``,
    ``"never"``. ``reference``: the side whose outputs are "expected" (``"torch"`` or
    ``"keras"``); relative errors are relative to it. Tolerances default per output dtype.
    """
    if keras_layout not in LAYOUTS:
        raise UsageError(f"keras_layout must be one of {', '.join(LAYOUTS)}, not {keras_layout!r}")
    if localise not in LOCALISE:
        raise UsageError(f"localise must be one of {', '.join(LOCALISE)}, not {localise!r}")
    if reference not in ("torch", "keras"):
        raise UsageError(f"reference must be 'torch' or 'keras', not {reference!r}")
    torch, keras = import_torch(), import_keras()
    specs = as_specs(input_specs)
    report = CheckReport("model", seed=seed, input_shapes=[list(s.shape) for s in specs],
                         input_dtypes=[s.dtype for s in specs], atol=atol, rtol=rtol,
                         reference=reference, keras_layout=keras_layout)
    was_training = torch_module.training
    torch_module.eval()
    try:
        highs, notes = embedding_ranges(torch, torch_module, specs)
        report.notes += notes
        inputs = make_inputs(specs, seed, highs)
        keras_inputs = [to_keras_layout(x, s, keras_layout) for x, s in zip(inputs, specs)]
        torch_outs = flatten_outputs(_run_torch(torch, torch_module, inputs))
        keras_outs = flatten_outputs(_run_keras(keras_model, keras_inputs))
        report.entries = _compare_outputs(torch_outs, keras_outs, keras_layout, atol, rtol,
                                          reference)
        if localise == "always" or (localise == "auto" and not report.passed
                                    and report.status != SKIPPED):
            report.trace = _localise(torch, keras, torch_module, keras_model, inputs, keras_inputs,
                                     pairs, keras_layout, atol, rtol, reference)
            if not report.passed:
                report.first_divergence = _first_divergence(report.trace, pairs is not None)
    finally:
        torch_module.train(was_training)
    return report


def _run_torch(torch, module, inputs: list[np.ndarray]):
    try:
        with torch.no_grad():
            return _to_numpy_tree(module(*(torch_from_numpy(x) for x in inputs)))
    except Exception as exc:  # noqa: BLE001 - the user's model: any failure is a usage error
        raise UsageError(f"the PyTorch model fails on inputs of shapes "
                         f"{[list(x.shape) for x in inputs]} ({_one_line(exc)})",
                         hint="check --input-shape and --input-dtype (PyTorch layout, batch "
                              "included)") from None


def _run_keras(model, inputs: list[np.ndarray]):
    try:
        return _to_numpy_tree(model(inputs[0] if len(inputs) == 1 else list(inputs),
                                    training=False))
    except Exception as exc:  # noqa: BLE001
        raise UsageError(f"the Keras model fails on inputs of shapes "
                         f"{[list(x.shape) for x in inputs]} ({_one_line(exc)})",
                         hint="channels-last Keras models need --keras-layout channels_last"
                         ) from None


def _to_numpy_tree(value):
    if isinstance(value, dict):
        return {k: _to_numpy_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_numpy_tree(v) for v in value]
    if value is None or isinstance(value, (int, float, bool)):
        return None if value is None else np.asarray(value)
    return to_numpy(value)


def _compare_outputs(torch_outs, keras_outs, keras_layout, atol, rtol, reference
                     ) -> list[Comparison]:
    entries = []
    for i in range(max(len(torch_outs), len(keras_outs))):
        if i >= len(torch_outs) or i >= len(keras_outs):
            name = (torch_outs[i] if i < len(torch_outs) else keras_outs[i])[0]
            entries.append(Comparison(name, FAIL, message=(
                f"PyTorch gives {len(torch_outs)} output(s), Keras {len(keras_outs)}")))
            continue
        name, t = torch_outs[i]
        k, note = _keras_outputs_in_torch_layout(keras_outs[i][1], t.shape, keras_layout)
        actual, expected = (k, t) if reference == "torch" else (t, k)
        entry = compare(name, actual, expected, atol, rtol, kind="output")
        if keras_outs[i][0] != name:
            entry.keras_name = keras_outs[i][0]
        entry.message = "; ".join(m for m in (entry.message, note) if m)
        entries.append(entry)
    return entries


# ------------------------------------------------------------------ localisation

def default_pairs(torch_module, keras_model) -> list[tuple[str, str]]:
    """``(module path, Keras layer name)`` for every module whose path names a Keras layer; a
    stacked RNN ``M`` pairs with ``M.l<last>``."""
    names = {layer.name for layer in getattr(keras_model, "layers", [])}
    out = []
    for path, module in torch_module.named_modules():
        if not path:
            continue
        if path in names:
            out.append((path, path))
        elif type(module).__name__ in RECURRENT and \
                f"{path}.l{getattr(module, 'num_layers', 1) - 1}" in names:
            out.append((path, f"{path}.l{module.num_layers - 1}"))
    return out


def _localise(torch, keras, module, keras_model, inputs, keras_inputs, pairs, keras_layout,
              atol, rtol, reference) -> list[Comparison]:
    pairs = list(pairs) if pairs is not None else default_pairs(module, keras_model)
    modules = dict(module.named_modules())
    keras_layers = {layer.name: layer for layer in getattr(keras_model, "layers", [])}
    skipped, live = [], []
    for path, name in pairs:
        labels = {"kind": "trace", "keras_name": name if name != path else None,
                  "torch_kind": type(modules[path]).__name__ if path in modules else None,
                  "keras_kind": type(keras_layers[name]).__name__ if name in keras_layers else None}
        if path not in modules:
            skipped.append(Comparison.skipped(path, "no such PyTorch module", **labels))
        elif name not in keras_layers:
            skipped.append(Comparison.skipped(path, f"no Keras layer named {name!r}", **labels))
        else:
            live.append((path, name, labels))
    recorded, order = _record_torch(torch, module, inputs, [p for p, _, _ in live])
    keras_values, keras_missing = _record_keras(keras, keras_model, keras_inputs,
                                                [n for _, n, _ in live])
    ranked = []
    for path, name, labels in live:
        if path not in recorded:
            skipped.append(Comparison.skipped(path, "not called in the PyTorch forward", **labels))
            continue
        if recorded[path] is None:
            skipped.append(Comparison.skipped(path, "called more than once in the forward: "
                                                    "only single calls are compared", **labels))
            continue
        if name in keras_missing:
            skipped.append(Comparison.skipped(path, keras_missing[name], **labels))
            continue
        try:
            entry = _compare_pair(keras, path, modules[path], keras_layers[name], recorded[path],
                                  keras_values[name], keras_layout, atol, rtol, reference, labels)
        except Skip as exc:
            entry = Comparison.skipped(path, str(exc), **labels)
        ranked.append((order[path], entry))
    return [e for _, e in sorted(ranked, key=lambda item: item[0])] + skipped


def _record_torch(torch, module, inputs, paths):
    """First-call outputs of the modules at ``paths`` (None if called more than once) and the
    order of their first calls."""
    modules = dict(module.named_modules())
    recorded, order = {}, {}

    def hook_for(path):
        def hook(m, args, output):
            if path in recorded:
                recorded[path] = None
                return
            order[path] = len(order)
            recorded[path] = _first_tensor(output)
        return hook

    handles = [modules[p].register_forward_hook(hook_for(p)) for p in paths]
    try:
        _run_torch(torch, module, inputs)
    finally:
        for h in handles:
            h.remove()
    recorded = {p: (None if v is None else to_numpy(v)) for p, v in recorded.items()}
    return recorded, order


def _first_tensor(output):
    while isinstance(output, (list, tuple)) and output:
        output = output[0]
    return output.detach().clone() if hasattr(output, "detach") else None


def _record_keras(keras, model, inputs, names):
    """``({layer name: output}, {layer name: why it was not recorded})``."""
    outputs, missing, wanted = {}, {}, []
    for name in dict.fromkeys(names):
        try:
            value = model.get_layer(name).output
        except (AttributeError, ValueError, RuntimeError) as exc:
            missing[name] = f"the Keras layer's output is not reachable ({_one_line(exc)})"
            continue
        while isinstance(value, (list, tuple)) and value:
            value = value[0]
        wanted.append((name, value))
    if not wanted:
        return outputs, missing
    try:
        probe = keras.Model(model.input, [v for _, v in wanted])
        values = probe(inputs[0] if len(inputs) == 1 else list(inputs), training=False)
    except Exception as exc:  # noqa: BLE001 - subclassed or unusual models
        why = f"intermediate Keras outputs unavailable (a functional model is needed: {_one_line(exc)})"
        return outputs, {**missing, **{n: why for n, _ in wanted}}
    values = values if isinstance(values, (list, tuple)) else [values]
    for (name, _), value in zip(wanted, values):
        outputs[name] = to_numpy(value)
    return outputs, missing


def _keras_channels_last(layer, ndim: int) -> bool | None:
    """Does this Keras layer keep its channels last? From ``data_format`` or ``axis``."""
    data_format = getattr(layer, "data_format", None)
    if data_format in ("channels_last", "channels_first"):
        return data_format == "channels_last"
    axis = getattr(layer, "axis", None)
    if isinstance(axis, (list, tuple)) and len(axis) == 1:
        axis = axis[0]
    if isinstance(axis, int) and ndim:
        axis %= ndim
        return True if axis == ndim - 1 else (False if axis == 1 else None)
    return None


def _match(t: np.ndarray, k: np.ndarray, module, layer, keras_layout: str
           ) -> tuple[np.ndarray, str]:
    """The PyTorch intermediate output in the Keras layer's layout, with a note saying how."""
    notes = []
    kind = type(module).__name__
    if kind in RECURRENT + ("MultiheadAttention",) and t.ndim == 3 and \
            not getattr(module, "batch_first", True):
        t = np.swapaxes(t, 0, 1)
        notes.append("time-major output made batch-first")
    candidates = []
    if t.shape == k.shape:
        candidates.append((t, ""))
    if t.ndim >= 3 and np.moveaxis(t, 1, -1).shape == k.shape:
        candidates.append((np.moveaxis(t, 1, -1), "channel axis moved last"))
    if kind in RECURRENT and t.ndim == 3 and k.ndim == 2 and t[:, -1].shape == k.shape:
        if getattr(module, "bidirectional", False):
            raise Skip("a bidirectional RNN whose Keras layer returns only the last state")
        candidates.append((t[:, -1], "last time step"))
    if not candidates:
        raise Skip(f"PyTorch output {list(t.shape)} and Keras output {list(k.shape)} cannot be "
                   f"matched")
    if len(candidates) > 1:
        channels_last = _keras_channels_last(layer, k.ndim)
        if channels_last is None:
            channels_last = keras_layout == "channels_last"
            notes.append(f"layout ambiguous, assumed {'channels-last' if channels_last else 'as is'}")
        candidates = [c for c in candidates if bool(c[1]) == channels_last] or candidates
    value, note = candidates[0]
    return value, "; ".join(n for n in notes + [note] if n)


def _compare_pair(keras, path, module, layer, t, k, keras_layout, atol, rtol, reference, labels
                  ) -> Comparison:
    t, note = _match(t, k, module, layer, keras_layout)
    activation = getattr(layer, "activation", None)
    act_name = getattr(activation, "__name__", "linear")
    if activation is not None and act_name != "linear" and \
            FUSED_ACTIVATION.match(type(layer).__name__) and TORCH_WITH_FUSED.match(type(module).__name__):
        t = to_numpy(activation(keras.ops.convert_to_tensor(t)))
        note = "; ".join(n for n in (note, f"compared after the Keras layer's {act_name}") if n)
    actual, expected = (k, t) if reference == "torch" else (t, k)
    entry = compare(path, actual, expected, atol, rtol, **labels)
    entry.message = "; ".join(m for m in (entry.message, note) if m)
    return entry


def _first_divergence(trace: list[Comparison], explicit: bool) -> dict:
    last_good = None
    for entry in trace:
        if entry.diverged:
            return divergence(entry)
        if entry.status == SUCCESS:
            last_good = entry
    if last_good is not None:
        return {"name": None, "after": last_good.name, "status": None, "max_abs_error": None,
                "message": f"no paired layer diverges: the outputs part after {last_good.label}, "
                           f"in code that is no paired layer (functional ops, activations, "
                           f"reshapes)"}
    how = ("none of the given pairs could be compared" if explicit else
           "name the Keras layers after the PyTorch module paths, or pass pairs")
    return {"name": None, "after": None, "status": None, "max_abs_error": None,
            "message": f"the divergence could not be localised: {how}"}


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]
