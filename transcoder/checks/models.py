"""Full-model check: the same seeded inputs through the PyTorch module and the Keras model,
every output compared and, when they differ, the first paired layer that diverges named
(:mod:`.localise`).

Inputs are described in PyTorch layout (:class:`~transcoder.models.inputs.InputSpec`). With
``keras_layout="channels_last"`` the Keras model takes floating inputs of rank >= 3 with axis 1
moved last, and its outputs are moved back before they are compared.

torch and keras are imported only when :func:`check_models` runs.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import UsageError
from ..frameworks import import_keras, import_torch
from ..models.inputs import as_specs, embedding_ranges, make_inputs, to_keras_layout
from ..options import CHANNELS_LAST, TORCH_LAYOUT, Tolerance
from .compare import FAIL, SKIPPED, Comparison, CompareSettings
from .localise import ModelRun, first_divergence, trace_pairs
from .report import CheckReport
from .run import flatten_outputs, run_keras, run_torch

LAYOUTS = (TORCH_LAYOUT, CHANNELS_LAST)
LOCALISE = ("auto", "always", "never")


def check_models(torch_module, keras_model, input_specs: Iterable[Any], *, seed: int = 0,
                 tolerance: Tolerance = Tolerance(), keras_layout: str = TORCH_LAYOUT,
                 pairs: Sequence[tuple[str, str]] | None = None,
                 localise: str = "auto") -> CheckReport:
    """Run both models on the same seeded inputs and compare every output (PyTorch expected).

    ``input_specs``: :class:`InputSpec`, shapes or ``(shape, dtype)`` pairs, PyTorch layout.
    ``keras_layout``: ``"torch"`` (the Keras model takes and gives PyTorch-layout tensors) or
    ``"channels_last"``. ``pairs``: ``(module path, Keras layer name)`` for localisation
    (default: by name). ``localise``: ``"auto"`` (when an output differs), ``"always"``,
    ``"never"``. ``tolerance``: None fields default per output dtype.
    """
    if keras_layout not in LAYOUTS:
        raise UsageError(f"keras_layout must be one of {', '.join(LAYOUTS)}, not {keras_layout!r}")
    if localise not in LOCALISE:
        raise UsageError(f"localise must be one of {', '.join(LOCALISE)}, not {localise!r}")
    specs = as_specs(input_specs)
    settings = CompareSettings(tolerance, "torch", keras_layout)
    report = CheckReport("model", seed=seed, input_shapes=[list(s.shape) for s in specs],
                         input_dtypes=[s.dtype for s in specs], atol=tolerance.atol,
                         rtol=tolerance.rtol,
                         reference="torch", keras_layout=keras_layout)
    was_training = torch_module.training
    torch_module.eval()
    try:
        run = _run(torch_module, keras_model, specs, seed, keras_layout, report)
        torch_outs = flatten_outputs(run_torch(run.module, run.inputs))
        keras_outs = flatten_outputs(run_keras(keras_model, run.keras_inputs))
        report.entries = _compare_outputs(torch_outs, keras_outs, settings)
        if localise == "always" or (localise == "auto" and not report.passed
                                    and report.status != SKIPPED):
            report.trace = trace_pairs(run, pairs, settings)
            if not report.passed:
                report.first_divergence = first_divergence(report.trace, pairs is not None)
    finally:
        torch_module.train(was_training)
    return report



def _run(module, keras_model, specs, seed: int, keras_layout: str, report: CheckReport) -> ModelRun:
    """Both models with the seeded inputs they are given (in their layouts)."""
    torch, keras = import_torch(), import_keras()
    highs, notes = embedding_ranges(torch, module, specs)
    report.notes += notes
    inputs = make_inputs(specs, seed, highs)
    keras_inputs = [to_keras_layout(x, s, keras_layout) for x, s in zip(inputs, specs)]
    return ModelRun(keras, module, keras_model, inputs, keras_inputs)


def _keras_outputs_in_torch_layout(keras_out: np.ndarray, torch_shape: tuple, keras_layout: str
                                   ) -> tuple[np.ndarray, str]:
    if keras_layout != CHANNELS_LAST or keras_out.ndim < 3:
        return keras_out, ""
    moved = np.moveaxis(keras_out, -1, 1)
    if moved.shape == tuple(torch_shape):
        return moved, ""
    return keras_out, "not moved back: its shape fits the PyTorch output as it is"


def _compare_outputs(torch_outs, keras_outs, settings: CompareSettings) -> list[Comparison]:
    entries = []
    for i in range(max(len(torch_outs), len(keras_outs))):
        if i >= len(torch_outs) or i >= len(keras_outs):
            name = (torch_outs[i] if i < len(torch_outs) else keras_outs[i])[0]
            entries.append(Comparison(name, FAIL, message=(
                f"PyTorch gives {len(torch_outs)} output(s), Keras {len(keras_outs)}")))
            continue
        name, t = torch_outs[i]
        k, note = _keras_outputs_in_torch_layout(keras_outs[i][1], t.shape, settings.keras_layout)
        entry = settings.compare(name, t, k, kind="output")
        if keras_outs[i][0] != name:
            entry.keras_name = keras_outs[i][0]
        entry.message = "; ".join(m for m in (entry.message, note) if m)
        entries.append(entry)
    return entries
