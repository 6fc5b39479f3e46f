"""Hyper-parameters the weights cannot say: the reference Keras architecture's compared with
the user's PyTorch module's.

A ``BatchNormalization(epsilon=1e-3)`` and a ``BatchNorm2d(eps=1e-5)`` hold the same four
tensors and compute different numbers, and a check that builds both sides from one of them
agrees with itself. So whenever a PyTorch module (``--model``) and a Keras architecture are
both known (a ``.keras`` / full-model ``.h5`` source's config, or ``--keras-model``), each pair
of layers (paired as the conversion paired them) is compared:

- the options the families read from a config (``rules/from_keras.py``: epsilon, groups,
  num_heads, an RNN's units and activation ...), converted as planning converts them, with
  the module's attributes of those names; and what a config asks that PyTorch's layer cannot
  compute (``hard_sigmoid`` gates ...);
- a convolution's geometry (:data:`GEOMETRY`: kernel size, strides, dilation, output
  padding) and padding, a ``ZeroPadding`` layer in front of the Keras one counted in;
- sizes and bias (:data:`SIZES`) and settings PyTorch has one value for (:data:`FIXED`).

A difference that changes the outputs is a FAIL entry naming both values and the fix (exit
1). One that changes only training (momentum), or that depends on input sizes or on padding
the module's forward may apply itself, is a note. The side that is the source is the
reference: its value is the one the fix asks for.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Iterator

from ..checkpoint import LAYOUT_KERAS, Checkpoint
from ..errors import TranscoderError
from ..formats import layout_of
from ..formats._hdf5 import keras_config
from ..formats._hdf5.keras_config import LayerSpec
from ..models import keras_side, torch_side
from ..pipeline import read
from ..rules import from_keras, registry
from .compare import FAIL, INACCURATE, Comparison
from .report import HYPER_PARAMETER, CheckReport

KERAS, TORCH = "keras", "torch"

#: Config key -> the module attribute holding the same, one value per spatial axis.
GEOMETRY = {"kernel_size": "kernel_size", "strides": "stride", "dilation_rate": "dilation",
            "output_padding": "output_padding"}
#: Config key -> the module attribute holding the same size or switch (shapes already pin
#: most of them; a bias the module lacks is named here rather than as a weight count).
SIZES = {"units": "out_features", "filters": "out_channels", "use_bias": "bias"}
#: Config key -> (the only value PyTorch computes, what PyTorch does): any other is a FAIL.
FIXED = {"go_backwards": (False, "PyTorch's recurrent layers run forwards (flip the sequence "
                                 "before the module, or build the Keras layer without it)"),
         "merge_mode": ("concat", "a bidirectional PyTorch RNN concatenates both directions")}
#: Options whose difference changes training only: the check runs both sides in inference.
TRAINING_ONLY = {"momentum": "only training differs (the check runs both in inference)"}


@dataclass
class Finding:
    """One hyper-parameter the two sides disagree on."""

    path: str                  # the module path
    keras_name: str
    torch_kind: str
    keras_kind: str
    what: str                  # "Keras epsilon=0.001, PyTorch eps=1e-05"
    fix: str                   # "construct BatchNorm2d(..., eps=0.001)"
    gating: bool = True

    def line(self) -> str:
        return f"{self.path}: {self.what}: {self.fix}"

    def entry(self) -> Comparison:
        return Comparison(self.path, FAIL, kind=HYPER_PARAMETER, torch_kind=self.torch_kind,
                          keras_kind=self.keras_kind,
                          keras_name=self.keras_name if self.keras_name != self.path else None,
                          message=f"{self.what}: {self.fix}")


@dataclass
class _Pair:
    """One module and the Keras layer config it was paired with."""

    path: str
    module: Any
    spec: LayerSpec            # the layer whose class decides (a wrapper's wrapped layer)
    outer: LayerSpec           # the layer as the model lists it
    before: LayerSpec | None   # the one layer feeding it, when the config says
    reference: str             # KERAS or TORCH: whose value the fix asks for

    @property
    def torch_kind(self) -> str:
        return torch_side.kind_of(self.module)

    def finding(self, key: str, keras_value: str, option: str, torch_value: str,
                gating: bool = True, fix: str | None = None) -> Finding:
        """A difference, the values as shown (:func:`_show`); the fix by default constructs
        the side that is not the reference with the reference's value."""
        what = f"Keras {key}={keras_value}, PyTorch {option}={torch_value}"
        if fix is None:
            fix = (f"construct {self.torch_kind}(..., {option}={keras_value})"
                   if self.reference == KERAS else
                   f"construct {self.spec.class_name}(..., {key}={torch_value})")
        return Finding(self.path, self.outer.name, self.torch_kind, self.outer.class_name or "",
                       what, fix, gating)


