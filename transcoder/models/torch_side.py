"""``--model SPEC``: the user's PyTorch module, the best evidence for layer kinds.

SPEC is ``path/to/file.py:Name`` or ``package.module:Name``; ``Name`` is an ``nn.Module``
subclass constructible without arguments, or a zero-argument callable returning a module.
This runs the user's own model code (never code from a checkpoint). The checkpoint is loaded
into the module strictly, and the module tree gives exact kinds and hyper-parameters.
"""
from __future__ import annotations

from typing import Any

from collections import OrderedDict

from ..checkpoint import LAYOUT_TORCH, Checkpoint, TensorRef, dtype_name
from ..errors import MappingError, UsageError, one_line
from ..frameworks import numpy_from_torch, torch_from_numpy
from .spec import build_from_spec

#: module attribute -> option name, recorded per module where present.
HYPER_PARAMETERS = ("num_heads", "num_layers", "bidirectional", "nonlinearity", "batch_first",
                    "eps", "momentum", "num_groups", "groups", "hidden_size", "bias", "kdim", "vdim",
                    "embed_dim", "padding_idx", "reset_after")


def load_spec(spec: str):
    """Import the module or file named by ``spec`` and build the model it names."""
    import torch

    model = build_from_spec(spec, "--model")
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"--model {spec}: returned {type(model).__name__}, not a torch.nn.Module")
    return model.eval()


def module_kinds(model) -> dict[str, str]:
    """``{module path: class name}`` for every module holding tensors of its own."""
    return {path: kind_of(m) for path, m in model.named_modules() if _owns_tensors(m)}


def original_class(m) -> type:
    """A module's class; for one torch.nn.utils.parametrize changed (weight norm's new API:
    ``ParametrizedConv1d``), the class it was made from."""
    cls = type(m)
    base = cls.__bases__[0] if cls.__bases__ else cls
    return base if cls.__name__ == f"Parametrized{base.__name__}" else cls


def kind_of(m) -> str:
    """The module's class name; for a subclass of a ``torch.nn`` class with a rule of its own
    (transformers' ``WhisperPositionalEmbedding(nn.Embedding)``), that class: it holds the same
    parameters, which is all a conversion maps."""
    from ..rules import registry

    cls = original_class(m)
    for base in cls.__mro__:
        if base.__module__.startswith("torch.nn") and registry.TABLE.for_torch_kind(base.__name__):
            return base.__name__
    return cls.__name__


def module_options(model) -> dict[str, dict[str, Any]]:
    """Hyper-parameters the rules need (num_heads, num_layers, eps, ...), per module path."""
    options = {}
    for path, m in model.named_modules():
        found = {k: getattr(m, k) for k in HYPER_PARAMETERS
                 if isinstance(getattr(m, k, None), (int, float, bool, str))}
        if found and _owns_tensors(m):
            options[path] = found
    return options


def _owns_tensors(m) -> bool:
    """Parameters or buffers of its own (a parametrized module's live in its parametrizations)."""
    return any(True for _ in m.parameters(recurse=False)) or any(
        True for _ in m.buffers(recurse=False)) or original_class(m) is not type(m)


def check_fit(model, ckpt: Checkpoint) -> None:
    """What ``load_state_dict(strict=True)`` checks, from names and shapes alone (no data read);
    MappingError listing missing, unexpected and misshapen keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in ckpt.tensors]
    unexpected = [k for k in ckpt.tensors if k not in expected]
    wrong = [f"{k} {list(ckpt[k].shape)} vs {list(expected[k].shape)}" for k in expected
             if k in ckpt.tensors and tuple(ckpt[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        raise MappingError("checkpoint does not fit --model: " + "; ".join(
            f"{label}: {', '.join(items[:6])}{' ...' if len(items) > 6 else ''}"
            for label, items in (("missing", missing), ("unexpected", unexpected),
                                 ("shape", wrong)) if items))


def load_strict(model, ckpt: Checkpoint) -> None:
    """Load the checkpoint into ``model`` (after :func:`check_fit`)."""
    check_fit(model, ckpt)
    state = {k: torch_from_numpy(ckpt[k].load()) for k in model.state_dict()}
    model.load_state_dict(state, strict=True)


def describe(model, ckpt: Checkpoint) -> None:
    """Check the checkpoint fits ``model`` strictly and record its kinds and options in the
    checkpoint's metadata. Nothing is loaded: the conversion reads each tensor once, and the
    check loads the written file into the module itself."""
    check_fit(model, ckpt)
    ckpt.meta["module_kinds"] = _with_file_kinds(module_kinds(model), ckpt.meta.get("module_kinds"))
    ckpt.meta["module_options"] = {**ckpt.meta.get("module_options", {}), **module_options(model)}


def _with_file_kinds(live: dict[str, str], said: dict[str, str] | None) -> dict[str, str]:
    """The module's kinds, except where its class has no rule and the file itself said the kind
    (a Hugging Face config's naming: ``LlamaRMSNorm`` is the RMSNorm family)."""
    from ..rules import registry

    said = said or {}
    return {path: said[path] if path in said and registry.TABLE.for_torch_kind(kind) is None
            else kind for path, kind in live.items()}


def checkpoint_of_module(module) -> Checkpoint:
    """A module's own state dict as a torch-layout checkpoint, with its kinds and options."""
    tensors = OrderedDict()
    for name, tensor in module.state_dict().items():
        array = numpy_from_torch(tensor)
        tensors[name] = TensorRef(name, tuple(array.shape), dtype_name(array.dtype),
                                  lambda a=array: a)
    meta = {"module_kinds": module_kinds(module), "module_options": module_options(module)}
    return Checkpoint(tensors, LAYOUT_TORCH, source="--model", format="module", meta=meta)


def plain_outputs(value):
    """A ``ModelOutput`` (transformers) as the tuple of its tensors, in its order (the last
    hidden state first), as the rebuild from ``torch.export`` returns them; anything else as
    it is."""
    if isinstance(value, dict) and type(value) is not dict and hasattr(value, "to_tuple"):
        return value.to_tuple()
    return value


def forward(module, inputs: list):
    """``module(*inputs)`` without gradients; UsageError when the model fails on them (the
    user's model and input shapes: a usage error, never ours). A ``ModelOutput`` comes back
    as the tuple of its tensors (:func:`plain_outputs`)."""
    import torch

    try:
        with torch.no_grad():
            return plain_outputs(module(*inputs))
    except Exception as exc:  # noqa: BLE001 - the user's model: any failure is a usage error
        raise UsageError(f"the PyTorch model fails on inputs of shapes "
                         f"{[list(x.shape) for x in inputs]} ({one_line(exc)})",
                         hint="check --input-shape and --input-dtype (PyTorch layout, batch "
                              "included)") from None
