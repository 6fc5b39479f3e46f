"""Deployment artifacts: a Keras model exported as a TensorFlow SavedModel or a TFLite flatbuffer.

- SavedModel (a folder): Keras' own ``model.export(folder, format="tf_saved_model")``. Its
  ``serving_default`` signature takes the Keras model's inputs by name and gives ``output_0``,
  ``output_1``, ...; ``tf.saved_model.load`` loads it without any Python class (ours included).
- TFLite (a file): that SavedModel converted by ``tf.lite.TFLiteConverter`` with TFLite's
  builtin ops only, so it runs in any LiteRT interpreter (no Flex delegate). Where the
  converter needs static shapes (the loops of a Keras LSTM/GRU over a dynamic batch), the
  inputs are fixed to the ``--input-shape`` sizes, with a note. ``--quantize float16`` stores
  the weights as float16; ``--quantize dynamic`` stores weights of 1024 elements or more as
  int8 (dynamic-range quantisation, TensorFlow's threshold): smaller weights stay float32.

The layout is the Keras model's: PyTorch layout for a rebuilt model unless ``--channels-last``.
The check runs the artifact itself (:mod:`transcoder.checks.artifacts`). TensorFlow is
imported only in the functions that write.
"""
from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import UnsupportedError, UsageError, one_line
from .formats import Format
from .frameworks import import_keras, native_stderr_silenced
from .models.inputs import from_options
from .options import CHANNELS_LAST, Architecture

SIGNATURE = "serving_default"
QUANTIZE = ("float16", "dynamic")
#: the formats ``--quantize`` applies to
QUANTIZABLE = ("tflite",)


@dataclass(frozen=True)
class ExportRequest:
    """What an export needs besides the Keras model: the format, the inputs (for static
    shapes) and the quantisation."""

    fmt: Format
    arch: Architecture

    @property
    def quantize(self) -> str | None:
        return self.arch.quantize


def validate(fmt: Format, arch: Architecture | None) -> None:
    """UsageError for ``--quantize`` where it does not apply or names no known scheme."""
    quantize = arch.quantize if arch is not None else None
    if quantize is None:
        return
    if quantize not in QUANTIZE:
        raise UsageError(f"--quantize {quantize!r}: one of {', '.join(QUANTIZE)}")
    if fmt.name not in QUANTIZABLE:
        raise UsageError(f"--quantize applies to a TFLite export (.tflite), not to "
                         f"{fmt.description}")


def write(model, path: Path, request: ExportRequest) -> list[str]:
    """Export ``model`` to ``path`` (a folder for a SavedModel, a file for TFLite); returns
    notes for the user, about the artifact."""
    keras = import_keras()
    if keras.backend.backend() != "tensorflow":
        raise UsageError(f"exporting {request.fmt.description} needs Keras on its TensorFlow "
                         f"backend, not {keras.backend.backend()}",
                         hint="unset KERAS_BACKEND or set it to tensorflow")
    return WRITERS[request.fmt.name](model, path, request)


def write_saved_model(model, folder: Path, request: ExportRequest) -> list[str]:
    _saved_model(model, folder)
    return [describe(model)]


def describe(model, signature=None) -> str:
    """``signature serving_default(x: float32[?,10,128]) -> output_0``, for the user."""
    def dims(shape) -> str:
        return ",".join("?" if d is None else str(d) for d in shape)
    inputs = signature or model.inputs
    args = ", ".join(f"{t.name}: {_dtype_name(t.dtype)}[{dims(t.shape)}]" for t in inputs)
    outputs = model.outputs if isinstance(model.outputs, (list, tuple)) else [model.outputs]
    return f"signature {SIGNATURE}({args}) -> " + ", ".join(f"output_{i}"
                                                           for i in range(len(outputs)))


def _dtype_name(dtype) -> str:
    return getattr(dtype, "name", None) or str(dtype)


def _saved_model(model, folder: Path, input_signature=None) -> None:
    try:
        with native_stderr_silenced():
            model.export(str(folder), format="tf_saved_model", verbose=False,
                         input_signature=input_signature)
    except (ValueError, TypeError, NotImplementedError) as exc:
        raise UnsupportedError(f"Keras cannot export this model as a SavedModel "
                               f"({one_line(exc)})") from None


def write_tflite(model, path: Path, request: ExportRequest) -> list[str]:
    """Convert through a SavedModel in a temporary folder beside ``path``; with a dynamic
    batch first, else with the inputs fixed to the ``--input-shape`` sizes."""
    signature = None
    try:
        flatbuffer = _tflite(model, path, request.quantize)
    except ConverterError as first:
        if all(None not in tuple(t.shape) for t in model.inputs):
            raise
        signature = static_signature(model, request.arch, reason=first.message)
        flatbuffer = _tflite(model, path, request.quantize, signature)
        refused = first.message.split(": ", 1)[-1]
    path.write_bytes(flatbuffer)
    notes = [describe(model, signature)]
    if signature is not None:
        notes.append(f"input shapes fixed to --input-shape (with a dynamic batch size the "
                     f"TFLite converter refused: {refused})")
    if request.quantize and quantization(_tensor_dtypes(flatbuffer)) != request.quantize:
        why = " (TensorFlow quantizes only weights of 1024 elements or more)" \
            if request.quantize == "dynamic" else ""
        notes.append(f"--quantize {request.quantize} left every weight in float32{why}: it "
                     f"computes as the float32 export does")
    return notes


