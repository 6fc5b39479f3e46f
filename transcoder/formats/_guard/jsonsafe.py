"""JSON from untrusted files: parsed into plain data, or refused with a FormatError.

``json.loads`` raises RecursionError on deeply nested input (and a document nested just below
that limit makes later recursive code fail instead), so every JSON a reader takes goes through
:func:`loads`, which also bounds the nesting. :func:`check_stored_meta` checks the
``transcoder`` metadata our writers store (and a hostile file can fake) before any of it is
used to plan a conversion.
"""
from __future__ import annotations

import json
from typing import Any

from ...checkpoint import MAX_DIMS
from ...errors import FormatError

#: Deeper JSON is not a config any tool writes (a Keras model nested in a model in a model is
#: about 20 levels deep).
MAX_DEPTH = 128


def loads(text: str | bytes, what: str, path: object = None, *, walk: bool = True) -> Any:
    """Parse ``text``; FormatError naming ``what`` if it is not JSON or nests too deeply.
    ``walk=False`` skips measuring the nesting, for text a stricter parser has accepted."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError, TypeError) as exc:  # UnicodeDecodeError is a ValueError
        reason = "nested too deeply" if isinstance(exc, RecursionError) else "not valid JSON"
        raise FormatError(f"{what} is {reason}", path=path) from None
    if walk and depth(value) > MAX_DEPTH:
        raise FormatError(f"{what} is nested more than {MAX_DEPTH} levels deep", path=path)
    return value


def depth(value: Any) -> int:
    """How deeply lists and objects nest in ``value`` (iteratively: no recursion limit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children)
    return deepest


# -- our own metadata ------------------------------------------------------------------------

_LISTS_OF_NAMES = ("torch_order", "carried")
_STEP_NAMES = ("torch", "keras")
_STEP_TEXT = ("rule", "layer")


def check_stored_meta(meta: Any, path: object = None) -> dict:
    """``meta`` if it has the shape :func:`transcoder.rules.plan.stored_meta` gives it
    (types only: what the values mean is checked where they are used); else FormatError."""
    problem = _meta_problem(meta)
    if problem:
        raise FormatError(f"the transcoder metadata in the file is malformed ({problem})", path=path)
    return meta


def _meta_problem(meta: Any) -> str | None:
    if not isinstance(meta, dict):
        return "not an object"
    if not _is_int(meta.get("version", 0)):
        return "version"
    for key in _LISTS_OF_NAMES:
        if not _names(meta.get(key, [])):
            return key
    for key in ("source_format", "state_dict_key"):
        if not isinstance(meta.get(key), (str, type(None))):
            return key
    steps = meta.get("steps", [])
    if not isinstance(steps, list):
        return "steps"
    return next((f"step {i}" for i, step in enumerate(steps) if not _is_step(step)), None)


def _is_step(step: Any) -> bool:
    return (isinstance(step, dict) and all(_names(step.get(k)) for k in _STEP_NAMES)
            and all(isinstance(step.get(k), str) for k in _STEP_TEXT) and _is_op(step.get("op")))


def _is_op(op: Any) -> bool:
    """``{"op": kind, parameter: int, bool, str, None or a short list of ints}``."""
    if not isinstance(op, dict) or not isinstance(op.get("op"), str):
        return False
    return all(isinstance(v, (bool, str, type(None))) or _is_int(v)
               or (isinstance(v, list) and len(v) <= MAX_DIMS and all(_is_int(i) for i in v))
               for v in op.values())


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) < 1 << 62


def _names(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)
