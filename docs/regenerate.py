"""Rewrite the generated parts of the docs from the code: the rule table in docs/layers.md, made
by ``transcode rules --markdown`` (the rows the engine runs), between its ``generated`` markers.

    python docs/regenerate.py            # rewrite docs/layers.md
    python docs/regenerate.py --check    # exit 1, with a diff, if it is out of date (the tests)
"""
from __future__ import annotations

import difflib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ROOT / "docs" / "layers.md"
BEGIN = "<!-- generated:begin: python docs/regenerate.py -->"
END = "<!-- generated:end -->"


def rule_table() -> str:
    """``transcode rules --markdown`` of this tree's code."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "transcoder", "rules", "--markdown"], cwd=ROOT,
                          env=env, capture_output=True, text=True, check=True).stdout


def regenerated(text: str, table: str) -> str:
    """``text`` with what stands between the markers replaced by ``table``."""
    head, begin, rest = text.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise SystemExit(f"{LAYERS}: the markers {BEGIN!r} and {END!r} are missing")
    return f"{head}{BEGIN}\n{table}{END}{tail}"


def main(argv: list[str]) -> int:
    text = LAYERS.read_text(encoding="utf-8")
    new = regenerated(text, rule_table())
    if "--check" in argv:
        if new == text:
            return 0
        sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), new.splitlines(True),
                                                   "docs/layers.md", "regenerated"))
        print("docs/layers.md is out of date: run python docs/regenerate.py", file=sys.stderr)
        return 1
    if new != text:
        LAYERS.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