# ---------------------------------------------------------------- entry point


def judge(report: CheckReport, src, request) -> CheckReport:
    """Add to ``report`` what the module and the Keras architecture disagree on: FAIL entries
    for differences that change the outputs, notes for the rest. Nothing when the check has
    no module or no Keras architecture to compare it with."""
    try:
        findings = findings_for(src, request)
    except TranscoderError as exc:
        report.notes.append(f"hyper-parameters not compared: {exc.message}")
        return report
    return attach(report, findings)


def attach(report: CheckReport, findings: list[Finding]) -> CheckReport:
    gating = [f for f in findings if f.gating]
    report.entries = [f.entry() for f in gating] + report.entries
    report.notes += _grouped([f for f in findings if not f.gating])
    if gating:
        names = ", ".join(dict.fromkeys(f.path for f in gating))
        for entry in report.entries + report.trace:
            if entry.status == INACCURATE:   # the numerics advice gives way, other notes stay
                kept = [m for m in entry.message.split("; ") if m and "numerics" not in m]
                entry.message = "; ".join([f"not numerics: hyper-parameters differ ({names})",
                                           *kept])
    return report


def _grouped(findings: list[Finding]) -> list[str]:
    """One note per difference, the layers that have it named together (a ResNet's fifty
    BatchNorms with Keras' default momentum are one line)."""
    paths: dict[tuple[str, str], list[str]] = {}
    for f in findings:
        paths.setdefault((f.what, f.fix), []).append(f.path)
    notes = []
    for (what, fix), names in paths.items():
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        notes.append(f"{shown}: {what}: {fix}")
    return notes


def findings_for(src, request) -> list[Finding]:
    """``src``: the source as the conversion read it (an open Checkpoint), or its path. What ``--model`` and the reference Keras architecture (``--keras-model``, else a Keras
    SRC's own config) disagree on; the source's side is the reference."""
    arch = request.arch
    if not arch.model:
        return []
    opened = isinstance(src, Checkpoint)
    keras_src = (src.layout if opened else layout_of(src)) == LAYOUT_KERAS
    if not (arch.keras_model or keras_src):
        return []
    module = torch_side.load_spec(arch.model)
    reference = KERAS if keras_src else TORCH
    if arch.keras_model:
        model = keras_side.load_spec(arch.keras_model)
        return compare(module, keras_side.layers_of_model(model), *_live_config(model), reference)
    with (nullcontext(src) if opened else
          read(src, key=request.key, source_format=request.source_format)) as ckpt:
        config = ckpt.meta.get("keras_config")
        if not isinstance(config, dict):
            return []
        return compare(module, keras_side.layers_of_checkpoint(ckpt), keras_config.layers_by_name(config),
                       keras_config.feeders(config), reference)


def _live_config(model) -> tuple[dict[str, LayerSpec], dict[str, list[str]]]:
    specs = {}
    for layer in keras_side.leaf_layers(model):
        try:
            specs[layer.name] = LayerSpec(layer.name, type(layer).__name__, layer.get_config())
        except NotImplementedError:
            continue
    try:
        feeders = keras_config.feeders({"class_name": type(model).__name__, "config": model.get_config()})
    except (NotImplementedError, TypeError, ValueError):
        feeders = {}
    return specs, feeders


def compare(module, theirs: list, specs: dict[str, LayerSpec], feeders: dict[str, list[str]],
            reference: str) -> list[Finding]:
    """Every pair of module and Keras layer config compared (pairs as the conversion makes
    them: :func:`keras_side.pair`)."""
    modules = dict(module.named_modules())
    theirs = [t for t in theirs if not keras_side.is_constant(t)]   # a parameter, no layer
    found = []
    for pair in keras_side.pair(keras_side.layers_of_module(module), theirs):
        if len(pair.our_layers) != 1 or pair.theirs.name not in specs:
            continue   # a SeparableConv holds two modules: compared by the numbers only
        name = pair.ours.name
        path = name if name in modules else name.rsplit(".l", 1)[0]
        outer = specs[pair.theirs.name]
        spec = from_keras.family_class(outer)
        if path not in modules or spec is None:
            continue
        before = [specs[n] for n in feeders.get(outer.name, []) if n in specs]
        found += _compare_pair(_Pair(path, modules[path], spec, outer,
                                     before[0] if len(before) == 1 else None, reference))
    return found


def _compare_pair(pair: _Pair) -> list[Finding]:
    return [*_options(pair), *_uncomputable(pair), *_geometry(pair), *_sizes(pair),
            *_fixed(pair), *_padding(pair)]


# ---------------------------------------------------------------- what is compared


