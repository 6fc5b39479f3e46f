"""PReLU <-> PReLU: the slopes, one per channel (or one for all), renamed.

PyTorch holds ``weight (C,)`` (or ``(1,)``) and applies it along axis 1. A Keras PReLU's alpha
has the broadcast shape of its input without the batch axis, with a 1 on every axis in
``shared_axes``: ``(C,)`` after a Dense, ``(1, 1, C)`` for a channels-last 2-d input with
``shared_axes=[1, 2]`` (how Keras image models are written). The bytes are the same; only the
shape differs. So:

- PyTorch -> Keras writes ``(C,)``, or the ``keras_shape`` a ``--rules`` entry gives; a
  ``--keras-model`` twin's alpha shape is taken when pairing (``models/readings.py``), and the
  rebuild's own PReLU takes the ``(C,)`` into its shape.
- Keras -> PyTorch reshapes any alpha with at most one axis above 1 to ``(C,)`` (the way back
  then loads with ``load_state_dict``). An alpha that varies along two axes or more (a PReLU
  without ``shared_axes`` on an image) has no PyTorch counterpart: refused.
- The per-layer check builds the Keras PReLU the Keras side's alpha describes (its rank and its
  shared axes), and the PyTorch PReLU on the matching channels-first input.
"""
from __future__ import annotations

import math

from ...errors import UnsupportedError
from ..checkcase import BATCH, Built, LayerCase, Skip
from ..ops import Identity, Reshape
from ..steps import Step
from ..table import VECTOR, Inference, LayerRule, Option, Param, Shapes


def check_prelu(c: LayerCase) -> Built:
    """The Keras alpha's shape gives the layer: its rank is the input's (without batch), its
    unit axes are shared, its one other axis holds the channels (last: channels last; first:
    a channels-first Keras model)."""
    (channels,) = c.shape("weight")
    alpha = tuple(c.keras[0].shape) if c.keras else (channels,)
    if len(alpha) <= 1:
        shared = [1] if channels == 1 else None
        return Built(c.nn.PReLU(channels), c.layers.PReLU(shared_axes=shared),
                     [c.normal((BATCH, 5 if channels == 1 else channels))])
    axis = next((i for i, d in enumerate(alpha) if d > 1), len(alpha) - 1)
    if axis not in (0, len(alpha) - 1):
        raise Skip(f"a Keras alpha {list(alpha)} whose channels are neither first nor last")
    spatial = [3 + i for i in range(len(alpha) - 1)]
    shared = [i + 1 for i, d in enumerate(alpha) if d == 1]
    inputs = [c.normal((BATCH, max(alpha[axis], 2), *spatial))]
    return Built(c.nn.PReLU(channels), c.layers.PReLU(shared_axes=shared), inputs,
                 channels_last=axis > 0)


def rebuild_prelu(b, m, x):
    """One slope per channel (PyTorch axis 1) or one for all; the rule table's (C,) alpha is
    given the layer's unit axes when loaded."""
    x = b.as_value(x)
    keep = {b.axis(x, 1)} if m.num_parameters > 1 else set()
    shared = [a for a in range(1, x.rank) if a not in keep]
    layer = b.new(b.layers.PReLU, shared_axes=shared or None)
    b.weights(layer)
    return b.elementwise(layer, x)


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


def _alpha(rule: LayerRule, weights: dict) -> Inference | None:
    return Inference(rule.keras_kind, "alpha") if set(weights) == {"alpha"} else None


class PReLURule(LayerRule):
    """Its way back reshapes a Keras alpha of shared axes to PyTorch's ``(C,)``; a user's
    Keras PReLU with ``shared_axes`` holds our ``(C,)`` as ``(1, .., 1, C)``."""

    def holds_ours(self, ours: Shapes, theirs: Shapes) -> bool:
        (our_class, our_shapes), (_, their_shapes) = ours, theirs
        return our_class == self.keras_kind and len(our_shapes) == len(their_shapes) \
            and _squeezed(our_shapes[0]) == _squeezed(their_shapes[0])

    def plan_from_keras(self, plan, layer: dict, weights: dict, reason: str) -> None:
        name = layer["name"]
        alpha = weights.get("alpha")
        if alpha is None or len(alpha.shape) <= 1:
            super().plan_from_keras(plan, layer, weights, reason)
            return
        if sum(d > 1 for d in alpha.shape) > 1:
            raise UnsupportedError(
                f"Keras layer {name!r}: a PReLU alpha of shape {list(alpha.shape)} varies along "
                f"more than one axis; PyTorch's PReLU has one slope per channel (or one)",
                tensor=alpha.name, hint="give the Keras PReLU shared_axes for every axis but "
                                        "the channels")
        op = Reshape(tuple(alpha.shape), (math.prod(alpha.shape),))
        plan.add(Step((f"{name}.weight",), (f"{name}/alpha",), op, self.name, name),
                 self.keras_kind, reason)


PRELU = PReLURule(
    "PReLU", ("PReLU",), "PReLU", (Param("weight", "alpha", Identity()),),
    note="alpha (C,); a Keras PReLU with shared_axes holds (1, .., 1, C): reshaped both ways "
         "(from a Keras file, a --keras-model twin, or keras_shape in --rules)",
    hints=("prelu", "act", "activation"), check=check_prelu, rebuild=rebuild_prelu,
    keras_options={"shared_axes": Option("shared_axes")}, guess_keras=_alpha,
    inferred_from=(VECTOR,))
