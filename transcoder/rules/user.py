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

import os
import stat
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Callable

from ..checkpoint import MAX_DIMS
from ..errors import UsageError, one_line
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


#: A rules file larger than this is not one (read whole, it is parsed in memory).
MAX_BYTES = 1 << 20
#: Options the families read from a ``[[layer]]`` entry, and what each must be.
OPTION_TYPES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "num_heads": ("a positive integer", lambda v: _is_int(v) and v > 0),
    "groups": ("a positive integer", lambda v: _is_int(v) and v > 0),
    "num_groups": ("a positive integer", lambda v: _is_int(v) and v > 0),
    "eps": ("a positive number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
            and 0 < v < float("inf")),
    "nonlinearity": ("a string", lambda v: isinstance(v, str)),
    "keras_shape": ("a list of sizes", lambda v: _sizes(v)),
}


def load(path: Path | None) -> UserRules:
    if path is None:
        return UserRules()
    import tomllib  # only with --rules

    try:
        data = tomllib.loads(_text(Path(path)))
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"rules file is not valid TOML ({one_line(exc)})", path=path) from None
    except RecursionError:
        raise UsageError("rules file is not valid TOML (nested too deeply)", path=path) from None
    unknown = set(data) - {"layer", "tensor"}
    if unknown:
        raise UsageError(f"unknown section(s) {sorted(unknown)}; expected [[layer]] and [[tensor]]",
                         path=path)
    layers = tuple(_layer(entry, path) for entry in _tables(data, "layer", path))
    tensors = tuple(_tensor(entry, path) for entry in _tables(data, "tensor", path))
    return UserRules(layers, tensors, str(path))


def _text(path: Path) -> str:
    """The file as text: a regular file of at most MAX_BYTES, UTF-8 (never a FIFO or a device)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with open(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UsageError("the rules file is not a regular file", path=path)
            data = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read rules file ({exc.strerror or exc})", path=path) from None
    if len(data) > MAX_BYTES:
        raise UsageError(f"the rules file is larger than {MAX_BYTES} bytes", path=path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"the rules file is not UTF-8 text (byte {exc.start})", path=path) from None


def _tables(data: dict, section: str, path: Path) -> list[dict]:
    entries = data.get(section, [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise UsageError(f"'{section}' must be a list of tables: write [[{section}]] entries",
                         path=path)
    return entries


def _layer(entry: dict, path: Path) -> LayerHint:
    entry = dict(entry)
    match, kind = entry.pop("match", None), entry.pop("kind", None)
    if not _name(match) or not isinstance(kind, str):
        raise UsageError("each [[layer]] needs string keys 'match' and 'kind'", path=path)
    if kind != CARRY and registry.TABLE.for_torch_kind(kind) is None:
        raise UsageError(f"[[layer]] match={match!r}: unknown kind {kind!r}",
                         path=path, hint="see `transcode rules` for the kinds, or use \"carry\"")
    for option, value in entry.items():
        what, valid = OPTION_TYPES.get(option, ("a number, string or list of numbers", _plain))
        if not valid(value):
            raise UsageError(f"[[layer]] match={match!r}: {option} must be {what}", path=path)
    return LayerHint(match, kind, entry)


def _tensor(entry: dict, path: Path) -> TensorMap:
    torch, keras, axes = entry.get("torch"), entry.get("keras"), entry.get("permute")
    if not _name(torch) or not _name(keras) or keras.count("/") < 1:
        raise UsageError("each [[tensor]] needs 'torch' and 'keras' = \"<layer>/<weight>\"", path=path)
    if axes is not None and not _sizes(axes):
        raise UsageError(f"[[tensor]] {torch!r}: permute must list axes as integers", path=path)
    try:
        op = Permute(tuple(axes)) if axes is not None else Identity()
    except (TypeError, ValueError):
        raise UsageError(f"[[tensor]] {torch!r}: permute must list each axis once", path=path) from None
    return TensorMap(torch, keras, op)


def _name(value: Any) -> bool:
    """A pattern or tensor name: a string without NUL (HDF5 cuts names there)."""
    return isinstance(value, str) and "\0" not in value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _sizes(value: Any) -> bool:
    return (isinstance(value, list) and len(value) <= MAX_DIMS
            and all(_is_int(v) and 0 <= v < 1 << 62 for v in value))


def _plain(value: Any) -> bool:
    """Options no family reads are kept, if they are plain values."""
    return isinstance(value, (bool, int, float, str)) or (
        isinstance(value, list) and all(isinstance(v, (bool, int, float, str)) for v in value))
