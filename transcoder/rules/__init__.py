"""Rules: how each layer family's tensors map between PyTorch and Keras, and plans.

- ``families/``: one module per family of layers (its params, ops, kind hints and builders);
  ``families.TABLE`` lists them (the engine reads it as ``registry.TABLE``). To add a family,
  see ``families/__init__.py``.
- ``table.py``: :class:`LayerRule` (a family) and :class:`RuleTable`.
- ``ops.py``: the operations between tensors, each with its inverse (``transpose.py`` and the
  C kernel ``_transpose.c`` permute axes fast).
- ``infer.py``: layer kinds from names and shapes; ``user.py``: ``--rules`` files.
- ``steps.py`` and ``plan.py``: plans, made without reading data, applied lazily.

numpy only: nothing here imports torch or keras.
"""
from .plan import Plan, make_plan, plan_to_keras, stored_meta
from . import registry
from .steps import COPY, TO_KERAS, TO_TORCH, Step
from .table import LayerRule, Param, RuleTable
from .user import UserRules
from .user import load as load_user_rules

__all__ = ["COPY", "TO_KERAS", "TO_TORCH", "Plan", "Step", "make_plan", "plan_to_keras",
           "stored_meta", "registry", "LayerRule", "Param", "RuleTable", "UserRules",
           "load_user_rules"]