#: tensor dtypes in a flatbuffer -> its quantisation (the first found, in this order)
QUANTIZED_DTYPES = (("int8", "dynamic"), ("float16", "float16"))


def quantization(dtypes: set[str]) -> str | None:
    """"dynamic" (int8 weights), "float16" or None (float32), from a flatbuffer's tensor
    dtypes (names)."""
    return next((q for dtype, q in QUANTIZED_DTYPES if dtype in dtypes), None)


def _tensor_dtypes(flatbuffer: bytes) -> set[str]:
    import warnings

    import numpy as np
    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # tf.lite.Interpreter's deprecation notice
        interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    return {np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()}


class ConverterError(UnsupportedError):
    """The TFLite converter refused the model (its first error, on one line)."""


def _tflite(model, near: Path, quantize: str | None, input_signature=None) -> bytes:
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix=".transcode-", dir=near.parent) as folder:
        _saved_model(model, Path(folder), input_signature)
        converter = tf.lite.TFLiteConverter.from_saved_model(folder, signature_keys=[SIGNATURE])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantize is not None:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        try:
            with native_stderr_silenced():
                return converter.convert()
        except Exception as exc:  # noqa: BLE001 - the converter raises many types
            raise ConverterError(f"the TFLite converter cannot convert this model with TFLite's "
                                 f"builtin ops: {_converter_message(exc)}") from None


def _converter_message(exc: Exception) -> str:
    """The converter's first error, one readable line: its messages run to pages of MLIR
    locations (``loc(callsite(fused["TensorListReserve:", "functional_1/lstm_1/..."] ...``);
    the location becomes the layer it names (``in functional_1/lstm_1``)."""
    lines = [line for line in str(exc).splitlines() if "error:" in line] or [str(exc)]
    text = lines[0].split("error:", 1)[-1].strip()
    where = ""
    if text.startswith("loc("):
        end = _closing(text, len("loc"))
        location, text = text[:end + 1], text[end + 1:].lstrip(": ")
        layers = MLIR_LAYER.findall(location)
        where = f" (in {layers[0]})" if layers else ""
    return _words(" ".join(text.split()), 200) + where


#: A layer path in an MLIR location: ``"functional_1/lstm_1/TensorArrayV2_1@__inference..."``.
MLIR_LAYER = re.compile(r'"([\w.-]+(?:/[\w.-]+)*)/[^"/@]*@')


def _closing(text: str, start: int) -> int:
    """The index of the parenthesis closing the one at ``start`` (the end when unbalanced)."""
    depth, quoted = 0, False
    for i in range(start, len(text)):
        c = text[i]
        if c == '"':
            quoted = not quoted
        elif not quoted and c == "(":
            depth += 1
        elif not quoted and c == ")":
            depth -= 1
            if depth == 0:
                return i
    return len(text) - 1


def _words(text: str, limit: int) -> str:
    """``text`` cut at a word boundary within ``limit`` characters (``...`` when cut)."""
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0].rstrip(",;:") + " ..."


def static_signature(model, arch: Architecture, reason: str) -> list:
    """``tf.TensorSpec`` per Keras input, dynamic sizes taken from ``--input-shape`` (in the
    Keras model's layout)."""
    import tensorflow as tf

    if not arch.inputs.input_shapes:
        raise UnsupportedError(f"the TFLite converter needs static shapes for this model "
                               f"({reason})", hint="pass --input-shape to fix them")
    specs = from_options(arch.inputs)
    if len(specs) != len(model.inputs):
        raise UsageError(f"{len(specs)} --input-shape for a Keras model of "
                         f"{len(model.inputs)} inputs")
    out = []
    for tensor, spec in zip(model.inputs, specs):
        shape = keras_shape(spec.shape, spec.is_float, arch.inputs.keras_layout)
        fixed = [s if d is None else d for d, s in zip(tensor.shape, shape)]
        out.append(tf.TensorSpec(fixed, dtype=tensor.dtype, name=tensor.name))
    return out


WRITERS = {"savedmodel": write_saved_model, "tflite": write_tflite}


def keras_shape(shape: tuple[int, ...], is_float: bool, layout: str) -> tuple[int, ...]:
    """A PyTorch-layout input shape in the Keras model's layout (channels moved last for
    floating inputs of rank >= 3 when ``layout`` is channels-last)."""
    if layout == CHANNELS_LAST and is_float and len(shape) >= 3:
        return (shape[0], *shape[2:], shape[1])
    return tuple(shape)
