"""Recurrent layers: PyTorch LSTM, GRU, RNN (and their cells) <-> Keras LSTM, GRU, SimpleRNN.

One PyTorch module becomes one Keras layer per stacked layer: ``M`` when it has one layer,
``M.l0``, ``M.l1``, ... otherwise. A bidirectional layer becomes a Keras ``Bidirectional``
whose weights are ``forward/kernel, forward/recurrent_kernel, forward/bias`` then the same
under ``backward/`` (PyTorch's ``_reverse`` tensors). A cell (``LSTMCell`` ...) maps to the
Keras layer of its kind, whose weights are the same three (its tensors drop ``_l{k}``).

The names come from each family's params, which are patterns: ``{k}`` is the stacked layer,
``{rev}`` the direction suffix (``""`` or ``"_reverse"``) and ``{dir}`` the Keras sub-layer
(``""``, ``"forward/"`` or ``"backward/"``).

Checked numerically against Keras 3.15 (tests/test_recurrent_attention.py):
  - LSTM gates i,f,g,o = Keras i,f,c,o: kernel = weight_ih.T, recurrent_kernel = weight_hh.T,
    bias = bias_ih + bias_hh. The pair is carried verbatim and restored on the way back when
    it still sums, bit for bit, to the Keras bias. SimpleRNN likewise, with one gate.
  - GRU gates r,z,n = Keras (reset_after=True) z,r,h: blocks reordered, then transposed; the
    bias is (2, 3H) = [reorder(bias_ih); reorder(bias_hh)]. ``reset_after=False`` computes
    something PyTorch cannot and is refused.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from ...checkpoint import TensorRef
from ...errors import MappingError, UnsupportedError
from ..checkcase import BATCH, Built, LayerCase, Skip
from ..ops import Op, Permute, register_op
from ..steps import Step, check_shapes, note_inverse
from ..table import Allowed, Inference, LayerRule, Option, Param

T = Permute((1, 0))
#: a recurrent module's own tensor names: weight_ih_l0, bias_hh_l1_reverse, weight_ih (a cell)
TORCH_NAME = re.compile(r"(weight|bias)_(ih|hh|hr)(?:_l(\d+))?(_reverse)?")
#: the Keras layer of stacked layer k of module M
STACKED_LAYER = re.compile(r"(.+)\.l(\d+)")
#: PyTorch direction suffix <-> Keras Bidirectional sub-layer.
DIRECTIONS: dict[str, str] = {"": "forward", "_reverse": "backward"}
SUFFIXES: dict[str, str] = {"forward": "", "backward": "_reverse", "": ""}
#: gate blocks in weight_hh (G*H, H) / recurrent_kernel (H, G*H) -> PyTorch family, Keras class.
GATES: dict[int, tuple[str, str]] = {4: ("LSTM", "LSTM"), 3: ("GRU", "GRU"),
                                     1: ("RNN", "SimpleRNN")}
#: gate count -> Keras 2 cuDNN class (``families/cudnn.py``), told apart by a (2*G*H,) bias.
CUDNN: dict[int, str] = {4: "CuDNNLSTM", 3: "CuDNNGRU"}
CUDNN_HINT = (": (2*G*H,) is the bias of a Keras 2 CuDNNLSTM/CuDNNGRU, which this layer's class "
              "contradicts; fix the class in the file's model_config")


def _blocks(x: np.ndarray, order: tuple[int, ...], axis: int = 0) -> np.ndarray:
    parts = np.split(x, len(order), axis=axis)
    return np.concatenate([parts[i] for i in order], axis=axis)


def _inverse_order(order: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argsort(order))


def _gate_rows(shape: tuple, gates: int, what: str) -> None:
    if not shape or shape[0] % gates:
        raise MappingError(f"{what} of shape {list(shape)} does not split into {gates} gates")


@register_op
@dataclass(frozen=True)
class GateReorder(Op):
    """Keras block i = PyTorch gate block ``order[i]`` (axis 0), then a 2-d tensor is transposed."""

    kind: ClassVar[str] = "gate_reorder"
    order: tuple[int, ...] = ()

    def forward(self, xs):
        y = _blocks(xs[0], self.order)
        return [np.ascontiguousarray(y.T) if y.ndim == 2 else y]

    def inverse(self, ys):
        y = np.ascontiguousarray(ys[0].T) if ys[0].ndim == 2 else ys[0]
        return [_blocks(y, _inverse_order(self.order))]

    def forward_shapes(self, shapes):
        _gate_rows(shapes[0], len(self.order), "a recurrent weight")
        return [tuple(shapes[0][::-1])]

    def inverse_shapes(self, shapes):
        _gate_rows(shapes[0][::-1], len(self.order), "a recurrent kernel")
        return [tuple(shapes[0][::-1])]

    def describe(self) -> str:
        return f"gates{self.order}, transpose"

    def spec(self) -> dict:
        return {"op": self.kind, "order": list(self.order)}


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@register_op
@dataclass(frozen=True)
class SumBias(Op):
    """Keras bias = bias_ih + bias_hh (in their dtype). With ``carry`` the pair also travels
    verbatim as two more Keras-side tensors, and comes back when it still sums to the bias;
    otherwise bias_ih = the Keras bias and bias_hh = zeros (the sum is what computes)."""

    kind: ClassVar[str] = "sum_bias"
    rounds: ClassVar[bool] = True
    arity: ClassVar[tuple[int, int]] = (2, 3)  # (2, 1) without carry
    carry: bool = True

    def forward(self, xs):
        return [xs[0] + xs[1]] + (list(xs) if self.carry else [])

    def pair_holds(self, ys: list[np.ndarray]) -> bool:
        same_dtype = ys[1].dtype == ys[2].dtype == ys[0].dtype if self.carry else False
        return same_dtype and _same_bits(ys[1] + ys[2], ys[0])

    def inverse(self, ys):
        if self.pair_holds(ys):
            return [ys[1], ys[2]]
        return [ys[0], np.zeros_like(ys[0])]

    def forward_shapes(self, shapes):
        if shapes[0] != shapes[1] or len(shapes[0]) != 1:
            raise MappingError(f"bias_ih {list(shapes[0])} and bias_hh {list(shapes[1])} must be "
                               f"vectors of one length")
        return [shapes[0]] * (3 if self.carry else 1)

    def inverse_shapes(self, shapes):
        return [shapes[0], shapes[0]]

    def inverse_note(self, refs: list[TensorRef], step) -> str | None:
        """What the way back will do, for the plan's notes (reads the three small vectors)."""
        if self.carry and self.pair_holds([r.load() for r in refs]):
            return None
        why = ("the carried pair no longer sums to it" if self.carry
               else "Keras keeps only their sum")
        return (f"{step.keras[0]}: {why}; PyTorch {step.torch[0]} gets the Keras bias and "
                f"{step.torch[1]} zeros (same outputs)")

    def describe(self) -> str:
        return "sum (pair carried)" if self.carry else "sum"

    def spec(self) -> dict:
        return {"op": self.kind, "carry": self.carry}


