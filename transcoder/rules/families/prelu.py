"""PReLU <-> PReLU: the slopes, one per channel (or one for all), renamed."""
from __future__ import annotations

from ..checkcase import BATCH, Built, LayerCase
from ..table import LayerRule, Param


def check_prelu(c: LayerCase) -> Built:
    (channels,) = c.shape("weight")
    if channels == 1:
        return Built(c.nn.PReLU(1), c.layers.PReLU(shared_axes=[1]), [c.normal((BATCH, 5))])
    return Built(c.nn.PReLU(channels), c.layers.PReLU(), [c.normal((BATCH, channels))])


def rebuild_prelu(b, m, x):
    """One slope per channel (PyTorch axis 1) or one for all; the rule table's (C,) alpha is
    given the layer's unit axes when loaded."""
    x = b.as_value(x)
    keep = {b.axis(x, 1)} if m.num_parameters > 1 else set()
    shared = [a for a in range(1, x.rank) if a not in keep]
    layer = b.new(b.layers.PReLU, shared_axes=shared or None)
    b.weights(layer)
    return b.elementwise(layer, x)


PRELU = LayerRule("PReLU", ("PReLU",), "PReLU", (Param("weight", "alpha"),),
                  note="alpha (C,); give keras_shape in --rules for a PReLU with shared_axes",
                  hints=("prelu", "act", "activation"), check=check_prelu,
                  rebuild=rebuild_prelu)
