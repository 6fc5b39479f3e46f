"""Short text for values read from an untrusted file, in time independent of their size.

``repr()`` of unpickled data can take forever: a tuple that names one object at every level
has 2^40 parts, and ``repr`` of a 4 MiB integer is quadratic. :func:`brief` looks at a few
levels and a few items of each container only; :func:`key_text` turns a mapping key into
the text used in tensor names and listings.
"""
from __future__ import annotations

from collections.abc import Mapping
from itertools import islice
from typing import Any

MAX_LEVELS = 3
MAX_ITEMS = 6
MAX_TEXT = 60
MAX_INT_BITS = 64


def brief(obj: Any, limit: int = 120) -> str:
    """At most ``limit`` characters describing ``obj`` (containers shown in part, ``...``)."""
    text = _brief(obj, MAX_LEVELS)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def key_text(key: Any) -> str:
    """A mapping key as text: strings as they are, small numbers in full, the rest briefly."""
    if isinstance(key, str):
        return key
    if isinstance(key, bool) or key is None or isinstance(key, float):
        return str(key)
    if isinstance(key, int) and key.bit_length() <= MAX_INT_BITS:
        return str(key)
    return brief(key)


def _brief(obj: Any, levels: int) -> str:
    if isinstance(obj, (str, bytes, bytearray)):
        shown = repr(obj[:MAX_TEXT])
        return shown + ("..." if len(obj) > MAX_TEXT else "")
    if isinstance(obj, bool) or obj is None or isinstance(obj, (float, complex)):
        return repr(obj)
    if isinstance(obj, int):
        return repr(obj) if obj.bit_length() <= MAX_INT_BITS else f"<int of {obj.bit_length()} bits>"
    if isinstance(obj, Mapping):
        return "{" + _items(((k, v) for k, v in obj.items()), len(obj), levels, pairs=True) + "}"
    if isinstance(obj, (list, tuple, set, frozenset)):
        opening, closing = _BRACKETS.get(type(obj), ("(", ")"))
        return opening + _items(iter(obj), len(obj), levels) + closing
    if type(obj).__repr__ is object.__repr__:
        return f"<{type(obj).__name__}>"
    return _own_repr(obj)


_BRACKETS = {list: ("[", "]"), tuple: ("(", ")"), set: ("{", "}"), frozenset: ("frozenset({", "})")}


def _items(items, count: int, levels: int, pairs: bool = False) -> str:
    if levels <= 0:
        return "..." if count else ""
    shown = []
    for item in islice(items, MAX_ITEMS):
        if pairs:
            shown.append(f"{_brief(item[0], levels - 1)}: {_brief(item[1], levels - 1)}")
        else:
            shown.append(_brief(item, levels - 1))
    return ", ".join(shown) + (", ..." if count > MAX_ITEMS else "")


def _own_repr(obj: Any) -> str:
    """Our own classes (stand-ins, placeholders) have short reprs; anything else is named only."""
    module = type(obj).__module__ or ""
    if module.startswith("transcoder."):
        return repr(obj)[:MAX_TEXT]
    return f"<{type(obj).__name__}>"
