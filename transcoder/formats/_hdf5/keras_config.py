"""What a Keras model config says about its layers, read as plain JSON (never through Keras).

A legacy full-model ``.h5`` (root attribute ``model_config``) and a ``.keras`` archive
(``config.json``) state every layer's class and config. Their shapes, as Keras wrote them:

- Keras 2.0-2.1 Sequential: ``{"class_name": "Sequential", "config": [<layer>, ...]}``; later
  ones and every Functional model (``Model`` before tf.keras 2.4, then ``Functional``):
  ``{"class_name": ..., "config": {"name": ..., "layers": [<layer>, ...]}}``.
- A layer: ``{"class_name": "Dense", "config": {"name": "dense_1", ...}}``; Keras 3 adds
  ``module`` and ``registered_name``. A class from another package is named by the package
  that registered it: ``"my_pkg>Scaler"`` (tf.keras 2 puts that in ``class_name``, Keras 3 in
  ``registered_name``, with ``module`` null or the defining module).
- A nested model is a layer whose config lists layers of its own; a wrapper (``Bidirectional``,
  ``TimeDistributed``) holds the wrapped layer's entry under ``config.layer``.

:func:`layer_specs` turns that into :class:`LayerSpec` trees; :func:`feeders` says which layers
feed each (Keras 3's ``inbound_nodes`` name them in ``keras_history``, legacy ones as
``[name, node, tensor, kwargs]`` lists; a Sequential by order). Nothing here imports a class:
a foreign one keeps its registered name (which no rule knows, so planning asks the user).
Every value is type-checked: a config is untrusted input like any other part of a file.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterator

#: Classes whose config lists layers: their layers are read one by one.
MODEL_CLASSES = frozenset({"Sequential", "Functional", "Model"})
#: Wrappers whose one wrapped layer's entry is ``config[<key>]``.
WRAPPERS: dict[str, str] = {"Bidirectional": "layer", "TimeDistributed": "layer"}
#: Module prefixes of Keras' own classes (Keras 3 writes e.g. ``keras.layers``, ``keras.src.ops``).
KERAS_MODULES = ("keras", "tf_keras", "tensorflow")


@dataclass
class LayerSpec:
    """One layer of a model config: its name, class, own config and, for a nested model, its
    layers (``children``) in config order."""

    name: str
    class_name: str | None
    config: dict
    children: list["LayerSpec"] | None = field(default=None, repr=False)

    @property
    def is_model(self) -> bool:
        return self.children is not None


def config_name(entry: dict) -> str | None:
    """The layer name of a config entry (``config.name``, else the entry's ``name``)."""
    inner = entry.get("config")
    name = inner.get("name") if isinstance(inner, dict) else None
    name = name if isinstance(name, str) else entry.get("name")
    return name if isinstance(name, str) and name else None


def config_layers(config: Any) -> list[dict] | None:
    """The ``layers`` list of a Sequential/Functional config (Keras 2.0-2.1: a bare list)."""
    if not isinstance(config, dict):
        return None
    inner = config.get("config")
    layers = inner if isinstance(inner, list) else inner.get("layers") \
        if isinstance(inner, dict) else None
    return [e for e in layers if isinstance(e, dict)] if isinstance(layers, list) else None


def _keras_module(module: str) -> bool:
    return module.split(".", 1)[0] in KERAS_MODULES


def class_of(entry: dict) -> str | None:
    """The class a config entry names: a Keras class (``Dense``), or the registered name of a
    class from another package (``my_pkg>Scaler``, ``my_models.layers.Scaler``)."""
    cls = entry.get("class_name")
    if not isinstance(cls, str) or not cls:
        return None
    registered, module = entry.get("registered_name"), entry.get("module")
    if isinstance(registered, str) and registered and registered != cls:
        return registered
    if isinstance(module, str) and module and not _keras_module(module):
        return f"{module}.{cls}"
    return cls


def is_foreign(class_name: str | None) -> bool:
    """Whether a class (as :func:`class_of` names it) comes from a package other than Keras."""
    return bool(class_name) and not re.fullmatch(r"\w+", class_name)


def spec_of(entry: dict, depth: int = 0) -> LayerSpec | None:
    """The :class:`LayerSpec` of a config entry (None without a name); nested models keep
    their layers (nesting is bounded by the JSON depth limit of :mod:`.jsonsafe`)."""
    name = config_name(entry)
    if name is None:
        return None
    cfg = entry.get("config")
    cfg = cfg if isinstance(cfg, dict) else {}
    cls = class_of(entry)
    inner = config_layers(entry) if cls in MODEL_CLASSES else None
    children = None if inner is None else [s for s in (spec_of(e, depth + 1) for e in inner) if s]
    return LayerSpec(name, cls, cfg, children)


def layer_specs(model_config: Any) -> list[LayerSpec]:
    """The top-level layers of a model config, in config order ([] when it lists none)."""
    return [s for s in (spec_of(e) for e in config_layers(model_config) or []) if s]


def wrapped(spec: LayerSpec) -> LayerSpec | None:
    """The layer a wrapper (Bidirectional, TimeDistributed) wraps, if its config says it."""
    key = WRAPPERS.get(spec.class_name or "")
    entry = spec.config.get(key) if key else None
    return spec_of(entry) if isinstance(entry, dict) else None


def leaves(spec: LayerSpec) -> list[tuple[LayerSpec, tuple[str, ...]]]:
    """The layers of a nested model, nested models flattened: ``(layer, enclosing model
    names)`` in config order; a layer that is no model is its own leaf."""
    if not spec.is_model:
        return [(spec, ())]
    found = []
    for child in spec.children or []:
        found += [(leaf, (spec.name, *models)) for leaf, models in leaves(child)]
    return found


def layers_by_name(config: dict) -> dict[str, LayerSpec]:
    """Every leaf layer of a model config by name (nested models flattened)."""
    found = {}
    top = spec_of({"class_name": config.get("class_name"), "config": config.get("config"),
                   "name": "model"})
    for leaf, _ in leaves(top) if top is not None and top.is_model else []:
        found[leaf.name] = leaf
    return found


def feeders(config: dict) -> dict[str, list[str]]:
    """Layer name -> the layers feeding it, as the config's inbound nodes (or, in a
    Sequential, the order) say; nested models included."""
    found: dict[str, list[str]] = {}
    entries = config_layers(config) or []
    sequential = config.get("class_name") == "Sequential"
    previous = None
    for entry in entries:
        name = (entry.get("config") or {}).get("name") if isinstance(entry.get("config"), dict) \
            else entry.get("name")
        if not isinstance(name, str):
            continue
        if sequential:
            found[name] = [previous] if previous else []
        else:
            found[name] = list(dict.fromkeys(_history(entry.get("inbound_nodes"))))
        if entry.get("class_name") in MODEL_CLASSES:
            found.update(feeders(entry))
        if entry.get("class_name") != "InputLayer":
            previous = name
    return found


def _history(nodes: Any) -> Iterator[str]:
    """Layer names in inbound nodes: Keras 3's ``keras_history`` and legacy
    ``[name, node, tensor, kwargs]`` lists."""
    if isinstance(nodes, dict):
        history = nodes.get("keras_history")
        if isinstance(history, (list, tuple)) and history and isinstance(history[0], str):
            yield history[0]
            return
        for value in nodes.values():
            yield from _history(value)
    elif isinstance(nodes, (list, tuple)):   # a live model's config holds tuples
        if len(nodes) >= 3 and isinstance(nodes[0], str) and isinstance(nodes[1], int):
            yield nodes[0]
            return
        for value in nodes:
            yield from _history(value)
