"""What a Keras layer's class and config decide when it is planned to PyTorch.

A legacy full-model ``.h5`` or a ``.keras`` states each layer's class and config (the readers
keep them in ``meta["keras_layers"]``). The class decides the family: a wrapper
(``Bidirectional``, ``TimeDistributed``) by the class it wraps; a class no family maps (one
from another package such as ``my_pkg>Scaler``, or a Keras class without a family yet) is an
error that names the layer and the ways out, never a guess from the weights. The config gives
the hyper-parameters the weights cannot say, under the names ``--model`` records for PyTorch
modules (each family's ``keras_options``), so that the per-layer check builds the layer as the
file says. A config that asks for what the PyTorch counterpart cannot compute (each family's
``computable``: Keras 2's default ``hard_sigmoid`` gates, ``GRU(reset_after=False)``,
``rms_scaling``) is refused. What is here is generic: the families hold the per-class tables.
"""
from __future__ import annotations

import json
import math
from typing import Any, Callable

from ..checkpoint import TensorRef
from ..errors import UnsupportedError
from ..formats._hdf5.keras_config import WRAPPERS, LayerSpec, is_foreign, wrapped
from . import registry


def family_class(spec: LayerSpec) -> LayerSpec | None:
    """The layer whose class decides the family: a wrapper's wrapped layer, else the layer
    itself; None when no class is known (a wrapper whose config does not say what it wraps)."""
    if spec.class_name in WRAPPERS:
        spec = wrapped(spec) or LayerSpec(spec.name, None, {})
    return spec if spec.class_name else None


def uncomputable(spec: LayerSpec) -> str | None:
    """What in the config PyTorch's layer of the family cannot compute, if anything."""
    rule = registry.TABLE.for_keras_kind(spec.class_name or "")
    return rule.uncomputable(spec.config) if rule is not None else None


def refusal(name: str, spec: LayerSpec, why: str, kind: str) -> UnsupportedError:
    """The error for a layer whose config PyTorch cannot compute, with the ways out."""
    return UnsupportedError(
        f"Keras layer {name!r} ({spec.class_name}) has {why}, so its weights would compute "
        f"something else", hint=f"map them anyway with --rules ([[layer]] match = {toml(name)}, "
        f"kind = {toml(kind)}), knowing the outputs will differ, or keep them with kind = "
        f"\"carry\"")


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive(value: Any) -> bool:
    return _int(value) and value > 0


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


#: What each recorded option must be: a value of another type (a corrupt config) is left out.
VALID: dict[str, Callable[[Any], bool]] = {
    "eps": lambda v: _number(v) and v > 0, "momentum": lambda v: _number(v) and 0 <= v <= 1,
    "groups": _positive, "num_groups": _positive, "depth_multiplier": _positive,
    "num_heads": _positive, "hidden_size": _positive, "reset_after": lambda v: v in (True, False),
    "nonlinearity": lambda v: isinstance(v, str),
    "shared_axes": lambda v: isinstance(v, list) and all(_int(a) for a in v),
}


def options(spec: LayerSpec, weights: dict[str, TensorRef]) -> dict[str, Any]:
    """The layer's hyper-parameters from its config, as the families read them; a value of
    another type (a corrupt config) is left out."""
    rule = registry.TABLE.for_keras_kind(spec.class_name or "")
    found = rule.options_from_config(spec.config, weights) if rule is not None else {}
    return {option: value for option, value in found.items() if VALID[option](value)}


def no_rule(name: str, spec: LayerSpec, weights: dict[str, TensorRef]) -> UnsupportedError:
    """The error for a layer whose class no family maps, with the ways out."""
    if is_foreign(spec.class_name):
        what = (f"is a {spec.class_name}, a class from another package (never imported): no "
                f"rule knows what it computes")
    else:
        what = f"is a Keras {spec.class_name}, which no rule maps yet"
    first, names = next(iter(weights), "<weight>"), list(weights)
    shown = ", ".join(names[:6]) + (" ..." if len(names) > 6 else "")
    return UnsupportedError(
        f"Keras layer {name!r} {what} (weights {shown})",
        hint=f"keep its weights with --rules: [[layer]] match = {toml(name)}, kind = \"carry\"; "
             f"or map each with [[tensor]] keras = {toml(f'{name}/{first}')}, torch = "
             f"\"<PyTorch name>\"")


def toml(text: str) -> str:
    """``text`` as a TOML string, for hints to paste into a --rules file."""
    return json.dumps(text, ensure_ascii=False)
