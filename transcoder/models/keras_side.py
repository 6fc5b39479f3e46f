"""``--keras-model SPEC``: the user's Keras model, paired layer by layer with ours.

Pairing: by name first (our Keras layer names are PyTorch module paths), the rest by order;
every pair must agree in kind, weight count and shapes, or the error names both sides. A Keras
layer that holds the same bytes in other shapes (a PReLU with ``shared_axes``, a
``DepthwiseConv``), or one layer for two of ours (a ``SeparableConv``), pairs too, its weights
reshaped both ways (:mod:`.readings`). Writing goes through Keras' own savers so the file loads
the way users load it.
"""
from __future__ import annotations

import os
import tempfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoint import LAYOUT_KERAS, Checkpoint, TensorRef
from ..errors import MappingError, UnsupportedError, UsageError
from ..formats._io.reproducible import fixed_zip_times
from ..rules import plan_to_keras, registry
from . import readings
from .spec import build_from_spec
from .torch_side import checkpoint_of_module


def alike(one: str | None, other: str | None) -> bool:
    """Do two Keras classes map their weights alike (their families' params are equal: a
    Conv2D and a Conv2DTranspose, a LayerNormalization and a GroupNormalization)? A kind
    inferred from weights alone may name either; an unknown class is alike any."""
    if one is None or other is None or one == other:
        return True
    families = [registry.TABLE.for_keras_kind(c) for c in (one, other)]
    return None not in families and families[0].params == families[1].params


@dataclass
class LayerInfo:
    """One weight-bearing Keras layer: ours (from a plan or file) or theirs (a live model)."""

    name: str
    class_name: str | None
    weights: list[str]
    shapes: list[tuple[int, ...]]
    layer: Any = field(default=None, repr=False)  # the live Keras layer, for theirs
    #: our layers joined into this one (a SeparableConv of two of ours); else just itself
    parts: tuple["LayerInfo", ...] = field(default=(), repr=False)

    @property
    def tensors(self) -> list[str]:
        """The full tensor names of the weights, in Keras order."""
        if self.parts:
            return [t for part in self.parts for t in part.tensors]
        return [f"{self.name}/{w}" for w in self.weights]

    def compatible(self, other: "LayerInfo") -> bool:
        if alike(self.class_name, other.class_name) and self.shapes == other.shapes:
            return True
        return not self.parts and readings.same_bytes((self.class_name, self.shapes),
                                                      (other.class_name, other.shapes))

    def joined(self, second: "LayerInfo", theirs: "LayerInfo") -> "LayerInfo | None":
        """This layer and the next of ours as one, when ``theirs`` holds both (SeparableConv)."""
        if not readings.joins((self.class_name, self.shapes), (second.class_name, second.shapes),
                              (theirs.class_name, theirs.shapes)):
            return None
        return LayerInfo(f"{self.name} + {second.name}", f"{self.class_name} + {second.class_name}",
                         self.weights + second.weights, self.shapes + second.shapes,
                         parts=(self, second))


@dataclass
class Pair:
    ours: LayerInfo
    theirs: LayerInfo
    how: str  # "name" or "order"

    def links(self) -> list[tuple[str, tuple, str, tuple]]:
        """Per weight in Keras order: (our tensor, its shape, their weight, its shape)."""
        return list(zip(self.ours.tensors, self.ours.shapes, self.theirs.weights,
                        self.theirs.shapes))

    @property
    def our_layers(self) -> tuple[LayerInfo, ...]:
        return self.ours.parts or (self.ours,)


#: --keras-model specs built in this process. Keras names unnamed layers by a process-wide
#: counter (conv1d, then conv1d_1 ...), so building a spec twice would name its layers
#: differently for the conversion and for its check: it is built once.
_BUILT: dict[str, object] = {}