@register_op
@dataclass(frozen=True)
class StackBias(Op):
    """Keras GRU(reset_after=True) bias (2, 3H) = [reorder(bias_ih); reorder(bias_hh)]."""

    kind: ClassVar[str] = "stack_bias"
    arity: ClassVar[tuple[int, int]] = (2, 1)
    order: tuple[int, ...] = ()

    def forward(self, xs):
        return [np.stack([_blocks(x, self.order) for x in xs])]

    def inverse(self, ys):
        back = _inverse_order(self.order)
        return [_blocks(ys[0][0], back), _blocks(ys[0][1], back)]

    def forward_shapes(self, shapes):
        if shapes[0] != shapes[1] or len(shapes[0]) != 1:
            raise MappingError(f"bias_ih {list(shapes[0])} and bias_hh {list(shapes[1])} must be "
                               f"vectors of one length")
        _gate_rows(shapes[0], len(self.order), "a recurrent bias")
        return [(2,) + tuple(shapes[0])]

    def inverse_shapes(self, shapes):
        if len(shapes[0]) != 2 or shapes[0][0] != 2:
            raise MappingError(f"a GRU bias must be (2, 3H), not {list(shapes[0])}")
        return [shapes[0][1:], shapes[0][1:]]

    def describe(self) -> str:
        return f"gates{self.order}, stack [ih; hh]"

    def spec(self) -> dict:
        return {"op": self.kind, "order": list(self.order)}


