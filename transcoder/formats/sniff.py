"""What a file is, from its first bytes (and a zip's member names), whatever its name says.

- HDF5 signature: a Keras HDF5 file (its reader tells the legacy and Keras 3 layouts apart).
- zip with ``config.json`` and ``model.weights.h5``: a ``.keras`` archive; zip with a
  ``data.pkl`` member: a ``torch.save`` or TorchScript archive.
- an 8-byte little-endian length then ``{``, the length within the file: safetensors
  (asked before the pickle: a length such as 0x380 starts like a PROTO opcode).
- a pickle's PROTO opcode (0x80, protocol 2-5): a legacy ``torch.save`` file.
- a ``*.index.json`` holding a JSON object with a ``weight_map`` (a sharded checkpoint's
  index): the format the first shard it names is, by its content (so
  ``pytorch_model.bin.index.json`` and ``model.safetensors.index.json`` say what they hold).
- a folder holding ``saved_model.pb``: a TensorFlow SavedModel (TF Serving's ``export/1``);
  a flatbuffer with the ``TFL3`` identifier: a TFLite model. Both are deployment artifacts,
  which ``transcode check`` runs; they are not read as checkpoints.

Only the zip's central directory is read (by :mod:`zipfile`), never a member's data.
"""
from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

from ..errors import TranscoderError
from . import shards, zipsafe

HDF5 = b"\x89HDF\r\n\x1a\n"
ZIP = b"PK\x03\x04"


def sniff(path: Path, in_index: bool = False) -> str | None:
    """The name of the built-in format the content is, or None when it is none of them
    (``in_index``: a shard, which cannot be an index itself)."""
    try:   # pathlib raises for some errors (a name too long), not for a missing path
        if Path(path).is_dir():
            return "savedmodel" if (Path(path) / "saved_model.pb").is_file() else None
    except (OSError, ValueError):   # ValueError: a NUL or a lone surrogate in the name
        return None   # the reader says why
    try:  # without blocking: a FIFO or device is left to the reader, which refuses it
        with open(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return None
            head = fh.read(16)
            size = os.fstat(fh.fileno()).st_size
    except (OSError, ValueError):
        return None   # the reader says why (missing, a folder, unreadable, no valid name)
    if head.startswith(HDF5):
        return "keras_h5"
    if head.startswith(ZIP):
        return _zip_kind(path)
    if head[4:8] == b"TFL3":
        return "tflite"
    # safetensors before the pickle: a header of 640-1535 bytes whose length's low byte is
    # 0x80 starts like protocol 2-5 (found by the fuzz campaign); a pickle's first 8 bytes
    # never make a length that fits in its file with "{" right after
    length = int.from_bytes(head[:8], "little") if len(head) >= 9 else 0
    if 2 <= length <= size - 8 and head[8:9] == b"{":
        return "safetensors"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pt"
    if head.lstrip()[:1] == b"{" and shards.is_index(path) and not in_index:
        return _index_kind(Path(path))
    return None


def _index_kind(path: Path) -> str | None:
    try:
        first = shards.shard_paths(path)[:1]
    except TranscoderError:
        return None   # the reader says why
    kind = sniff(first[0], in_index=True) if first else None
    return kind if kind in shards.SHARDED_FORMATS else None


def _zip_kind(path: Path) -> str | None:
    try:
        with zipsafe.open_zip(path) as archive:
            names = archive.namelist()
    except (TranscoderError, *zipsafe.ZIP_ERRORS, struct.error):
        return None   # the reader says why
    if "config.json" in names and "model.weights.h5" in names:
        return "keras_zip"
    if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        return "pt"
    return None
