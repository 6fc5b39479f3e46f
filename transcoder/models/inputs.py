"""Model inputs for a rebuild or a check, described in PyTorch layout (:class:`InputSpec`).

Floating inputs are N(0, 1); integer inputs are drawn in ``[low, high)``, ``high`` defaulting to
the size of the first ``nn.Embedding`` the input feeds (found by running the module once with
zeros and watching which embedding receives a view of that input). With the channels-last
layout a Keras model takes floating inputs of rank >= 3 with axis 1 moved last.

numpy only; :func:`embedding_ranges` is handed ``torch`` by its caller.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from ..checkpoint import DTYPES
from ..errors import UsageError, one_line
from ..options import CHANNELS_LAST, InputOptions


@dataclass(frozen=True)
class InputSpec:
    """One model input, PyTorch layout, batch included. Integer inputs are drawn in
    ``[low, high)``; ``high`` None: the size of the embedding the input feeds."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    low: int | None = None
    high: int | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise UsageError(f"unknown input dtype {self.dtype!r}; known: {', '.join(DTYPES)}")
        if any(not isinstance(d, int) or d < 0 for d in self.shape):
            raise UsageError(f"an input shape needs non-negative integers, not {list(self.shape)}")

    @property
    def is_integer(self) -> bool:
        return DTYPES[self.dtype].kind in "iu"

    @property
    def is_float(self) -> bool:
        return DTYPES[self.dtype].kind == "f" or self.dtype == "bfloat16"


def parse_shape(text: str) -> tuple[int, ...]:
    """``"4,10,128"``, ``"4x10x128"`` or ``"(4, 10, 128)"`` -> ``(4, 10, 128)``."""
    parts = [p for p in re.split(r"[x,\s()\[\]]+", text.strip().lower()) if p]
    try:
        return tuple(int(p) for p in parts)
    except ValueError:
        raise UsageError(f"--input-shape {text!r} is not a list of integers like 4,10,128") from None


def parse_dtype(text: str) -> tuple[str, int | None, int | None]:
    """``"float32"``, ``"int64:HIGH"`` or ``"int64:LOW:HIGH"`` -> ``(dtype, low, high)``."""
    name, *bounds = text.strip().split(":")
    try:
        numbers = [int(b) for b in bounds]
    except ValueError:
        raise UsageError(f"--input-dtype {text!r}: bounds must be integers (int64:HIGH or "
                         f"int64:LOW:HIGH)") from None
    if len(numbers) > 2:
        raise UsageError(f"--input-dtype {text!r}: at most LOW:HIGH after the dtype")
    if len(numbers) == 2:
        return name, numbers[0], numbers[1]
    return name, None, numbers[0] if numbers else None


def parse_input_specs(shapes: Sequence[str], dtypes: Sequence[str] = ()) -> list[InputSpec]:
    """Specs from the CLI's repeated ``--input-shape`` and ``--input-dtype``: no dtype means
    float32 for all, one dtype applies to all, else one per shape."""
    if not shapes:
        raise UsageError("the forward check needs --input-shape (PyTorch layout, batch "
                         "included, e.g. --input-shape 4,10,128)")
    dtypes = list(dtypes) or ["float32"]
    if len(dtypes) == 1:
        dtypes *= len(shapes)
    if len(dtypes) != len(shapes):
        raise UsageError(f"{len(shapes)} --input-shape but {len(dtypes)} --input-dtype: give one "
                         f"dtype for all or one per shape")
    specs = []
    for shape, dtype in zip(shapes, dtypes):
        name, low, high = parse_dtype(dtype)
        specs.append(InputSpec(parse_shape(shape), name, low, high))
    return specs