@dataclass(frozen=True)
class RecurrentRule(LayerRule):
    """A recurrent family: its params are name patterns (see the module docstring), expanded
    into steps for each stacked layer and direction, one Keras layer per stacked layer."""

    gates: int = 1
    activation_note: bool = False      # the activation is not in the weights
    reset_after: bool = False          # Keras must be GRU(reset_after=True): bias (2, G*H)
    cudnn: bool = False                # Keras 2 CuDNNLSTM/CuDNNGRU: bias (2*G*H,)

    # ------------------------------------------------------------ kind inference

    def recognise(self, path: str, params: dict[str, TensorRef]) -> Inference | None:
        """LSTM, GRU or RNN (layers or cells) from the gate multiple of ``weight_hh``."""
        if not params or not all(TORCH_NAME.fullmatch(n) for n in params):
            return None
        if any("_hr" in n for n in params):
            found = "LSTM", "projection weights (weight_hr) exist only in an LSTM"
        else:
            hh = params.get("weight_hh_l0", params.get("weight_hh"))
            gates = _gates(hh.shape if hh is not None else (), rows_are_gates=True)
            if gates not in GATES:
                return Inference(None, "recurrent tensor names without a weight_hh of shape "
                                       "(G*H, H)")
            extra = " (tanh assumed: relu maps the same weights alike)" if gates == 1 else ""
            found = GATES[gates][0], (f"recurrent names, weight_hh {list(hh.shape)} has {gates} "
                                      f"gate(s){extra}")
        return Inference(*found) if found[0] == self.name else None

    def recognise_keras(self, layer: str, weights: dict[str, TensorRef]) -> Inference | None:
        return keras_kind(weights)

    def keras_weights(self) -> tuple[str, ...]:
        """One direction's weights (a Bidirectional holds them twice, under its sub-layers)."""
        return tuple(k.format(dir="") for k in super().keras_weights())

    # ------------------------------------------------------------ localising a divergence

    def trace_name(self, path: str, module) -> str:
        """A stacked module ``M`` pairs with its last layer's Keras layer ``M.l<last>``."""
        layers = getattr(module, "num_layers", None)
        return path if layers is None else f"{path}.l{layers - 1}"

    def time_major(self, module) -> bool:
        return not getattr(module, "batch_first", True)

    def last_step(self, t, k, module):
        """A Keras layer without ``return_sequences`` gives only the last step."""
        if t.ndim != 3 or k.ndim != 2 or t[:, -1].shape != k.shape:
            return None
        if getattr(module, "bidirectional", False):
            raise Skip("a bidirectional RNN whose Keras layer returns only the last state")
        return t[:, -1], "last time step"

    # ------------------------------------------------------------ PyTorch -> Keras

    def plan_from_torch(self, plan, path: str, params: dict[str, TensorRef], options: dict,
                        reason: str) -> None:
        cells = _parse_torch(path, params, plan)
        layers = sorted({k for k, _ in cells})
        for k in layers:
            name = path if len(layers) == 1 else f"{path}.l{k}"
            bidirectional = (k, "_reverse") in cells
            for suffix in [s for s in DIRECTIONS if (k, s) in cells]:
                sub = f"{DIRECTIONS[suffix]}/" if bidirectional else ""
                self._direction(plan, cells[(k, suffix)], f"{name}/", sub, name,
                                "Bidirectional" if bidirectional else self.keras_kind, reason)
        if self.activation_note and "nonlinearity" not in options:
            plan.notes.append(f"{path}: the activation is not in the weights (tanh and relu map "
                              f"alike); give the Keras {self.keras_kind} the PyTorch nonlinearity "
                              f"(tanh unless the module says relu)")

    def _direction(self, plan, d: dict[str, TensorRef], layer_prefix: str, sub: str, layer: str,
                   class_name: str, reason: str) -> None:
        """One direction of one stacked layer: ``d`` maps name stems (weight_ih ...) to tensors."""
        self._check_weights(_need(d, "weight_ih", layer), _need(d, "weight_hh", layer))
        for param in self.params:
            refs = [d.get(_stem(p)) for p in param.torch]
            if all(r is None for r in refs) and not param.required:
                continue  # bias=False: a Keras layer with use_bias=False
            if any(r is None for r in refs) or len({r.dtype for r in refs}) > 1:
                raise MappingError(f"{' and '.join(_stem(p) for p in param.torch)} must come "
                                   f"together, of one dtype", tensor=next(r for r in refs if r).name)
            torch = tuple(r.name for r in refs)
            op = param.op
            carried = torch if isinstance(op, SumBias) and op.carry else ()
            plan.carry(list(carried))
            keras = tuple(layer_prefix + k.format(dir=sub) for k in param.keras) + carried
            step = Step(torch, keras, op, self.name, layer)
            check_shapes(step, [r.shape for r in refs])
            plan.add(step, class_name, reason)

    def _check_weights(self, w_ih: TensorRef, w_hh: TensorRef) -> None:
        h = w_hh.shape[-1] if w_hh.shape else 0
        if len(w_hh.shape) != 2 or w_hh.shape[0] != self.gates * h:
            raise MappingError(f"an {self.name} needs weight_hh of shape ({self.gates}*H, H), "
                               f"not {list(w_hh.shape)}", tensor=w_hh.name)
        if len(w_ih.shape) != 2 or w_ih.shape[0] != self.gates * h:
            raise MappingError(f"an {self.name} with H={h} needs weight_ih of shape "
                               f"({self.gates * h}, input), not {list(w_ih.shape)}", tensor=w_ih.name)

    # ------------------------------------------------------------ Keras -> PyTorch

    def plan_from_keras(self, plan, layer: dict, weights: dict[str, TensorRef],
                        reason: str) -> None:
        name = layer["name"]
        found = STACKED_LAYER.fullmatch(name)
        module, k = (found.group(1), found.group(2)) if found else (name, "0")
        by_direction = _parse_keras(name, weights)
        class_name = "Bidirectional" if "backward" in by_direction else self.keras_kind
        for direction, d in by_direction.items():
            self._check_keras(name, _need_keras(d, "recurrent_kernel", name)[1], d.get("bias"))
            for param in self.params:
                leaf = param.keras[0].format(dir="")
                if leaf not in d and not param.required:
                    continue
                torch = tuple(f"{module}." + p.format(k=k, rev=SUFFIXES[direction])
                              for p in param.torch)
                # a foreign file carries no bias pair: its inverse is the sum's own
                op = replace(param.op, carry=False) if isinstance(param.op, SumBias) else param.op
                step = Step(torch, (f"{name}/{_need_keras(d, leaf, name)[0]}",), op, self.name,
                            name)
                plan.add(step, class_name, reason)
                note_inverse(plan, step, [weights[n[len(name) + 1:]] for n in step.keras])
        if self.reset_after and not any("bias" in d for d in by_direction.values()):
            plan.notes.append(f"Keras layer {name!r}: a GRU without bias does not show reset_after "
                              f"in its weights; mapped as reset_after=True (Keras' default), the "
                              f"only GRU PyTorch has")

    def _check_keras(self, name: str, recurrent: TensorRef, bias: tuple | None) -> None:
        shape = recurrent.shape
        if len(shape) != 2 or shape[1] != self.gates * shape[0]:
            raise MappingError(f"Keras layer {name!r}: a {self.keras_kind} needs a recurrent_kernel "
                               f"of shape (H, {self.gates}*H), not {list(shape)}", tensor=recurrent.name)
        if self.reset_after and bias is not None and len(bias[1].shape) != 2:
            raise UnsupportedError(
                f"Keras layer {name!r} is a GRU with reset_after=False (bias {list(bias[1].shape)}): "
                f"it computes what no PyTorch GRU can, so it is not converted",
                tensor=bias[1].name, hint="train the Keras model with GRU(reset_after=True)")
        if bias is not None and tuple(bias[1].shape) != self.bias_shape(shape[0]):
            raise MappingError(
                f"Keras layer {name!r}: a {self.keras_kind} of {shape[0]} units has a bias of "
                f"shape {list(self.bias_shape(shape[0]))}, not {list(bias[1].shape)}"
                + (CUDNN_HINT if tuple(bias[1].shape) == (2 * self.gates * shape[0],) else ""),
                tensor=bias[1].name)

    def bias_shape(self, units: int) -> tuple[int, ...]:
        """The Keras bias of this family for ``units``."""
        if self.cudnn:
            return (2 * self.gates * units,)
        return (2, self.gates * units) if self.reset_after else (self.gates * units,)

    # ------------------------------------------------------------ the per-layer check

    def check_name(self, local: str) -> str:
        """The tensor's name in the one-layer module the per-layer check builds (layer 0)."""
        found = TORCH_NAME.fullmatch(local)
        if found is None:
            return local
        kind, gate, _, reverse = found.groups()
        return f"{kind}_{gate}_l0{reverse or ''}"


