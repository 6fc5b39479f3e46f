"""Registering our Keras layers with Keras when, and only when, Keras is imported.

Keras finds a saved layer class by its registered name, so a ``.keras`` file holding our layers
loads only in a process where ``keras_layers`` ran. Importing Keras costs seconds, so it is not
imported for that: if it is loaded already the layers register now, else a finder on
``sys.meta_path`` waits for ``import keras`` and registers them right after it.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys

MODULE = "transcoder.models.keras_layers"


def register_keras_layers_when_loaded() -> None:
    if sys.modules.get("keras") is not None:
        importlib.import_module(MODULE)
    elif not any(isinstance(f, _AfterKeras) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterKeras())


class _AfterKeras:
    """Finds ``keras`` with the other finders, and registers our layers once it has run.
    It stays on ``sys.meta_path`` until then: a mere ``importlib.util.find_spec("keras")``
    (is Keras installed?) asks it too, and must not use it up. (The import system only calls
    ``find_spec``, and ``create_module``/``exec_module`` of the loader: no ``importlib.abc``
    base classes, whose import pulls in ``importlib.resources``, 6 ms of every run.)"""

    looking = False   # our own look below, which must not come back through us

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "keras" or self.looking:
            return None
        self.looking = True
        try:
            spec = importlib.util.find_spec("keras")
        finally:
            self.looking = False
        if spec is not None and spec.loader is not None:
            spec.loader = _Registering(spec.loader, self)
        return spec


class _Registering:
    def __init__(self, loader, finder: _AfterKeras) -> None:
        self.loader, self.finder = loader, finder

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        if self.finder in sys.meta_path:
            sys.meta_path.remove(self.finder)
        self.loader.exec_module(module)
        importlib.import_module(MODULE)

    def __getattr__(self, name: str):
        return getattr(self.loader, name)   # resource readers and the like
