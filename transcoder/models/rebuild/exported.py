"""The rebuild of a model torch.fx cannot trace: from its ``torch.export`` graph.

Every Hugging Face model (BERT, GPT-2, Llama, Whisper, wav2vec2, ViT, ResNet...) stops
``torch.fx`` (data-dependent control flow, slice indices); ``torch.export.export`` exports
them, and ``run_decompositions({})`` makes the graph functional while keeping the ATen ops
at the level of ``torch.nn.functional`` (``linear``, ``conv2d``, ``layer_norm``,
``scaled_dot_product_attention``...). :class:`ExportRebuilder` runs that graph the way
``trace.Rebuilder`` runs an fx graph, with three differences:

  - Module calls: each ATen call carries the module path it came from
    (``meta["nn_module_stack"]``). Where that module has a builder (a rule family's: Linear,
    Conv*, the norms, Embedding; an activation, pooling, Dropout) and the call takes one
    tensor of the inputs, the module is run on that tensor; if it gives exactly the call's
    result, the call *is* the module, and its builder makes the layer: a Keras built-in
    named by the module path, weights from the rule table. Otherwise the ATen op is built on
    its own (``builders/aten.py``).
  - Parameters are tensors, not layers, until an op of the inputs uses them: whatever depends
    only on weights and sizes (weight norm, rotary tables, default attention masks) is
    computed in PyTorch and enters the Keras graph as a constant; a parameter used directly
    is a ``Constant`` layer named by its path (``embeddings.cls_token``), an op that needs a
    weight as numbers (``layer_norm``, ``conv2d`` on a bare weight) gets the tensor.
  - Shapes: the batch axis is exported as a ``torch.export.Dim`` and left dynamic (``None``)
    where :func:`~.trace.growth` proves it safe, as for fx; a tensor computed from sizes
    alone that repeats one row along the batch (a cls token, a default mask expanded to it)
    is that row broadcast to the batch in Keras. Otherwise the example's shapes.

Outputs are the model's output flattened (a ``ModelOutput``/dict/tuple: its tensors in order,
the last hidden state first), as :func:`..torch_side.forward` gives them.
"""
from __future__ import annotations

import contextlib
import operator
import warnings
from typing import Any

import torch
import torch.fx

from ...checkpoint import LAYOUT_KERAS, LAYOUT_TORCH, Checkpoint, TensorRef, dtype_name
from ...errors import TranscoderError, UnsupportedError, one_line
from ...frameworks import numpy_from_torch, torch_from_numpy
from ..keras_layers import Slice
from ...rules import make_plan
from ..torch_side import kind_of
from .core import ATEN, FUNCTIONS, MODULES, Build, Refused, Value, identity, module_builder
from .trace import Rebuilder, _keras_errors, _leaves, weights_from_checkpoint

HINT = "see docs/check.md#what-the-rebuild-covers"


def export_module(module: torch.nn.Module, example_inputs: tuple
                  ) -> tuple[torch.fx.GraphModule, str | None]:
    """``module`` exported on these inputs, functional, ATen at ``F.*`` level, and why its
    batch is fixed (None: it is not). The batch axis is a ``torch.export.Dim`` (exported on
    the example with its batch doubled where it is 1: export specialises a size of 1); a
    model whose export refuses it (it specialises the batch) is exported at the example's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        why = "an input without a batch axis"
        if all(isinstance(x, torch.Tensor) and x.dim() > 0 for x in example_inputs):
            wider = tuple(torch.cat([x, x]) if x.shape[0] == 1 else x for x in example_inputs)
            batch = torch.export.Dim("batch")
            try:
                program = torch.export.export(module, wider, strict=False,
                                              dynamic_shapes=[{0: batch}] * len(wider))
                return program.run_decompositions({}).module(), None
            except Exception as exc:  # noqa: BLE001 - export's errors are of many types
                why = f"torch.export specialises it ({one_line(exc).split('! ')[0][:120]})"
        try:
            program = torch.export.export(module, tuple(example_inputs), strict=False)
            return program.run_decompositions({}).module(), why
        except Exception as exc:  # noqa: BLE001 - export's errors are of many types
            raise UnsupportedError(f"torch.export cannot export {type(module).__name__}: "
                                   f"{one_line(exc)[:300]}", hint=HINT) from None


@contextlib.contextmanager
def checkpoint_weights(module: torch.nn.Module, keras_ckpt: Checkpoint):
    """The module computes with the checkpoint's weights while rebuilt (restored after):
    whatever the export folds into constants (a cls token expanded to the batch, a weight
    norm, rotary tables) must hold the checkpoint's values, not those the module was built
    with. The rule table takes the Keras checkpoint back to PyTorch's names and layout."""
    try:
        torch_ckpt = make_plan(keras_ckpt, LAYOUT_TORCH).apply(keras_ckpt)
    except TranscoderError:   # no way back to PyTorch's names: the module's own weights
        yield                 # (the forward check compares the two models anyway)
        return
    saved = {k: v.clone() for k, v in module.state_dict().items()}
    state = {k: torch_from_numpy(torch_ckpt[k].load()) for k in saved
             if k in torch_ckpt.tensors}
    module.load_state_dict(state, strict=False)
    try:
        yield
    finally:
        module.load_state_dict(saved)