def check_recurrent(c: LayerCase) -> Built:
    w_ih, w_hh = c.shape("weight_ih_l0"), c.shape("weight_hh_l0")
    hidden, inputs = w_hh[1], w_ih[1]
    bias, bidirectional = c.has("bias_ih_l0"), c.has("weight_ih_l0_reverse")
    nonlinearity = str(c.options.get("nonlinearity", "tanh"))
    extra = {"nonlinearity": nonlinearity} if c.family == "RNN" else {}
    module = getattr(c.nn, c.family)(inputs, hidden, 1, bias=bias, batch_first=True,
                                     bidirectional=bidirectional, **extra)
    keras_cell = {"LSTM": lambda: c.layers.LSTM(hidden, return_sequences=True, use_bias=bias),
                  "GRU": lambda: c.layers.GRU(hidden, return_sequences=True, use_bias=bias,
                                              reset_after=True),
                  "RNN": lambda: c.layers.SimpleRNN(hidden, return_sequences=True, use_bias=bias,
                                                    activation=nonlinearity)}[c.family]()
    layer = c.layers.Bidirectional(keras_cell) if bidirectional else keras_cell
    note = ("tanh assumed (the activation is not in the weights)"
            if c.family == "RNN" and "nonlinearity" not in c.options else "")
    return Built(module, layer, [c.normal((BATCH, 6, inputs))],
                 torch_call=lambda m, xs: m(*xs)[0], note=note)


