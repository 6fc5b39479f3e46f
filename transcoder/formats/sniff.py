"""What a file is by its content, as a format name: :func:`transcoder.formats.by_content` on one
look at the file. Each format's own ``sniff`` says what it recognises (see its module)."""
from __future__ import annotations

from pathlib import Path

from .base import Head


def sniff(path: Path, in_index: bool = False) -> str | None:
    """The name of the built-in format the content is, or None when it is none of them."""
    from . import by_content

    found = by_content(Head.of(path), in_index)
    return found.name if found is not None else None
