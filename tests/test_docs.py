"""The docs agree with the code: docs/layers.md's rule table is what `transcode rules --markdown`
prints, the README holds the commands CI runs, and every relative link in the docs resolves."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from conftest import ROOT

PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _regenerate():
    spec = importlib.util.spec_from_file_location("regenerate", ROOT / "docs" / "regenerate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_layers_page_holds_the_rule_table_the_engine_runs():
    regenerate = _regenerate()
    text = regenerate.LAYERS.read_text(encoding="utf-8")
    table = regenerate.rule_table()
    assert table.startswith("| rule | torch kinds | keras |") and table.count("\n") > 40
    assert regenerate.regenerated(text, table) == text, \
        "docs/layers.md differs from `transcode rules --markdown`: run python docs/regenerate.py"


def test_a_stale_rule_table_is_caught():
    regenerate = _regenerate()
    text = regenerate.LAYERS.read_text(encoding="utf-8")
    stale = text.replace("| Linear | Linear,", "| Linear | Dense,", 1)
    assert stale != text and regenerate.regenerated(stale, regenerate.rule_table()) == text


def test_the_readme_holds_the_commands_ci_runs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    assert ci == ("python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && "
                  ".venv/bin/python -m pytest -q")
    assert f"```sh\n{ci}\n```" in readme
    assert ("```sh\npython3 -m venv .venv && .venv/bin/pip install -q '.[check]' && "
            ".venv/bin/transcode fixtures/encoder.pt encoder.weights.h5 --force --model "
            "fixtures/models.py:Encoder --keras-model fixtures/keras_twins.py:encoder_answer "
            "--input-shape 4,10,128\n```") in readme


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return {re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
            for title in re.findall(r"^#+ (.+)$", text, re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: {target}: no such file"
        if anchor:
            assert anchor in _anchors(linked), f"{page.name}: {target}: no such heading"


def test_markdown_cells_keep_pipes_and_stars_as_text():
    from transcoder.printing import markdown_table

    text = markdown_table([{"a": "g * v / ||v||", "b": ["x", "y"]}], ["a", "b"])
    header, rule, row = text.splitlines()
    assert header == "| a | b |" and rule == "|---|---|"
    assert row == r"| g \* v / \|\|v\|\| | x, y |"
    assert len(re.split(r"(?<!\\)\|", row)) == len(re.split(r"(?<!\\)\|", header))