# ---------------------------------------------------------------- the Keras rebuild (b: a Build)

#: PyTorch class -> Keras class
KERAS_CLASS = dict(GATES.values())


def _cell_options(m) -> dict:
    kind = type(m).__name__
    if kind == "RNN":
        return {"activation": m.nonlinearity}
    if kind == "GRU":
        return {"reset_after": True, "recurrent_activation": "sigmoid"}
    return {"recurrent_activation": "sigmoid"}


def rebuild_recurrent(b, m, x, hx=None):
    """One Keras layer per stacked layer, named as the rule table names them; returns
    PyTorch's ``(out, h_n)`` or ``(out, (h_n, c_n))``."""
    x = b.as_value(x)
    if hx is not None:
        raise b.unsupported("an initial state argument")
    if getattr(m, "proj_size", 0):
        raise b.unsupported("proj_size (Keras LSTM has no projection)")
    if x.rank != 3:
        raise b.unsupported(f"an input of rank {x.rank} (unbatched or packed)")
    perm = b.sequence(m.batch_first)
    y, states = b.view(x, perm), []
    for k in range(m.num_layers):
        y, *layer_states = _stacked_layer(b, m, k)(y)
        states.append(layer_states)
    out = b.value(y, perm)
    lstm = type(m).__name__ == "LSTM"
    per_state = 2 if lstm else 1   # (h, c) or (h,), per direction
    stacked = [_stack(b, [s[i::per_state] for s in states], suffix) for i, suffix in
               enumerate(("h_n", "c_n")[:per_state])]
    return (out, tuple(stacked)) if lstm else (out, stacked[0])


def _stacked_layer(b, m, k: int):
    """The Keras layer of stacked layer ``k`` (``M``, or ``M.l0``, ``M.l1``...)."""
    name = b.path if m.num_layers == 1 else f"{b.path}.l{k}"
    options = dict(units=m.hidden_size, use_bias=m.bias, return_sequences=True,
                   return_state=True, **_cell_options(m))
    cls = getattr(b.layers, KERAS_CLASS[type(m).__name__])
    if m.bidirectional:
        layer = b.new(b.layers.Bidirectional, cls(**options), name=name)
    else:
        layer = b.new(cls, name=name, **options)
    b.weights(layer, name)
    return layer


def _stack(b, groups: list[list], suffix: str):
    """PyTorch's h_n: (layers * directions, N, H), forward before backward per layer."""
    return b.value(b.op("stack", [t for group in groups for t in group], axis=0, suffix=suffix),
                   name=f"{b.name}.{suffix}")


# ---------------------------------------------------------------- the families

def _stem(pattern: str) -> str:
    """``weight_ih_l{k}{rev}`` -> ``weight_ih``."""
    return pattern.split("_l{k}")[0]


def _gates(shape: tuple, rows_are_gates: bool) -> int | None:
    """G of a (G*H, H) recurrent weight (PyTorch) or a (H, G*H) recurrent kernel (Keras)."""
    if len(shape) != 2:
        return None
    big, h = shape if rows_are_gates else shape[::-1]
    return big // h if h and big % h == 0 else None


