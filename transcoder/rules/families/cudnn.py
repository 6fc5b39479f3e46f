"""Keras 2 ``CuDNNLSTM`` / ``CuDNNGRU`` <-> PyTorch ``LSTM`` / ``GRU``.

Keras 2's cuDNN layers keep their weights as cuDNN reads them (its ``_canonical_to_params``
flattens each gate's block in C order), and tf.keras converts them when it loads them into a
``LSTM`` / ``GRU(reset_after=True)`` (``_convert_rnn_weights`` of its legacy h5 loader: each input
kernel block ``k.T.reshape(k.shape, order="F")``, each recurrent block transposed, LSTM bias
halves summed, GRU bias reshaped to (2, 3H)). cuDNN computes what PyTorch computes, so the
PyTorch tensors are exact, with no sum:

- ``kernel (I, G*H)``: gate block g ``(I, H)`` holds cuDNN's ``(H, I)`` input matrix in C order,
  which is PyTorch's ``weight_ih`` block: ``block.reshape(H, I)``, the same bytes.
- ``recurrent_kernel (H, G*H)``: gate block g is PyTorch's ``weight_hh`` block as it is.
- ``bias (2*G*H,)`` = ``[input biases; recurrent biases]`` = ``[bias_ih; bias_hh]``.
- Gates: CuDNNLSTM i,f,c,o = PyTorch i,f,g,o; CuDNNGRU z,r,h (Keras' order) -> PyTorch r,z,n.

A Keras layer is read so when its class says ``CuDNNLSTM``/``CuDNNGRU``, or its class is unknown
and its bias is ``(8H,)``/``(6H,)`` (how tf.keras itself tells them apart); a ``LSTM``/``GRU``
whose bias has that shape is refused. PyTorch -> Keras writes ``LSTM``/``GRU`` as always; a
``--rules`` entry with ``kind = "CuDNNLSTM"`` writes the cuDNN layout (for Keras 2). The per-layer
check builds a Keras ``LSTM``/``GRU`` and loads it with the cuDNN weights converted as tf.keras
converts them (a second implementation of that conversion, written from tf.keras' one), so a
wrong block layout here fails it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from ...errors import MappingError
from ..checkcase import Built, LayerCase
from ..ops import Op, register_op
from ..table import Option, Param
from .recurrent import RecurrentRule, check_recurrent

#: Keras block i = PyTorch gate block ORDER[i]
LSTM_ORDER, GRU_ORDER = (0, 1, 2, 3), (1, 0, 2)


def _reorder(x: np.ndarray, order: tuple[int, ...], axis: int = 0) -> list[np.ndarray]:
    parts = np.split(x, len(order), axis=axis)
    return [parts[i] for i in order]


def _inverse(order: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argsort(order))


@register_op
@dataclass(frozen=True)
class CuDNNKernel(Op):
    """PyTorch ``(G*H, in)`` <-> cuDNN-layout Keras ``(in, G*H)``: each gate block's bytes
    unchanged, read as ``(in, H)`` (blocks in Keras gate order)."""

    kind: ClassVar[str] = "cudnn_kernel"
    order: tuple[int, ...] = LSTM_ORDER

    def _gates(self, size: int, shape: tuple) -> None:
        if len(shape) != 2 or size % len(self.order):
            raise MappingError(f"a cuDNN recurrent weight of shape {list(shape)} does not split "
                               f"into {len(self.order)} gates")

    def forward(self, xs):
        self._gates(xs[0].shape[0], xs[0].shape)
        inputs = xs[0].shape[1]
        return [np.hstack([np.ascontiguousarray(b).reshape(inputs, -1)
                           for b in _reorder(xs[0], self.order)])]

    def inverse(self, ys):
        self._gates(ys[0].shape[-1], ys[0].shape)
        inputs = ys[0].shape[0]
        blocks = [np.ascontiguousarray(b).reshape(-1, inputs)
                  for b in np.split(ys[0], len(self.order), axis=1)]
        return [np.vstack([blocks[i] for i in _inverse(self.order)])]

    def forward_shapes(self, shapes):
        self._gates(shapes[0][0] if shapes[0] else 0, shapes[0])
        return [tuple(shapes[0][::-1])]

    def inverse_shapes(self, shapes):
        self._gates(shapes[0][-1] if shapes[0] else 0, shapes[0])
        return [tuple(shapes[0][::-1])]

    def describe(self) -> str:
        return f"gates{self.order}, each block read as (in, H) (cuDNN layout)"

    def spec(self) -> dict:
        return {"op": self.kind, "order": list(self.order)}


@register_op
@dataclass(frozen=True)
class CuDNNBias(Op):
    """PyTorch ``bias_ih``, ``bias_hh`` (G*H,) each <-> Keras ``bias (2*G*H,)`` = [input;
    recurrent], gate blocks in Keras order."""

    kind: ClassVar[str] = "cudnn_bias"
    arity: ClassVar[tuple[int, int]] = (2, 1)
    order: tuple[int, ...] = LSTM_ORDER

    def forward(self, xs):
        return [np.concatenate([p for x in xs for p in _reorder(x, self.order)])]

    def inverse(self, ys):
        halves = np.split(ys[0], 2)
        return [np.concatenate(_reorder(h, _inverse(self.order))) for h in halves]

    def forward_shapes(self, shapes):
        if shapes[0] != shapes[1] or len(shapes[0]) != 1 or shapes[0][0] % len(self.order):
            raise MappingError(f"bias_ih {list(shapes[0])} and bias_hh {list(shapes[1])} must be "
                               f"vectors of one length, {len(self.order)} gates")
        return [(2 * shapes[0][0],)]

    def inverse_shapes(self, shapes):
        if len(shapes[0]) != 1 or shapes[0][0] % (2 * len(self.order)):
            raise MappingError(f"a cuDNN bias must be (2*{len(self.order)}*H,), not "
                               f"{list(shapes[0])}")
        return [(shapes[0][0] // 2,)] * 2

    def describe(self) -> str:
        return f"gates{self.order}, concatenate [ih; hh]"

    def spec(self) -> dict:
        return {"op": self.kind, "order": list(self.order)}


# ---------------------------------------------------------------- the per-layer check

def tf_keras_conversion(weights: list[np.ndarray], gates: int) -> list[np.ndarray]:
    """What tf.keras' legacy loader does to a cuDNN layer's (kernel, recurrent_kernel, bias)
    loading them into an LSTM / GRU(reset_after=True)."""
    kernel, recurrent, bias = weights
    kernel = np.hstack([k.T.reshape(k.shape, order="F") for k in np.hsplit(kernel, gates)])
    recurrent = np.hstack([k.T for k in np.hsplit(recurrent, gates)])
    bias = np.sum(np.split(bias, 2), axis=0) if gates == 4 else bias.reshape(2, -1)
    return [kernel, recurrent, bias]


def check_cudnn(c: LayerCase) -> Built:
    """A PyTorch LSTM/GRU and a Keras LSTM/GRU(reset_after=True), the Keras one loaded with the
    cuDNN weights as tf.keras converts them."""
    family = c.family.removeprefix("CuDNN")
    gates = 4 if family == "LSTM" else 3
    built = check_recurrent(replace(c, family=family))
    built.keras_weights = lambda ws: [w for i in range(0, len(ws), 3)
                                      for w in tf_keras_conversion(ws[i:i + 3], gates)]
    return built


# ---------------------------------------------------------------- the families

NO_REBUILD = ("a Keras 2 layout of nn.{torch}, which the {torch} family rebuilds as a Keras "
              "{torch} (Keras 3 has no cuDNN layer)")


def _rule(name: str, torch: str, gates: int, order: tuple[int, ...]) -> RecurrentRule:
    kernel = CuDNNKernel(order)
    params = (Param("weight_ih_l{k}{rev}", "{dir}kernel", kernel),
              Param("weight_hh_l{k}{rev}", "{dir}recurrent_kernel", kernel),
              Param(("bias_ih_l{k}{rev}", "bias_hh_l{k}{rev}"), "{dir}bias", CuDNNBias(order),
                    required=False))
    return RecurrentRule(name, (name,), name, params, (),
                         f"Keras 2 cuDNN layout of a PyTorch {torch}: gate blocks read as (in, H), "
                         f"bias (2*{gates}H,) = [bias_ih; bias_hh], exact both ways",
                         check=check_cudnn, cannot={"rebuild": NO_REBUILD.format(torch=torch)},
                         keras_options={"units": Option("hidden_size")}, keras_3=False,
                         gates=gates, cudnn=True)


FAMILIES = (_rule("CuDNNLSTM", "LSTM", 4, LSTM_ORDER), _rule("CuDNNGRU", "GRU", 3, GRU_ORDER))