def _options(pair: _Pair) -> Iterator[Finding]:
    """The options planning reads from a config, against the module's attributes."""
    keys = _config_keys(pair.spec)
    for option, value in from_keras.options(pair.spec, {}).items():
        theirs = getattr(pair.module, option, None)
        if not _simple(theirs) or _same(value, theirs):
            continue
        key = keys[option]
        raw = _config_value(pair.spec.config.get(key))
        why = TRAINING_ONLY.get(option)
        fix = None
        if not _same(value, raw):   # a converted value (Keras momentum is 1 - PyTorch's)
            fix = f"PyTorch {option}={_show(value)} is Keras {key}={_show(raw)}"
        if why is not None:
            fix = f"{fix}; {why}" if fix else why
        yield pair.finding(key, _show(raw), option, _show(theirs), gating=why is None, fix=fix)


def _config_keys(spec: LayerSpec) -> dict[str, str]:
    """PyTorch option -> the config key planning reads it from (planning's own table)."""
    rule = registry.TABLE.for_keras_kind(spec.class_name or "")
    table = rule.keras_options if rule is not None else {}
    return {option.torch: key for key, option in table.items()}


def _uncomputable(pair: _Pair) -> Iterator[Finding]:
    why = from_keras.uncomputable(pair.spec)
    if why is not None:
        what, _, reason = why.partition(": ")
        yield Finding(pair.path, pair.outer.name, pair.torch_kind, pair.outer.class_name or "",
                      f"Keras {what}", f"{reason}: no {pair.torch_kind} computes it")


def _geometry(pair: _Pair) -> Iterator[Finding]:
    axes = _axes(pair.module)
    for key, attr in GEOMETRY.items():
        if axes is None or key not in pair.spec.config or not hasattr(pair.module, attr):
            continue
        raw = pair.spec.config[key]
        if raw is None:
            continue   # Keras infers a transposed convolution's output padding
        ours, theirs = _per_axis(raw, axes), _per_axis(getattr(pair.module, attr), axes)
        if ours is not None and theirs is not None and ours != theirs:
            yield pair.finding(key, _show(_flat(ours)), attr, _show(_flat(theirs)))


def _sizes(pair: _Pair) -> Iterator[Finding]:
    for key, attr in SIZES.items():
        if key not in pair.spec.config or not hasattr(pair.module, attr):
            continue
        raw, theirs = pair.spec.config[key], getattr(pair.module, attr)
        if attr == "bias" and not isinstance(theirs, bool):
            theirs = theirs is not None
        if _simple(raw) and _simple(theirs) and raw != theirs:
            yield pair.finding(key, _show(raw), attr, _show(theirs))


def _fixed(pair: _Pair) -> Iterator[Finding]:
    for key, (value, why) in FIXED.items():
        raw = pair.outer.config.get(key, pair.spec.config.get(key, value))
        if raw != value and _simple(raw):
            yield Finding(pair.path, pair.outer.name, pair.torch_kind,
                          pair.outer.class_name or "", f"Keras {key}={_show(raw)}",
                          f"{why}; PyTorch computes {key}={_show(value)}")
    mode = getattr(pair.module, "padding_mode", "zeros")
    if mode != "zeros" and isinstance(mode, str):
        yield Finding(pair.path, pair.outer.name, pair.torch_kind, pair.outer.class_name or "",
                      f"PyTorch padding_mode={mode!r}", "Keras convolutions pad with zeros: put "
                      "the padding in a layer of its own on the Keras side, or use zeros")


# ---------------------------------------------------------------- padding


def _padding(pair: _Pair) -> Iterator[Finding]:
    """Keras ``padding`` (with a ZeroPadding layer feeding it) against the module's: a module
    that pads more is a FAIL; one that pads less, or less at one end, may pad in its forward
    (a note); a strided ``same`` depends on the input size (a note when it can differ)."""
    axes, module, config = _axes(pair.module), pair.module, pair.spec.config
    padding = config.get("padding")
    if axes is None or not isinstance(padding, str) or getattr(module, "transposed", False):
        return
    kernel = _per_axis(config.get("kernel_size"), axes)
    strides = _per_axis(config.get("strides", 1), axes)
    dilation = _per_axis(config.get("dilation_rate", 1), axes)
    if None in (kernel, strides, dilation):
        return
    keras = [_keras_pads(padding, k, s, d) for k, s, d in zip(kernel, strides, dilation)]
    extra = _zero_padding(pair.before, axes)
    torch = _torch_pads(module, kernel, dilation, axes)
    if torch is None:
        return
    say = _padding_phrase(padding, extra)
    if None in keras:   # strided "same": more at the end when the total is odd
        if all(a == b for a, b in torch):
            yield pair.finding("padding", say, "padding", f"{_show(module.padding)} (pads "
                               f"{_show_pads(torch)})", gating=False, fix=(
                "Keras pads the end one more where the padding total is odd (it depends on "
                "the input size), PyTorch pads both ends alike: they agree for some sizes only"))
        return
    keras = [(a + e[0], b + e[1]) for (a, b), e in zip(keras, extra)]
    if keras == torch:
        return
    more = any(t[0] > k[0] or t[1] > k[1] for t, k in zip(torch, keras))
    chomped = all(t[0] == k[0] and t[1] >= k[1] for t, k in zip(torch, keras))
    fix = _padding_fix(pair, keras, torch, more)
    if chomped:   # a causal convolution as PyTorch writes it: pad both ends, drop the last steps
        fix = f"{fix}, unless the module's forward drops the extra steps at the end (Chomp1d)"
    yield pair.finding("padding", f"{say} (pads {_show_pads(keras)})", "padding",
                       f"{_show(getattr(module, 'padding'))} (pads {_show_pads(torch)})",
                       gating=more and not chomped, fix=fix)


