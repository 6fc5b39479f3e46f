"""The in-memory checkpoint every stage speaks: ordered names -> lazy tensors, plus metadata.

A :class:`TensorRef` knows its shape and dtype before any data is read; ``load()`` reads
(and, for mapped tensors, transforms) the data on demand, so writers can stream tensor by
tensor. Only numpy crosses module borders; bfloat16 is ``ml_dtypes.bfloat16``.
"""
from __future__ import annotations

import math
import sys
import threading
from collections.abc import Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from .errors import FormatError

LAYOUT_TORCH = "torch"
LAYOUT_KERAS = "keras"

#: numpy's own limit on dimensions (HDF5 allows 32).
MAX_DIMS = 64
#: No tensor is larger than this, whatever a file declares (2^62 bytes keeps every size and
#: offset computed from it inside a signed 64-bit integer).
MAX_TENSOR_BYTES = 1 << 62

# ml_dtypes (for bfloat16) is imported only when a bfloat16 tensor is met: it is slow to import.
_NUMPY_DTYPES: dict[str, np.dtype | None] = {
    "float64": np.dtype(np.float64),
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": None,  # np.dtype(ml_dtypes.bfloat16), on first look-up
    "int64": np.dtype(np.int64),
    "int32": np.dtype(np.int32),
    "int16": np.dtype(np.int16),
    "int8": np.dtype(np.int8),
    "uint8": np.dtype(np.uint8),
    "bool": np.dtype(np.bool_),
    "complex64": np.dtype(np.complex64),
    "complex128": np.dtype(np.complex128),
}


class _DtypeTable(Mapping):
    """Canonical dtype names -> numpy dtypes; looking up ``"bfloat16"`` imports ml_dtypes."""

    def __getitem__(self, name: str) -> np.dtype:
        dtype = _NUMPY_DTYPES[name]
        if dtype is None:
            import ml_dtypes

            dtype = np.dtype(ml_dtypes.bfloat16)
        return dtype

    def __contains__(self, name: object) -> bool:
        return name in _NUMPY_DTYPES

    def __iter__(self) -> Iterator[str]:
        return iter(_NUMPY_DTYPES)

    def __len__(self) -> int:
        return len(_NUMPY_DTYPES)


#: Canonical dtype names -> numpy dtypes. Every reader and writer goes through this table.
DTYPES: Mapping[str, np.dtype] = _DtypeTable()


def is_bfloat16(dtype: Any) -> bool:
    """Whether ``dtype`` is ml_dtypes' bfloat16. Such data exists only once ml_dtypes is
    imported, so this never imports it."""
    ml_dtypes = sys.modules.get("ml_dtypes")
    # another thread may be importing it (a partly initialised module): no such data exists yet
    bfloat16 = getattr(ml_dtypes, "bfloat16", None)
    return bfloat16 is not None and np.dtype(dtype) == bfloat16


def dtype_name(dtype: Any) -> str:
    """Canonical name of a numpy dtype (``"bfloat16"`` included); FormatError if unsupported."""
    if isinstance(dtype, str) and dtype in _NUMPY_DTYPES:
        return dtype
    if is_bfloat16(dtype):
        return "bfloat16"
    dt = np.dtype(dtype)
    for name, known in _NUMPY_DTYPES.items():
        if dt == known:
            return name
    raise FormatError(f"unsupported dtype {dt}")


#: (byte offset in a tensor's C-order data, those bytes as 1-d uint8)
Piece = tuple[int, np.ndarray]


class Target(np.ndarray):
    """A scratch buffer (see :meth:`TensorRef.pieces`) that also carries ``out``: the tensor's
    own ``nbytes`` in the output file (a writable 1-d uint8 array, a shared mapping of the
    file). A producer that knows it (:func:`.rules.transpose.permuted_pieces`) permutes
    straight into ``out`` and yields views of it, already in place; any other uses it as plain
    scratch. Views of it carry no ``out``."""

    out: np.ndarray | None = None
    #: called with each slice of ``out`` about to be written (a mapped output faults its
    #: pages in at once), or None
    ready: Callable[[np.ndarray], None] | None = None

    @classmethod
    def of(cls, scratch: np.ndarray, out: np.ndarray,
           ready: Callable[[np.ndarray], None] | None = None) -> "Target":
        target = scratch.view(cls)
        target.out, target.ready = out, ready
        return target

    def __array_finalize__(self, obj: Any) -> None:
        self.out = self.ready = None