def module_path(n: torch.fx.Node) -> str:
    """The path of the innermost module a node was called in ('' at the top)."""
    stack = n.meta.get("nn_module_stack") or {}
    return next(reversed(stack.values()))[0] if stack else ""


class ExportRebuilder(Rebuilder):
    """Builds the Keras graph of an exported graph (see the module docstring)."""

    def __init__(self, gm, module, keras_ckpt, channels_last: bool, grow: dict | None = None,
                 broadcasts: set | None = None) -> None:
        super().__init__(gm, module, keras_ckpt, grow or {}, channels_last)
        self.broadcasts = broadcasts or set()
        self.broadcast_values: dict[torch.fx.Node, Value] = {}
        self.live_nodes: set[torch.fx.Node] = set()
        self.root = module
        self.env_keep: dict[torch.fx.Node, Any] = {}
        self.live: dict[str, list] = {}

    def run_node(self, n):
        live = n.op == "placeholder" or any(a in self.live_nodes for a in n.all_input_nodes)
        result = super().run_node(n)
        self.env_keep[n] = result
        if live and any(isinstance(x, torch.Tensor) for x in _leaves(result)):
            self.live_nodes.add(n)
        return result

    def _args(self, n):
        """The call's arguments; for a call on the inputs, a broadcast constant (see
        :func:`~.trace.growth`) is its first row repeated to the inputs' batch."""
        inputs = n.all_input_nodes
        if not (any(a in self.live_nodes for a in inputs) and any(a in self.broadcasts
                                                                  for a in inputs)):
            return super()._args(n)
        args, kwargs = torch.fx.node.map_arg(
            (n.args, n.kwargs), lambda a: self._broadcast(a) if a in self.broadcasts
            else self.kenv[a])
        for x in _leaves([args, list(kwargs.values())]):
            if isinstance(x, Refused):
                raise x.error
        return args, kwargs

    def _broadcast(self, n) -> Value:
        if n not in self.broadcast_values:
            b = Build(self.g, self.g.unique(n.name), label=str(n.target),
                      where=module_path(n) or "the top-level forward", grow=0)
            built = self.kenv[n]
            if isinstance(built, Value):   # a layer on a constant (an Embedding): its row
                row = b.value(b.new(Slice, [[0, 1, 1]], suffix="row")(
                    b.view(built, identity(built.rank))))
            else:
                row = b.constant(self.env_keep[n][:1])
            self.broadcast_values[n] = b.value(b.op(
                "batch_like", [b.view(row, identity(row.rank)), self.inputs[0]]))
        return self.broadcast_values[n]

    def _arrays(self, source: str) -> list:
        return weights_from_checkpoint(self.g.ckpt, source) or self.live.get(source, [])

    # ------------------------------------------------------------ per node kind

    def _keras_get_attr(self, n, result):
        if isinstance(result, torch.Tensor):   # a tensor until an op of the inputs uses it
            self.g.params[id(result)] = n.target
        return result

    def _keras_call_module(self, n, result):
        return None     # export's guard function (input shapes): nothing in Keras

    def _keras_call_function(self, n, result):
        if n.target is operator.getitem and isinstance(self.kenv[n.args[0]], (tuple, list)):
            return self.kenv[n.args[0]][n.args[1]]   # one result of several (maybe refused)
        args, kwargs = self._args(n)
        if not any(isinstance(x, Value) for x in _leaves([args, list(kwargs.values())])):
            built = self._module_call(n, result, constant=True)
            # weights, sizes, masks of the shapes: computed in PyTorch; but a layer of the
            # rule table on a constant (position ids) stays a layer, so the twin has it
            return result if built is None else built
        built = self._module_call(n, result)
        if built is not None:
            return built
        builder = ATEN.get(n.target) or FUNCTIONS.get(n.target)
        label, where = str(n.target), module_path(n) or "the top-level forward"
        if builder is None:
            raise UnsupportedError(f"no Keras rebuild for {label} (in {where}"
                                   f"{self._module_class(where)})", hint=HINT)
        b = Build(self.g, self.g.unique(n.name), label=label, where=where, result=result,
                  grow=self.grow.get(n))
        with _keras_errors(b):
            return builder(b, *args, **kwargs)

    def _module_class(self, path: str) -> str:
        try:
            return f", a {type(self.root.get_submodule(path)).__name__}" if path else ""
        except AttributeError:
            return ""

    # ------------------------------------------------------------ module calls

    def _module_call(self, n, result, constant: bool = False):
        """The module builder's value if this call is exactly its module's forward, else None.
        ``constant``: the call's input is a tensor independent of the model's inputs (then
        only a module the rule table gives weights is built: the rest is computed here)."""
        path = module_path(n)
        if not path:
            return None
        try:
            module = self.root.get_submodule(path)
        except AttributeError:   # export's own marks (a size read for a dynamic batch)
            return None
        builder, run = builder_of(module)
        if constant:
            own = f"{path}."
            inputs = [a for a in n.all_input_nodes if isinstance(self.kenv[a], torch.Tensor)
                      and not (a.op == "get_attr" and str(a.target).startswith(own))]
            if not weights_from_checkpoint(self.g.ckpt, path):
                return None
        else:
            inputs = [a for a in n.all_input_nodes if isinstance(self.kenv[a], Value)]
        if builder is None or len(inputs) != 1:
            return None
        with torch.no_grad():
            try:
                expected = run(self.env_keep[inputs[0]])
            except Exception:  # noqa: BLE001 - the module takes more than this tensor
                return None
        if not _same_numbers(expected, result):
            return None
        self._live_weights(path, module)
        b = Build(self.g, path, label=f"nn.{kind_of(module)}", where=path, module=module,
                  result=expected, grow=self.grow.get(n))
        with _keras_errors(b):
            x = self.kenv[inputs[0]]
            value = builder(b, module, b.constant(x) if constant else x)
        if not isinstance(result, (tuple, list)):
            return value
        # the op's results, flat: an LSTM's (output, h, c) for the module's (output, (h, c));
        # batch norm's (output, saved statistics) for the module's output
        values = _leaves(value)
        rest = Refused(UnsupportedError(f"a result of {label_of(n)} in {path} that the "
                                        f"module does not return"))
        return (*values, *[rest] * (len(result) - len(values)))

    def _live_weights(self, path: str, module) -> None:
        """Where the rule table left a module's weights unmapped (a weight norm it cannot
        fold, such as wav2vec2's over dim 2), the rule table applied to the module's own
        current weights."""
        if weights_from_checkpoint(self.g.ckpt, path) or path in self.live:
            return
        tensors = {}
        for name in ("weight", "bias"):
            t = getattr(module, name, None)
            if isinstance(t, torch.Tensor):
                array = numpy_from_torch(t.detach())
                key = f"{path}.{name}"
                tensors[key] = TensorRef(key, tuple(array.shape), dtype_name(array.dtype),
                                         lambda a=array: a)
        if not tensors:
            return
        ckpt = Checkpoint(tensors, LAYOUT_TORCH, source="--model", format="module",
                          meta={"module_kinds": {path: kind_of(module)}, "module_options": {}})
        with contextlib.suppress(Exception):
            self.live[path] = weights_from_checkpoint(make_plan(ckpt, LAYOUT_KERAS).apply(ckpt),
                                                      path)


def builder_of(module) -> tuple[Any, Any]:
    """The module's builder and the forward it builds: its class's; for a subclass of a
    ``torch.nn`` class with none of its own (transformers' ``WhisperPositionalEmbedding``, an
    ``nn.Embedding`` whose forward slices its weight), the nearest base class's builder and
    that base's forward, which the call must then compute exactly (or it is built op by op)."""
    builder = module_builder(module)
    if builder is not None:
        return builder, module
    base = next((c for c in type(module).__mro__[1:] if c in MODULES), None)
    if base is None:
        return None, None
    return MODULES[base], lambda x: base.forward(module, x)


def _same_numbers(expected, result) -> bool:
    """Whether the module's output is exactly the op's result: the same tensors in flat
    order (all of them, or the first only where the op returns more)."""
    want, got = _leaves(expected), _leaves(result)
    if not want or len(want) > len(got) or (len(want) < len(got) and len(want) != 1):
        return False
    return all(isinstance(w, torch.Tensor) and isinstance(g, torch.Tensor)
               and w.shape == g.shape and torch.equal(w, g) for w, g in zip(want, got))


def label_of(n: torch.fx.Node) -> str:
    return str(n.target)
