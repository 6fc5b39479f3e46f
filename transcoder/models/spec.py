"""``path/to/file.py:Name`` and ``package.module:Name``: how users hand over a model.

This runs the user's own model code (never code from a checkpoint). The file's folder is
importable while it loads, as when the file runs as a script.
"""
from __future__ import annotations

import ast
import difflib
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


def precheck(spec: str, option: str) -> None:
    """What can be told about ``spec`` without running anything (no framework imported, no user
    code run): the form, the file, and for a ``.py`` file whether it defines ``Name`` at its top
    level, offering the closest names when it does not. A module spec is found, not imported."""
    from .hf import PREFIX

    if spec.startswith(PREFIX):
        folder = Path(spec[len(PREFIX):])
        if not (folder / "config.json").is_file():
            raise UsageError(f"{option} {spec}: no config.json in that folder")
        return
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name.isidentifier():
        raise UsageError(f"{option} {spec!r} is not of the form {SPEC_FORM}")
    if not where.endswith(".py"):
        return   # finding a package imports its parents: left to the load
    path = Path(where)
    if not path.is_file():
        close = _closest(path.name, [p.name for p in path.parent.glob("*.py")]
                         if path.parent.is_dir() else [])
        raise UsageError(f"{option}: file not found{close}", path=path)
    source = path.read_text(encoding="utf-8", errors="replace")
    if any(word in source for word in DYNAMIC):
        return   # names made as the module runs: only the import can tell
    try:
        names = top_level_names(source)
    except SyntaxError:
        return   # the import reports it, with its line
    if name not in names:
        raise UsageError(f"{option}: {where} defines no {name!r} at its top level"
                         f"{_closest(name, sorted(names))}")


#: a module that defines names as it runs (``globals()[name] = ...``, a module ``__getattr__``,
#: ``import *``, ``exec``, ``setattr``): no reading of its text says what it defines
DYNAMIC = ("globals()", "__getattr__", "import *", "exec(", "setattr(", "vars()")


def top_level_names(source: str) -> set[str]:
    """Classes, functions, assigned and imported names at a module's top level."""
    names: set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def _closest(word: str, choices: list[str]) -> str:
    found = difflib.get_close_matches(word, choices, n=3, cutoff=0.5)
    return f" (did you mean {', '.join(found)}?)" if found else ""


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
