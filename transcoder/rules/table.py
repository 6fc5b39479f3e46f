"""A rule family and the table of them.

A :class:`LayerRule` is one family of PyTorch modules (``torch_kinds``) and the Keras layer
class it becomes, as data: per parameter (:class:`Param`), the PyTorch tensor names, the Keras
weight names and the operation between them. The Keras weight order of a layer is the order of
``params``; every operation has an inverse, so one table serves both directions. A family also
carries what the live stages need, so that everything about it is in one place: the words that
name it (``hints``), ``recognise`` for kind inference, its per-layer check builder (``check``)
and its Keras rebuild builder (``rebuild``), or the reason it cannot have one (``cannot``).

Its Keras half is here too, with generic defaults: the short names of its Keras weights
(:meth:`LayerRule.keras_weights`, which a Keras 3 file stores unnamed, by position), what a
Keras config says (``keras_options``, read by :meth:`LayerRule.options_from_config`) and what
of it PyTorch cannot compute (``computable``), the Keras class read from weights alone
(``recognise_keras``, then ``guess_keras``), other shapes a Keras layer may hold our bytes in
(:meth:`LayerRule.holds_ours`, :meth:`LayerRule.joins`), and how the localising check pairs and
reads a module's output (:meth:`LayerRule.trace_name`, :meth:`LayerRule.time_major`,
:meth:`LayerRule.last_step`).

The generic :meth:`LayerRule.plan_from_torch` / :meth:`LayerRule.plan_from_keras` map each
param's one tensor to its one weight; families whose tensors map many to many (recurrent,
attention) override them and expand their params' name patterns.

:class:`RuleTable` holds the families in order and finds them by name, PyTorch kind or Keras
class. The table itself is ``registry.TABLE``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Iterator

from ..checkpoint import TensorRef
from ..errors import MappingError, UnsupportedError
from . import weightnorm
from .ops import Identity, Op, Permute, Reshape
from .steps import Step, check_shapes

T = Permute((1, 0))

#: The live stages a family serves; ``cannot`` says, per stage, why it has no builder for it.
CHECK, REBUILD = "check", "rebuild"


@dataclass(frozen=True)
class Inference:
    """A layer kind read from names and shapes, and why. ``alternatives``: other families the
    tensors fit just as well, which map them to the same bytes (so the conversion is right
    whichever it is) but compute other numbers (so no check can verify the kind)."""

    kind: str | None    # a rule family name, or None: no rule fits (the tensors are carried)
    reason: str
    alternatives: tuple[str, ...] = ()


@dataclass(frozen=True)
class Option:
    """A Keras config key read as a hyper-parameter under the name ``--model`` records for the
    PyTorch module (``eps``, ``groups`` ...): how its value converts, and what a config without
    the key means (Keras 2 convolutions had no ``groups``: 1)."""

    torch: str
    convert: Callable[[Any], Any] | None = None
    missing: Any = None


@dataclass(frozen=True)
class Allowed:
    """The values of a Keras config key that PyTorch's layer computes, the value a config
    without the key means, and why any other is refused."""

    values: tuple
    missing: Any
    why: str


def config_value(raw: Any) -> Any:
    """A config value; Keras 3 may serialise an activation as ``{"config": "tanh", ...}``."""
    if isinstance(raw, dict) and isinstance(raw.get("config"), str):
        return raw["config"]
    return raw


#: What a family is read from when only the shapes of a (weight, bias) pair speak (its
#: ``inferred_from``, for ``rules/infer.py``): a pair of one shape; a bias-free 1-d weight (``NORM``
#: too: a normalisation); a 2-d weight, without bias or with one of its output size; a kernel.
AFFINE, VECTOR, NORM = "affine", "vector", "norm"
MATRIX, MATRIX_AND_BIAS = "matrix", "matrix and bias"


def kernel(rank: int, transposed: bool = False) -> str:
    """The reading of an n-d convolution weight, transposed or not."""
    return f"{rank}-d {'transposed ' if transposed else ''}kernel"


Shapes = tuple[str | None, list[tuple[int, ...]]]   # a Keras layer's class and weight shapes


@dataclass(frozen=True)
class Param:
    """PyTorch tensor(s) <-> Keras weight(s) through one op. Names are plain names, or patterns
    that a family expands (``weight_ih_l{k}{rev}``). Strings are taken as one name."""

    torch: tuple[str, ...] | str
    keras: tuple[str, ...] | str
    op: Op = Identity()
    required: bool = True

    def __post_init__(self) -> None:
        for side in ("torch", "keras"):
            if isinstance(getattr(self, side), str):
                object.__setattr__(self, side, (getattr(self, side),))


@dataclass(frozen=True)
class LayerRule:
    """A PyTorch layer family <-> a Keras layer class."""

    name: str                       # family name used in plans and --rules, e.g. "Conv1d"
    torch_kinds: tuple[str, ...]    # PyTorch classes of this family
    keras_kind: str                 # Keras class
    params: tuple[Param, ...]
    carried: tuple[str, ...] = ()   # PyTorch tensors with no Keras counterpart, kept verbatim
    note: str = ""
    hints: tuple[str, ...] = ()     # words of a module path that name this family
    #: tensor names that prove the family when a module holds all of them, and why
    proof: tuple[tuple[str, ...], str] | None = None
    #: ``(parameter, child)``: a module holding that parameter takes in the child module, both
    #: forming one Keras layer (a MultiheadAttention and its ``out_proj``)
    nested: tuple[tuple[str, str], ...] = ()
    #: child modules whose tensors form this family's one Keras layer, named by their parent
    #: (a SeparableConv ``M`` is ``M.depthwise`` and ``M.pointwise``): joined when a ``--rules``
    #: entry or the model names the parent's kind
    parts: tuple[str, ...] = ()
    check: Callable[..., Any] | None = field(default=None, compare=False, repr=False)
    rebuild: Callable[..., Any] | None = field(default=None, compare=False, repr=False)
    #: stage (CHECK, REBUILD) or "rebuild:<torch kind>" -> why there is no builder for it
    cannot: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    #: a weight-normed module of this family has its ``weight`` folded (``rules/weightnorm.py``)
    weight_norm: bool = False
    #: the axis of the PyTorch ``weight`` a ``bias`` has one value per (Linear and Conv: 0; a
    #: grouped ConvTranspose's bias is groups times its axis 1, so not checked so); a bias of
    #: another shape is bad input, refused in both directions
    bias_of: int | None = None
    #: Keras config key -> the hyper-parameter it gives (see :meth:`options_from_config`)
    keras_options: dict[str, Option] = field(default_factory=dict, compare=False, repr=False)
    #: Keras config key -> the values PyTorch computes; a file asking another is refused
    computable: dict[str, Allowed] = field(default_factory=dict, compare=False, repr=False)
    #: ``(rule, weights) -> Inference | None``: the Keras class read from weights alone, asked
    #: only when no family's ``recognise_keras`` answered (a 2-d kernel is a Dense)
    guess_keras: Callable[..., Any] | None = field(default=None, compare=False, repr=False)
    #: the Keras class exists in Keras 3 (not: Keras 2's CuDNNLSTM, only in legacy ``.h5``)
    keras_3: bool = True
    #: the package that registers the Keras class, when it is not Keras' own (ours:
    #: ``"transcoder"``, ``models/keras_layers.py``): a config names it ``<package>>Class``
    keras_package: str | None = None
    #: its Keras layer takes ``activation=`` (Dense, Conv): a localising check compares the
    #: PyTorch module's output after that activation (``checks/localise.py``)
    fused_activation: bool = False
    #: the tensor shapes the family is read from when names do not say (AFFINE, VECTOR, ...)
    inferred_from: tuple[str, ...] = ()
    #: per side ("torch", "keras"), each tensor's axis of the layer's output units, by its short
    #: name: a wide layer's class is proven on its first units (``checks/slices.py``)
    units: dict[str, dict[str, int]] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        torch_names = [n for p in self.params for n in p.torch] + list(self.carried)
        keras_names = [n for p in self.params for n in p.keras]
        if len(set(torch_names)) != len(torch_names) or len(set(keras_names)) != len(keras_names):
            raise ValueError(f"rule {self.name}: a tensor name appears twice")
        if self.name not in self.torch_kinds:
            raise ValueError(f"rule {self.name}: its name must be one of its torch_kinds")

    def param(self, torch_name: str) -> Param | None:
        return next((p for p in self.params if torch_name in p.torch), None)

    # ------------------------------------------------------------ kind inference

    def recognise(self, path: str, params: dict[str, TensorRef]) -> Inference | None:
        """This family when the tensor names alone prove it (``proof``; families whose names
        are all their own override this); None leaves it to the shapes."""
        if self.proof and set(self.proof[0]) <= set(params):
            return Inference(self.name, self.proof[1])
        return None

    def recognise_keras(self, layer: str, weights: dict[str, TensorRef]) -> Inference | None:
        """The Keras class of a layer known only by its weights, when this family's weight
        names prove it; None leaves it to the other families, then to ``guess_keras``."""
        return None

    # ------------------------------------------------------------ the Keras side

    def keras_weights(self) -> tuple[str, ...]:
        """The short names of a Keras layer's weights, in Keras order (``params`` order)."""
        return tuple(k for p in self.params for k in p.keras)

    def options_from_config(self, config: dict, weights: dict[str, TensorRef]) -> dict[str, Any]:
        """The hyper-parameters a Keras layer's config gives (``keras_options``), converted and
        named as the families read them; the caller keeps the valid ones."""
        found = {}
        for key, option in self.keras_options.items():
            value = config_value(config.get(key, option.missing))
            convert = option.convert if value is not None else None
            found[option.torch] = convert(value) if convert else value
        return found

    def uncomputable(self, config: dict) -> str | None:
        """What in a Keras config PyTorch's layer of the family cannot compute, if anything."""
        for key, allowed in self.computable.items():
            value = config_value(config.get(key, allowed.missing))
            if value not in allowed.values:
                return f"{key}={value!r}: {allowed.why}"
        return None

    def holds_ours(self, ours: Shapes, theirs: Shapes) -> bool:
        """Does their layer of this family (class and weight shapes ``theirs``) hold our
        layer's bytes in other shapes (``models/readings.py``)? None do by default."""
        return False

    def joins(self, first: Shapes, second: Shapes, theirs: Shapes) -> bool:
        """Is their one layer of this family our two layers ``first`` and ``second``?"""
        return False

    # ------------------------------------------------------------ localising a divergence

    def trace_name(self, path: str, module: Any) -> str:
        """The Keras layer the module at ``path`` pairs with when none is named ``path``."""
        return path

    def time_major(self, module: Any) -> bool:
        """Is the module's first output a sequence with time first (made batch-first)?"""
        return False

    def last_step(self, t: Any, k: Any, module: Any) -> tuple[Any, str] | None:
        """PyTorch output ``t`` as a Keras output ``k`` that keeps only its last step, if the
        family has such outputs (raises ``Skip`` when it cannot be matched)."""
        return None

    # ------------------------------------------------------------ PyTorch -> Keras

    def plan_from_torch(self, plan, path: str, params: dict[str, TensorRef], options: dict,
                        reason: str) -> None:
        """Add the steps mapping the module at ``path`` (its tensors ``params``) to ``plan``."""
        normed = weightnorm.names(params) if self.weight_norm else None
        for param in self.params:
            ref = params.get(param.torch[0])
            if ref is None and normed and param.torch[0] == "weight":
                self._plan_weight_norm(plan, path, param, [params[n] for n in normed], reason)
                plan.notes.append(weightnorm.note(path, normed))
                continue
            if ref is None:
                if param.required:
                    raise MappingError(f"a {self.name} needs a '{param.torch[0]}' tensor beside "
                                       f"this one", tensor=next(iter(params.values())).name)
                continue
            step = Step((ref.name,), (f"{path}/{param.keras[0]}",),
                        self._op(param.op, ref, options), self.name, path)
            check_shapes(step, [ref.shape])
            plan.add(step, self.keras_kind, reason)
        if "weight" in params and "bias" in params:
            self._check_bias(params["weight"].shape, params["bias"])
        leftover = [ref.name for name, ref in params.items()
                    if self.param(name) is None and name not in (normed or ())]
        unexpected = [n for n in leftover if n.rpartition(".")[2] not in self.carried]
        plan.carry(leftover, f"{path}: kept verbatim, no Keras weight in a {self.name}: "
                             f"{', '.join(unexpected)}" if unexpected else None)

    def _plan_weight_norm(self, plan, path: str, param: Param, refs: list[TensorRef],
                          reason: str) -> None:
        """``weight`` is weight norm's (g, v): the fold goes to the Keras weight, g and v are
        carried (``rules/weightnorm.py``)."""
        if not isinstance(param.op, (Identity, Permute)):
            raise UnsupportedError(f"weight norm on a {self.name} is not supported",
                                   tensor=refs[0].name)
        op = weightnorm.WeightNorm(param.op.axes if isinstance(param.op, Permute) else ())
        names = tuple(r.name for r in refs)
        plan.carry(list(names))
        step = Step(names, (f"{path}/{param.keras[0]}", *names), op, self.name, path)
        check_shapes(step, [r.shape for r in refs])
        plan.add(step, self.keras_kind, reason)

    def _op(self, op: Op, ref: TensorRef, options: dict) -> Op:
        """The param's op, or a reshape to a ``keras_shape`` the user gave (``--rules``)."""
        shape = options.get("keras_shape")
        if shape is None:
            return op
        if not isinstance(op, Identity):
            raise MappingError(f"keras_shape is only for rules that copy ({self.name} permutes)",
                               tensor=ref.name)
        return Reshape(tuple(shape), tuple(ref.shape))

    # ------------------------------------------------------------ Keras -> PyTorch

    def plan_from_keras(self, plan, layer: dict, weights: dict[str, TensorRef],
                        reason: str) -> None:
        """Add the steps mapping Keras layer ``layer`` (its weights by short path) to ``plan``."""
        name = layer["name"]
        by_keras = {p.keras[0]: p for p in self.params}
        unknown = [w for w in weights if w not in by_keras]
        if unknown:
            raise UnsupportedError(f"Keras layer {name!r} ({self.keras_kind}) has weights the "
                                   f"{self.name} rule does not know: {', '.join(unknown)}")
        for param in self.params:
            if param.keras[0] in weights:
                plan.add(Step((f"{name}.{param.torch[0]}",), (f"{name}/{param.keras[0]}",),
                              param.op, self.name, name), self.keras_kind, reason)
        weight = self.param("weight")
        if weight is not None and weight.keras[0] in weights and "bias" in weights:
            shape = weight.op.inverse_shapes([weights[weight.keras[0]].shape])[0]
            self._check_bias(shape, weights["bias"])

    def _check_bias(self, weight_shape: tuple, bias: TensorRef) -> None:
        if self.bias_of is None or len(weight_shape) <= self.bias_of:
            return
        expected = (weight_shape[self.bias_of],)
        if tuple(bias.shape) != expected:
            raise MappingError(f"a {self.name} bias must have shape {list(expected)}, not "
                               f"{list(bias.shape)}", tensor=bias.name)

    # ------------------------------------------------------------ the per-layer check

    def build_check(self, case):
        """The family's check builder on ``case``; a weight-normed module gets weight norm."""
        if self.weight_norm and weightnorm.names(case.torch):
            return weightnorm.check(self.check, case)
        return self.check(case)

    def check_name(self, local: str) -> str:
        """A tensor's local name in the module the per-layer check builds for one Keras layer."""
        return local

    # ------------------------------------------------------------ printing

    def rows(self) -> list[dict]:
        """The family as `transcode rules` prints it: one row per param, then carried tensors."""
        rows = []
        for i, param in enumerate(self.params):
            rows.append(self._row(", ".join(param.torch), ", ".join(param.keras),
                                  param.op.describe(), "" if i else self.note))
        rows += [self._row(name, "", "carried", "kept verbatim for the way back")
                 for name in self.carried]
        weight = self.param("weight")
        if self.weight_norm and weight is not None:
            axes = weight.op.axes if isinstance(weight.op, Permute) else ()
            rows.append(self._row(" | ".join(", ".join(api) for api in (weightnorm.OLD_API,
                                                                        weightnorm.NEW_API)),
                                  weight.keras[0], weightnorm.WeightNorm(axes).describe(),
                                  "weight norm (either API): folded, g and v carried"))
        return rows

    def _row(self, torch: str, keras: str, op: str, note: str) -> dict:
        return {"rule": self.name, "torch kinds": list(self.torch_kinds),
                "keras": self.keras_kind, "torch tensor": torch, "keras weight": keras, "op": op,
                "note": note}


