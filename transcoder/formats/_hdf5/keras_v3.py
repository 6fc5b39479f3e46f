"""The Keras 3 ``saving_lib`` weights layout, read with h5py only (no Keras import).

Keras 3 (``model.save_weights("x.weights.h5")`` and ``model.weights.h5`` inside ``.keras``)
stores each layer at ``layers/<snake_case class>[_N]/vars/0, 1, ...``; ``_N`` counts layers of
the same class in ``model.layers`` order. Sub-layers nest: an RNN's weights are in
``<layer>/cell/vars``, a Bidirectional's in ``forward_layer/cell/vars`` and
``backward_layer/cell/vars``, a MultiHeadAttention's in ``query_dense/vars`` ... and a nested
model's in ``<model>/layers/...``. Since Keras 3.6 every ``vars`` group has a ``name`` attribute
(the layer name). The variables themselves are unnamed, so short weight names come from the
families' Keras weight names in order (:func:`known_weights`), placed in the ``vars`` groups of
:data:`NESTING`; where the count does not fit, weights are named by index ("0", "1").
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import h5py

from ...checkpoint import TensorRef
from ...errors import FormatError, UnsafeFileError
from . import h5safety as h5s
from .._guard import limits
from . import keras_config
from .keras_config import config_layers, config_name

KERNEL_BIAS = ("kernel", "bias")
#: A Keras RNN cell's variables, in order.
CELL = ("kernel", "recurrent_kernel", "bias")
IN_CELL = (("cell/vars", ""),)

#: Where Keras 3 nests the variables of a class with sub-layers: its ``vars`` groups (relative
#: to the layer group), each taking the weights whose short names start with its prefix. Every
#: other class keeps them in its own ``vars``. This is format knowledge (Keras' sub-layer
#: attributes), so it names Keras classes; the short names themselves come from the families
#: (``LayerRule.keras_weights``) or, for classes no family maps, from :data:`KERAS_WEIGHTS`.
NESTING: dict[str, tuple[tuple[str, str], ...]] = {
    "LSTM": IN_CELL, "GRU": IN_CELL, "SimpleRNN": IN_CELL,
    "ConvLSTM1D": IN_CELL, "ConvLSTM2D": IN_CELL, "ConvLSTM3D": IN_CELL,
    "Bidirectional": (("forward_layer/cell/vars", "forward/"),
                      ("backward_layer/cell/vars", "backward/")),
    "MultiHeadAttention": (("query_dense/vars", "query/"), ("key_dense/vars", "key/"),
                           ("value_dense/vars", "value/"),
                           ("output_dense/vars", "attention_output/")),
}
OWN_VARS = (("vars", ""),)

#: Keras classes no family maps, their weights in Keras order (the names a legacy ``.h5``
#: gives them). A Bidirectional's are its wrapped cell's, once per direction.
KERAS_WEIGHTS: dict[str, tuple[str, ...]] = {
    "EinsumDense": KERNEL_BIAS,
    "ConvLSTM1D": CELL, "ConvLSTM2D": CELL, "ConvLSTM3D": CELL,
    "Bidirectional": tuple(f"{d}/{n}" for d in ("forward", "backward") for n in CELL),
}

#: Keras 2 classes that Keras 3 no longer has (legacy ``.h5`` only) and no family maps.
LEGACY_WEIGHTS: dict[str, tuple[str, ...]] = {
    "LocallyConnected1D": KERNEL_BIAS,
    "LocallyConnected2D": KERNEL_BIAS,
}


def _table():
    """The rule table (``rules/registry.py``): the families name their Keras weights."""
    from ...rules import registry

    return registry.TABLE


def known_weights(class_name: str | None, legacy: bool = False) -> tuple[str, ...] | None:
    """A class's weights in Keras order: Keras' own names for a class no family maps, else
    its family's (``legacy``: Keras 2 classes too); None for a class neither knows."""
    if class_name in KERAS_WEIGHTS:
        return KERAS_WEIGHTS[class_name]
    if legacy and class_name in LEGACY_WEIGHTS:
        return LEGACY_WEIGHTS[class_name]
    rule = _table().for_keras_kind(class_name or "")
    if rule is None or not (legacy or rule.keras_3):
        return None
    return rule.keras_weights()


