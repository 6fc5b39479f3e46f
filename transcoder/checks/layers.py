"""Per-layer check for weights-only conversions: no architecture, only the weights and the plan.

For every Keras layer a plan maps, the layer is built twice by its family's check builder
(``LayerRule.check``) from its tensor shapes alone: a PyTorch module loaded with the PyTorch
tensors and a Keras layer loaded with the Keras tensors. One of the two sets is the original,
the other went through the rule table; both get the same seeded random input (channels-first
for PyTorch, channels-last for Keras where the layer has channels) and their outputs are
compared. A wrong rule (a permutation, a gate order, a transposed kernel) shows up here
without the model.

What the weights cannot say is fixed, the same on both sides: stride 1, no padding, groups 1
unless the module's options say otherwise (``--model``, ``options=``), eps 1e-5 (1e-6 for
RMSNorm), tanh for a plain RNN. Everything is computed in float32 (both sides cast exactly
from the stored dtype). A family without a builder, or a layer the builder cannot make, is
reported SKIPPED with the reason, never passed silently.

torch and keras are imported only when :func:`check_layers` runs.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from .. import progress
from ..checkpoint import LAYOUT_KERAS, LAYOUT_TORCH, Checkpoint
from ..errors import UsageError, one_line
from ..frameworks import import_keras, import_torch, to_numpy
from ..options import CHANNELS_LAST, Tolerance
from ..rules import registry
from ..rules.checkcase import Built, LayerCase, Skip
from ..rules.plan import Plan, make_plan
from ..rules.steps import BY_USER_RULES, COPY
from .compare import FAIL, SKIPPED, Comparison, CompareSettings, coarsest, resolve_tolerance
from .localise import divergence
from .report import CheckReport


@dataclass
class LayerCheck:
    """What the check of every layer of one plan shares."""

    torch_ckpt: Checkpoint
    keras_ckpt: Checkpoint
    settings: CompareSettings
    seed: int
    torch: object = None            # the torch package
    keras: object = None            # the keras package

    @property
    def torch_mapped(self) -> bool:
        """Is the PyTorch side the one that went through the rules (a Keras source)?"""
        return self.settings.reference != LAYOUT_TORCH


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
                         keras_layout=CHANNELS_LAST)
    if plan.direction == COPY:
        report.notes.append("source and target have the same layout: nothing was mapped")
        return report
    target = target if target is not None else plan.apply(src)
    torch_ckpt, keras_ckpt = (src, target) if src.layout == LAYOUT_TORCH else (target, src)
    run = LayerCheck(torch_ckpt, keras_ckpt,
                     CompareSettings(Tolerance(atol, rtol), src.layout, CHANNELS_LAST), seed,
                     import_torch(), import_keras())
    kinds, known = src.meta.get("module_kinds", {}), _options(src, plan, options)
    for name, layer in progress.each(plan.layers.items(), "checking layers", unit="layers"):
        steps = [s for s in plan.steps if s.layer == name]
        module = _module_path(name, steps)
        labels = {"kind": "layer", "torch_kind": kinds.get(module, layer.rule),
                  "keras_kind": layer.class_name}
        if module in plan.ambiguous:
            entry = Comparison.not_checked(name, _kind_unknown(plan.ambiguous[module]), **labels)
        elif layer.rule == BY_USER_RULES:
            entry = Comparison.not_checked(name, "mapped by a --rules [[tensor]] entry: no layer "
                                                 "family to build it with", **labels)
        else:
            entry = _check_one(run, layer, steps, known.get(module, {}), labels)
        entry.extra.update(module=module, rule=layer.rule)
        report.entries.append(entry)
    report.entries += [Comparison.not_checked(path, f"weights carried verbatim, not mapped: {why}")
                       for path, why in plan.unmapped.items()]
    report.first_divergence = _first_failure(report.entries)
    return report


def _kind_unknown(kinds: tuple[str, ...]) -> str:
    return (f"kind unknown: {', '.join(kinds[:-1])} or {kinds[-1]} (the names do not say which; "
            f"they map alike, but compute differently); state it with --rules or --model")


def _options(src: Checkpoint, plan: Plan, options: dict[str, dict] | None) -> dict[str, dict]:
    """Per module: what ``--model`` recorded, what the plan was made with (``--rules``
    options), and what the caller adds."""
    known: dict[str, dict] = {}
    for layer in (src.meta.get("module_options", {}), plan.options, options or {}):
        for path, opts in layer.items():
            known[path] = {**known.get(path, {}), **opts}
    return known


def _module_path(name: str, steps: list) -> str:
    """The PyTorch module a Keras layer comes from: the layer's name, or the module of its
    tensors (a stacked RNN's layer ``M.l1`` comes from ``M``)."""
    torch_names = [n for s in steps for n in s.torch]
    if all(n.startswith(name + ".") for n in torch_names):
        return name
    return torch_names[0].rpartition(".")[0] if torch_names else name


def _check_one(run: LayerCheck, layer, steps: list, options: dict, labels: dict) -> Comparison:
    name = layer.name
    try:
        case, built = _build(run, layer, steps, options)
    except Skip as exc:
        return Comparison.skipped(name, str(exc), **labels)
    failure = _load_both(run, layer, case, built)
    if failure is not None:
        status, message = failure
        return Comparison(name, status, message=message, **labels)
    return _compare_built(run, layer, steps, case, built, labels)


def _build(run: LayerCheck, layer, steps: list, options: dict) -> tuple[LayerCase, Built]:
    """The layer's tensors on both sides and its family's (module, Keras layer) pair; Skip
    when the family has no builder or the builder cannot make this layer."""
    family = registry.TABLE.by_name(layer.rule)
    if family is None or family.check is None:
        raise Skip(f"no per-layer builder for the {layer.rule or 'unknown'} family")
    rng = np.random.default_rng([run.seed, zlib.crc32(layer.name.encode())])
    module = _module_path(layer.name, steps)
    try:
        case = LayerCase(layer.name, module, layer.rule, _local_torch(run, family, module, steps),
                         [_float32(run.keras_ckpt[f"{layer.name}/{w}"].load())
                          for w in layer.weights],
                         options, rng, run.torch.nn, run.keras.layers, steps)
        with run.torch.random.fork_rng():
            run.torch.manual_seed(run.seed)
            return case, family.build_check(case)
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise Skip(f"cannot build a {layer.rule} from these tensors ({exc})") from None


def _local_torch(run: LayerCheck, family, module: str, steps: list) -> dict[str, np.ndarray]:
    """``{name in the module the builder makes: float32 array}``."""
    out = {}
    for full in dict.fromkeys(n for s in steps for n in s.torch):
        local = full[len(module) + 1:] if module else full
        out[family.check_name(local)] = _float32(run.torch_ckpt[full].load())
    return out


def _float32(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype.kind not in "fc" and array.dtype.name != "bfloat16":
        raise Skip(f"a {array.dtype} weight (only floating weights are checked)")
    return np.array(array, dtype=np.float32, order="C")   # a 0-d weight stays 0-d


def _load_both(run: LayerCheck, layer, case: LayerCase, built: Built) -> tuple[str, str] | None:
    """Load each side's tensors: ``(FAIL, why)`` when the mapped side's do not fit, ``(SKIPPED,
    why)`` when the original side's do not; None when both load."""
    family, mapped = layer.rule, run.torch_mapped
    try:
        _load_torch(run.torch, built.torch_module, case.torch)
    except (RuntimeError, ValueError) as exc:
        message = f"the {'mapped ' if mapped else ''}PyTorch tensors do not fit a {family}: {one_line(exc)}"
        return (FAIL if mapped else SKIPPED), message
    try:
        _keras_call(built)(built.keras_layer, _keras_inputs(built))   # builds the layer
        built.keras_layer.set_weights(_as_built(case, built))
    except (ValueError, TypeError) as exc:
        message = (f"the {'' if mapped else 'mapped '}Keras weights do not fit a "
                   f"{layer.class_name or family}: {one_line(exc)}")
        return (SKIPPED if mapped else FAIL), message
    return None


def _as_built(case: LayerCase, built: Built) -> list[np.ndarray]:
    """The Keras weights as the built layer loads them: converted by the builder where their
    layout has no Keras 3 layer (a CuDNNLSTM's), reshaped to the built layer's shapes where a
    ``--rules`` keras_shape gave them another (same values, same order: only the user's
    geometry differs)."""
    if built.keras_weights is not None:
        return built.keras_weights(case.keras)
    if "keras_shape" not in case.options:
        return case.keras
    shapes = [tuple(w.shape) for w in built.keras_layer.weights]
    return [w.reshape(s) if w.size == int(np.prod(s)) else w for w, s in zip(case.keras, shapes)]


def _compare_built(run: LayerCheck, layer, steps: list, case: LayerCase, built: Built,
                   labels: dict) -> Comparison:
    torch_out = _run_torch(run.torch, built)
    keras_out = to_numpy(_keras_call(built)(built.keras_layer, _keras_inputs(built)))
    if built.channels_last and keras_out.ndim >= 3:
        keras_out = np.moveaxis(keras_out, -1, 1)
    # computed in float32, but the mapped weights are only as exact as their stored dtype (an
    # LSTM's two biases summed in float16 round): the coarser of the two sets the tolerance
    stored = coarsest({run.torch_ckpt[n].dtype for s in steps for n in s.torch} | {"float32"})
    tolerance = Tolerance(*resolve_tolerance(stored, run.settings.tolerance.atol,
                                             run.settings.tolerance.rtol))
    settings = CompareSettings(tolerance, run.settings.reference, run.settings.keras_layout)
    entry = settings.compare(layer.name, torch_out, keras_out, **labels)
    note = f"{stored} weights: {stored} tolerances" if stored != "float32" else ""
    entry.message = "; ".join(m for m in (entry.message, built.note, note) if m)
    entry.extra["input_shapes"] = [list(x.shape) for x in built.inputs]
    return entry


def _keras_call(built: Built):
    return built.keras_call or (lambda layer, xs: layer(*xs))


def _keras_inputs(built: Built) -> list[np.ndarray]:
    return [np.ascontiguousarray(np.moveaxis(x, 1, -1)) if built.channels_last and x.ndim >= 3
            else x for x in built.inputs]


def _load_torch(torch, module, tensors: dict[str, np.ndarray]) -> None:
    state = {k: torch.from_numpy(v) for k, v in tensors.items()}
    expected = module.state_dict()
    state.update({k: v for k, v in expected.items() if k not in state and k.endswith(
        "num_batches_tracked")})
    module.load_state_dict(state, strict=True)
    module.eval()


def _run_torch(torch, built: Built) -> np.ndarray:
    call = built.torch_call or (lambda m, xs: m(*xs))
    with torch.no_grad():
        return to_numpy(call(built.torch_module, [torch.from_numpy(x) for x in built.inputs]))


def _first_failure(entries: list[Comparison]) -> dict | None:
    for e in entries:
        if e.status != SKIPPED and e.diverged:
            return divergence(e)
    return None
