"""Rules: the table (data), its operations, layer-kind inference, user rules and plans."""
from .plan import COPY, TO_KERAS, TO_TORCH, Plan, Step, make_plan
from .table import RULES, LayerRule, Param, rule_for_keras_kind, rule_for_torch_kind
from .user import UserRules
from .user import load as load_user_rules
from . import attention, recurrent  # noqa: E402,F401  (importing registers their rules)

__all__ = ["COPY", "TO_KERAS", "TO_TORCH", "Plan", "Step", "make_plan", "RULES", "LayerRule",
           "Param", "rule_for_keras_kind", "rule_for_torch_kind", "UserRules", "load_user_rules"]
