"""Deployment artifacts a Keras model is exported to (:mod:`transcoder.export` writes them):
recognised by their content, which ``transcode check`` runs; never read as checkpoints."""
from __future__ import annotations

from pathlib import Path

from ..checkpoint import LAYOUT_KERAS
from .base import Format, Head

TFLITE_ID = b"TFL3"


def is_saved_model(head: Head, path: Path) -> bool:
    """A folder holding ``saved_model.pb`` (TF Serving's ``export/1``)."""
    return head.folder and (Path(path) / "saved_model.pb").is_file()


def is_tflite(head: Head, path: Path) -> bool:
    """A flatbuffer with the ``TFL3`` identifier."""
    return head.data[4:8] == TFLITE_ID


SAVEDMODEL = Format("savedmodel", (".savedmodel",), LAYOUT_KERAS,
                    description="TensorFlow SavedModel folder", can_read=False,
                    needs_model=True, exported=True, folder=True, sniff=is_saved_model)
TFLITE = Format("tflite", (".tflite",), LAYOUT_KERAS, description="TFLite flatbuffer",
                can_read=False, needs_model=True, exported=True, sniff=is_tflite)