def target_of(scratch: np.ndarray, nbytes: int) -> np.ndarray | None:
    """The output bytes a scratch buffer carries for a tensor of ``nbytes`` bytes, if any."""
    out = getattr(scratch, "out", None)
    return out if out is not None and len(out) == nbytes else None


def check_name(name: object) -> None:
    """FormatError unless ``name`` can be a tensor name in every format we write: a string
    without NUL (HDF5 cuts names there) that encodes as UTF-8 (no lone surrogates)."""
    if not isinstance(name, str):
        raise FormatError(f"tensor name is not a string: {type(name).__name__}")
    if "\0" in name:
        raise FormatError("tensor name holds a NUL character", tensor=name)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise FormatError("tensor name is not valid Unicode (lone surrogate)", tensor=name) from None


def check_shape(shape: Any, itemsize: int, name: str | None = None) -> tuple[int, ...]:
    """``shape`` as a tuple of ints; FormatError for negative or non-integer sizes, more than
    :data:`MAX_DIMS` dimensions or more than :data:`MAX_TENSOR_BYTES` bytes (empty dimensions
    counted as 1: no format or library holds a dimension of 2^64, even in an empty tensor)."""
    try:
        dims = tuple(shape)
    except TypeError:
        raise FormatError("tensor shape is not a list of sizes", tensor=name) from None
    if len(dims) > MAX_DIMS:
        raise FormatError(f"tensor has {len(dims)} dimensions (at most {MAX_DIMS} are supported)",
                          tensor=name)
    if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0
               for d in dims):
        raise FormatError("tensor shape holds a size that is not a non-negative integer",
                          tensor=name)
    dims = tuple(int(d) for d in dims)
    count = 1
    for d in dims:   # an empty dimension does not excuse an absurd one (2^64 x 0)
        count *= max(d, 1)
    if count * itemsize > MAX_TENSOR_BYTES:
        empty = " counting its empty dimensions as 1" if 0 in dims else ""
        raise FormatError(f"tensor declares {count * itemsize} bytes{empty} (more than 2^62)",
                          tensor=name)
    return dims


def _itemsize(dtype: str) -> int:
    return 2 if dtype == "bfloat16" else _NUMPY_DTYPES[dtype].itemsize


@dataclass
class TensorRef:
    """A named tensor whose data is read only when :meth:`load` is called."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    loader: Callable[[], np.ndarray] = field(repr=False)
    #: optional: ``blocker(scratch, part=None)`` yields the pieces of :meth:`pieces` (all of
    #: them in order when ``part`` is None), written into the scratch buffer where data moves
    blocker: Callable[..., Iterator[Piece]] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        check_name(self.name)
        if self.dtype not in _NUMPY_DTYPES:
            raise FormatError(f"unsupported dtype {self.dtype!r}"[:120], tensor=self.name)
        self.shape = check_shape(self.shape, _itemsize(self.dtype), self.name)

    @classmethod
    def from_array(cls, name: str, array: np.ndarray) -> "TensorRef":
        array = np.asarray(array)
        return cls(name, tuple(array.shape), dtype_name(array.dtype), lambda: array)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _itemsize(self.dtype)

    def blocks(self, scratch: np.ndarray) -> Iterator[np.ndarray]:
        """The data in C order as consecutive 1-d uint8 blocks, ``nbytes`` in all, for writers
        that stream. Blocks may be written into ``scratch`` (a uint8 buffer), so each is valid
        only until the next one is asked for. Without a ``blocker``: the loaded array, whole."""
        if self.blocker is not None:
            for _, block in self.blocker(scratch):
                yield block
        else:
            yield _bytes(self.load())

    def pieces(self, scratch: np.ndarray, part: tuple[int, int] = (0, 1)) -> Iterator[Piece]:
        """Share ``part`` = (k, n) of the data (the k-th of n about equal shares; together they
        cover every byte once) as ``(offset, bytes)`` pieces in any order, for writers that put
        each piece at its place; threads can fill the shares of one tensor side by side (see
        :class:`SharedLoads`). Pieces may be written into ``scratch`` like :meth:`blocks`."""
        if self.blocker is not None:
            yield from self.blocker(scratch, part)
            return
        array = self.load()
        data, count, k, n = _bytes(array), array.size, *part
        lo, hi = (count * k // n * array.itemsize, count * (k + 1) // n * array.itemsize)
        if hi > lo:
            yield lo, data[lo:hi]

    def load(self) -> np.ndarray:
        """Read the data; raises FormatError if it does not match the declared shape/dtype.
        Inside :meth:`SharedLoads.active`, every thread gets the array the first one loaded."""
        shared = _SHARED.get()
        return self._load() if shared is None else shared.load(self)

    def _load(self) -> np.ndarray:
        array = np.asarray(self.loader())
        if tuple(array.shape) != tuple(self.shape) or dtype_name(array.dtype) != self.dtype:
            raise FormatError(
                f"data is {array.dtype}{list(array.shape)}, header says {self.dtype}{list(self.shape)}",
                tensor=self.name)
        return array


def _bytes(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


_SHARED: ContextVar["SharedLoads | None"] = ContextVar("transcoder_shared_loads", default=None)


class SharedLoads:
    """Loads each tensor once for all the threads that fill shares of one large tensor.

    Inside :meth:`active` (entered on each of those threads), :meth:`TensorRef.load` returns
    the array the first caller loaded, the source of a permuted tensor included; the others
    wait for that load instead of repeating it (an ``.h5`` dataset is read whole). The arrays
    are kept until this object is dropped.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()  # re-entered: a tensor's loader loads its sources
        self._arrays: dict[int, tuple[TensorRef, np.ndarray]] = {}

    def load(self, ref: TensorRef) -> np.ndarray:
        with self._lock:
            if id(ref) not in self._arrays:
                self._arrays[id(ref)] = (ref, ref._load())  # the ref is kept: its id stays unique
            return self._arrays[id(ref)][1]

    @contextmanager
    def active(self) -> Iterator[None]:
        token = _SHARED.set(self)
        try:
            yield
        finally:
            _SHARED.reset(token)


