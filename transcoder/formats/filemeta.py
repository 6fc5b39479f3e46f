"""A source file's own metadata (a safetensors ``__metadata__``: license, author, ``format``
...), carried to the files written from it.

Readers put it in ``Checkpoint.meta["file_metadata"]`` (a ``{str: str}`` dict); plans pass it
on; the safetensors writer stores it back in ``__metadata__`` and the legacy ``.h5`` writer in
a ``file_metadata`` attribute (JSON), which the ``.h5`` reader reads, so that safetensors ->
.h5 -> safetensors keeps it exactly. Every other target cannot hold it: :func:`dropped_note`
says so in one line.
"""
from __future__ import annotations

from typing import Any

from ..errors import FormatError

KEY = "file_metadata"
#: formats whose files hold the metadata (written by our own writers)
HOLDERS = ("safetensors", "keras_h5")


def checked(value: Any, path: object = None) -> dict[str, str]:
    """``value`` if it is a ``{str: str}`` dict; else FormatError."""
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                              for k, v in value.items()):
        raise FormatError("the file's metadata is not a map of strings to strings", path=path)
    return value


def of(meta: dict) -> dict[str, str]:
    """The file metadata a checkpoint's ``meta`` carries ({} if none)."""
    return dict(meta.get(KEY) or {})


def dropped_note(meta: dict, target_format: str, through_model: bool = False) -> str | None:
    """One line when the source's metadata cannot be kept by the target; None if it is kept
    (or there is none). ``through_model``: written by Keras' own savers, which store nothing
    of it."""
    kept = of(meta)
    kept.pop("format", None)   # safetensors' own marker ("pt"), not the user's
    if not kept or (target_format in HOLDERS and not through_model):
        return None
    keys = ", ".join(sorted(kept))
    how = " written through Keras" if through_model else ""
    return (f"the source's metadata ({keys}) was dropped: {target_format} files{how} cannot "
            f"hold it (safetensors and legacy .h5 targets keep it)")