def load_spec(spec: str):
    """The Keras model ``spec`` names, built once per process (see ``_BUILT``) while its file
    is unchanged."""
    where = Path(spec.rpartition(":")[0])
    key = f"{spec}@{where.stat().st_mtime_ns}" if where.suffix == ".py" and where.is_file() else spec
    if key not in _BUILT:
        _BUILT[key] = _build(spec)
    return _BUILT[key]


def _build(spec: str):
    import keras

    model = build_from_spec(spec, "--keras-model")
    if not isinstance(model, keras.Model):
        raise UsageError(f"--keras-model {spec}: returned {type(model).__name__}, not a keras.Model")
    if not model.built:
        raise UsageError(f"--keras-model {spec}: the model is not built",
                         hint="give it a keras.Input or call it once before returning it")
    return model


def layers_of_checkpoint(ckpt: Checkpoint) -> list[LayerInfo]:
    """Our layers, from a keras-layout checkpoint's ``meta["keras_layers"]``."""
    return [LayerInfo(e["name"], e.get("class_name"), list(e["weights"]),
                      [tuple(ckpt[f"{e['name']}/{w}"].shape) for w in e["weights"]])
            for e in ckpt.meta.get("keras_layers", [])]


def layers_of_model(model) -> list[LayerInfo]:
    """Their weight-bearing layers in model order (nested models flattened)."""
    from ..formats.keras_h5 import short_weight_path

    found = []
    for layer in leaf_layers(model):
        if layer.weights:
            bidi = type(layer).__name__ == "Bidirectional"
            found.append(LayerInfo(layer.name, _class_of(layer),
                                   [short_weight_path(w.path, layer.name, bidi) for w in layer.weights],
                                   [tuple(w.shape) for w in layer.weights], layer))
    return found


def _class_of(layer) -> str:
    """A layer's class; a wrapper holding exactly its wrapped layer's weights (a
    TimeDistributed) the class it wraps: it pairs as that layer."""
    inner = getattr(layer, "layer", None)
    if inner is not None and not hasattr(layer, "forward_layer") and \
            len(getattr(inner, "weights", ())) == len(layer.weights):
        return type(inner).__name__
    return type(layer).__name__


