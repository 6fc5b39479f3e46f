"""What a Keras layer's class and config decide when it is planned to PyTorch.

A legacy full-model ``.h5`` or a ``.keras`` states each layer's class and config (the readers
keep them in ``meta["keras_layers"]``). The class decides the family: a wrapper
(``Bidirectional``, ``TimeDistributed``) by the class it wraps; a class no family maps (one
from another package such as ``my_pkg>Scaler``, or a Keras class without a family yet) is an
error that names the layer and the ways out, never a guess from the weights. The config gives
the hyper-parameters the weights cannot say, under the names ``--model`` records for PyTorch
modules (:data:`OPTIONS`), so that the per-layer check builds the layer as the file says. A
config that asks for what the PyTorch counterpart cannot compute (Keras 2's default
``hard_sigmoid`` gates, ``GRU(reset_after=False)``, ``rms_scaling``) is refused.
"""
from __future__ import annotations

import json
import math
from typing import Any, Callable

from ..checkpoint import TensorRef
from ..errors import UnsupportedError
from ..formats.keras_config import WRAPPERS, LayerSpec, is_foreign, wrapped


def _same(value: Any) -> Any:
    return value


def _torch_momentum(value: Any) -> Any:
    """Keras' moving-average momentum is PyTorch's 1 - momentum."""
    return round(1 - value, 12) if _number(value) else None


def _option(name: str, convert: Callable[[Any], Any] = _same, missing: Any = None
            ) -> tuple[str, Callable, Any]:
    """An option read from a config key: its name, how the value converts, and what a config
    without the key means (Keras 2 convolutions had no ``groups``: 1)."""
    return name, convert, missing


EPSILON = {"epsilon": _option("eps")}
GROUPS = {"groups": _option("groups", missing=1)}
DEPTH = {"depth_multiplier": _option("depth_multiplier", missing=1)}
RECURRENT = {"units": _option("hidden_size")}

#: Keras class -> {config key: (PyTorch-side option, conversion, value when missing)}: the
#: hyper-parameters the families read (eps, groups, num_groups, num_heads, nonlinearity, ...),
#: as ``--model`` names them.
OPTIONS: dict[str, dict[str, tuple[str, Callable, Any]]] = {
    "BatchNormalization": {**EPSILON, "momentum": _option("momentum", _torch_momentum)},
    "LayerNormalization": EPSILON,
    "RMSNormalization": EPSILON,
    "GroupNormalization": {**EPSILON, "groups": _option("num_groups")},
    "Conv1D": GROUPS, "Conv2D": GROUPS, "Conv3D": GROUPS,
    "DepthwiseConv1D": DEPTH, "DepthwiseConv2D": DEPTH,
    "SeparableConv1D": DEPTH, "SeparableConv2D": DEPTH,
    "MultiHeadAttention": {"num_heads": _option("num_heads")},
    "PReLU": {"shared_axes": _option("shared_axes")},
    "LSTM": RECURRENT, "CuDNNLSTM": RECURRENT, "CuDNNGRU": RECURRENT,
    "GRU": {**RECURRENT, "reset_after": _option("reset_after")},
    "SimpleRNN": {**RECURRENT, "activation": _option("nonlinearity")},
}

#: Keras class -> {config key: (values PyTorch computes, the value a config without the key
#: means, why)}: any other value is refused. A GRU config without ``reset_after`` is from Keras
#: before 2.1.3, whose GRU applied the reset gate before the recurrent matmul.
COMPUTABLE: dict[str, dict[str, tuple[tuple, Any, str]]] = {
    "LSTM": {"activation": (("tanh",), "tanh", "PyTorch's LSTM applies tanh"),
             "recurrent_activation": (("sigmoid",), "sigmoid", "PyTorch's LSTM gates are "
                                                               "sigmoid")},
    "GRU": {"activation": (("tanh",), "tanh", "PyTorch's GRU applies tanh"),
            "recurrent_activation": (("sigmoid",), "sigmoid", "PyTorch's GRU gates are sigmoid"),
            "reset_after": ((True,), False, "PyTorch's GRU applies the reset gate after the "
                                            "recurrent matmul")},
    "SimpleRNN": {"activation": (("tanh", "relu"), "tanh", "PyTorch's RNN applies tanh or relu")},
    "LayerNormalization": {"rms_scaling": ((False,), False, "it scales by the variance, which no "
                                                            "PyTorch layer does")},
}


def family_class(spec: LayerSpec) -> LayerSpec | None:
    """The layer whose class decides the family: a wrapper's wrapped layer, else the layer
    itself; None when no class is known (a wrapper whose config does not say what it wraps)."""
    if spec.class_name in WRAPPERS:
        spec = wrapped(spec) or LayerSpec(spec.name, None, {})
    return spec if spec.class_name else None


def _value(raw: Any) -> Any:
    """A config value; Keras 3 may serialise an activation as ``{"config": "tanh", ...}``."""
    if isinstance(raw, dict) and isinstance(raw.get("config"), str):
        return raw["config"]
    return raw


def uncomputable(spec: LayerSpec) -> str | None:
    """What in the config PyTorch's layer of the family cannot compute, if anything."""
    for key, (allowed, missing, why) in COMPUTABLE.get(spec.class_name or "", {}).items():
        value = _value(spec.config.get(key, missing))
        if value not in allowed:
            return f"{key}={value!r}: {why}"
    return None


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
    """The layer's hyper-parameters from its config, as the families read them."""
    found = {}
    for key, (option, convert, missing) in OPTIONS.get(spec.class_name or "", {}).items():
        value = _value(spec.config.get(key, missing))
        if option == "num_groups" and value == -1:   # GroupNormalization(groups=-1): per channel
            value = next((ref.shape[0] for ref in weights.values() if len(ref.shape) == 1), None)
        value = convert(value) if value is not None else None
        if VALID[option](value):
            found[option] = value
    return found


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
