"""The check of an exported artifact, run as deployed.

- SavedModel: ``tf.saved_model.load(folder)``, called through its ``serving_default`` signature.
- TFLite: the flatbuffer in LiteRT's interpreter (``ai_edge_litert`` when installed, else
  ``tf.lite.Interpreter``), through the signature runner of ``serving_default``, in a child
  process (:mod:`.tflite_child`).

Neither runs before it is shown inert (:mod:`.artifact_safety`): a SavedModel's ops inside an
allow-list, a flatbuffer's structure inside its file (:mod:`.flatbuffer`).

The artifact takes the place of the Keras model in :func:`~.models.check_models`: the same
seeded inputs, every output compared with PyTorch's, the same report. A signature takes its
inputs by name; they are fed in the order of ``input_names`` (the Keras model's inputs: the
module's ``forward`` arguments for a rebuilt model, the ``--keras-model``'s own), and its
outputs ``output_0``, ``output_1``, ... are read in that order.

When the outputs differ, the divergence is localised in the Keras model the artifact was
exported from, rebuilt from SRC (an artifact has no per-layer outputs to compare): if that
model agrees with PyTorch, the report says the export itself diverged.

A flatbuffer holding float16 or int8 weights (found in the file, whatever was asked) is
compared with the tolerance of its quantisation (:data:`QUANTIZED_TOLERANCES`) unless
``--atol``/``--rtol`` say otherwise.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import FormatError, UsageError, one_line
from ..export import SIGNATURE, quantization
from ..frameworks import import_keras, native_stderr_silenced
from ..formats._guard.regular import open_regular
from ..options import TORCH_LAYOUT, Tolerance
from .artifact_safety import check_saved_model
from .flatbuffer import validate as validate_flatbuffer
from .compare import SKIPPED
from .models import check_models
from .report import CheckReport
from .tflite_child import Child, ChildError

#: Default ``(atol, rtol)`` of a quantized flatbuffer, measured here (TF 2.21, seeded N(0, 1)
#: inputs, PyTorch-default initialisation; the fixture models and a 256-512-256-10 MLP, a
#: 3-layer 64-channel CNN, an LSTM(64, 128) over 20 steps, a 64-wide 4-head transformer
#: layer). float16 weights: errors up to 2.7e-4, the worst needing atol 9e-5 at rtol 1e-2
#: (an 11x margin). int8 weights (dynamic range): errors up to 8.5e-3, the worst needing
#: atol 4.9e-3 at rtol 5e-2 (a 4x margin). float32 flatbuffers and SavedModels keep the
#: float32 defaults (their errors here: at most 4.8e-7).
QUANTIZED_TOLERANCES: dict[str, tuple[float, float]] = {
    "float16": (1e-3, 1e-2),
    "dynamic": (2e-2, 5e-2),
}


@dataclass
class Artifact:
    """An exported model, callable like a Keras model on a list of inputs (its layout)."""

    path: Path
    format: str                      # "savedmodel" or "tflite"
    runtime: str                     # what runs it
    input_names: list[str]           # in feeding order
    output_names: list[str]          # in output order
    run: Callable[[dict], dict]      # {input name: array} -> {output name: array}
    dtypes: dict[str, Any] = field(default_factory=dict)   # input name -> numpy dtype
    quantization: str | None = None  # "float16", "dynamic" or None (float32)

    def __call__(self, inputs, training: bool = False):
        arrays = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        if len(arrays) != len(self.input_names):
            raise UsageError(f"{self.path} takes {len(self.input_names)} input(s) "
                             f"({', '.join(self.input_names)}), not {len(arrays)}")
        feeds = {name: self._fit(name, x) for name, x in zip(self.input_names, arrays)}
        try:
            with native_stderr_silenced():   # LiteRT's INFO lines on its first run
                out = self.run(feeds)
        except FormatError:
            raise   # the interpreter's child process crashed: the file's fault
        except Exception as exc:  # noqa: BLE001 - TensorFlow's and LiteRT's errors
            shapes = [list(a.shape) for a in arrays]
            raise UsageError(f"{self.path} fails on inputs of shapes {shapes} "
                             f"({one_line(exc)})", hint="a channels-last artifact needs "
                             "--channels-last; a flatbuffer with fixed shapes, its own") from None
        values = [np.asarray(out[name]) for name in self.output_names]
        return values[0] if len(values) == 1 else values

    def _fit(self, name: str, x: np.ndarray) -> np.ndarray:
        """``x`` in the signature's dtype: integers cast when every value fits (token ids
        drawn as int64 for an int32 input), anything else as it is."""
        dtype = self.dtypes.get(name)
        if dtype is None or x.dtype == dtype:
            return x
        if x.dtype.kind in "iu" and np.dtype(dtype).kind in "iu":
            info = np.iinfo(dtype)
            if x.size == 0 or (x.min() >= info.min and x.max() <= info.max):
                return x.astype(dtype)
        raise UsageError(f"{self.path}: input {name} is {np.dtype(dtype).name}, the check "
                         f"feeds {x.dtype.name}", hint="pass --input-dtype")

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "format": self.format, "runtime": self.runtime,
                "signature": SIGNATURE, "inputs": list(self.input_names),
                "outputs": list(self.output_names), "quantization": self.quantization}

    def tolerance(self, asked: Tolerance) -> Tolerance:
        """``asked``, its unset fields filled from the quantisation's default."""
        if self.quantization is None:
            return asked
        atol, rtol = QUANTIZED_TOLERANCES[self.quantization]
        return Tolerance(asked.atol, rtol if asked.rtol is None else asked.rtol,
                         default_atol=atol)


