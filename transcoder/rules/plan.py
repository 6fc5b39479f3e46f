"""Plans: the list of steps that turns a checkpoint of one layout into the other.

A :class:`Step` ties PyTorch tensor names to Keras weight names through one operation. A
:class:`Plan` is made without reading tensor data (shapes and dtypes suffice), can be printed
(``--dry-run``, ``inspect``), and produces the target checkpoint lazily (:meth:`Plan.apply`),
so writers stream tensor by tensor. Plans written to Keras files are stored in the file
(``meta["transcoder"]``), so the way back replays the exact inverse.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from ..checkpoint import LAYOUT_KERAS, LAYOUT_TORCH, Checkpoint, TensorRef
from ..errors import MappingError, TranscoderError, UnsupportedError
from . import registry, weightnorm
from .infer import RULES_HINT, infer_keras_kind, infer_torch_kind
from . import from_keras
from .ops import Identity
from .steps import BY_USER_RULES, COPY, TO_KERAS, TO_TORCH, Step, check_shapes, note_inverse
from .table import Inference
from .user import CARRY, UserRules

META_VERSION = 1


@dataclass
class KerasLayer:
    name: str
    class_name: str | None
    weights: list[str] = field(default_factory=list)
    rule: str = ""
    reason: str = ""

    def as_meta(self) -> dict:
        return {"name": self.name, "class_name": self.class_name, "weights": list(self.weights)}


@dataclass
class Plan:
    direction: str
    steps: list[Step] = field(default_factory=list)
    layers: dict[str, KerasLayer] = field(default_factory=OrderedDict)
    carried: list[str] = field(default_factory=list)
    torch_order: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: module path -> the families its tensors fit alike (the first one written)
    ambiguous: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: module path -> why its weights are carried verbatim instead of mapped
    unmapped: dict[str, str] = field(default_factory=dict)
    #: module path -> the options its family was planned with (--model, --rules)
    options: dict[str, dict] = field(default_factory=dict)

    def add(self, step: Step, class_name: str | None = None, reason: str = "") -> None:
        layer = self.layers.setdefault(step.layer, KerasLayer(step.layer, class_name, [], step.rule,
                                                              reason))
        prefix = step.layer + "/"  # other Keras-side names of a step are carried tensors
        layer.weights.extend(k[len(prefix):] for k in step.keras if k.startswith(prefix))
        self.steps.append(step)

    def carry(self, names: list[str], note: str | None = None) -> None:
        """Keep these tensors verbatim (no counterpart in the other layout), with a note."""
        self.carried.extend(names)
        if names and note:
            self.notes.append(note)

    def apply(self, src: Checkpoint) -> Checkpoint:
        """The target checkpoint, lazily: each tensor is computed when a writer loads it."""
        return _APPLY[self.direction](self, src)


# ---------------------------------------------------------------- PyTorch -> Keras

def plan_to_keras(ckpt: Checkpoint, user: UserRules | None = None) -> Plan:
    user = user or UserRules()
    plan = Plan(TO_KERAS, torch_order=list(ckpt.tensors))
    kinds = ckpt.meta.get("module_kinds", {})
    options = ckpt.meta.get("module_options", {})  # hyper-parameters (num_heads ...), from --model
    modules = join_parts(absorb_parametrizations(absorb_children(group_modules(ckpt.tensors))),
                         user, kinds)
    for path, params in modules.items():
        params = _take_user_tensors(plan, params, user)
        if params:
            _plan_module(plan, path, params, kinds.get(path), user, options.get(path, {}))
    check_targets(plan)
    return plan


def group_modules(tensors: dict[str, TensorRef]) -> "OrderedDict[str, dict[str, TensorRef]]":
    """``{module path: {param name: tensor}}`` in first-appearance order."""
    modules: OrderedDict[str, dict[str, TensorRef]] = OrderedDict()
    for name, ref in tensors.items():
        path, _, param = name.rpartition(".")
        modules.setdefault(path, {})[param] = ref
    return modules


def absorb_children(modules: "OrderedDict[str, dict[str, TensorRef]]") -> "OrderedDict":
    """Move child modules that belong to their parent's Keras layer (``LayerRule.nested``) into
    it, as ``child.param`` (a MultiheadAttention's ``out_proj``)."""
    table = registry.TABLE
    for path, params in list(modules.items()):
        child = next((table.nested_child(n) for n in params if table.nested_child(n)), None)
        inner = modules.pop(f"{path}.{child}", None) if child and path else None
        params.update((f"{child}.{n}", ref) for n, ref in (inner or {}).items())
    return modules


def absorb_parametrizations(modules: "OrderedDict[str, dict[str, TensorRef]]") -> "OrderedDict":
    """A weight-normed module of the new API holds ``parametrizations.weight.original0/1`` in a
    child of its own: move them into the module, where its bias is (``rules/weightnorm.py``)."""
    suffix = "." + weightnorm.PARAMETRIZATION
    joined: OrderedDict[str, dict[str, TensorRef]] = OrderedDict()
    for path, params in modules.items():
        if path.endswith(suffix) and set(params) == weightnorm.ORIGINALS:
            parent = path[:-len(suffix)]
            joined.setdefault(parent, {}).update(
                (f"{weightnorm.PARAMETRIZATION}.{n}", ref) for n, ref in params.items())
        else:
            joined.setdefault(path, {}).update(params)
    return joined


def join_parts(modules: "OrderedDict[str, dict[str, TensorRef]]", user: UserRules,
               kinds: dict[str, str]) -> "OrderedDict":
    """Join the child modules of a parent whose kind (``--rules``, else the model) is a family
    made of parts (``LayerRule.parts``: a SeparableConv ``M`` of ``M.depthwise`` and
    ``M.pointwise``) into the parent, as ``part.param``, where the first part was."""
    parents = {path.rpartition(".")[0] for path in modules if "." in path}
    joined: OrderedDict[str, dict[str, TensorRef]] = OrderedDict()
    for path, params in modules.items():
        parent = path.rpartition(".")[0]
        family = _family_of(parent, user, kinds) if parent in parents else None
        part = path[len(parent) + 1:]
        if family is None or part not in family.parts:
            joined.setdefault(path, {}).update(params)
            continue
        joined.setdefault(parent, {}).update((f"{part}.{n}", ref) for n, ref in params.items())
    return joined


def _family_of(path: str, user: UserRules, kinds: dict[str, str]):
    hint = user.layer_hint(path)
    kind = hint.kind if hint is not None else kinds.get(path)
    return registry.TABLE.for_torch_kind(kind) if kind and kind != CARRY else None


def _take_user_tensors(plan: Plan, params: dict[str, TensorRef], user: UserRules) -> dict:
    rest = {}
    for pname, ref in params.items():
        tmap = user.tensor_map(ref.name)
        if tmap is None:
            rest[pname] = ref
        else:
            plan.add(Step((ref.name,), (tmap.keras,), tmap.op, BY_USER_RULES, tmap.layer),
                     reason="[[tensor]] in --rules")
    return rest


def _plan_module(plan: Plan, path: str, params: dict[str, TensorRef], known_kind: str | None,
                 user: UserRules, known_options: dict | None = None) -> None:
    hint = user.layer_hint(path)
    options = dict(known_options or {})
    if hint is not None:
        found = Inference(hint.kind, f"--rules match {hint.match!r}")
        options.update(hint.options)
    elif known_kind:  # from --model or a TorchScript archive: a kind without a rule is carried
        found = Inference(known_kind, "module type known from the model")
    else:
        found = infer_torch_kind(path, weightnorm.plain(params))
    rule = registry.TABLE.for_torch_kind(found.kind) if found.kind and found.kind != CARRY else None
    if rule is not None and weightnorm.names(params) and not rule.weight_norm:
        found, rule = Inference(None, f"weight norm is folded for Linear, Conv and "
                                      f"ConvTranspose only, not {rule.name}"), None
    if rule is None:
        _carry_module(plan, path, params, found)
        return
    if options:
        plan.options[path] = options
    if found.alternatives:
        plan.ambiguous[path] = (found.kind, *found.alternatives)
        plan.notes.append(f"{path or 'top level'}: {found.reason}; written as a {found.kind}, "
                          f"the check cannot verify which ({RULES_HINT})")
    rule.plan_from_torch(plan, path, params, options, found.reason)


def _carry_module(plan: Plan, path: str, params: dict[str, TensorRef], found: Inference) -> None:
    """Keep a module's tensors verbatim; one note when they are weights (floating point)."""
    names = [ref.name for ref in params.values()]
    plan.carried.extend(names)
    if any(_is_weight(ref) for ref in params.values()):
        why = ("--rules says carry" if found.kind == CARRY else
               f"{found.kind} has no rule" if found.kind else found.reason)
        plan.unmapped[path or names[0]] = why
        plan.notes.append(f"{path or names[0]}: weights carried verbatim, not mapped ({why}); "
                          f"the check cannot verify them")


def _is_weight(ref: TensorRef) -> bool:
    return ref.dtype.startswith(("float", "bfloat", "complex"))


def check_targets(plan: Plan) -> None:
    """MappingError, naming both sources, when two tensors would be written under one name
    (a writer keeps one of them, silently), or naming the source when one would be written
    under an empty name: from ``--rules`` (``torch = "x"`` for ``keras = "dense/*"``), a
    file's stored steps, or anywhere else. Carried tensors are not counted: a step may carry
    its own sources under their names (weight norm), or remake a carried tensor (LSTM bias
    pairs), by design."""
    to_keras = plan.direction == TO_KERAS
    seen: dict[str, str] = {}
    for step in plan.steps:
        targets, origin = (step.keras, step.torch[0]) if to_keras else (step.torch, step.keras[0])
        for name in targets:
            if not name:
                raise MappingError(f"{origin} would be written under an empty name",
                                   hint="fix the --rules entries")
            if seen.get(name, origin) != origin:
                raise MappingError(f"two tensors would be written as {name!r}: {seen[name]} "
                                   f"and {origin}", hint="fix the --rules entries")
            seen[name] = origin


def _apply_to_keras(plan: Plan, src: Checkpoint) -> Checkpoint:
    out = Checkpoint(OrderedDict(), LAYOUT_KERAS, source=src.source, format=src.format)
    for step in plan.steps:
        refs = [src[n] for n in step.torch]
        shapes = check_shapes(step, [r.shape for r in refs])
        for i, (name, shape) in enumerate(zip(step.keras, shapes)):
            out.tensors[name] = TensorRef(name, tuple(shape), refs[0].dtype,
                                          _lazy(step.op.forward, refs, i, name),
                                          _blocker(step.op, step.op.forward_blocks, refs, name))
    for name in plan.carried:
        out.tensors[name] = src[name]
    out.meta.update(keras_layers=[layer.as_meta() for layer in plan.layers.values()],
                    carried=list(plan.carried), transcoder=stored_meta(plan, src))
    _keep_file_metadata(src, out)
    return out


def _keep_file_metadata(src: Checkpoint, out: Checkpoint) -> None:
    """The source file's own metadata (``formats.filemeta``) goes to the target."""
    if src.meta.get("file_metadata"):
        out.meta["file_metadata"] = dict(src.meta["file_metadata"])


def stored_meta(plan: Plan, src: Checkpoint) -> dict:
    """What our Keras writers keep so that the way back is exact."""
    return {"version": META_VERSION, "steps": [s.spec() for s in plan.steps],
            "torch_order": plan.torch_order, "carried": list(plan.carried),
            "source_format": src.format, "state_dict_key": src.meta.get("state_dict_key")}


def _lazy(fn, refs: list[TensorRef], index: int, name: str):
    def load():
        try:
            return fn([r.load() for r in refs])[index]
        except TranscoderError as exc:
            raise exc.with_context(tensor=name) from None
    return load


def _blocker(op, blocks_fn, refs: list[TensorRef], name: str):
    """``TensorRef.blocker`` for ops that stream (one tensor to one, bytes only reordered)."""
    if not op.streams:
        return None

    def blocks(scratch, part=None):
        try:
            yield from blocks_fn([refs[0].load()], scratch, part)
        except TranscoderError as exc:
            raise exc.with_context(tensor=name) from None
    return blocks


# ---------------------------------------------------------------- Keras -> PyTorch

def plan_to_torch(ckpt: Checkpoint, user: UserRules | None = None) -> Plan:
    """The plan of a Keras checkpoint: replayed from our own conversion record when the file
    has one (exact), else layer by layer: ``--rules`` first (``[[tensor]]`` by Keras name,
    ``[[layer]]`` by Keras layer name), then the layer's class, then its weights' names."""
    user = user or UserRules()
    stored = ckpt.meta.get("transcoder") or {}
    if stored.get("steps"):
        plan = _replay(ckpt, stored)
        check_targets(plan)
        if user.layers or user.tensors:
            plan.notes.append("the file's own conversion record is replayed; --rules is not used")
        return plan
    plan = Plan(TO_TORCH)
    for layer, weights in _keras_layers(ckpt):
        weights = _take_user_weights(plan, layer["name"], weights, user)
        if weights:
            try:
                _plan_keras_layer(plan, layer, weights, user)
            except (UnsupportedError, MappingError) as exc:
                raise _needs_keras_model(ckpt, layer, weights) or exc from None
    plan.carried = list(ckpt.meta.get("carried", []))
    plan.torch_order = [n for s in plan.steps for n in s.torch] + plan.carried
    check_targets(plan)
    return plan


#: The format whose files name weights by class and position only (Keras 3 ``.weights.h5``).
BY_POSITION = "keras_weights_h5"


def _needs_keras_model(ckpt: Checkpoint, layer: dict, weights: dict[str, TensorRef]
                       ) -> UnsupportedError | None:
    """A layer of a Keras 3 ``.weights.h5`` no rule could read: the file holds no layer
    classes or configs, so the Keras model that saved it is what names its weights (its
    weights numbered ``0``, ``1`` say the same); carrying them would leave them unmapped."""
    numbered = [w for w in weights if w.rpartition("/")[2].isdigit()]
    if ckpt.format != BY_POSITION or not (numbered or not layer.get("class_name")):
        return None   # the class is known and its weights named: the error says it better
    what = (f"weights named by position only ({', '.join(numbered[:4])})" if numbered
            else f"weights ({', '.join(list(weights)[:4])}) that do not say its class")
    return UnsupportedError(
        f"Keras layer {layer['name']!r}{_class_note(layer)} has {what}: a Keras 3 .weights.h5 "
        f"stores no layer classes or configs, only the model that saved it can name them",
        hint="pass --keras-model path/to/model.py:build_model, a function building the Keras "
             "model that saved it")


def _class_note(layer: dict) -> str:
    return f" ({layer['class_name']})" if layer.get("class_name") else ""


def _take_user_weights(plan: Plan, layer: str, weights: dict[str, TensorRef],
                       user: UserRules) -> dict[str, TensorRef]:
    """Weights a ``[[tensor]]`` entry maps by its Keras name; the others, to plan as usual."""
    rest = {}
    for path, ref in weights.items():
        tmap = user.tensor_map_keras(ref.name)
        if tmap is None:
            rest[path] = ref
        else:
            plan.add(Step((tmap.torch,), (ref.name,), tmap.op, BY_USER_RULES, layer),
                     reason="[[tensor]] in --rules")
    return rest


def _replay(ckpt: Checkpoint, stored: dict) -> Plan:
    if stored.get("version", 0) > META_VERSION:
        raise UnsupportedError(f"written by a newer transcoder (metadata version {stored['version']})",
                               path=ckpt.source, hint="upgrade transcoder")
    plan = Plan(TO_TORCH, carried=list(stored.get("carried", [])),
                torch_order=list(stored.get("torch_order", [])))
    for spec in stored["steps"]:
        plan.add(Step.from_spec(spec), reason="stored by transcoder")
    missing = [k for s in plan.steps for k in s.keras if k not in ckpt.tensors]
    missing += [n for n in plan.carried if n not in ckpt.tensors]
    if missing:
        raise MappingError(f"the file lacks tensors its own conversion record lists: "
                           f"{', '.join(missing[:5])}", path=ckpt.source)
    for step in plan.steps:
        note_inverse(plan, step, [ckpt[k] for k in step.keras])
    return plan


def _keras_layers(ckpt: Checkpoint):
    """``(layer meta, {weight path: tensor})`` per Keras layer, in file order."""
    layers = ckpt.meta.get("keras_layers")
    carried = set(ckpt.meta.get("carried", []))
    if layers is None:
        grouped: OrderedDict[str, list[str]] = OrderedDict()
        for name in ckpt.tensors:
            if name not in carried:
                layer, _, weight = name.partition("/")
                grouped.setdefault(layer, []).append(weight)
        layers = [{"name": k, "class_name": None, "weights": v} for k, v in grouped.items()]
    for layer in layers:
        weights = {w: ckpt[f"{layer['name']}/{w}"] for w in layer["weights"]}
        yield layer, weights


def _plan_keras_layer(plan: Plan, layer: dict, weights: dict[str, TensorRef],
                      user: UserRules) -> None:
    """One Keras layer: ``--rules`` first, then its class (from the file's config, the
    class decides; a wrapper by the class it wraps), else its weights' names and shapes. The
    config's hyper-parameters (and the entry's options) are recorded for the check."""
    name = layer["name"]
    hint = user.layer_hint(name)
    if hint is not None and hint.kind == CARRY:
        _carry_keras_layer(plan, name, weights)
        return
    spec = _spec(layer)
    family = from_keras.family_class(spec)
    if hint is not None:
        rule, reason = registry.TABLE.for_torch_kind(hint.kind), f"--rules match {hint.match!r}"
    elif family is not None:
        rule, reason = _keras_class_rule(name, family, weights), f"Keras class {spec.class_name}"
    else:
        rule, reason = _inferred_keras_rule(plan, name, weights)
    if family is not None and isinstance(layer.get("config"), dict):   # the file's own config
        _uncomputable(plan, name, family, rule.name, hint is not None)
    known = from_keras.options(family, weights) if family is not None else {}
    known.update(hint.options if hint is not None else {})
    if known:
        plan.options[name] = known
    rule.plan_from_keras(plan, layer, weights, reason)


def _spec(layer: dict) -> from_keras.LayerSpec:
    config = layer.get("config")
    return from_keras.LayerSpec(layer["name"], layer.get("class_name"),
                                config if isinstance(config, dict) else {})


def _keras_class_rule(name: str, family: from_keras.LayerSpec, weights: dict[str, TensorRef]):
    """The family of a layer whose class is known; an error naming it when none maps it."""
    rule = registry.TABLE.for_keras_kind(family.class_name)
    if rule is None:
        raise from_keras.no_rule(name, family, weights)
    return rule


def _uncomputable(plan: Plan, name: str, family: from_keras.LayerSpec, kind: str,
                  stated: bool) -> None:
    """A config PyTorch's layer cannot compute: refused, or a note when --rules states the kind."""
    why = from_keras.uncomputable(family)
    if why is not None and not stated:
        raise from_keras.refusal(name, family, why, kind)
    if why is not None:
        plan.notes.append(f"Keras layer {name!r}: mapped by --rules as kind {kind}, though its "
                          f"{why}: the outputs will differ")


def _inferred_keras_rule(plan: Plan, name: str, weights: dict[str, TensorRef]):
    """The family the weights' names and shapes point to (the class is not known)."""
    found = infer_keras_kind(name, weights)
    rule = registry.TABLE.for_keras_kind(found.kind) if found.kind else None
    if rule is None:
        carry = f"[[layer]] match = {from_keras.toml(name)}, kind = \"carry\""
        raise UnsupportedError(f"no rule maps Keras layer {name!r} ({found.reason})",
                               hint=f"see `transcode rules`; or keep its weights with --rules "
                                    f"({carry})")
    if found.alternatives:
        plan.ambiguous[name] = (found.kind, *found.alternatives)
        plan.notes.append(f"Keras layer {name!r}: {found.reason}; read as a {found.kind}, the "
                          f"check cannot verify which")
    return rule, found.reason


def _carry_keras_layer(plan: Plan, name: str, weights: dict[str, TensorRef]) -> None:
    """``kind = "carry"`` for a Keras layer: its weights go to PyTorch verbatim, under
    ``<layer>.<weight path with / as .>`` (a custom layer no rule knows)."""
    for path, ref in weights.items():
        plan.steps.append(Step((f"{name}.{path.replace('/', '.')}",), (ref.name,), Identity(),
                               CARRY, name))
    plan.unmapped[name] = "--rules says carry"
    plan.notes.append(f"Keras layer {name!r}: weights carried verbatim, not mapped (--rules says "
                      f"carry); the check cannot verify them")


def _apply_to_torch(plan: Plan, src: Checkpoint) -> Checkpoint:
    out = Checkpoint(OrderedDict(), LAYOUT_TORCH, source=src.source, format=src.format)
    made: dict[str, TensorRef] = {}
    for step in plan.steps:
        refs = [src[n] for n in step.keras]
        shapes = step.op.inverse_shapes([r.shape for r in refs])
        for i, (name, shape) in enumerate(zip(step.torch, shapes)):
            made[name] = TensorRef(name, tuple(shape), refs[0].dtype,
                                   _lazy(step.op.inverse, refs, i, name),
                                   _blocker(step.op, step.op.inverse_blocks, refs, name))
    for name in plan.carried:  # a step may remake a carried tensor (LSTM bias pairs): it wins
        made.setdefault(name, src[name])
    order = [n for n in plan.torch_order if n in made] + [n for n in made if n not in plan.torch_order]
    out.tensors.update((n, made[n]) for n in order)
    _keep_file_metadata(src, out)
    return out


# ---------------------------------------------------------------- same layout

def plan_copy(ckpt: Checkpoint) -> Plan:
    return Plan(COPY, torch_order=list(ckpt.tensors))


def _apply_copy(plan: Plan, src: Checkpoint) -> Checkpoint:
    return Checkpoint(OrderedDict(src.tensors), src.layout, src.source, src.format, dict(src.meta))


_APPLY = {TO_KERAS: _apply_to_keras, TO_TORCH: _apply_to_torch, COPY: _apply_copy}


def make_plan(ckpt: Checkpoint, target_layout: str, user: UserRules | None = None) -> Plan:
    if ckpt.layout == target_layout:
        return plan_copy(ckpt)
    if target_layout == LAYOUT_KERAS:
        return plan_to_keras(ckpt, user)
    return plan_to_torch(ckpt, user)
