"""Rebuild a PyTorch module as an equivalent Keras 3 functional model, weights from the rules.

``rebuild(module, example_inputs)`` traces ``module.forward`` with ``torch.fx`` (where fx
cannot, exports it with ``torch.export``) and turns every call into Keras layers through the
builder tables. The weights come from our rule table: the
module's state dict goes through ``make_plan(..., "keras").apply(...)``, and each Keras layer
is loaded from the converted checkpoint under its name (:func:`weights_from_checkpoint`), so a
forward check of the rebuilt model tests the rule table itself.

Where things are:
  - ``core.py``: :class:`~.core.Value` (a tensor and its layouts), :class:`~.core.Build` (what
    a builder gets: the call, its traced result, layer making, layouts, padding, errors) and
    the three tables ``MODULES`` (by ``nn`` class), ``FUNCTIONS``, ``METHODS`` (by
    ``Tensor`` method name), with their decorators ``@modules``, ``@functions``, ``@methods``.
  - ``trace.py``: the fx tracer, the dynamic-batch probe and the interpreter that calls the
    builders node by node.
  - ``builders/<family>.py``: the builders, one file per op family, the module and the
    functional form of an op side by side: ``activation`` (and dropout, softmax), ``arith``
    (operators, element-wise math, reductions, norms, casts, sizes), ``shape`` (view, permute,
    cat, indexing, split), ``padding``, ``pool``, ``resize`` (upsample, interpolate),
    ``transformer`` (encoder layers, built from their parts' builders).
  - The modules of a rule family (Linear, Embedding, Conv*, ConvTranspose*, the norms, PReLU,
    LSTM/GRU/RNN, MultiheadAttention) are built by the family itself, its ``rebuild`` in
    ``transcoder/rules/families/<family>.py``: the rule that maps the weights and the layer
    that loads them are in one file. ``builders/__init__.py`` registers it for every
    ``torch.nn`` class the family lists, except those in its ``cannot["rebuild:<kind>"]``.

To support a torch op, add a builder to ``builders/<family>.py`` (a new file for a new family,
imported in ``builders/__init__.py``), the module and the functional form together: decorate
it with ``@modules(nn.X)``, ``@functions(F.x, torch.x)`` and/or ``@methods("x")``. A builder
is ``builder(b, *args, **kwargs) -> Value`` (a module builder gets the module after ``b``),
called with the call's arguments, tensors as :class:`~.core.Value`; it makes its layers with
``b.new(keras_class, ...)``, loads weights with ``b.weights(layer)`` and refuses what it cannot
rebuild with ``raise b.unsupported("why")``. The element-wise activations are rows of the
``ACTIVATIONS`` table in ``builders/activation.py``. A module of a rule family gets its
builder in the family's file instead (``rebuild=`` of its ``LayerRule``). :func:`supported`
lists what the tables cover.

Conventions:
  - Keras layer names are module paths (``encoder.conv1d_U``; a stacked RNN ``M.l0``, ``M.l1``);
    helper layers are ``<path>.<what>`` (``conv.pad``, ``conv.channels_last``); function and
    method calls take the trace's unique names (``relu``, ``add_1``, ``view``).
  - Layouts: by default the model takes and returns tensors in the PyTorch layout (same shapes
    as the module). Inside, spatial layers run channels last and a layout change is a
    ``Permute`` layer only where an op needs it. ``channels_last=True`` takes and returns every
    input and output of rank >= 3 with axis 1 moved last (N, ..., C): the image / sequence
    convention of Keras deployments, with no transposes left at the borders of a conv stack.
  - Shapes: sizes read in ``forward`` (``b, t, c = x.shape``) are evaluated at the example
    shapes. The leading axis of every input is left dynamic (``None``) when the trace proves
    it safe: the module is run again with those axes doubled and every tensor must grow along
    at most one axis, with no size-derived number used except as a view/reshape target
    (whose growing axis is then written -1). Otherwise every shape is fixed to the example.
  - Unsupported calls raise :class:`UnsupportedError` naming the op and the module path.
  - A forward torch.fx cannot trace (data-dependent control flow, slice indices: every
    Hugging Face model) is exported with ``torch.export`` and rebuilt from its ATen graph
    (``exported.py``, ``builders/aten.py``): module calls are recognised by the module path
    each ATen call carries and built by the module's builder, as above; the batch is a
    ``torch.export.Dim`` and stays dynamic as above (a constant repeating one row along the
    batch is that row broadcast to it), else the model notes why it is fixed
    (``model.fixed_batch``). fx stays first where it traces: it traces in a fraction of
    export's time.
  - Inference only: the module runs in eval mode while traced (its modes are restored);
    Dropout is the identity, BatchNorm uses its running statistics. float32 models.
"""
from __future__ import annotations

