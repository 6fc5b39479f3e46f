"""A plan's unit: :class:`Step`, PyTorch tensors <-> Keras weights through one op.

Families (``families/``) make steps and add them to a plan; the engine (``plan.py``) holds the
:class:`~.plan.Plan` and applies it. Both import this module, so it imports neither.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..checkpoint import TensorRef
from ..errors import MappingError, TranscoderError
from .ops import Op, op_from_spec

TO_KERAS, TO_TORCH, COPY = "to_keras", "to_torch", "copy"
#: ``Step.rule`` of a step that a ``[[tensor]]`` entry of ``--rules`` made, not a family.
BY_USER_RULES = "--rules"


@dataclass(frozen=True)
class Step:
    torch: tuple[str, ...]
    keras: tuple[str, ...]
    op: Op
    rule: str       # the family that made it, or BY_USER_RULES
    layer: str      # Keras layer the weights belong to

    def spec(self) -> dict:
        return {"torch": list(self.torch), "keras": list(self.keras), "op": self.op.spec(),
                "rule": self.rule, "layer": self.layer}

    @classmethod
    def from_spec(cls, spec: dict) -> "Step":
        try:
            return cls(tuple(spec["torch"]), tuple(spec["keras"]), op_from_spec(spec["op"]),
                       spec["rule"], spec["layer"])
        except (KeyError, TypeError) as exc:
            raise MappingError(f"stored conversion metadata is malformed ({exc})") from None


def check_shapes(step: Step, shapes: list) -> list:
    """The step's output shapes; MappingError naming the tensor when the op refuses them."""
    try:
        return step.op.forward_shapes(shapes)
    except TranscoderError as exc:
        raise exc.with_context(tensor=step.torch[0]) from None
    except ValueError as exc:  # e.g. a reshape to a size that does not fit
        raise MappingError(str(exc), tensor=step.torch[0]) from None


def note_inverse(plan, step: Step, refs: list[TensorRef]) -> None:
    """Ops whose inverse depends on the data (LSTM bias pairs) say what it will do, as a note."""
    message = step.op.inverse_note(refs, step)
    plan.notes.extend([message] if message else [])
