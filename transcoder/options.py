"""What a user says about a conversion beyond SRC and DST, as plain data (no imports).

These dataclasses travel together through the pipeline, the rebuild and the check, so they
live below all of them: :class:`Architecture` (``--model``, ``--keras-model``),
:class:`InputOptions` (the inputs a rebuild or a check feeds the model) and
:class:`Tolerance` (``--atol``, ``--rtol``), and :class:`CheckRequest`, all a check needs besides
the two files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UsageError

TORCH_LAYOUT, CHANNELS_LAST = "torch", "channels_last"


@dataclass
class InputOptions:
    """Model inputs, as the command line gives them: shapes and dtypes in PyTorch layout
    (``"4,10,128"``, ``"int64:HIGH"``), the seed of the random values, and whether the Keras
    side takes and gives channels-last tensors."""

    input_shapes: list[str] = field(default_factory=list)
    input_dtypes: list[str] = field(default_factory=list)
    seed: int = 0
    channels_last: bool = False

    def __post_init__(self) -> None:
        self.input_shapes = shape_texts(self.input_shapes)
        self.input_dtypes = [self.input_dtypes] if isinstance(self.input_dtypes, str) else \
            list(self.input_dtypes)
        if not all(isinstance(d, str) for d in self.input_dtypes):
            raise UsageError(f"input_dtype {self.input_dtypes!r}: give dtype names "
                             f"(\"float32\", \"int64:HIGH\")")

    @property
    def keras_layout(self) -> str:
        return CHANNELS_LAST if self.channels_last else TORCH_LAYOUT


@dataclass(frozen=True)
class Tolerance:
    """``atol``/``rtol`` as asked; None: the default for the compared dtype, or
    ``default_atol`` where it is set (a quantized artifact's): a default ``atol`` scales with
    the output's magnitude in a full-model check, an asked one stays absolute."""

    atol: float | None = None
    rtol: float | None = None
    default_atol: float | None = None


@dataclass
class Architecture:
    """What the user told about the model: ``--model`` and/or ``--keras-model`` specs, the
    inputs that rebuilding ``--model`` in Keras needs, and how a TFLite export of that Keras
    model quantizes its weights (``--quantize``: None, "float16" or "dynamic")."""

    model: str | None = None
    keras_model: str | None = None
    inputs: InputOptions = field(default_factory=InputOptions)
    quantize: str | None = None

    def __bool__(self) -> bool:
        return bool(self.model or self.keras_model)


@dataclass
class CheckRequest:
    """What checking a conversion needs besides the two files."""

    arch: Architecture = field(default_factory=Architecture)
    key: str | None = None              # how SRC was read: --key and --rules
    rules: Path | None = None
    tolerance: Tolerance = Tolerance()
    strict: bool = False                # everything must be verified
    source_format: str | None = None    # --from: SRC's format, whatever its content


def shape_texts(shapes) -> list[str]:
    """The input shapes as the command line's strings, from what the Python API takes: one
    string (``"2,8,20"``), one tuple of integers (``(2, 8, 20)``), or a list of either."""
    def is_dims(value) -> bool:
        return isinstance(value, (tuple, list)) and all(
            isinstance(d, int) and not isinstance(d, bool) for d in value)

    if isinstance(shapes, str) or (is_dims(shapes) and shapes):
        shapes = [shapes]
    if not isinstance(shapes, (tuple, list)):
        raise UsageError(f"input_shape {shapes!r}: give \"2,8,20\", (2, 8, 20) or a list of them")
    out = []
    for shape in shapes:
        if isinstance(shape, str):
            out.append(shape)
        elif is_dims(shape):
            out.append(",".join(map(str, shape)))
        else:
            raise UsageError(f"input_shape {shape!r}: give \"2,8,20\", (2, 8, 20) or a list "
                             f"of them")
    return out


def user_path(value, what: str = "path") -> Path:
    """A path the user gave, as a Path; UsageError for what no file can be called (not a
    path, a NUL, a character the file system encoding cannot hold, such as a lone surrogate)."""
    if not isinstance(value, (str, os.PathLike)):
        raise UsageError(f"{what} {value!r} is not a path")
    path = Path(value)
    text = str(path)
    try:
        encoded = os.fsencode(text)
    except UnicodeError:
        encoded = b"\0"
    if "\0" in text or b"\0" in encoded:
        raise UsageError(f"{what} {text!r} is not a valid file name (a NUL or a character "
                         f"the file system cannot hold)")
    return path