import keras
import torch

from ...checkpoint import LAYOUT_KERAS, Checkpoint
from ...errors import UnsupportedError
from ...frameworks import torch_from_numpy
from ...options import InputOptions
from ...rules import make_plan
from ..inputs import InputSpec, embedding_ranges, make_inputs
from ..torch_side import checkpoint_of_module, forward
from . import builders  # noqa: F401  (fills the tables)
from .core import ATEN, FUNCTIONS, METHODS, MODULES, NeedStatic
from .exported import ExportRebuilder, checkpoint_weights, export_module
from .trace import (Rebuilder, eval_mode, function_label, growth, trace_module,
                    weights_from_checkpoint)

__all__ = ["rebuild", "rebuild_for_inputs", "keras_checkpoint", "weights_from_checkpoint",
           "supported"]


def rebuild(module: torch.nn.Module, example_inputs: tuple, *, channels_last: bool = False,
            keras_ckpt: Checkpoint | None = None) -> keras.Model:
    """A Keras functional model computing ``module``'s eval-mode forward on these inputs.

    ``keras_ckpt``: the weights in the Keras layout (default: :func:`keras_checkpoint` of the
    module, i.e. the rule table applied to its state dict).
    """
    example_inputs = tuple(example_inputs)
    with eval_mode(module), torch.no_grad():
        keras_ckpt = keras_checkpoint(module) if keras_ckpt is None else keras_ckpt
        try:
            gm = trace_module(module)
        except UnsupportedError as fx_error:   # what fx cannot trace: from torch.export
            return _rebuild_exported(module, example_inputs, channels_last, keras_ckpt,
                                     fx_error)
        grow = growth(gm, example_inputs)
        try:
            builder = Rebuilder(gm, module, keras_ckpt, grow or {}, channels_last)
            return builder.build(example_inputs)
        except NeedStatic:   # a builder needs a size the dynamic version leaves open
            return Rebuilder(gm, module, keras_ckpt, {}, channels_last).build(example_inputs)


def _rebuild_exported(module, example_inputs: tuple, channels_last: bool,
                      keras_ckpt: Checkpoint, fx_error: UnsupportedError) -> keras.Model:
    with checkpoint_weights(module, keras_ckpt):
        try:
            gm, fixed = export_module(module, example_inputs)
        except UnsupportedError as error:
            raise UnsupportedError(f"{fx_error.message}; {error.message}",
                                   hint=error.hint) from None
        broadcasts: set = set()
        grow = None if fixed else growth(gm, example_inputs, broadcasts)
        if grow:
            try:
                return ExportRebuilder(gm, module, keras_ckpt, channels_last, grow,
                                       broadcasts).build(example_inputs)
            except NeedStatic as need:
                fixed = f"{need} needs a fixed size"
        model = ExportRebuilder(gm, module, keras_ckpt, channels_last).build(example_inputs)
        model.fixed_batch = fixed or ("its graph does not only grow along the batch axis (a "
                                      "value computed from the batch size meets the inputs)")
        return model


def rebuild_for_inputs(module: torch.nn.Module, specs: list[InputSpec], inputs: InputOptions,
                       keras_ckpt: Checkpoint | None = None) -> keras.Model:
    """:func:`rebuild` traced on seeded example inputs of these specs, in ``inputs``' layout."""
    highs, _ = embedding_ranges(torch, module, specs)
    example = [torch_from_numpy(x) for x in make_inputs(specs, inputs.seed, highs)]
    with eval_mode(module):
        forward(module, example)   # a model that fails on these inputs: a usage error
    return rebuild(module, tuple(example), channels_last=inputs.channels_last,
                   keras_ckpt=keras_ckpt)


def keras_checkpoint(module: torch.nn.Module) -> Checkpoint:
    """The module's state dict converted by the rule table to the Keras layout."""
    ckpt = checkpoint_of_module(module)
    return make_plan(ckpt, LAYOUT_KERAS).apply(ckpt)


def supported() -> dict[str, list[str]]:
    """What the rebuild covers: module classes, functions, Tensor methods and the ATen ops
    of a ``torch.export`` graph."""
    return {"modules": sorted(c.__name__ for c in MODULES),
            "functions": sorted({function_label(f) for f in FUNCTIONS}),
            "methods": sorted(METHODS), "aten": sorted(str(op) for op in ATEN)}
