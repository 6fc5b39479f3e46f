"""The rule table the engine reads: ``families.TABLE`` (families are added there).

The engine reads ``registry.TABLE`` when it plans, so a test may swap in a changed table with
``monkeypatch.setattr(registry, "TABLE", registry.TABLE.replaced("Conv2d", ...))``.
"""
from __future__ import annotations

from .families import TABLE

__all__ = ["TABLE"]
