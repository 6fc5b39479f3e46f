"""Live models in the pipeline: ``--model`` (PyTorch) and ``--keras-model`` (Keras).

- PyTorch source + ``--model``: the checkpoint must fit the module strictly, whose tree
  gives exact layer kinds and hyper-parameters (num_heads, eps, ...).
- Keras source + ``--keras-model``: Keras' own loader reads the file into the model (a Keras 3
  ``.weights.h5`` is laid out by class, so only the model can name its layers).
- Keras source + ``--model``: the module's own plan names the Keras layers; the file's layers
  are paired with it (by name, else by order), so the output loads strictly into the module.
- PyTorch -> Keras + ``--keras-model``: our layers are paired with the model's and the file is
  written through Keras' savers (``.weights.h5``, ``.keras``) or, for a legacy ``.h5``, by our
  writer under the model's layer names and order.
- A deployment artifact (SavedModel, TFLite) is exported from that Keras model, the user's or
  the module rebuilt in Keras (:mod:`.export`).

After writing, ``notes`` say what the written model needs where it is loaded: a ``.keras``
holding our own layers loads only after ``import transcoder``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import export, progress
from .checkpoint import LAYOUT_KERAS, LAYOUT_TORCH, Checkpoint
from .errors import UsageError
from .formats import Format
from .models import keras_side, torch_side
from .models.inputs import from_options
from .options import Architecture
from .rules import TO_KERAS, TO_TORCH, Plan, plan_to_keras, stored_meta


@dataclass
class LiveModels:
    torch_model: Any = None
    keras_model: Any = None
    pairs: list = field(default_factory=list)
    inputs: Any = None  # InputOptions with input shapes, to rebuild the module in Keras
    arch: Architecture | None = None   # as given (an export reads --quantize from it)
    notes: list[str] = field(default_factory=list)
    wrote: str | None = None   # what write() wrote, for the "wrote DST: ..." line

    @classmethod
    def load(cls, arch: Architecture) -> "LiveModels":
        return cls(torch_side.load_spec(arch.model) if arch.model else None,
                   keras_side.load_spec(arch.keras_model) if arch.keras_model else None,
                   inputs=arch.inputs, arch=arch)

    # -------------------------------------------------------------- before planning

    def attach(self, ckpt: Checkpoint, src: Path) -> Checkpoint:
        """Evidence from the live models into the source checkpoint (may replace it)."""
        if ckpt.layout == LAYOUT_TORCH and self.torch_model is not None:
            torch_side.describe(self.torch_model, ckpt)
            return ckpt
        if ckpt.layout != LAYOUT_KERAS:
            return ckpt
        if self.keras_model is not None:
            keras_side.load_into(self.keras_model, src)
            ckpt.close()
            ckpt = keras_side.checkpoint_of_model(self.keras_model, str(src))
        if self.torch_model is not None and not (ckpt.meta.get("transcoder") or {}).get("steps"):
            ckpt = self._named_by_module(ckpt)
        return ckpt

    def _named_by_module(self, ckpt: Checkpoint) -> Checkpoint:
        """Rename a Keras checkpoint's layers to the module's, with the module's plan to replay.
        A rebuilt model holds a parameter the forward uses directly as a Constant layer named
        by its path: that is where its value comes from."""
        reference = torch_side.checkpoint_of_module(self.torch_model)
        plan = plan_to_keras(reference)
        ours = keras_side.layers_of_checkpoint(plan.apply(reference))
        theirs = keras_side.layers_of_checkpoint(ckpt)
        constants = {t.name: t for t in theirs if keras_side.is_constant(t)}
        self.pairs = keras_side.pair(ours, [t for t in theirs if t.name not in constants])
        renamed = keras_side.renamed_to_ours(self.pairs, ckpt)
        for name in plan.carried:  # else buffers and LSTM bias pairs: the module's own values
            renamed.tensors[name] = (keras_side.constant_value(constants[name], ckpt, reference[name])
                                     if name in constants else reference[name])
        renamed.meta.update(carried=list(plan.carried), transcoder=stored_meta(plan, reference))
        renamed.on_close(ckpt.close)
        renamed.original = ckpt
        return renamed

    # -------------------------------------------------------------- after planning

    def after_plan(self, plan: Plan, ckpt: Checkpoint) -> None:
        if plan.direction == TO_KERAS and self.keras_model is not None:
            ours = keras_side.layers_of_checkpoint(plan.apply(ckpt))
            self.pairs = keras_side.pair(ours, keras_side.layers_of_model(self.keras_model))
        if plan.direction == TO_TORCH and self.torch_model is not None:
            torch_side.check_fit(self.torch_model, plan.apply(ckpt))  # the output will load

    def write(self, target: Checkpoint, tmp: Path, dst: Path, fmt: Format) -> bool:
        """Write ``dst`` (at ``tmp``), of format ``fmt``, through a Keras model (the user's, or
        the module rebuilt in Keras) where the format needs one; False: the format's own
        writer should write."""
        if target.layout != LAYOUT_KERAS or (self.keras_model is None and not fmt.needs_model):
            return False
        if not fmt.needs_model:   # a legacy .h5 under the user's layer names, by our writer
            order = [info.name for info in keras_side.layers_of_model(self.keras_model)]
            fmt.write(keras_side.renamed_to_theirs(self.pairs, target, order), tmp)
            return True
        model = self.keras_model_of(target, dst, fmt)
        self.wrote = self._what(model, fmt)
        if getattr(model, "fixed_batch", None):   # an exported rebuild that could not keep it
            self.notes.append(f"{dst.name} takes batch {model.inputs[0].shape[0]} only: "
                              f"{model.fixed_batch}")
        with progress.status(f"writing {dst.name}: {self.wrote}"):
            if fmt.exported:
                request = export.ExportRequest(fmt, self.arch or Architecture(inputs=self.inputs))
                self.notes += [f"{dst.name}: {note}" for note in export.write(model, tmp, request)]
            else:
                keras_side.save(model, tmp, dst.name)
                self.notes += _classes_note(model, fmt, dst)
        return True

    def _what(self, model, fmt: Format) -> str:
        """``SavedModel of the rebuilt Keras model (12 weights)``."""
        whose = "the rebuilt Keras model" if self.keras_model is None else "your Keras model"
        if self.keras_model is not None and self.arch is not None and self.arch.keras_model:
            whose = f"the Keras model {self.arch.keras_model.rpartition(':')[2]}"
        count = len(getattr(model, "weights", []))
        weights = f"{count} weight{'s' if count != 1 else ''}"
        return f"{WRITTEN_AS.get(fmt.name, fmt.description)} of {whose} ({weights})"

    def keras_model_of(self, target: Checkpoint, dst: Path, fmt: Format):
        """The Keras model holding ``target``'s weights: the user's ``--keras-model`` filled
        with them, or the ``--model`` module rebuilt in Keras with them (``fmt``: what
        ``dst`` is written as)."""
        if self.keras_model is None:
            return self._rebuilt(target, dst, fmt)
        keras_side.fill(self.pairs, target)
        return self.keras_model

    def _rebuilt(self, target: Checkpoint, dst: Path, fmt: Format):
        if self.torch_model is None:
            fmt.check_writable(dst)  # says: needs the architecture
        if self.inputs is None or not self.inputs.input_shapes:
            raise UsageError(f"writing {dst.name} from --model rebuilds the model in Keras, which "
                             f"needs its input shape", hint="pass --input-shape (PyTorch layout)")
        from .models.rebuild import rebuild_for_inputs  # torch and keras

        return rebuild_for_inputs(self.torch_model, from_options(self.inputs), self.inputs,
                                  keras_ckpt=target)


#: what a format written through a Keras model is called in the "wrote" line
WRITTEN_AS = {"savedmodel": "SavedModel", "tflite": "TFLite flatbuffer",
              "keras_zip": ".keras archive", "keras_weights_h5": "Keras 3 weights file"}


def _classes_note(model, fmt: Format, dst: Path) -> list[str]:
    """One line: which of our registered Keras layers the written model uses, if any."""
    if not fmt.stores_classes:   # the file holds no layer classes Keras must find
        return []
    ours = [layer for layer in _all_layers(model) if type(layer).__module__.startswith("transcoder.")]
    if not ours:
        return [f"{dst.name} holds Keras built-in layers only: keras.models.load_model loads "
                f"it without transcoder"]
    counts: dict[str, int] = {}
    for layer in ours:
        label = " ".join(filter(None, (type(layer).__name__, getattr(layer, "op", None))))
        counts[label] = counts.get(label, 0) + 1
    used = ", ".join(f"{label} x{n}" if n > 1 else label for label, n in counts.items())
    return [f"{dst.name} uses transcoder's own Keras layers ({used}): load it after "
            f"`import transcoder`"]


def _all_layers(model) -> list:
    found = []
    for layer in getattr(model, "layers", []):
        found += [layer, *_all_layers(layer)]
    return found