def _quantized_note(artifact: Artifact, asked: Tolerance) -> str:
    atol, rtol = QUANTIZED_TOLERANCES[artifact.quantization]
    default = f"atol {atol:g} x max(1, max |output|), rtol {rtol:g}"
    how = f"its default tolerance, {default}" if asked == Tolerance() else \
        f"its default tolerance ({default}) where --atol/--rtol do not say"
    return f"{artifact.path.name} holds {artifact.quantization}-quantized weights: {how}"


def open_artifact(path: Path, fmt: str, input_names: list[str]) -> Artifact:
    """Load the artifact at ``path`` (``fmt`` "savedmodel" or "tflite") to run it; its
    inputs fed in the order of ``input_names``."""
    opener = {"savedmodel": _saved_model, "tflite": _tflite}[fmt]
    import_keras()   # TensorFlow quietly (its C++ start-up notices)
    with native_stderr_silenced():
        artifact = opener(Path(path))
    artifact.input_names = feeding_order(artifact, input_names)
    return artifact


def feeding_order(artifact: Artifact, expected: list[str]) -> list[str]:
    """The signature's input names in the Keras model's input order: by name, never by
    guess (one input needs no name)."""
    names = artifact.input_names
    if len(names) == 1:
        return names
    if sorted(names) == sorted(expected):
        return list(expected)
    raise UsageError(f"{artifact.path}: cannot tell which input is which: the signature takes "
                     f"{', '.join(sorted(names))}, the model's inputs are "
                     f"{', '.join(expected) or 'unnamed'}",
                     hint="name the forward arguments (or the Keras inputs) as the artifact does")


def _output_order(names) -> list[str]:
    """``output_0, output_1, ..., output_10`` by index; other names sorted."""
    def key(name: str):
        found = re.fullmatch(r"output_(\d+)", name)
        return (0, int(found.group(1)), "") if found else (1, 0, name)
    return sorted(names, key=key)


