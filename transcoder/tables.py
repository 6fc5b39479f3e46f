"""Rows for plans, layer pairings and the rule table (printed by :mod:`.printing`)."""
from __future__ import annotations

from .checkpoint import Checkpoint
from .printing import print_rows  # noqa: F401  (the CLI prints these rows with it)
from .rules import COPY, TO_KERAS, Plan, registry

PLAN_COLUMNS = ("source", "shape", "dtype", "rule", "op", "target", "target shape")
PAIR_COLUMNS = ("pytorch", "kind", "keras", "keras class", "paired by", "weights")
RULE_COLUMNS = ("rule", "torch kinds", "keras", "torch tensor", "keras weight", "op", "note")


def plan_rows(plan: Plan, src: Checkpoint, target: Checkpoint) -> list[dict]:
    """One row per source tensor: what it becomes and by which rule. A layer whose kind the
    names leave open shows its rule as ``LayerNorm?`` and lists the others (``alternatives``)."""
    rows, seen = [], set()
    for step in plan.steps:
        sources = step.torch if plan.direction == TO_KERAS else step.keras
        targets = step.keras if plan.direction == TO_KERAS else step.torch
        open_kinds = plan.ambiguous.get(step.layer)
        for name in sources:
            ref = src[name]
            seen.add(name)
            rows.append({"source": name, "shape": list(ref.shape), "dtype": ref.dtype,
                         "rule": f"{step.rule}?" if open_kinds else step.rule,
                         "op": step.op.describe(), "target": ", ".join(targets),
                         "target shape": [list(target[t].shape) for t in targets],
                         "alternatives": list(open_kinds[1:]) if open_kinds else []})
    kept = plan.carried if plan.direction != COPY else list(src.tensors)
    for name in (n for n in kept if n not in seen):   # a carried LSTM bias pair is also a source
        ref = src[name]
        rows.append({"source": name, "shape": list(ref.shape), "dtype": ref.dtype,
                     "rule": "carried" if plan.direction != COPY else "copy", "op": "keep",
                     "target": name, "target shape": [list(ref.shape)], "alternatives": []})
    return rows



def pairing_rows(pairs) -> list[dict]:
    """One row per paired layer (PyTorch module path <-> Keras layer)."""
    return [{"pytorch": p.ours.name, "kind": p.ours.class_name or "", "keras": p.theirs.name,
             "keras class": p.theirs.class_name or "", "paired by": p.how,
             "weights": len(p.ours.weights)} for p in pairs]


def rule_rows() -> list[dict]:
    """Every family's rows, as the engine runs them (``LayerRule.rows``)."""
    return [row for family in registry.TABLE for row in family.rows()]