def leaf_layers(model):
    """The model's layers, nested models flattened."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from leaf_layers(layer)
        else:
            yield layer


def pair(ours: list[LayerInfo], theirs: list[LayerInfo]) -> list[Pair]:
    """By name first; the rest in order, each with the next Keras layer of matching kind and
    shapes. MappingError naming both sides on any mismatch; nothing is left unpaired."""
    for t in theirs:
        refusal = _refusal(t.layer)
        if refusal:
            raise UnsupportedError(f"Keras layer {t.name!r}: {refusal}")
    by_name = {t.name: t for t in theirs}
    pairs = {o.name: Pair(o, by_name[o.name], "name") for o in ours if o.name in by_name}
    for p in pairs.values():
        if not p.ours.compatible(p.theirs):
            raise MappingError(f"{_describe(p.ours, 'PyTorch module')} does not fit "
                               f"{_describe(p.theirs, 'Keras layer')} (same name)")
    pairs.update(_joined_by_name(ours, theirs, pairs))
    rest = [t for t in theirs if t.name not in {p.theirs.name for p in pairs.values()}]
    for i, o in enumerate(ours):
        if o.name in pairs:
            continue
        pair_ = _next_fit(o, ours[i + 1] if i + 1 < len(ours) else None, rest, pairs)
        if pair_ is None:
            raise MappingError(f"no Keras layer left fits {_describe(o, 'PyTorch module')}; "
                               f"unpaired Keras layers: {', '.join(_describe(t) for t in rest[:4])}")
        rest.remove(pair_.theirs)
        pairs.update((part.name, pair_) for part in pair_.our_layers)
    if rest:
        raise MappingError(f"Keras layers with no PyTorch counterpart: "
                           f"{', '.join(_describe(t) for t in rest[:4])}")
    return list({id(pairs[o.name]): pairs[o.name] for o in ours}.values())


def _next_fit(o: LayerInfo, following: LayerInfo | None, rest: list[LayerInfo],
              pairs: dict) -> Pair | None:
    """The first of their layers left that fits ``o``, or ``o`` and the layer after it."""
    for t in rest:
        if o.compatible(t):
            return Pair(o, t, "order")
        both = o.joined(following, t) if following and following.name not in pairs else None
        if both is not None:
            return Pair(both, t, "order")
    return None


def _joined_by_name(ours: list[LayerInfo], theirs: list[LayerInfo], pairs: dict) -> dict:
    """Their layer ``M`` and our consecutive ``M.<a>``, ``M.<b>`` that it holds both of."""
    found = {}
    for first, second in zip(ours, ours[1:]):
        parent = first.name.rpartition(".")[0]
        if not parent or second.name.rpartition(".")[0] != parent or {first.name, second.name} & (
                set(pairs) | set(found)):
            continue
        t = next((t for t in theirs if t.name == parent), None)
        both = first.joined(second, t) if t is not None else None
        if both is not None:
            joined = Pair(both, t, "name")
            found.update({first.name: joined, second.name: joined})
    return found


def layers_of_module(module) -> list[LayerInfo]:
    """Our Keras layers for a PyTorch module: its state dict through the rule table."""
    reference = checkpoint_of_module(module)
    return layers_of_checkpoint(plan_to_keras(reference).apply(reference))


def pairs_by_path(module, keras_model) -> list[tuple[str, str]]:
    """(module path, Keras layer) for localising a divergence in a twin named its own way:
    the same pairing as the conversion (by name, then by order with kinds and shapes)."""
    modules = dict(module.named_modules())
    pairs = []
    for p in pair(layers_of_module(module), layers_of_model(keras_model)):
        last = p.our_layers[-1].name   # a SeparableConv's output is its pointwise part's
        path = last if last in modules else last.rsplit(".l", 1)[0]
        pairs.append((path, p.theirs.name))
    return pairs


#: The class of our Constant layer (models/keras_layers.py) as Keras files name it.
CONSTANT_CLASSES = ("transcoder>Constant", "Constant")


def is_constant(info: LayerInfo) -> bool:
    """One of our Constant layers: a tensor the rebuilt forward uses directly, by its path."""
    return info.class_name in CONSTANT_CLASSES and len(info.weights) == 1


def constant_value(info: LayerInfo, ckpt: Checkpoint, expected: TensorRef) -> TensorRef:
    """The value a Constant layer holds, as the module's tensor of its name."""
    ref = ckpt[f"{info.name}/{info.weights[0]}"]
    if (tuple(ref.shape), ref.dtype) != (tuple(expected.shape), expected.dtype):
        raise MappingError(f"Keras layer {info.name!r} holds {ref.dtype}{list(ref.shape)}, the "
                           f"module's {expected.name} is {expected.dtype}{list(expected.shape)}")
    return TensorRef(expected.name, ref.shape, ref.dtype, ref.loader)


def _describe(info: LayerInfo, side: str = "") -> str:
    shapes = ", ".join(str(list(s)) for s in info.shapes)
    return f"{side} {info.name!r} ({info.class_name or 'unknown class'}, weights [{shapes}])".strip()


def _refusal(layer) -> str | None:
    """What in a live layer's config (a Bidirectional's: its wrapped layer's) PyTorch's layer
    of the family cannot compute (the family's ``computable``, as for a file's config)."""
    inner = getattr(layer, "forward_layer", layer)
    family = registry.TABLE.for_keras_kind(type(inner).__name__)
    why = family.uncomputable(inner.get_config()) if family is not None else None
    if why is None:
        return None
    return f"a {type(inner).__name__} with {why}: its weights would compute something else"


def fill(pairs: list[Pair], target: Checkpoint) -> None:
    """Set each of their layers' weights from our target checkpoint (in Keras weight order)."""
    for p in pairs:
        p.theirs.layer.set_weights([target[ours].load().reshape(shape)
                                    for ours, _, _, shape in p.links()])