def vars_layout(class_name: str | None) -> list[tuple[str, tuple[str, ...]]] | None:
    """A Keras 3 class's ``vars`` groups in Keras weight order, each with the short weight
    paths of its variables; None for a class whose weights are not known."""
    names = known_weights(class_name)
    if names is None:
        return None
    return [(rel, tuple(n for n in names if n.startswith(prefix)))
            for rel, prefix in NESTING.get(class_name or "", OWN_VARS)]


#: Config switches that remove a weight when false/None: key -> last component of the weight path.
OPTIONAL_WEIGHTS: dict[str, str] = {
    "use_bias": "bias",
    "bias_axes": "bias",    # EinsumDense
    "center": "beta",
    "scale": "gamma",
}

#: Classes without weights of their own that still appear as groups.
OTHER_CLASSES = ("Sequential", "Functional", "InputLayer", "TimeDistributed")

#: Root groups of a weights file that are not layers.
ROOT_SKIP = frozenset({"vars", "optimizer"})


def to_snake_case(name: str) -> str:
    """Keras' own ``naming.to_snake_case`` (Conv2DTranspose -> conv2d_transpose, PReLU -> p_re_lu)."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


_SNAKE: list = [None, {}]   # [the table it was made from, snake_case -> Keras class]


def class_by_snake() -> dict[str, str]:
    """snake_case path component -> Keras class name, for every class whose weights are known
    (the families' Keras 3 classes and :data:`KERAS_WEIGHTS`) and :data:`OTHER_CLASSES`."""
    table = _table()
    if _SNAKE[0] is not table:
        classes = [c for c in table.keras_kinds() if table.for_keras_kind(c).keras_3]
        _SNAKE[:] = [table, {to_snake_case(c): c for c in (*classes, *KERAS_WEIGHTS,
                                                            *OTHER_CLASSES)}]
    return _SNAKE[1]


def class_from_key(key: str) -> str | None:
    """``conv1d_3`` -> ``Conv1D``; None for an unknown component."""
    known = class_by_snake()
    return known.get(key) or known.get(re.sub(r"_\d+$", "", key))


@dataclass
class _Ctx:
    """What every step needs: the file label for errors and the byte budget for bomb checks."""

    path: object
    file_size: int
    seen: set = field(default_factory=set)

    def enter(self, node: h5py.HLObject) -> h5py.HLObject:
        """Refuse a group reached twice: Keras never shares groups, and hard-link cycles or
        fan-outs would make the walk endless or exponential."""
        key = h5s.object_key(node)
        if key in self.seen:
            raise UnsafeFileError(f"HDF5 object {node.name} is reached through more than one "
                                  "hard link", path=self.path)
        self.seen.add(key)
        return node


@dataclass
class Found:
    """A layer group paired with its name, class and (if known) its config entry."""

    name: str
    class_name: str | None
    group: h5py.Group
    config: dict | None


# -- config pairing ----------------------------------------------------------------------------

def pair_config(entries: list[dict]) -> dict[str, dict]:
    """Path component -> config entry, numbered the way saving_lib does (dense, dense_1, ...)."""
    used: dict[str, int] = {}
    paired: dict[str, dict] = {}
    for entry in entries:
        snake = to_snake_case(str(entry.get("class_name", "")))
        if snake in used:
            used[snake] += 1
            paired[f"{snake}_{used[snake]}"] = entry
        else:
            used[snake] = 0
            paired[snake] = entry
    return paired


# -- finding layers ------------------------------------------------------------------------------

def _vars_name(grp: h5py.Group, ctx: _Ctx) -> str | None:
    if not h5s.has(grp, "vars"):
        return None
    return h5s.attr_text(h5s.group(grp, "vars", ctx.path), "name")


def _is_layer(grp: h5py.Group, key: str) -> bool:
    return h5s.has(grp, "vars") or class_from_key(key) is not None


def _found(grp: h5py.Group, key: str, prefix: str, entry: dict | None, ctx: _Ctx) -> Found:
    stored = _vars_name(grp, ctx)
    if entry is None:
        return Found(stored or prefix + key, class_from_key(key), grp, None)
    name = config_name(entry)
    if stored is not None and name != stored:
        raise FormatError(f"config.json names layer {grp.name} {name!r} but the weights file "
                          f"says {stored!r}", path=ctx.path)
    return Found(name or stored or key, keras_config.class_of(entry), grp, entry)


def container_layers(grp: h5py.Group, ctx: _Ctx, entries: list[dict] | None = None,
                     prefix: str = "", depth: int = 0) -> list[Found]:
    """Layers in a container group (``layers``, or a list attribute of a subclassed model)."""
    if depth > h5s.MAX_DEPTH:
        raise FormatError(f"HDF5 groups nested deeper than {h5s.MAX_DEPTH} at {grp.name}",
                          path=ctx.path)
    paired = pair_config(entries or [])
    keys = [k for k in paired if h5s.has(grp, k)]
    keys += natural_sorted(k for k in grp.keys() if k not in paired)
    found: list[Found] = []
    for key in keys:
        if depth == 0 and grp.name == "/" and key in ROOT_SKIP:
            continue
        node = ctx.enter(h5s.child(grp, key, ctx.path))
        if not isinstance(node, h5py.Group):
            raise FormatError(f"unexpected dataset {node.name} among layers", path=ctx.path)
        if key in paired or _is_layer(node, key):
            found.append(_found(node, key, prefix, paired.get(key), ctx))
        else:
            found += container_layers(node, ctx, None, f"{prefix}{key}.", depth + 1)
    return found


def natural_sorted(keys: Any) -> list[str]:
    """``dense, dense_1, dense_2, ..., dense_10`` (not the HDF5 alphabetical order)."""
    def key(k: str) -> tuple:
        m = re.match(r"^(.*?)(?:_(\d+))?$", k)
        return (m.group(1), int(m.group(2) or -1), k)
    return sorted(keys, key=key)


def model_layers(root: h5py.Group, ctx: _Ctx, config: Any) -> list[Found]:
    """Top-level layers: paired with the model config when it lists layers, else by walking."""
    entries = config_layers(config)
    if entries is not None and h5s.has(root, "layers"):
        return container_layers(h5s.group(root, "layers", ctx.path), ctx, entries)
    return container_layers(root, ctx)


# -- weights of one layer --------------------------------------------------------------------------

def _var_key(item: tuple[str, Any]) -> tuple:
    key = item[0]
    return (0, int(key), "") if key.isdigit() else (1, 0, key)


def own_vars(grp: h5py.Group, ctx: _Ctx) -> list[tuple[str, Any]]:
    """``[(key, dataset)]`` of the group's own ``vars``, numeric keys in numeric order."""
    if not h5s.has(grp, "vars"):
        return []
    node = h5s.group(grp, "vars", ctx.path)
    return sorted(h5s.children(node, ctx.path), key=_var_key)


def vars_groups(grp: h5py.Group, ctx: _Ctx, rel: str = "", depth: int = 0) -> dict[str, list]:
    """``relative path of a vars group -> [(key, dataset)]`` for every non-empty ``vars`` below."""
    if depth > h5s.MAX_DEPTH:
        raise FormatError(f"HDF5 groups nested deeper than {h5s.MAX_DEPTH} at {grp.name}",
                          path=ctx.path)
    out: dict[str, list] = {}
    items = own_vars(grp, ctx)
    if items:
        out[f"{rel}vars"] = items
    for key, node in h5s.children(grp, ctx.path):
        if key not in ("vars", "layers") and isinstance(node, h5py.Group):
            out.update(vars_groups(ctx.enter(node), ctx, f"{rel}{key}/", depth + 1))
    return out


def _switches(class_name: str | None, cfg: dict) -> dict:
    """The config that says which weights exist: a Bidirectional's is its wrapped layer's."""
    wrapped = keras_config.WRAPPERS.get(class_name or "")
    inner = cfg.get(wrapped) if wrapped else None
    if isinstance(inner, dict) and isinstance(inner.get("config"), dict):
        return inner["config"]
    return cfg


def _dropped(class_name: str | None, cfg: dict) -> set[str]:
    """Weights the config switches off (``use_bias=False``, ``center=False``...)."""
    own = _switches(class_name, cfg)
    return {w for key, w in OPTIONAL_WEIGHTS.items() if key in own and not own[key]}


def expected_layout(found: Found) -> list[tuple[str, tuple[str, ...]]]:
    """The table layout of a class, minus weights its config switches off (``use_bias=False``)."""
    cfg = (found.config or {}).get("config")
    dropped = _dropped(found.class_name, cfg if isinstance(cfg, dict) else {})
    return [(rel, tuple(n for n in names if n.rsplit("/", 1)[-1] not in dropped))
            for rel, names in vars_layout(found.class_name) or []]


def weight_order(class_name: str | None, cfg: dict) -> list[str] | None:
    """The short names of a layer's weights in Keras order, as its class and config say
    (a TimeDistributed's are its wrapped layer's); None for a class the tables do not know."""
    if class_name == "TimeDistributed":
        inner = keras_config.wrapped(keras_config.LayerSpec("", class_name, cfg))
        return weight_order(inner.class_name, inner.config) if inner is not None else None
    names = known_weights(class_name, legacy=True)
    if names is None:
        return None
    dropped = _dropped(class_name, cfg)
    return [n for n in names if n.rsplit("/", 1)[-1] not in dropped]


def _by_index(prefix: str, items: list) -> list[tuple[str, Any]]:
    return [(f"{prefix}{key}", ds) for key, ds in items]


def _index_prefix(rel: str, names: tuple[str, ...] = ()) -> str:
    """``query/`` for the MultiHeadAttention query group, ``cell/`` for an unknown ``cell/vars``."""
    if names and "/" in names[0]:
        return names[0].rsplit("/", 1)[0] + "/"
    stem = rel[: -len("vars")].rstrip("/")
    return f"{stem}/" if stem else ""


def table_weights(found: Found, ctx: _Ctx) -> list[tuple[str, Any]]:
    """Weights of a class whose :func:`vars_layout` is known; by index where the count does
    not fit."""
    groups = vars_groups(found.group, ctx)
    out: list[tuple[str, Any]] = []
    for rel, names in expected_layout(found):
        items = groups.pop(rel, [])
        if len(items) == len(names):
            out += [(n, ds) for n, (_, ds) in zip(names, items)]
        else:
            out += _by_index(_index_prefix(rel, names), items)
    for rel in sorted(groups):
        out += _by_index(_index_prefix(rel), groups[rel])
    return out


def sub_layers(found: Found, ctx: _Ctx, depth: int) -> list[Found]:
    """Layers inside a layer group: a nested model's ``layers``, wrapped layers, list attributes."""
    subs: list[Found] = []
    for key in natural_sorted(found.group.keys()):
        node = h5s.child(found.group, key, ctx.path)
        if key == "vars" or not isinstance(node, h5py.Group):
            continue
        ctx.enter(node)
        if key == "layers":
            subs += container_layers(node, ctx, config_layers(found.config), "", depth + 1)
        elif _is_layer(node, key):
            subs.append(_found(node, key, "", None, ctx))
        else:
            subs += container_layers(node, ctx, None, f"{key}.", depth + 1)
    return subs


def generic_weights(found: Found, ctx: _Ctx, depth: int) -> list[tuple[str, Any]]:
    """Own ``vars`` by index, then each sub-layer's weights under ``<sub-layer name>/``."""
    out = _by_index("", own_vars(found.group, ctx))
    for sub in sub_layers(found, ctx, depth):
        out += [(f"{sub.name}/{w}", ds) for w, ds in layer_weights(sub, ctx, depth + 1)]
    return out


def layer_weights(found: Found, ctx: _Ctx, depth: int = 0) -> list[tuple[str, Any]]:
    """``[(short weight path, dataset)]`` of one layer, in Keras weight order."""
    if depth > h5s.MAX_DEPTH:
        raise FormatError(f"layers nested deeper than {h5s.MAX_DEPTH}", path=ctx.path)
    if vars_layout(found.class_name) is not None:
        return table_weights(found, ctx)
    return generic_weights(found, ctx, depth)


# -- the whole file ------------------------------------------------------------------------------

def flat_layers(found: Found, ctx: _Ctx, depth: int = 0) -> list[tuple[Found, tuple[str, ...]]]:
    """A nested model's layers one by one (nested models flattened), each with the names of
    the models enclosing it; any other layer is itself."""
    if found.class_name not in keras_config.MODEL_CLASSES:
        return [(found, ())]
    if depth > h5s.MAX_DEPTH:
        raise FormatError(f"models nested deeper than {h5s.MAX_DEPTH}", path=ctx.path)
    if own_vars(found.group, ctx):
        raise FormatError(f"model {found.name!r} holds variables of its own beside its layers "
                          f"({found.group.name}/vars)", path=ctx.path)
    out = []
    for sub in sub_layers(found, ctx, depth):
        out += [(leaf, (found.name, *models)) for leaf, models in flat_layers(sub, ctx, depth + 1)]
    return out


def _own_config(found: Found) -> dict | None:
    cfg = found.config.get("config") if found.config is not None else None
    return cfg if isinstance(cfg, dict) else None


def _named_weights(found: Found, ctx: _Ctx) -> list[tuple[str, Any]]:
    """The layer's weights; a class without a :func:`vars_layout` whose weight order is known
    (a TimeDistributed: its wrapped layer's) names them by that order when the count fits."""
    weights = layer_weights(found, ctx)
    order = weight_order(found.class_name, _own_config(found) or {})
    if vars_layout(found.class_name) is None and order and len(order) == len(weights):
        return [(n, ds) for n, (_, ds) in zip(order, weights)]
    return weights


class _Names:
    """Layer names in use: a nested model's layer keeps its name, prefixed by its models'
    (``inner.dense``) when that is taken."""

    def __init__(self, path: object, taken: set[str]) -> None:
        self.path, self.taken, self.given = path, taken, set()

    def give(self, name: str, models: tuple[str, ...]) -> str:
        if models and (name in self.taken or name in self.given):
            name = ".".join((*models, name))
        if name in self.given:
            raise FormatError(f"two layers are named {name!r}", path=self.path)
        self.given.add(name)
        return name


def read_tree(root: h5py.Group, path: object, file_size: int,
              config: Any = None) -> tuple[list[dict], dict[str, TensorRef]]:
    """``meta["keras_layers"]`` entries and the lazy tensors of a saving_lib weights file."""
    ctx = _Ctx(path, file_size)
    entries: list[dict] = []
    tensors: dict[str, TensorRef] = {}
    with h5s.h5_errors(path):
        tops = model_layers(root, ctx, config)
        names = _Names(path, {t.name for t in tops
                              if t.class_name not in keras_config.MODEL_CLASSES})
        for found, models in [pair for top in tops for pair in flat_layers(top, ctx)]:
            weights = _named_weights(found, ctx)
            if not weights:
                continue
            entry = _entry(found, names.give(found.name, models), weights)
            for short, ds in weights:
                name = f"{entry['name']}/{short}"
                if name in tensors:
                    raise FormatError("two weights have the same name", path=path, tensor=name)
                tensors[name] = h5s.tensor_ref(name, ctx.enter(ds), file_size, path)
            entries.append(entry)
    limits.check_file(sum(t.nbytes for t in tensors.values()), file_size, path=path)
    return entries, tensors


def _entry(found: Found, name: str, weights: list[tuple[str, Any]]) -> dict:
    entry = {"name": name, "class_name": found.class_name, "weights": [w for w, _ in weights],
             "h5_path": found.group.name}
    if _own_config(found) is not None:
        entry["config"] = _own_config(found)
    return entry
