"""The source Keras model, built from its own file for the check: the reference a Keras source
is held to.

A ``.keras`` or a legacy full-model ``.h5`` states its whole architecture. When every class its
config names is one of Keras' own (or one of ours, :mod:`.keras_layers`), Keras' loader builds
it in safe mode and loads its weights: the model the file *is*, not a rebuild of the user's
PyTorch module, so a hyper-parameter the two disagree on (an epsilon, a stride) shows in the
outputs. Code is never deserialised: a ``Lambda`` or a class from another package refuses the
build (:func:`unbuildable`) before Keras reads anything, and the check then compares the
config's hyper-parameters with the module's instead (:mod:`transcoder.checks.hyper`).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from ..errors import one_line
from ..formats._hdf5.keras_config import class_of, is_foreign
from ..options import CHANNELS_LAST, TORCH_LAYOUT

#: Registered names of our own Keras layers (models/keras_layers.py), built like Keras' own.
OURS = "transcoder>"
#: Keras' loader needs the file's suffix to pick its reader.
SUFFIXES = {"keras_zip": ".keras", "keras_h5": ".h5"}


def _entries(config: Any) -> Iterator[dict]:
    """Every dict in a config that names a class (layers, wrapped layers, activations,
    initialisers ...)."""
    if isinstance(config, dict):
        if isinstance(config.get("class_name"), str):
            yield config
        for value in config.values():
            yield from _entries(value)
    elif isinstance(config, list):
        for value in config:
            yield from _entries(value)


def unbuildable(config: Any) -> str | None:
    """Why the model ``config`` describes cannot be built with built-in classes only (None: it
    can): a Lambda layer (it holds code) or a class from another package."""
    if not isinstance(config, dict):
        return "the file states no model config"
    for entry in _entries(config):
        cls = class_of(entry) or ""
        name = (entry.get("config") or {}).get("name") if isinstance(entry.get("config"), dict) \
            else None
        where = f"layer {name!r} " if isinstance(name, str) else ""
        if "Lambda" in cls:
            return f"{where}is a {cls}, which holds code"
        if is_foreign(cls) and not cls.startswith(OURS):
            return f"{where}is a {cls}, a class from another package"
    return None


def build(path: Path, fmt: str, config: Any):
    """``(model, None)``: the model the file states, its weights loaded by Keras; else
    ``(None, why)``."""
    why = unbuildable(config) if fmt in SUFFIXES else "the file states no model config"
    if why is None and not Path(path).is_file():
        why = "it is not a local file"
    if why is not None:
        return None, why
    import keras

    with tempfile.TemporaryDirectory(prefix=".transcode-") as folder:
        named = Path(folder) / f"source{SUFFIXES[fmt]}"
        os.symlink(Path(path).resolve(), named)
        try:
            return keras.saving.load_model(str(named), compile=False, safe_mode=True), None
        except Exception as exc:  # noqa: BLE001 - Keras' loader raises many types
            return None, f"Keras could not build it ({one_line(exc, 160)})"


def layout_for(model, shapes: list[tuple[int, ...]], asked: str) -> str:
    """The layout the model's inputs take: the one that fits its input shapes; when both fit
    (square sizes), channels-last if ``asked`` or if its convolutions say ``channels_last``;
    ``asked`` when neither fits."""
    def fits(layout: str) -> bool:
        if len(model.inputs) != len(shapes):
            return False
        for tensor, shape in zip(model.inputs, shapes):
            want = list(shape[1:])
            if layout == CHANNELS_LAST and len(shape) >= 3:
                want = want[1:] + want[:1]
            have = list(tuple(tensor.shape)[1:])
            if len(have) != len(want) or any(h is not None and h != w
                                             for h, w in zip(have, want)):
                return False
        return True

    torch, last = fits(TORCH_LAYOUT), fits(CHANNELS_LAST)
    if torch and last:
        return CHANNELS_LAST if asked == CHANNELS_LAST or _channels_last(model) else TORCH_LAYOUT
    return TORCH_LAYOUT if torch else CHANNELS_LAST if last else asked


def _channels_last(model) -> bool:
    """Whether a layer of the model states ``data_format="channels_last"``."""
    return any(getattr(layer, "data_format", None) == "channels_last"
               for layer in _layers(model))


def _layers(model) -> Iterator:
    for layer in getattr(model, "layers", []):
        yield layer
        yield from _layers(layer)
