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
RMSNorm), tanh for a plain RNN. A family without a builder, or a layer the builder cannot
make, is reported SKIPPED with the reason, never passed silently.

Numbers: both sides compute in float64, from weights and inputs cast exactly from their stored
dtype (float16, bfloat16 and float32 values are all float64 values). Where every op of the
layer only moves values (copy, permutation, reshape, split, gate reorder), the two sides
compute one function of the same numbers and differ only by float64 rounding: float64
tolerances (atol 1e-10 x max(1, max |reference|), rtol 1e-8). Measured on the widest layers
(Linear 4096x4096 and 11008->4096, normal(0, 1) and Kaiming weights; Conv2d 512x512 3x3;
Conv2D 1x256 and 16x1 kernels; Conv1d 2048->256 k=5, 10,240-term sums), in float32, float16
and bfloat16 checkpoints: worst error 1.3e-5 of that tolerance, where a wrong axis order, a
transposed square weight or a swapped gate errs by O(|output|), 1e8 of it and more. An op
that computes new values (an LSTM's two biases summed, a weight-norm fold) rounds them in the
stored dtype: that dtype's tolerances (float32 at least). Keras computes float64 on its
TensorFlow backend; on the others it demotes float64 to float32 (JAX's rule), which the check
lifts while it runs and verifies (else float32 tolerances, said in a note).

At scale (:mod:`.proven`): one layer per class (family, ops, names, shapes, dtypes, options)
is checked numerically; the others of the class are proven by their written bytes. A wide
Linear or Embedding is checked numerically on its first units (:mod:`.slices` argues why that
proves the mapping), its written bytes then compared with its mapped source in full. Memory:
the two sides are built one after the other, each let go before the next (the PyTorch module
made on the meta device, without initialising it, takes the float64 tensors' memory; the
Keras layer's initialisers are zeros and its weights are widened into its variables one at a
time); a layer proven whole costs about 3 B at the peak for B float32 bytes, a cut one the
written tensor read once (B) and 64 units in float64 (``bench/bench.py``'s figures:
docs/performance.md, "The default check at scale").

torch and keras are imported only when :func:`check_layers` runs.
"""
from __future__ import annotations

import functools
import gc
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from .. import progress
from ..checkpoint import LAYOUT_KERAS, LAYOUT_TORCH, Checkpoint
from ..errors import UsageError, one_line
from ..frameworks import import_keras, import_torch, to_numpy, torch_from_numpy
from ..options import CHANNELS_LAST, Tolerance
from ..rules import registry
from ..rules.checkcase import Built, LayerCase, Skip
from ..rules.plan import Plan, make_plan
from ..rules.steps import BY_USER_RULES, COPY
from .compare import FAIL, SKIPPED, SUCCESS, Comparison, CompareSettings, coarsest, dtype_key
from .localise import divergence
from .proven import Proofs
from .report import CheckReport
from .slices import Cut, cut_for, short


@dataclass
class LayerCheck:
    """What the check of every layer of one plan shares."""

    torch_ckpt: Checkpoint
    keras_ckpt: Checkpoint
    settings: CompareSettings
    seed: int
    torch: object = None            # the torch package
    keras: object = None            # the keras package
    float64: bool = True            # Keras computes float64 layers in float64
    proofs: Proofs | None = None    # classes of layers proven numerically

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
    expected = plan.apply(src)
    target = target if target is not None else expected
    torch_ckpt, keras_ckpt = (src, target) if src.layout == LAYOUT_TORCH else (target, src)
    run = LayerCheck(torch_ckpt, keras_ckpt,
                     CompareSettings(Tolerance(atol, rtol), src.layout, CHANNELS_LAST), seed,
                     import_torch(), import_keras(),
                     proofs=Proofs(expected, target, plan.direction, torch_ckpt, keras_ckpt))
    with _keras_float64(run.keras):
        run.float64 = _computes_float64(run.keras)
        if not run.float64:
            report.notes.append("this Keras computes float64 layers in float32: tolerances "
                                "of float32")
        _check_all(run, src, plan, options, report)
    report.entries += [Comparison.not_checked(path, f"weights carried verbatim, not mapped: {why}")
                       for path, why in plan.unmapped.items()]
    report.first_divergence = _first_failure(report.entries)
    return report


@contextmanager
def _keras_float64(keras):
    """Keras layers made inside are float64 (their weights and computations). Keras keeps a
    global dtype policy once a layer was made: both are set, both restored."""
    config = keras.config
    floatx, policy = config.floatx(), config.dtype_policy()
    config.set_floatx("float64")
    config.set_dtype_policy("float64")
    demotes = _keras_demotions()
    kept = dict(demotes)
    demotes["float64"] = "float64"
    try:
        yield
    finally:
        demotes.update(kept)
        config.set_floatx(floatx)
        config.set_dtype_policy(policy)


def _keras_demotions() -> dict:
    """Keras' table of the 64-bit types its ops compute in 32 bits: on every backend but
    TensorFlow, float64 -> float32 (JAX's rule without x64), in ``keras.src`` (an empty
    table where a Keras has none: :func:`_computes_float64` then tells)."""
    try:
        from keras.src.backend.common import dtypes
        return dtypes.BIT64_TO_BIT32_DTYPE
    except (ImportError, AttributeError):
        return {}


def _computes_float64(keras) -> bool:
    """Does Keras, here and now, compute a float64 product in float64? (1 + 2^-40 has no
    float32 value.)"""
    x = np.array([[1.0 + 2.0 ** -40]])
    return float(to_numpy(keras.ops.matmul(x, np.ones((1, 1))))[0, 0]) == x[0, 0]


def _check_all(run: LayerCheck, src: Checkpoint, plan: Plan, options: dict | None,
               report: CheckReport) -> None:
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
            entry = _check_once_per_class(run, layer, steps, known.get(module, {}), labels)
        entry.extra.update(module=module, rule=layer.rule)
        report.entries.append(entry)


def _check_once_per_class(run: LayerCheck, layer, steps: list, options: dict,
                          labels: dict) -> Comparison:
    """The numeric check of the first layer of each class; the others of a proven class by
    their written bytes (:mod:`.proven`), numerically when those differ."""
    key = run.proofs.key(layer, steps, options)
    entry = run.proofs.by_bytes(key, layer, steps, labels)
    if entry is None:
        entry = _prove(run, layer, steps, options, labels)
        run.proofs.record(key, entry)
    return entry


def _prove(run: LayerCheck, layer, steps: list, options: dict, labels: dict) -> Comparison:
    """The numeric check of a layer: of its first units only where it is wide and its mapping
    moves every unit alike (:mod:`.slices` argues why that proves it), then its written bytes
    against its mapped source in full; of the whole layer where those bytes differ."""
    cut = _cut(run, layer, steps, options)
    if cut is None:
        return _check_one(run, layer, steps, options, labels)
    entry = _check_one(run, layer, steps, options, labels, cut)
    entry.message = "; ".join(m for m in (entry.message, cut.describe()) if m)
    if entry.status != SUCCESS:
        return entry
    if run.proofs.same_layer(steps):
        entry.message += "; every written byte is the mapped source"
        entry.extra["proven_units"] = [cut.kept, cut.units]
        return entry
    return _check_one(run, layer, steps, options, labels)


def _cut(run: LayerCheck, layer, steps: list, options: dict) -> Cut | None:
    torch_shapes = {n: tuple(run.torch_ckpt[n].shape) for s in steps for n in s.torch
                    if n in run.torch_ckpt.tensors}
    keras_shapes = {n: tuple(run.keras_ckpt[n].shape) for n in _keras_names(layer)
                    if n in run.keras_ckpt.tensors}
    if len(keras_shapes) != len(layer.weights):
        return None
    family = registry.TABLE.by_name(layer.rule)
    return cut_for(family.units if family else {}, steps, torch_shapes, keras_shapes, options)


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


def _check_one(run: LayerCheck, layer, steps: list, options: dict, labels: dict,
               cut: Cut | None = None) -> Comparison:
    """Build the layer (or its ``cut``) on both sides and compare their outputs. One side at
    a time, each freed before the next is built: a wide layer's float64 weights are held once
    or twice, never four times."""
    name = layer.name
    try:
        case, built = _build(run, layer, steps, options, cut)
    except Skip as exc:
        return Comparison.skipped(name, str(exc), **labels)
    mapped = run.torch_mapped
    try:
        torch_out = _torch_output(run, case, built)
    except (RuntimeError, ValueError) as exc:
        return Comparison(name, FAIL if mapped else SKIPPED, message=(
            f"the {'mapped ' if mapped else ''}PyTorch tensors do not fit a {layer.rule}: "
            f"{one_line(exc)}"), **labels)
    try:
        keras_out = _keras_output(run, layer, case, built, cut)
    except (ValueError, TypeError) as exc:
        return Comparison(name, SKIPPED if mapped else FAIL, message=(
            f"the {'' if mapped else 'mapped '}Keras weights do not fit a "
            f"{layer.class_name or layer.rule}: {one_line(exc)}"), **labels)
    finally:
        _let_go(run, layer, built)
    return _compare_outputs(run, layer, steps, built, torch_out, keras_out, labels)


#: a Keras layer holding more weight bytes than this is collected as soon as it was run
WIDE_BYTES = 16 << 20


def _let_go(run: LayerCheck, layer, built: Built) -> None:
    """Drop the Keras layer. Keras layers sit in reference cycles, which Python frees only at
    its next collection: a wide one (a 4096x4096 float64 kernel: 128 MiB) is collected now,
    before the next layer is checked."""
    size = sum(run.keras_ckpt[n].nbytes for n in _keras_names(layer) if n in run.keras_ckpt.tensors)
    built.keras_layer = None
    if size > WIDE_BYTES:
        gc.collect()


def _build(run: LayerCheck, layer, steps: list, options: dict,
           cut: Cut | None = None) -> tuple[LayerCase, Built]:
    """The layer's tensors on both sides and its family's (module, Keras layer) pair; Skip
    when the family has no builder or the builder cannot make this layer. The PyTorch module
    is made on the meta device (no memory, no initialisation: the tensors replace its
    parameters); the Keras weights are shape-only stand-ins until the layer is loaded."""
    family = registry.TABLE.by_name(layer.rule)
    if family is None or family.check is None:
        raise Skip(f"no per-layer builder for the {layer.rule or 'unknown'} family")
    rng = np.random.default_rng([run.seed, zlib.crc32(layer.name.encode())])
    module = _module_path(layer.name, steps)
    try:
        case = LayerCase(layer.name, module, layer.rule,
                         _local_torch(run, family, module, steps, cut),
                         [_stand_in(run.keras_ckpt[n], cut) for n in _keras_names(layer)],
                         options, rng, run.torch.nn, run.keras.layers, steps)
        with run.torch.random.fork_rng(), run.torch.device("meta"), _no_init(run.torch)():
            run.torch.manual_seed(run.seed)
            built = family.build_check(case)
        built.inputs = _wide(built.inputs)
        return case, built
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise Skip(f"cannot build a {layer.rule} from these tensors ({exc})") from None


@functools.lru_cache(maxsize=1)
def _no_init(torch):
    """A torch function mode in which ``torch.nn.init``'s in-place initialisers leave their
    tensor as it is: the module is made on the meta device and the checkpoint's tensors
    replace its parameters. (On the meta device an Embedding's ``normal_`` runs through torch's
    reference implementations, which import its compiler: 72 MiB resident, measured.)"""
    class NoInit(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, "__module__", "") == "torch.nn.init" and func.__name__.endswith("_"):
                return args[0] if args else (kwargs or {}).get("tensor")
            return func(*args, **(kwargs or {}))
    return NoInit


def _keras_names(layer) -> list[str]:
    return [f"{layer.name}/{w}" for w in layer.weights]


def _local_torch(run: LayerCheck, family, module: str, steps: list,
                 cut: Cut | None = None) -> dict[str, np.ndarray]:
    """``{name in the module the builder makes: float64 array}`` (of the cut's units only)."""
    out = {}
    for full in dict.fromkeys(n for s in steps for n in s.torch):
        local = full[len(module) + 1:] if module else full
        stored = run.torch_ckpt[full].load()
        stored = cut.torch_part(short(full), stored) if cut else stored
        out[family.check_name(local)] = _float64(stored)
    return out


def _floating(dtype: str) -> None:
    if not (dtype.startswith("float") or dtype.startswith("complex") or dtype == "bfloat16"):
        raise Skip(f"a {dtype} weight (only floating weights are checked)")


def _stand_in(ref, cut: Cut | None = None) -> np.ndarray:
    """A read-only float64 array of the weight's shape (of the cut's) that holds no memory
    (builders read shapes only; the values are loaded with the layer)."""
    _floating(ref.dtype)
    shape = cut.keras_shape(short(ref.name), tuple(ref.shape)) if cut else tuple(ref.shape)
    return np.broadcast_to(np.float64(0), shape)


def _keras_stored(run: LayerCheck, name: str, cut: Cut | None) -> np.ndarray:
    """A Keras weight as stored (the cut's units of it)."""
    stored = run.keras_ckpt[name].load()
    return cut.keras_part(short(name), stored) if cut else stored


def _float64(array: np.ndarray) -> np.ndarray:
    """The weight in float64: every float16, bfloat16 and float32 value is a float64 exactly."""
    array = np.asarray(array)
    _floating(dtype_key(array.dtype))
    return np.array(array, dtype=np.float64, order="C")   # a 0-d weight stays 0-d


def _wide(inputs: list[np.ndarray]) -> list[np.ndarray]:
    return [x.astype(np.float64) if x.dtype.kind == "f" else x for x in inputs]


def _torch_output(run: LayerCheck, case: LayerCase, built: Built) -> np.ndarray:
    """Load the PyTorch tensors into the module (sharing their memory) and run it; the module
    and the tensors are let go."""
    _load_torch(run.torch, built.torch_module, case.torch)
    try:
        return _run_torch(run.torch, built)
    finally:
        built.torch_module, case.torch = None, {}


def _keras_output(run: LayerCheck, layer, case: LayerCase, built: Built,
                  cut: Cut | None = None) -> np.ndarray:
    """Build the Keras layer (a first call), load its weights (the cut's units), run it."""
    _zero_initialisers(run.keras, built.keras_layer)
    _keras_call(built)(built.keras_layer, _keras_inputs(built))   # builds the layer
    names, variables = _keras_names(layer), built.keras_layer.weights
    if built.keras_weights is None and "keras_shape" not in case.options \
            and len(names) == len(variables):
        for name, variable in zip(names, variables):   # one weight in memory at a time
            _assign(run, variable, _keras_stored(run, name, cut))
    else:
        case.keras = [_float64(_keras_stored(run, n, cut)) for n in names]
        built.keras_layer.set_weights(_as_built(case, built))
    case.keras = []
    return to_numpy(_keras_call(built)(built.keras_layer, _keras_inputs(built)))


def _assign(run: LayerCheck, variable, value: np.ndarray) -> None:
    """``variable.assign(value)`` in float64, as Keras' ``set_weights`` does (ValueError when
    the shapes differ). On the torch backend the stored values are widened straight into the
    variable's tensor (``assign`` would make a float64 copy first: a wide kernel's memory)."""
    value = np.asarray(value)
    _floating(dtype_key(value.dtype))
    if tuple(variable.shape) != value.shape:
        raise ValueError(f"weight {variable.path} has shape {tuple(variable.shape)}, the "
                         f"checkpoint's {value.shape}")
    if run.keras.backend.backend() != "torch":
        variable.assign(_float64(value))
        return
    with run.torch.no_grad():
        variable.value.copy_(_torch_view(run.torch, value))


def _torch_view(torch, value: np.ndarray):
    """A torch tensor over the array's memory, only ever read (bfloat16 through a copy)."""
    if dtype_key(value.dtype) == "bfloat16":
        return torch_from_numpy(value)
    with warnings.catch_warnings():   # a read-only map: torch warns that it could write it
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.ascontiguousarray(value))


#: attributes of Keras wrappers that hold the layers whose weights they make
_INNER = ("cell", "forward_layer", "backward_layer", "layer")


def _zero_initialisers(keras, layer, depth: int = 0) -> None:
    """Zeros for every initialiser of the layer (and of the cells and layers it wraps): the
    checkpoint's weights replace them, and a random or orthogonal float64 init of a wide
    kernel costs seconds and twice its memory."""
    for attr, value in list(vars(layer).items()):
        if attr.endswith("_initializer") and isinstance(value, keras.initializers.Initializer):
            setattr(layer, attr, keras.initializers.Zeros())
        elif attr in _INNER and depth < 3 and isinstance(value, keras.layers.Layer):
            _zero_initialisers(keras, value, depth + 1)


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


def _compare_outputs(run: LayerCheck, layer, steps: list, built: Built, torch_out: np.ndarray,
                     keras_out: np.ndarray, labels: dict) -> Comparison:
    if built.channels_last and keras_out.ndim >= 3:
        keras_out = np.moveaxis(keras_out, -1, 1)
    tolerances, note = _tolerances_for(run, steps)
    settings = CompareSettings(run.settings.tolerance, run.settings.reference,
                               run.settings.keras_layout, defaults=tolerances)
    entry = settings.compare(layer.name, torch_out, keras_out, **labels)
    entry.message = "; ".join(m for m in (entry.message, built.note, note) if m)
    entry.extra["input_shapes"] = [list(x.shape) for x in built.inputs]
    return entry


def _tolerances_for(run: LayerCheck, steps: list) -> tuple[str, str]:
    """The dtype whose default tolerances apply, and a note. Both sides compute in float64
    from the same values when every op only moves them: float64's. An op that computes new
    values (an LSTM's two biases summed, a weight-norm fold) rounds them in their stored dtype:
    the coarsest of the two sides' dtypes (float32 at least)."""
    if run.float64 and not any(s.op.rounds for s in steps):
        return "float64", ""
    names = [(run.torch_ckpt, n) for s in steps for n in s.torch]
    names += [(run.keras_ckpt, n) for s in steps for n in s.keras if n in run.keras_ckpt.tensors]
    stored = coarsest({ckpt[n].dtype for ckpt, n in names} | {"float32"})
    kinds = ", ".join(sorted({s.op.describe() for s in steps if s.op.rounds}))
    return stored, (f"{kinds} rounds in {stored}: {stored} tolerances" if kinds else "")


def _keras_call(built: Built):
    return built.keras_call or (lambda layer, xs: layer(*xs))


def _keras_inputs(built: Built) -> list[np.ndarray]:
    return [np.ascontiguousarray(np.moveaxis(x, 1, -1)) if built.channels_last and x.ndim >= 3
            else x for x in built.inputs]


def _load_torch(torch, module, tensors: dict[str, np.ndarray]) -> None:
    """The tensors become the (meta) module's own, sharing their memory; RuntimeError when
    they do not fit, or when the module holds tensors they do not give."""
    module.double()
    state = {k: torch.from_numpy(v) for k, v in tensors.items()}
    state.update({k: torch.zeros((), dtype=torch.long) for k in module.state_dict()
                  if k not in state and k.endswith("num_batches_tracked")})
    module.load_state_dict(state, strict=True, assign=True)
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"the module holds tensors the checkpoint does not: {', '.join(left)}")
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
