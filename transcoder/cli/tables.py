"""What the commands print as tables: the columns of plans, layer pairings and the rule table,
and the rule table's rows (plans and pairings come as rows from :mod:`transcoder.api`)."""
from __future__ import annotations

from ..printing import print_rows  # noqa: F401  (the commands print these rows with it)
from ..rules import registry

PLAN_COLUMNS = ("source", "shape", "dtype", "rule", "op", "target", "target shape")
PAIR_COLUMNS = ("pytorch", "kind", "keras", "keras class", "paired by", "weights")
RULE_COLUMNS = ("rule", "torch kinds", "keras", "torch tensor", "keras weight", "op", "note")


def rule_rows() -> list[dict]:
    """Every family's rows, as the engine runs them (``LayerRule.rows``)."""
    return [row for family in registry.TABLE for row in family.rows()]
