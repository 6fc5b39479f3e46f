"""``--rules FILE``: a user's TOML that states layer kinds or whole tensor mappings.

```toml
[[layer]]               # state a module's kind (overrides inference)
match = "encoder.tok*"  # glob over PyTorch module paths
kind = "Embedding"      # a rule family (transcode rules), or "carry" to keep verbatim
# further keys are options for that family, e.g. num_heads = 8, keras_shape = [1, 1, 64]

[[tensor]]              # map one tensor yourself
torch = "head.scale"    # PyTorch name (glob allowed when PyTorch is the source)
keras = "head/gamma"    # Keras "<layer>/<weight>" (glob allowed when Keras is the source)
permute = [1, 0]        # optional (PyTorch -> Keras order); default: copy
```

For a Keras source, ``[[layer]]`` entries match Keras layer names (our convention makes them
PyTorch module paths), and ``kind = "carry"`` keeps a layer's weights under
``<layer>.<weight path, / as .>``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

from ..errors import UsageError
from .ops import Identity, Op, Permute
from . import registry

CARRY = "carry"


@dataclass(frozen=True)
class LayerHint:
    match: str
    kind: str
    options: dict = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class TensorMap:
    torch: str
    keras: str
    op: Op = Identity()

    @property
    def layer(self) -> str:
        return self.keras.split("/", 1)[0]


@dataclass(frozen=True)
class UserRules:
    layers: tuple[LayerHint, ...] = ()
    tensors: tuple[TensorMap, ...] = ()
    source: str | None = None

    def layer_hint(self, module_path: str) -> LayerHint | None:
        """The last matching ``[[layer]]`` entry wins, like later lines in a config."""
        hits = [h for h in self.layers if fnmatchcase(module_path, h.match)]
        return hits[-1] if hits else None

    def tensor_map(self, torch_name: str) -> TensorMap | None:
        hits = [t for t in self.tensors if fnmatchcase(torch_name, t.torch)]
        return hits[-1] if hits else None

    def tensor_map_keras(self, keras_name: str) -> TensorMap | None:
        """For a Keras source: the entry whose ``keras`` (a glob) matches; its ``torch`` must
        then be one name, the tensor the Keras weight becomes."""
        hits = [t for t in self.tensors if fnmatchcase(keras_name, t.keras)]
        if hits and any(c in hits[-1].torch for c in "*?["):
            raise UsageError(f"[[tensor]] keras={hits[-1].keras!r}: for a Keras source, torch "
                             f"must be the one name the weight becomes, not a pattern",
                             path=self.source)
        return hits[-1] if hits else None


def load(path: Path | None) -> UserRules:
    if path is None:
        return UserRules()
    import tomllib  # only with --rules

    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise UsageError(f"cannot read rules file ({exc.strerror})", path=path) from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"rules file is not valid TOML ({exc})", path=path) from None
    unknown = set(data) - {"layer", "tensor"}
    if unknown:
        raise UsageError(f"unknown section(s) {sorted(unknown)}; expected [[layer]] and [[tensor]]",
                         path=path)
    layers = tuple(_layer(entry, path) for entry in data.get("layer", []))
    tensors = tuple(_tensor(entry, path) for entry in data.get("tensor", []))
    return UserRules(layers, tensors, str(path))


def _layer(entry: dict, path: Path) -> LayerHint:
    entry = dict(entry)
    match, kind = entry.pop("match", None), entry.pop("kind", None)
    if not isinstance(match, str) or not isinstance(kind, str):
        raise UsageError("each [[layer]] needs string keys 'match' and 'kind'", path=path)
    if kind != CARRY and registry.TABLE.for_torch_kind(kind) is None:
        raise UsageError(f"[[layer]] match={match!r}: unknown kind {kind!r}",
                         path=path, hint="see `transcode rules` for the kinds, or use \"carry\"")
    return LayerHint(match, kind, entry)


def _tensor(entry: dict, path: Path) -> TensorMap:
    torch, keras, axes = entry.get("torch"), entry.get("keras"), entry.get("permute")
    if not isinstance(torch, str) or not isinstance(keras, str) or keras.count("/") < 1:
        raise UsageError("each [[tensor]] needs 'torch' and 'keras' = \"<layer>/<weight>\"", path=path)
    try:
        op = Permute(tuple(axes)) if axes is not None else Identity()
    except (TypeError, ValueError):
        raise UsageError(f"[[tensor]] {torch!r}: permute must list each axis once", path=path) from None
    return TensorMap(torch, keras, op)
