"""The builders, one module per op family; importing this package fills the tables of ``core``.

The modules of the rule families are built by the families themselves (``rebuild=`` of each
``LayerRule`` in ``transcoder/rules/families``): :func:`register_families` enters them for
every ``torch.nn`` class a family lists, unless the family says why it cannot
(``cannot["rebuild:<kind>"]``, or ``cannot["rebuild"]`` for the whole family).
"""
from __future__ import annotations

import torch

from ....rules import registry
from ....rules.table import REBUILD, LayerRule
from ..core import MODULES
from . import activation, arith, aten, padding, pool, resize, shape, transformer  # noqa: F401


def cannot_rebuild(family: LayerRule, kind: str) -> str | None:
    """Why the family has no rebuild builder for ``kind`` (None: it should have one)."""
    return family.cannot.get(f"{REBUILD}:{kind}") or family.cannot.get(REBUILD)


def family_modules(family: LayerRule) -> list[type]:
    """The ``torch.nn`` classes among the family's PyTorch kinds (not the family-name kinds
    such as ``BatchNorm``), except those it cannot rebuild."""
    classes = [getattr(torch.nn, kind, None) for kind in family.torch_kinds
               if cannot_rebuild(family, kind) is None]
    return [c for c in classes if isinstance(c, type) and issubclass(c, torch.nn.Module)]


def register_families(families) -> None:
    for family in families:
        if family.rebuild is not None:
            MODULES.update((cls, family.rebuild) for cls in family_modules(family))


register_families(registry.TABLE)