def _leaf(weights: dict[str, TensorRef], leaf: str) -> TensorRef | None:
    return next((ref for w, ref in weights.items() if w.rsplit("/", 1)[-1] == leaf), None)


def keras_kind(weights: dict[str, TensorRef]) -> Inference | None:
    """The Keras class of a layer holding a recurrent_kernel, from its gate count; a bias of
    (2*G*H,) is the Keras 2 cuDNN layout (tf.keras itself tells them apart so)."""
    rk = _leaf(weights, "recurrent_kernel")
    if rk is None:
        return None
    gates = _gates(rk.shape, rows_are_gates=False)
    if gates not in GATES:
        return Inference(None, f"a recurrent_kernel of shape {list(rk.shape)} fits no gate count")
    bias = _leaf(weights, "bias")
    if gates in CUDNN and bias is not None and tuple(bias.shape) == (2 * gates * rk.shape[0],):
        return Inference(CUDNN[gates], f"recurrent_kernel {list(rk.shape)}: {gates} gates; bias "
                                       f"{list(bias.shape)} = [input; recurrent]: the cuDNN layout")
    return Inference(GATES[gates][1], f"recurrent_kernel {list(rk.shape)}: {gates} gate(s)")


def _parse_torch(path: str, params: dict[str, TensorRef], plan
                 ) -> dict[tuple[int, str], dict[str, TensorRef]]:
    """``{(layer, "" or "_reverse"): {"weight_ih": ref, ...}}``; unknown tensors are carried."""
    cells: dict[tuple[int, str], dict[str, TensorRef]] = {}
    unknown, styles = [], set()
    for pname, ref in params.items():
        found = TORCH_NAME.fullmatch(pname)
        if found is None:
            unknown.append(ref.name)
            continue
        kind, gate, layer, reverse = found.groups()
        if gate == "hr":
            raise UnsupportedError("an LSTM with proj_size has no Keras counterpart", tensor=ref.name)
        styles.add(layer is None)
        cells.setdefault((int(layer or 0), reverse or ""), {})[f"{kind}_{gate}"] = ref
    _check_layout(path, cells, styles, params)
    if unknown:
        plan.carry(unknown, f"{path}: kept verbatim, no Keras weight in a recurrent layer: "
                          f"{', '.join(unknown)}")
    return cells


def _check_layout(path: str, cells: dict, styles: set, params: dict[str, TensorRef]) -> None:
    first = next(iter(params.values())).name
    if not cells:
        raise MappingError(f"{path}: no recurrent weights (weight_ih_l0 ...)", tensor=first)
    if len(styles) > 1:
        raise MappingError(f"{path}: cell names (weight_ih) mixed with layer names (weight_ih_l0)",
                           tensor=first)
    layers = sorted({k for k, _ in cells})
    if layers != list(range(len(layers))):
        raise MappingError(f"{path}: recurrent layers {layers} are not 0..{len(layers) - 1}",
                           tensor=first)
    if any((k, "") not in cells for k, _ in cells):
        raise MappingError(f"{path}: a _reverse direction without its forward one", tensor=first)
    bidirectional = {k for k, s in cells if s}
    if bidirectional and bidirectional != set(layers):
        raise MappingError(f"{path}: only some layers have _reverse tensors", tensor=first)


def _parse_keras(name: str, weights: dict[str, TensorRef]
                 ) -> dict[str, dict[str, tuple[str, TensorRef]]]:
    """``{direction: {leaf: (weight path, ref)}}``; direction ``forward``/``backward`` in a
    Bidirectional (Keras' own paths say ``forward_lstm/lstm_cell/kernel``), else ``""``."""
    out: dict[str, dict[str, tuple[str, TensorRef]]] = {}
    for path, ref in weights.items():
        parts = path.split("/")
        direction = next((d for d in ("forward", "backward") if parts[0].startswith(d)), "")
        direction = direction if len(parts) > 1 else ""
        if parts[-1] not in ("kernel", "recurrent_kernel", "bias") or parts[-1] in out.get(direction, {}):
            raise UnsupportedError(f"Keras layer {name!r}: unexpected recurrent weight {path!r}",
                                   tensor=ref.name)
        out.setdefault(direction, {})[parts[-1]] = (path, ref)
    if "" in out and len(out) > 1 or ("backward" in out) != ("forward" in out):
        raise UnsupportedError(f"Keras layer {name!r}: a Bidirectional needs forward and backward "
                               f"weights and nothing else, found {sorted(weights)}")
    return out