def _padding_fix(pair: _Pair, keras: list, torch: list, more: bool) -> str:
    if pair.reference == KERAS and all(a == b for a, b in keras):
        fix = f"construct {pair.torch_kind}(..., padding={_show(_flat(tuple(a for a, _ in keras)))})"
    elif pair.reference == KERAS:
        fix = (f"pad as Keras does before the module (F.pad, {_show_pads(keras)}) and construct "
               f"{pair.torch_kind}(..., padding=0)")
    else:
        fix = (f"pad as PyTorch does (ZeroPadding{len(torch)}D, {_show_pads(torch)}) before "
               f"{pair.spec.class_name}(..., padding='valid')")
    return fix if more else f"{fix}, unless the module's forward pads before it"


def _keras_pads(padding: str, k: int, s: int, d: int) -> tuple[int, int] | None:
    """Keras' padding of one axis, (before, after); None when it depends on the input size."""
    span = d * (k - 1)
    if padding == "valid":
        return 0, 0
    if padding == "causal":
        return span, 0
    if padding == "same" and s == 1:
        return span // 2, span - span // 2
    return None


def _torch_pads(module, kernel, dilation, axes: int) -> list[tuple[int, int]] | None:
    padding = getattr(module, "padding", None)
    if padding == "valid":
        return [(0, 0)] * axes
    if padding == "same":
        spans = [d * (k - 1) for k, d in zip(kernel, dilation)]
        return [(t // 2, t - t // 2) for t in spans]
    pads = _per_axis(padding, axes)
    return None if pads is None else [(p, p) for p in pads]


def _zero_padding(before: LayerSpec | None, axes: int) -> list[tuple[int, int]]:
    """The padding a ZeroPadding layer feeding the convolution adds, per axis."""
    none = [(0, 0)] * axes
    if before is None or not (before.class_name or "").startswith("ZeroPadding"):
        return none
    raw = before.config.get("padding")
    if isinstance(raw, int):
        return [(raw, raw)] * axes
    if not isinstance(raw, (list, tuple)):
        return none
    if axes == 1 and len(raw) == 2 and all(isinstance(p, int) for p in raw):
        return [(raw[0], raw[1])]
    out = []
    for p in raw:
        pair = (p, p) if isinstance(p, int) else tuple(p) if isinstance(p, (list, tuple)) else None
        if pair is None or len(pair) != 2:
            return none
        out.append(pair)
    return out if len(out) == axes else none


def _padding_phrase(padding: str, extra: list[tuple[int, int]]) -> str:
    if any(a or b for a, b in extra):
        return f"{padding!r} after ZeroPadding {_show_pads(extra)}"
    return repr(padding)


# ---------------------------------------------------------------- values


def _axes(module) -> int | None:
    """A convolution's number of spatial axes (None: not a convolution)."""
    kernel = getattr(module, "kernel_size", None)
    return len(kernel) if isinstance(kernel, tuple) and kernel else None


def _per_axis(value: Any, axes: int) -> tuple | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return (value,) * axes
    if isinstance(value, (list, tuple)) and len(value) == axes and \
            all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return tuple(value)
    return None


def _flat(values: tuple) -> Any:
    return values[0] if len(set(values)) == 1 else tuple(values)


def _config_value(raw: Any) -> Any:
    """A config value; Keras 3 may serialise an activation as ``{"config": "tanh", ...}``."""
    if isinstance(raw, dict) and isinstance(raw.get("config"), str):
        return raw["config"]
    return raw


def _simple(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and \
            not isinstance(a, bool) and not isinstance(b, bool):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=0.0)
    return a == b


def _show(value: Any) -> str:
    """A value as Python code would write it (floats short: ``0.001``, ``1e-05``)."""
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value)


def _show_pads(pads: list[tuple[int, int]]) -> str:
    return ", ".join(f"{a}+{b}" for a, b in pads)