class RuleTable:
    """The families in order (``transcode rules`` prints them so), found by name, PyTorch
    kind or Keras class (the first family listing it wins)."""

    def __init__(self, families: Iterable[LayerRule]) -> None:
        self._families = tuple(families)
        self._by_name: dict[str, LayerRule] = {}
        for family in self._families:
            if family.name in self._by_name:
                raise ValueError(f"rule {family.name} is in the table twice")
            self._by_name[family.name] = family
        self._by_torch: dict[str, LayerRule] = {}
        self._by_keras: dict[str, LayerRule] = {}
        for family in self._families:
            for kind in family.torch_kinds:
                self._by_torch.setdefault(kind, family)
            self._by_keras.setdefault(family.keras_kind, family)
            if family.keras_package:
                self._by_keras.setdefault(f"{family.keras_package}>{family.keras_kind}", family)
        self._nested = {param: child for f in self._families for param, child in f.nested}

    def __iter__(self) -> Iterator[LayerRule]:
        return iter(self._families)

    def names(self) -> list[str]:
        return [f.name for f in self._families]

    def by_name(self, name: str) -> LayerRule | None:
        return self._by_name.get(name)

    def for_torch_kind(self, kind: str) -> LayerRule | None:
        """The family of a PyTorch class or family name (``Conv1d``, ``BatchNorm2d``, ``BatchNorm``)."""
        return self._by_name.get(kind) or self._by_torch.get(kind)

    def for_keras_kind(self, kind: str) -> LayerRule | None:
        return self._by_keras.get(kind)

    def keras_kinds(self) -> list[str]:
        """Every family's Keras class, once each, in table order."""
        return list(dict.fromkeys(f.keras_kind for f in self._families))

    def nested_child(self, param: str) -> str | None:
        """The child module that joins the module holding ``param`` (see ``LayerRule.nested``)."""
        return self._nested.get(param)

    def replaced(self, name: str, family: LayerRule | None = None, **changes) -> "RuleTable":
        """A copy with family ``name`` replaced (by ``family``, or by itself with ``changes``)."""
        new = family if family is not None else replace(self._by_name[name], **changes)
        return RuleTable(new if f.name == name else f for f in self._families)