def _need(d: dict[str, TensorRef], key: str, layer: str) -> TensorRef:
    if key not in d:
        some = next(iter(d.values()))
        raise MappingError(f"{layer}: a recurrent layer needs {key} beside this tensor", tensor=some.name)
    return d[key]


def _need_keras(d: dict, key: str, layer: str) -> tuple[str, TensorRef]:
    if key not in d:
        raise MappingError(f"Keras layer {layer!r} lacks its {key}")
    return d[key]


def _kernel_op(order: tuple[int, ...]) -> Op:
    return GateReorder(order) if order else T


def _bias_op(order: tuple[int, ...], carry: bool) -> Op:
    return StackBias(order) if order else SumBias(carry)


CELL_REBUILD = ("not covered yet: a cell is called once per time step by the model's own loop; "
                "the rebuild covers the whole-sequence LSTM, GRU and RNN")


#: what a Keras recurrent layer's config says, and the values PyTorch's layers compute (a GRU
#: config without ``reset_after`` is from Keras before 2.1.3, whose GRU applied the reset gate
#: before the recurrent matmul)
UNITS = {"units": Option("hidden_size")}
TANH = {"activation": Allowed(("tanh",), "tanh", "PyTorch's {name} applies tanh")}
SIGMOID = {"recurrent_activation": Allowed(("sigmoid",), "sigmoid",
                                           "PyTorch's {name} gates are sigmoid")}
RESET_AFTER = {"reset_after": Allowed((True,), False, "PyTorch's GRU applies the reset gate "
                                                      "after the recurrent matmul")}


def _computable(name: str, allowed: dict[str, Allowed]) -> dict[str, Allowed]:
    return {key: replace(a, why=a.why.format(name=name)) for key, a in allowed.items()}


def _rule(name: str, kinds: tuple[str, ...], keras: str, gates: int, order: tuple[int, ...],
          note: str, options: dict[str, Option], computable: dict[str, Allowed],
          **flags: bool) -> RecurrentRule:
    """A recurrent family; ``flags``: ``activation_note``, ``reset_after``."""
    kernel = _kernel_op(order)
    params = (Param("weight_ih_l{k}{rev}", "{dir}kernel", kernel),
              Param("weight_hh_l{k}{rev}", "{dir}recurrent_kernel", kernel),
              Param(("bias_ih_l{k}{rev}", "bias_hh_l{k}{rev}"), "{dir}bias", _bias_op(order, True),
                    required=False))
    return RecurrentRule(name, kinds, keras, params, (), note, check=check_recurrent,
                         rebuild=rebuild_recurrent, cannot={f"rebuild:{name}Cell": CELL_REBUILD},
                         keras_options=options, computable=_computable(name, computable),
                         gates=gates, **flags)


LAYOUT_NOTE = ("; n>1 layers -> Keras layers M.l0..; _reverse -> Bidirectional backward/; "
               "cells (no _l{k}) map to the same Keras layer")
LSTM = _rule("LSTM", ("LSTM", "LSTMCell"), "LSTM", 4, (),
             "gates i,f,g,o = Keras i,f,c,o; bias = bias_ih + bias_hh, the pair carried"
             + LAYOUT_NOTE, UNITS, {**TANH, **SIGMOID})
GRU = _rule("GRU", ("GRU", "GRUCell"), "GRU", 3, (1, 0, 2),
            "gates r,z,n -> Keras z,r,h; Keras GRU(reset_after=True) only" + LAYOUT_NOTE,
            {**UNITS, "reset_after": Option("reset_after")}, {**TANH, **SIGMOID, **RESET_AFTER},
            reset_after=True)
RNN = _rule("RNN", ("RNN", "RNNCell"), "SimpleRNN", 1, (),
            "bias = bias_ih + bias_hh, the pair carried; set the Keras activation (tanh/relu)"
            + LAYOUT_NOTE, {**UNITS, "activation": Option("nonlinearity")},
            {"activation": Allowed(("tanh", "relu"), "tanh", "PyTorch's RNN applies tanh or relu")},
            activation_note=True)

FAMILIES = (LSTM, GRU, RNN)