def _reshaped(ref: TensorRef, name: str, shape: tuple) -> TensorRef:
    """``ref`` under another name and shape: the same bytes (a reading of :mod:`.readings`)."""
    if tuple(shape) == tuple(ref.shape):
        return TensorRef(name, ref.shape, ref.dtype, ref.loader, ref.blocker)
    return TensorRef(name, tuple(shape), ref.dtype, lambda: ref.load().reshape(shape),
                     ref.blocker)


def renamed_to_theirs(pairs: list[Pair], target: Checkpoint, order: list[str]) -> Checkpoint:
    """Our target checkpoint under their layer names, in their model's layer ``order`` (a
    legacy .h5 also loads topologically, by position)."""
    out = Checkpoint(OrderedDict(), LAYOUT_KERAS, target.source, target.format, dict(target.meta))
    layers = []
    for p in sorted(pairs, key=lambda p: order.index(p.theirs.name)):
        for ours, _, theirs, shape in p.links():
            name = f"{p.theirs.name}/{theirs}"
            out.tensors[name] = _reshaped(target[ours], name, shape)
        layers.append({"name": p.theirs.name, "class_name": p.theirs.class_name,
                       "weights": list(p.theirs.weights)})
    for name in target.meta.get("carried", []):
        out.tensors[name] = target[name]
    out.meta["keras_layers"] = layers
    out.meta.pop("transcoder", None)  # the stored plan names our layers, not theirs
    return out


def renamed_to_ours(pairs: list[Pair], source: Checkpoint) -> Checkpoint:
    """A Keras checkpoint's tensors under our layer names (the reverse of the above)."""
    out = Checkpoint(OrderedDict(), LAYOUT_KERAS, source.source, source.format, {})
    for p in pairs:
        for ours, shape, theirs, _ in p.links():
            out.tensors[ours] = _reshaped(source[f"{p.theirs.name}/{theirs}"], ours, shape)
    out.meta["keras_layers"] = [{"name": o.name, "class_name": o.class_name,
                                 "weights": list(o.weights)} for p in pairs for o in p.our_layers]
    return out


def checkpoint_of_model(model, source: str | None = None) -> Checkpoint:
    """The model's current weights as a keras-layout checkpoint named by its layers."""
    import numpy as np

    from ..checkpoint import dtype_name

    ckpt = Checkpoint(OrderedDict(), LAYOUT_KERAS, source=source, format="keras-model")
    layers = layers_of_model(model)
    for info in layers:
        for weight, variable in zip(info.weights, info.layer.weights):
            name = f"{info.name}/{weight}"
            array = np.asarray(variable.numpy())
            ckpt.tensors[name] = TensorRef(name, tuple(array.shape), dtype_name(array.dtype),
                                           lambda a=array: a)
    ckpt.meta["keras_layers"] = [{"name": i.name, "class_name": i.class_name,
                                  "weights": list(i.weights)} for i in layers]
    return ckpt


def load_into(model, path: Path) -> None:
    """``model.load_weights(path)`` with Keras' own loader; one-line errors."""
    try:
        model.load_weights(str(path))
    except (ValueError, OSError, KeyError) as exc:
        raise MappingError(f"Keras could not load these weights into --keras-model "
                           f"({' '.join(str(exc).split())[:300]})", path=path) from None


def save(model, path: Path, real_name: str) -> None:
    """Write through Keras' savers, which insist on the file suffix: save under the real name in
    a temporary folder beside ``path``, then move it to ``path``."""
    with tempfile.TemporaryDirectory(prefix=".transcode-", dir=Path(path).parent) as folder:
        inner = Path(folder) / real_name
        if real_name.endswith(".weights.h5"):
            model.save_weights(str(inner))
        else:
            model.save(str(inner))
            fixed_zip_times(inner)   # same input, same bytes (formats/_io/reproducible.py)
        os.replace(inner, path)
