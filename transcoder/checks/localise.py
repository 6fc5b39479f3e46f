"""Localising a divergence: which paired layer's output first differs.

Pairs are ``(PyTorch module path, Keras layer name)``: by default the Keras layer named like
the module path, or the name its family's ``trace_name`` gives (a stacked RNN ``M`` pairs with
Keras ``M.l<last>``). Intermediate outputs are matched layout-aware: the same shape; the
channel axis moved last (ambiguous square shapes decided by the Keras layer's
``data_format``/``axis``, else by the check's Keras layout); a time-major first output (the
family's ``time_major``: recurrent, attention) made batch-first; the last step when the Keras
layer returns only it (the family's ``last_step``: a unidirectional RNN). A Keras layer with a
fused activation (the families' ``fused_activation``: Dense, Conv) is compared with that
activation applied to the PyTorch module's output. Pairs that cannot be matched are SKIPPED
with the reason.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import one_line
from ..frameworks import to_numpy
from ..rules import registry
from ..rules.checkcase import Skip
from .compare import SUCCESS, Comparison, CompareSettings
from .run import run_torch

#: Keras classes no family maps that take an ``activation=`` too
FUSED_WITHOUT_FAMILY = ("EinsumDense",)


@dataclass
class ModelRun:
    """The two models of a full-model check and the inputs both were given."""

    keras: Any                      # the keras package
    module: Any                     # the PyTorch module
    keras_model: Any
    inputs: list[np.ndarray]        # PyTorch layout
    keras_inputs: list[np.ndarray]  # the Keras model's layout


def _family(module):
    """The rule family of a PyTorch module, if any."""
    return registry.TABLE.for_torch_kind(type(module).__name__)


def _fused(module, layer) -> bool:
    """Does the Keras layer apply an activation that the PyTorch module leaves to the next
    one (both families' ``fused_activation``: a Dense or Conv with ``activation=``)?"""
    kind = type(layer).__name__
    theirs, ours = registry.TABLE.for_keras_kind(kind), _family(module)
    keras_fuses = kind in FUSED_WITHOUT_FAMILY or (theirs is not None and theirs.fused_activation)
    return keras_fuses and ours is not None and ours.fused_activation


def default_pairs(torch_module, keras_model) -> list[tuple[str, str]]:
    """``(module path, Keras layer name)`` for every module whose path names a Keras layer, or
    whose family's ``trace_name`` does (a stacked RNN ``M`` pairs with ``M.l<last>``)."""
    names = {layer.name for layer in getattr(keras_model, "layers", [])}
    out = []
    for path, module in torch_module.named_modules():
        if not path:
            continue
        family = _family(module)
        other = family.trace_name(path, module) if family is not None else path
        if path in names:
            out.append((path, path))
        elif other in names:
            out.append((path, other))
    return out


def trace_pairs(run: ModelRun, pairs: Sequence[tuple[str, str]] | None,
                settings: CompareSettings) -> list[Comparison]:
    """Compare the first-call outputs of every paired layer, in PyTorch execution order, then
    the pairs that could not be compared (SKIPPED, with the reason)."""
    pairs = list(pairs) if pairs is not None else default_pairs(run.module, run.keras_model)
    modules = dict(run.module.named_modules())
    keras_layers = {layer.name: layer for layer in getattr(run.keras_model, "layers", [])}
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
    recorded, order = _record_torch(run, [p for p, _, _ in live])
    keras_values, keras_missing = _record_keras(run, [n for _, n, _ in live])
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
            entry = _compare_pair(run.keras, path, (modules[path], keras_layers[name]),
                                  (recorded[path], keras_values[name]), settings, labels)
        except Skip as exc:
            entry = Comparison.skipped(path, str(exc), **labels)
        ranked.append((order[path], entry))
    return [e for _, e in sorted(ranked, key=lambda item: item[0])] + skipped


def _record_torch(run: ModelRun, paths: list[str]):
    """First-call outputs of the modules at ``paths`` (None if called more than once) and the
    order of their first calls."""
    modules = dict(run.module.named_modules())
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
        run_torch(run.module, run.inputs)
    finally:
        for h in handles:
            h.remove()
    recorded = {p: (None if v is None else to_numpy(v)) for p, v in recorded.items()}
    return recorded, order


def _first_tensor(output):
    while isinstance(output, (list, tuple)) and output:
        output = output[0]
    return output.detach().clone() if hasattr(output, "detach") else None


def _record_keras(run: ModelRun, names: list[str]):
    """``({layer name: output}, {layer name: why it was not recorded})``."""
    model, inputs = run.keras_model, run.keras_inputs
    outputs, missing, wanted = {}, {}, []
    for name in dict.fromkeys(names):
        try:
            value = model.get_layer(name).output
        except (AttributeError, ValueError, RuntimeError) as exc:
            missing[name] = f"the Keras layer's output is not reachable ({one_line(exc)})"
            continue
        while isinstance(value, (list, tuple)) and value:
            value = value[0]
        wanted.append((name, value))
    if not wanted:
        return outputs, missing
    try:
        probe = run.keras.Model(model.input, [v for _, v in wanted])
        values = probe(inputs[0] if len(inputs) == 1 else list(inputs), training=False)
    except Exception as exc:  # noqa: BLE001 - subclassed or unusual models
        why = f"intermediate Keras outputs unavailable (a functional model is needed: {one_line(exc)})"
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
    family = _family(module)
    if family is not None and t.ndim == 3 and family.time_major(module):
        t = np.swapaxes(t, 0, 1)
        notes.append("time-major output made batch-first")
    candidates = []
    if t.shape == k.shape:
        candidates.append((t, ""))
    if t.ndim >= 3 and np.moveaxis(t, 1, -1).shape == k.shape:
        candidates.append((np.moveaxis(t, 1, -1), "channel axis moved last"))
    last = family.last_step(t, k, module) if family is not None else None
    if last is not None:
        candidates.append(last)
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


def _compare_pair(keras, path: str, layers: tuple, outputs: tuple, settings: CompareSettings,
                  labels: dict) -> Comparison:
    """One paired layer's outputs (``layers`` and ``outputs``: PyTorch's, then Keras')."""
    (module, layer), (t, k) = layers, outputs
    t, note = _match(t, k, module, layer, settings.keras_layout)
    activation = getattr(layer, "activation", None)
    act_name = getattr(activation, "__name__", "linear")
    if activation is not None and act_name != "linear" and _fused(module, layer):
        t = to_numpy(activation(keras.ops.convert_to_tensor(t)))
        note = "; ".join(n for n in (note, f"compared after the Keras layer's {act_name}") if n)
    entry = settings.compare(path, t, k, **labels)
    entry.message = "; ".join(m for m in (entry.message, note) if m)
    return entry


def first_divergence(trace: list[Comparison], explicit: bool) -> dict:
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


def divergence(e: Comparison) -> dict:
    """The ``first_divergence`` record of a report for entry ``e``."""
    error = (f"max abs error {e.max_abs_error:.2g}" if e.max_abs_error is not None
             else e.message)
    return {"name": e.name, "keras_name": e.keras_name or e.name, "torch_kind": e.torch_kind,
            "keras_kind": e.keras_kind, "status": e.status, "max_abs_error": e.max_abs_error,
            "max_rel_error": e.max_rel_error, "message": f"first divergence: {e.label}: {error}"}
