"""``path/to/file.py:Name`` and ``package.module:Name``: how users hand over a model.

This runs the user's own model code (never code from a checkpoint). The file's folder is
importable while it loads, as when the file runs as a script.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ..errors import UsageError

SPEC_FORM = "path/to/file.py:Name or package.module:Name"


def build_from_spec(spec: str, option: str) -> Any:
    """Import what ``spec`` names and call it without arguments (a class or a factory); or,
    for ``hf:FOLDER``, the architecture transformers builds from that folder's config."""
    from . import hf

    if spec.startswith(hf.PREFIX):
        return hf.build(spec[len(hf.PREFIX):])
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name.isidentifier():
        raise UsageError(f"{option} {spec!r} is not of the form {SPEC_FORM}")
    namespace = _import_file(Path(where), option) if where.endswith(".py") else \
        _import_module(where, option)
    factory = getattr(namespace, name, None)
    if not callable(factory):
        raise UsageError(f"{option}: {where} has no class or function {name!r}")
    try:
        return factory()
    except TypeError as exc:
        raise UsageError(f"{option}: {name}() needs arguments ({exc})",
                         hint="name a zero-argument class or factory function") from None


@contextmanager
def _on_path(folder: Path) -> Iterator[None]:
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))


def _import_file(path: Path, option: str):
    if not path.is_file():
        raise UsageError(f"{option}: file not found", path=path)
    spec = importlib.util.spec_from_file_location(f"_transcoder_user_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    with _on_path(path.resolve().parent):
        spec.loader.exec_module(module)
    return module


def _import_module(name: str, option: str):
    try:
        with _on_path(Path.cwd()):
            return importlib.import_module(name)
    except ImportError as exc:
        raise UsageError(f"{option}: cannot import {name} ({exc})", hint=f"use {SPEC_FORM}") from None
