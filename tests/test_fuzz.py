"""Property tests (hypothesis): structurally mutated inputs of every format we read keep the
contract of fuzz/contract.py (exit 0 or 2, one line, nothing left behind, output reads back and
round-trips bit-exact, bounded time and memory).

A few hundred examples per format here (derandomized, so CI runs the same inputs every time);
``python fuzz/campaign.py`` runs the long campaign. The mutators (fuzz/mutators.py) draw from
hypothesis' random, so a failure shrinks to fewer, smaller mutations.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("hypothesis", reason="the property tests need hypothesis: "
                                         "pip install '.[test]'")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from conftest import ROOT  # noqa: E402

sys.path.insert(0, str(ROOT / "fuzz"))
from contract import check, peak_mib  # noqa: E402
from mutators import mutate  # noqa: E402
from seeds import FORMATS, seeds  # noqa: E402

pytestmark = pytest.mark.slow   # 200 mutated inputs per format: 3-8 s each

EXAMPLES = 200
SEEDS = seeds()


@pytest.fixture(scope="module")
def baseline_mib():
    with tempfile.TemporaryDirectory() as tmp:
        for cases in SEEDS.values():
            for case in cases:
                outcome = check(case, Path(tmp))
                assert outcome.problem is None and outcome.code == 0, outcome
    return peak_mib()


@pytest.mark.parametrize("fmt", FORMATS)
def test_mutated_inputs_keep_the_contract(fmt, baseline_mib):
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(rng=st.randoms(use_true_random=False))
    def prop(rng):
        case = mutate(rng, fmt, rng.choice(SEEDS[fmt]))
        with tempfile.TemporaryDirectory() as tmp:
            outcome = check(case, Path(tmp), baseline_mib)
        assert outcome.problem is None, (outcome.problem, outcome.stderr[:500])

    prop()
