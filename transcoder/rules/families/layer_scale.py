"""LayerScale <-> our Keras ``LayerScale``: a learnt scale per channel, ``y = x * gamma``.

timm's ViT, DeiT-III, EVA and ConvNeXt-style blocks hold one ``gamma (C,)`` in a module of
class ``LayerScale`` (``blocks.0.ls1``), applied on the last axis. Keras has no such layer, so
the Keras side is ours, ``transcoder>LayerScale`` (``models/keras_layers.py``), with the weight
``gamma (C,)`` on the last axis: the bytes are copied. A module is read as one by its class
(``--model``), or by its tensor and name: a lone 1-d ``gamma`` in a module named like a layer
scale (``ls1``, ``layer_scale``); a lone ``gamma`` elsewhere is left as it was (carried, or a
bias-free LayerNormalization on the Keras side).
"""
from __future__ import annotations

import re

from ...checkpoint import TensorRef
from ..checkcase import BATCH, Built, LayerCase
from ..table import Inference, LayerRule, Param

#: the package that registers our Keras layer (``models/keras_layers.py``)
PACKAGE = "transcoder"
HINTS = ("ls", "layer_scale", "layerscale")


def _named(path: str) -> bool:
    words = {w.rstrip("0123456789") for w in re.split(r"[./\-]", path.lower())}
    return bool(words & set(HINTS))


def _lone_gamma(weights: dict[str, TensorRef]) -> bool:
    return set(weights) == {"gamma"} and len(weights["gamma"].shape) == 1


class LayerScaleRule(LayerRule):
    """Recognised from a lone 1-d ``gamma`` only where the name says a layer scale."""

    def recognise(self, path: str, params: dict[str, TensorRef]) -> Inference | None:
        if _lone_gamma(params) and _named(path):
            return Inference(self.name, "a lone 1-d gamma, named like a layer scale")
        return None

    def recognise_keras(self, layer: str, weights: dict[str, TensorRef]) -> Inference | None:
        if _lone_gamma(weights) and _named(layer):
            return Inference(self.keras_kind, "a lone 1-d gamma, named like a layer scale")
        return None


def check_layer_scale(c: LayerCase) -> Built:
    """timm's forward, ``x * gamma`` on tokens ``(batch, n, C)``, against our Keras layer."""
    (channels,) = c.shape("gamma")
    module = c.nn.Module()
    # a (C,) parameter to load gamma into (torch itself is not imported here)
    module.gamma = c.nn.Parameter(c.nn.Linear(1, channels).bias.detach().clone())
    layer = c.layers.deserialize({"class_name": LAYER_SCALE.keras_kind, "config": {},
                                  "registered_name": f"{PACKAGE}>{LAYER_SCALE.keras_kind}"})
    return Built(module, layer, [c.normal((BATCH, 5, channels))],
                 torch_call=lambda m, xs: xs[0] * m.gamma)


NO_REBUILD = ("LayerScale is timm's module, not a torch.nn class, and the rebuild finds a "
              "family's builder by torch.nn class: it traces into the module and refuses its "
              "gamma, a parameter the rule table maps, used directly; write the weights with "
              "--keras-model (a Keras model with our LayerScale layer) or to a legacy .h5")

LAYER_SCALE = LayerScaleRule(
    "LayerScale", ("LayerScale",), "LayerScale", (Param("gamma", "gamma"),),
    note="gamma (C,) unchanged; Keras: our transcoder>LayerScale (x * gamma, last axis)",
    hints=HINTS, check=check_layer_scale, cannot={"rebuild": NO_REBUILD},
    keras_package=PACKAGE)
