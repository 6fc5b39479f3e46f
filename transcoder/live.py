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
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint import LAYOUT_KERAS, LAYOUT_TORCH, Checkpoint
from .errors import UsageError
from .formats import for_path
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

    @classmethod
    def load(cls, arch: Architecture) -> "LiveModels":
        return cls(torch_side.load_spec(arch.model) if arch.model else None,
                   keras_side.load_spec(arch.keras_model) if arch.keras_model else None,
                   inputs=arch.inputs)

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
        """Rename a Keras checkpoint's layers to the module's, with the module's plan to replay."""
        reference = torch_side.checkpoint_of_module(self.torch_model)
        plan = plan_to_keras(reference)
        ours = keras_side.layers_of_checkpoint(plan.apply(reference))
        self.pairs = keras_side.pair(ours, keras_side.layers_of_checkpoint(ckpt))
        renamed = keras_side.renamed_to_ours(self.pairs, ckpt)
        for name in plan.carried:  # buffers and LSTM bias pairs: the module's own values
            renamed.tensors[name] = reference[name]
        renamed.meta.update(carried=list(plan.carried), transcoder=stored_meta(plan, reference))
        renamed.on_close(ckpt.close)
        return renamed

    # -------------------------------------------------------------- after planning

    def after_plan(self, plan: Plan, ckpt: Checkpoint) -> None:
        if plan.direction == TO_KERAS and self.keras_model is not None:
            ours = keras_side.layers_of_checkpoint(plan.apply(ckpt))
            self.pairs = keras_side.pair(ours, keras_side.layers_of_model(self.keras_model))
        if plan.direction == TO_TORCH and self.torch_model is not None:
            torch_side.check_fit(self.torch_model, plan.apply(ckpt))  # the output will load

    def write(self, target: Checkpoint, tmp: Path, dst: Path) -> bool:
        """Write through a Keras model (the user's, or the module rebuilt in Keras) where the
        format needs one; False: the format's own writer should write."""
        keras_saved = for_path(dst).needs_model
        if target.layout != LAYOUT_KERAS or (self.keras_model is None and not keras_saved):
            return False
        if self.keras_model is None:
            keras_side.save(self._rebuilt(target, dst), tmp, dst.name)
        elif keras_saved:
            keras_side.fill(self.pairs, target)
            keras_side.save(self.keras_model, tmp, dst.name)
        else:
            order = [info.name for info in keras_side.layers_of_model(self.keras_model)]
            for_path(dst).write(keras_side.renamed_to_theirs(self.pairs, target, order), tmp)
        return True

    def _rebuilt(self, target: Checkpoint, dst: Path):
        if self.torch_model is None:
            for_path(dst).check_writable(dst)  # says: needs the architecture
        if self.inputs is None or not self.inputs.input_shapes:
            raise UsageError(f"writing {dst.name} from --model rebuilds the model in Keras, which "
                             f"needs its input shape", hint="pass --input-shape (PyTorch layout)")
        from .models.rebuild import rebuild_for_inputs  # torch and keras

        return rebuild_for_inputs(self.torch_model, from_options(self.inputs), self.inputs,
                                  keras_ckpt=target)