def as_specs(specs: Iterable[Any]) -> list[InputSpec]:
    """InputSpecs from InputSpecs, shapes ``(4, 10, 128)`` or ``(shape, dtype)`` pairs."""
    out = []
    for spec in specs:
        if isinstance(spec, InputSpec):
            out.append(spec)
        elif isinstance(spec, dict):
            out.append(InputSpec(tuple(spec["shape"]), spec.get("dtype", "float32"),
                                 spec.get("low"), spec.get("high")))
        elif len(spec) == 2 and isinstance(spec[1], str):
            out.append(InputSpec(tuple(spec[0]), spec[1]))
        else:
            out.append(InputSpec(tuple(int(d) for d in spec)))
    if not out:
        raise UsageError("the forward check needs at least one input shape")
    return out


def embedding_ranges(torch, module, specs: list[InputSpec]) -> tuple[dict[int, int], list[str]]:
    """``{input index: num_embeddings}`` for integer inputs without ``high``, and notes."""
    wanted = [i for i, s in enumerate(specs) if s.is_integer and s.high is None]
    if not wanted:
        return {}, []
    embeddings = [(p, m) for p, m in module.named_modules()
                  if isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag))]
    if not embeddings:
        raise UsageError(f"integer input {wanted[0]} feeds no nn.Embedding: give its range "
                         f"(--input-dtype int64:HIGH)")
    probes = [torch.zeros(s.shape, dtype=_torch_dtype(torch, s.dtype)) for s in specs]
    fed: dict[int, int] = {}

    def hook(m, args):
        for i in wanted:
            if i not in fed and args and _shares_storage(args[0], probes[i]):
                fed[i] = m.num_embeddings

    handles = [m.register_forward_pre_hook(hook) for _, m in embeddings]
    notes = []
    try:
        with torch.no_grad():
            module(*probes)
    except Exception as exc:  # noqa: BLE001 - the probe is best effort; the real run reports
        notes.append(f"could not trace which embedding the integer inputs feed ({one_line(exc)})")
    finally:
        for h in handles:
            h.remove()
    smallest = min(m.num_embeddings for _, m in embeddings)
    for i in wanted:
        if i not in fed:
            fed[i] = smallest
            notes.append(f"input {i}: no nn.Embedding receives it directly; drawn below {smallest},"
                         f" the smallest embedding (give --input-dtype int64:HIGH to set it)")
    return fed, notes


def _shares_storage(a, b) -> bool:
    try:
        return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr() and b.numel() > 0
    except (AttributeError, RuntimeError):
        return False


def make_inputs(specs: list[InputSpec], seed: int, highs: dict[int, int] | None = None
                ) -> list[np.ndarray]:
    """Seeded inputs in PyTorch layout: N(0, 1) floats, integers in [low, high), random bools."""
    rng = np.random.default_rng(seed)
    arrays = []
    for i, spec in enumerate(specs):
        dtype = DTYPES[spec.dtype]
        if spec.is_float:
            arrays.append(rng.standard_normal(spec.shape).astype(dtype))
        elif spec.is_integer:
            low = spec.low or 0
            high = spec.high if spec.high is not None else (highs or {}).get(i)
            if high is None or high <= low:
                raise UsageError(f"input {i}: integer range [{low}, {high}) is empty or unknown")
            arrays.append(rng.integers(low, high, size=spec.shape).astype(dtype))
        elif spec.dtype == "bool":
            arrays.append(rng.integers(0, 2, size=spec.shape).astype(bool))
        else:
            raise UsageError(f"input {i}: cannot draw random {spec.dtype} inputs")
    return arrays


def _torch_dtype(torch, name: str):
    return getattr(torch, name)


def to_keras_layout(array: np.ndarray, spec: InputSpec, keras_layout: str) -> np.ndarray:
    if keras_layout == CHANNELS_LAST and spec.is_float and array.ndim >= 3:
        return np.ascontiguousarray(np.moveaxis(array, 1, -1))
    return array


def from_options(inputs: InputOptions) -> list[InputSpec]:
    """The specs the command line's ``--input-shape``/``--input-dtype`` describe."""
    return parse_input_specs(inputs.input_shapes, inputs.input_dtypes)
