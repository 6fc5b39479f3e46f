"""PReLU <-> PReLU: the slopes, one per channel (or one for all), renamed."""
from __future__ import annotations

from ..checkcase import BATCH, Built, LayerCase
from ..table import LayerRule, Param


def check_prelu(c: LayerCase) -> Built:
    (channels,) = c.shape("weight")
    if channels == 1:
        return Built(c.nn.PReLU(1), c.layers.PReLU(shared_axes=[1]), [c.normal((BATCH, 5))])
    return Built(c.nn.PReLU(channels), c.layers.PReLU(), [c.normal((BATCH, channels))])


PRELU = LayerRule("PReLU", ("PReLU",), "PReLU", (Param("weight", "alpha"),),
                  note="alpha (C,); give keras_shape in --rules for a PReLU with shared_axes",
                  hints=("prelu", "act", "activation"), check=check_prelu)