@dataclass
class Checkpoint:
    """Ordered ``name -> TensorRef`` plus what is known about the model.

    Names: in the ``torch`` layout, state-dict keys (``encoder.conv.weight``); in the ``keras``
    layout, ``<layer name>/<weight path>`` (``encoder.conv/kernel``; a Bidirectional's weights are
    ``M/forward/kernel`` ...).

    ``meta`` keys used across stages (all optional, JSON-serialisable):
      - ``"keras_layers"``: list of ``{"name", "class_name" (or None), "weights": [weight paths]}``
        in Keras order, for keras-layout checkpoints (``"h5_path"`` too, from a Keras 3
        ``.weights.h5``; weights a class table cannot name are named by index: ``"0"``, ``"1"``;
        ``"config"``, the layer's own config, when the file has a model config).
      - ``"module_kinds"``: ``{module path: kind}`` for torch-layout checkpoints, where known
        (TorchScript, ``--model``; ``""`` is the root module).
      - ``"module_options"``: ``{module path: {hyper-parameter: value}}`` from ``--model``
        (num_heads, eps, num_layers ...), used as rule options.
      - ``"state_dict_key"``, ``"stripped_prefixes"``, ``"container"``: how a PyTorch file's
        state dict was found (training-checkpoint key, ``module.``/``_orig_mod.``, zip/legacy/
        torchscript).
      - ``"carried"``: names of tensors with no counterpart in this layout, kept verbatim.
      - ``"transcoder"``: the metadata our writers store so the reverse conversion is exact.
      - ``"keras_config"``: a Keras model config dict when the file had one.

    ``as_stated`` is the checkpoint as its file states it: ``original`` when this one renames
    it, else itself.
    """

    tensors: dict[str, TensorRef]
    layout: str
    source: str | None = None
    format: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    _closers: list[Callable[[], None]] = field(default_factory=list, repr=False)
    #: the checkpoint this one renames (a Keras source paired with ``--model``), as the file
    #: states it; closed with this one
    original: "Checkpoint | None" = field(default=None, repr=False, compare=False)

    def __iter__(self) -> Iterator[TensorRef]:
        return iter(self.tensors.values())

    def __len__(self) -> int:
        return len(self.tensors)

    def __getitem__(self, name: str) -> TensorRef:
        return self.tensors[name]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    def on_close(self, closer: Callable[[], None]) -> None:
        """Register a callback (e.g. closing a file handle) for :meth:`close`."""
        self._closers.append(closer)

    @property
    def as_stated(self) -> "Checkpoint":
        return self.original if self.original is not None else self

    def close(self) -> None:
        while self._closers:
            self._closers.pop()()

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
