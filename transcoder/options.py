"""What a user says about a conversion beyond SRC and DST, as plain data (no imports).

These dataclasses travel together through the pipeline, the rebuild and the check, so they
live below all of them: :class:`Architecture` (``--model``, ``--keras-model``),
:class:`InputOptions` (the inputs a rebuild or a check feeds the model) and
:class:`Tolerance` (``--atol``, ``--rtol``), and :class:`CheckRequest`, all a check needs besides
the two files.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

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

    @property
    def keras_layout(self) -> str:
        return CHANNELS_LAST if self.channels_last else TORCH_LAYOUT


@dataclass(frozen=True)
class Tolerance:
    """``atol``/``rtol`` as asked; None: the default for the compared dtype."""

    atol: float | None = None
    rtol: float | None = None


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