def _saved_model(path: Path) -> Artifact:
    import tensorflow as tf

    check_saved_model(path)   # before anything in it can run
    try:
        loaded = tf.saved_model.load(str(path))
    except (OSError, ValueError, tf.errors.OpError) as exc:
        raise FormatError(f"not a loadable SavedModel ({one_line(exc)})", path=path) from None
    signature = loaded.signatures.get(SIGNATURE)
    if signature is None:
        raise FormatError(f"the SavedModel has no {SIGNATURE!r} signature (it has: "
                          f"{', '.join(loaded.signatures) or 'none'})", path=path)

    def run(feeds: dict) -> dict:
        out = signature(**{n: tf.constant(x) for n, x in feeds.items()})
        return {n: t.numpy() for n, t in out.items()}

    run.loaded = loaded   # keeps the variables alive as long as the signature
    specs = signature.structured_input_signature[1]
    return Artifact(path, "savedmodel", "tf.saved_model.load", sorted(specs),
                    _output_order(signature.structured_outputs), run,
                    {n: np.dtype(s.dtype.as_numpy_dtype) for n, s in specs.items()})


def _tflite(path: Path) -> Artifact:
    """The flatbuffer validated, then loaded by an interpreter in a child process."""
    try:
        with open_regular(path) as fh:
            flatbuffer = fh.read()
    except OSError as exc:
        raise FormatError(f"cannot read: {exc.strerror or exc}", path=path) from None
    validate_flatbuffer(path, flatbuffer)
    try:
        child = Child(path, flatbuffer)
    except ChildError as exc:
        raise FormatError(f"not a loadable TFLite flatbuffer ({exc})", path=path) from None
    signatures = child.info["signatures"]
    if SIGNATURE not in signatures:
        raise FormatError(f"the flatbuffer has no {SIGNATURE!r} signature (it has: "
                          f"{', '.join(signatures) or 'none'})", path=path)
    inputs = {n: np.dtype(d) for n, d in child.info["inputs"].items()}
    return Artifact(path, "tflite", child.info["runtime"], sorted(inputs),
                    _output_order(signatures[SIGNATURE]["outputs"]), child.run, inputs,
                    quantization(set(child.info["held"])))


# ---------------------------------------------------------------- the check

@dataclass
class ArtifactCheck:
    """A check of ``artifact`` against the PyTorch ``module`` (loaded with SRC's weights).
    ``exported_from()`` gives ``(the Keras model the artifact is exported from, its pairs or
    None)``, called only to localise a divergence."""

    module: Any
    artifact: Artifact
    exported_from: Callable[[], tuple[Any, Any]]
    specs: list
    seed: int = 0
    keras_layout: str = TORCH_LAYOUT

    def run(self, tolerance: Tolerance) -> CheckReport:
        """Every output of the artifact against PyTorch's; localised in the Keras model when
        they differ."""
        artifact = self.artifact
        report = check_models(self.module, artifact, self.specs, seed=self.seed,
                              tolerance=artifact.tolerance(tolerance),
                              keras_layout=self.keras_layout, localise="never")
        report.artifact = artifact.to_dict()
        if artifact.quantization is not None:
            report.notes.append(_quantized_note(artifact, tolerance))
        if not report.passed and report.status != SKIPPED:
            self._localise(report, tolerance)
        return report

    def _localise(self, report: CheckReport, tolerance: Tolerance) -> None:
        """The first divergence, found in the Keras model (at the float32 tolerance, whatever
        the artifact's quantisation): an artifact has no intermediate outputs."""
        model, pairs = self.exported_from()
        keras = check_models(self.module, model, self.specs, seed=self.seed, tolerance=tolerance,
                             keras_layout=self.keras_layout, pairs=pairs, localise="always")
        report.trace = keras.trace
        report.notes.append(f"localised in the Keras model {self.artifact.path.name} is exported "
                            f"from (rebuilt from the source's weights), not in the artifact")
        if not keras.passed:
            report.first_divergence = keras.first_divergence
            return
        worst = max((e.max_abs_error or 0.0 for e in keras.entries), default=0.0)
        report.first_divergence = {
            "name": None, "after": None, "status": None, "max_abs_error": None,
            "message": f"first divergence: in the export: the Keras model it is exported from "
                       f"agrees with PyTorch (max abs error {worst:.2g}), "
                       f"{self.artifact.path.name} does not"}
