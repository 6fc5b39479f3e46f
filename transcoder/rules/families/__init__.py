"""The rule families, one module per family of layers, and :data:`TABLE`, which lists them.

A family is a :class:`~transcoder.rules.table.LayerRule` (or a subclass): everything about one
kind of layer, in one place.

- ``params``: per PyTorch tensor, the Keras weight and the op between them (an op from
  ``rules/ops.py`` or one defined here with ``@register_op``). This is what runs, and what
  ``transcode rules`` prints.
- ``hints``: words of a module path that name the family (kind inference from names), and
  ``recognise`` / ``recognise_keras`` when the tensor names alone prove it.
- ``check``: the per-layer check builder, ``(LayerCase) -> Built`` (``rules/checkcase.py``):
  a PyTorch module and a Keras layer built from the weights' shapes with ``c.nn`` and
  ``c.layers``. No module-level torch or keras import: this package stays numpy-only.
- ``rebuild``: the builder the Keras rebuild of a traced PyTorch model calls for the family's
  modules, ``(b, module, *args, **kwargs) -> Value``. It gets everything through ``b`` (a
  ``Build``, ``transcoder/models/rebuild/core.py``): ``b.layers`` (``keras.layers``),
  ``b.new``, ``b.weights``, ``b.view``, layouts (``b.spatial``, ``b.channels_last``,
  ``b.sequence``, ``b.last_axes``), padding (``b.zero_pad``, ``b.pad_value``) and errors
  (``b.unsupported``). It is registered for every ``torch.nn`` class in ``torch_kinds``.
- ``cannot``: for a stage without a builder, the reason: ``{"check": "..."}``, or
  ``{"rebuild:<torch kind>": "..."}`` for one PyTorch class the rebuild does not cover.
- Flags for what some families take: ``parts`` (child modules joined into one Keras layer, a
  SeparableConv's ``depthwise`` and ``pointwise``), ``weight_norm`` (a weight-normed module's
  weight is folded, ``rules/weightnorm.py``).
- The Keras side: the Keras weight names are the ``params``' Keras names in order (a Keras 3
  file stores them unnamed, ``formats/_hdf5/keras_v3.py`` names them so); ``keras_options`` (config
  key -> hyper-parameter) and ``computable`` (config values PyTorch computes; others are
  refused), ``options_from_config`` to override; ``recognise_keras`` / ``guess_keras`` for a
  Keras layer known only by its weights; ``holds_ours`` / ``joins`` when a user's Keras layer
  holds our bytes in other shapes; ``trace_name`` / ``time_major`` / ``last_step`` for
  localising a divergence. A Keras class of our own (Keras has none for the family) goes in
  ``models/keras_layers.py``.

Keras layouts with no PyTorch module of their own (DepthwiseConv, SeparableConv, CuDNNLSTM)
are families too, named like PyTorch kinds (``DepthwiseConv2d``) for ``--rules``; their
``cannot["rebuild"]`` says which family rebuilds the modules they stand for.

To add a family: write ``families/<name>.py`` defining the LayerRule (and its ops and builders),
then add it to :data:`TABLE` below. ``tests/test_structure.py`` fails while a family lacks a
builder it does not declare it cannot have, or while a module outside this package names a
family or its Keras class as a string. ``families/layer_scale.py`` is a small complete example.
"""
from ..table import RuleTable
from . import attention, conv, cudnn, dense, layer_scale, norm, prelu, recurrent, separable

#: Every family, in the order ``transcode rules`` prints them (the first family listing a
#: PyTorch kind or a Keras class is the one found for it).
TABLE = RuleTable([dense.LINEAR, *conv.CONVOLUTIONS, *conv.TRANSPOSED, *separable.FAMILIES,
                   *norm.FAMILIES, dense.EMBEDDING, prelu.PRELU, *recurrent.FAMILIES,
                   *cudnn.FAMILIES, *attention.FAMILIES, layer_scale.LAYER_SCALE])
