"""The rule table: which PyTorch layer kind maps to which Keras layer, tensor by tensor.

Rules are data. A :class:`LayerRule` covers one family of PyTorch modules (``torch_kinds``)
and names, per parameter, the Keras weight it becomes and the operation between them. The
Keras weight order of a layer is the order of ``params``. One table serves both directions:
every operation has an inverse. Recurrent and attention families register further rules
through :func:`register`.
"""
from __future__ import annotations

from dataclasses import dataclass

from .ops import Identity, Op, Permute

T = Permute((1, 0))


@dataclass(frozen=True)
class Param:
    """One PyTorch parameter (or buffer) <-> one Keras weight."""

    torch: str
    keras: str
    op: Op = Identity()
    required: bool = True


@dataclass(frozen=True)
class LayerRule:
    """A PyTorch layer family <-> a Keras layer class."""

    name: str                       # family name used in plans and --rules, e.g. "Conv1d"
    torch_kinds: tuple[str, ...]    # PyTorch classes of this family
    keras_kind: str                 # Keras class
    params: tuple[Param, ...]
    carried: tuple[str, ...] = ()   # PyTorch tensors with no Keras counterpart, kept verbatim
    note: str = ""

    def __post_init__(self) -> None:
        torch_names = [p.torch for p in self.params] + list(self.carried)
        keras_names = [p.keras for p in self.params]
        if len(set(torch_names)) != len(torch_names) or len(set(keras_names)) != len(keras_names):
            raise ValueError(f"rule {self.name}: a tensor name appears twice")
        if self.name not in self.torch_kinds:
            raise ValueError(f"rule {self.name}: its name must be one of its torch_kinds")

    def param(self, torch_name: str) -> Param | None:
        return next((p for p in self.params if p.torch == torch_name), None)


def _conv(n: int, transposed: bool) -> LayerRule:
    axes = tuple(range(2, n + 2)) + (1, 0)
    name = f"ConvTranspose{n}d" if transposed else f"Conv{n}d"
    keras = f"Conv{n}DTranspose" if transposed else f"Conv{n}D"
    note = ("(in, out/g, k..) -> (k.., out, in); Keras has no groups here: grouped needs a densified "
            "kernel" if transposed else "(out, in/g, k..) -> (k.., in/g, out); groups and depthwise "
            "map to Keras Conv with groups=")
    return LayerRule(name, (name,), keras, (Param("weight", "kernel", Permute(axes)),
                                            Param("bias", "bias", required=False)), note=note)


def _norm(name: str, kinds: tuple[str, ...], keras: str, note: str, stats: bool = False) -> LayerRule:
    params = [Param("weight", "gamma", required=False), Param("bias", "beta", required=False)]
    if stats:
        params += [Param("running_mean", "moving_mean"), Param("running_var", "moving_variance")]
    return LayerRule(name, kinds, keras, tuple(params),
                     carried=("num_batches_tracked",) if stats else (), note=note)


RULES: list[LayerRule] = [
    LayerRule("Linear", ("Linear", "LazyLinear", "NonDynamicallyQuantizableLinear"), "Dense",
              (Param("weight", "kernel", T), Param("bias", "bias", required=False)),
              note="(out, in) -> (in, out)"),
    *(_conv(n, t) for t in (False, True) for n in (1, 2, 3)),
    _norm("BatchNorm", ("BatchNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm"),
          "BatchNormalization", "set Keras epsilon=1e-5 and momentum=1-torch momentum", stats=True),
    _norm("LayerNorm", ("LayerNorm",), "LayerNormalization", "set Keras epsilon=1e-5"),
    LayerRule("RMSNorm", ("RMSNorm",), "RMSNormalization", (Param("weight", "scale"),),
              note="Keras RMSNormalization(epsilon=...); not LayerNormalization(rms_scaling=True), "
                   "which scales by the variance"),
    _norm("GroupNorm", ("GroupNorm",), "GroupNormalization", "set Keras epsilon=1e-5"),
    _norm("InstanceNorm", ("InstanceNorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"),
          "GroupNormalization", "affine weights only; Keras GroupNormalization(groups=-1, epsilon=1e-5)"),
    LayerRule("Embedding", ("Embedding", "EmbeddingBag"), "Embedding",
              (Param("weight", "embeddings"),), note="(num, dim) unchanged: never transposed"),
    LayerRule("PReLU", ("PReLU",), "PReLU", (Param("weight", "alpha"),),
              note="alpha (C,); give keras_shape in --rules for a PReLU with shared_axes"),
]


def register(rule: LayerRule) -> LayerRule:
    """Add a rule family (used by the recurrent and attention modules)."""
    if rule.name in BY_NAME:
        raise ValueError(f"rule {rule.name} is already registered")
    RULES.append(rule)
    BY_NAME[rule.name] = rule
    for kind in rule.torch_kinds:
        BY_TORCH_KIND.setdefault(kind, rule)
    BY_KERAS_KIND.setdefault(rule.keras_kind, rule)
    return rule


#: A module holding a tensor named here takes in the child module named by the value: both
#: form one Keras layer (a MultiheadAttention and its ``out_proj``). Filled by attention.py.
NESTED: dict[str, str] = {}

BY_NAME: dict[str, LayerRule] = {r.name: r for r in RULES}
BY_TORCH_KIND: dict[str, LayerRule] = {k: r for r in reversed(RULES) for k in r.torch_kinds}
BY_KERAS_KIND: dict[str, LayerRule] = {r.keras_kind: r for r in reversed(RULES)}


def rule_for_torch_kind(kind: str) -> LayerRule | None:
    """The rule for a PyTorch class or family name (``Conv1d``, ``BatchNorm2d``, ``BatchNorm``)."""
    return BY_NAME.get(kind) or BY_TORCH_KIND.get(kind)


def rule_for_keras_kind(kind: str) -> LayerRule | None:
    return BY_KERAS_KIND.get(kind)
