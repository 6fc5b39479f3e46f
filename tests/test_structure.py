"""The package's shape: one import direction (the layers in transcoder/__init__.py's docstring),
no import cycles, imports inside functions included; every rule family has its check and
rebuild builders, or says why it cannot."""
from __future__ import annotations

import ast
import re
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import ROOT
from transcoder.rules import registry
from transcoder.rules.table import CHECK, REBUILD, LayerRule

PACKAGE = ROOT / "transcoder"


def layers() -> dict[str, int]:
    """``{top-level module or subpackage: layer}`` from the package docstring."""
    doc = ast.get_docstring(ast.parse((PACKAGE / "__init__.py").read_text()))
    found = {}
    for level, names in re.findall(r"^\s+(\d+)\.\s+([\w, ]+?)\s{2,}", doc, re.M):
        found.update({name.strip(): int(level) for name in names.split(",")})
    return found


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for path in PACKAGE.rglob("*.c"):   # C extensions: leaves
        found[".".join(path.relative_to(ROOT).with_suffix("").parts)] = path
    return found


def _targets(module: str, node: ast.AST, is_package: bool, known: dict) -> list[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = module.split(".")[:None if is_package else -1]
        base = base[:len(base) - node.level + 1] if node.level else []
        target = ".".join(base + ([node.module] if node.module else []))
        names = [f"{target}.{a.name}" if f"{target}.{a.name}" in known else target
                 for a in node.names]
    out = []
    for name in names:
        while name not in known and "." in name:
            name = name.rsplit(".", 1)[0]
        if name in known and name != module:
            out.append(name)
    return out


def import_edges() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = {m: set() for m in known}
    for module, path in known.items():
        if path.suffix != ".py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges[module].update(_targets(module, node, path.name == "__init__.py", known))
    return edges


def layer_of(module: str, table: dict[str, int]) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return max(table.values()) + 1     # the package itself: above everything
    return table[parts[1]]


def test_every_module_has_a_layer():
    table = layers()
    missing = sorted({m.split(".")[1] for m in modules() if "." in m} - set(table))
    assert not missing, f"not in the layer list of transcoder/__init__.py: {missing}"


def test_no_module_imports_a_higher_layer():
    table = layers()
    upward = [f"{m} ({layer_of(m, table)}) -> {t} ({layer_of(t, table)})"
              for m, targets in import_edges().items() for t in targets
              if layer_of(t, table) > layer_of(m, table)]
    assert not upward, "imports against the layer order:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    edges = import_edges()
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)



def test_the_cli_is_a_shell_over_the_api():
    """The commands parse, call :mod:`transcoder.api` and print: none of them reads, plans,
    writes or loads a model itself (what a conversion does is written once, in the API)."""
    below_the_api = ("transcoder.pipeline", "transcoder.formats", "transcoder.live",
                     "transcoder.models", "transcoder.rules.plan", "transcoder.export")
    reached = [f"{m} -> {t}" for m, targets in import_edges().items() if m.startswith("transcoder.cli")
               for t in targets if t.startswith(below_the_api)]
    assert not reached, "the CLI goes around the API:\n" + "\n".join(sorted(reached))
    assert "transcoder.api" in import_edges()["transcoder.cli.convert"]


# ---------------------------------------------------------------- every family has its builders

def _cannot_rebuild(family: LayerRule, kind: str) -> str | None:
    return family.cannot.get(f"{REBUILD}:{kind}") or family.cannot.get(REBUILD)


def _nn_kinds(family: LayerRule) -> list[str]:
    """The family's PyTorch kinds that are ``torch.nn`` classes (not "BatchNorm" and the like)."""
    nn = pytest.importorskip("torch").nn
    return [k for k in family.torch_kinds if isinstance(getattr(nn, k, None), type)]


def rebuild_gaps(family: LayerRule, modules: dict) -> list[str]:
    """What is wrong with the family's rebuild: a ``torch.nn`` kind whose builder in the
    rebuild's ``modules`` is not the family's own ``rebuild``, unless the family says why it
    cannot have one (and then the kind must have no builder at all)."""
    nn = pytest.importorskip("torch").nn
    gaps = []
    for kind in _nn_kinds(family):
        reason, cls = _cannot_rebuild(family, kind), getattr(nn, kind)
        if reason and cls in modules:
            gaps.append(f"nn.{kind} has a builder, yet the family says it cannot: {reason}")
        elif not reason and (family.rebuild is None or modules.get(cls) is not family.rebuild):
            gaps.append(f"nn.{kind}: no rebuild builder of the family and no "
                        f"cannot['rebuild:{kind}'] reason")
    return gaps


@pytest.mark.parametrize("name", registry.TABLE.names())
def test_every_family_has_a_check_builder_or_says_why_not(name):
    family = registry.TABLE.by_name(name)
    assert family.check is not None or family.cannot.get(CHECK), \
        f"{name}: no check builder and no cannot['check'] reason"


@pytest.mark.parametrize("name", registry.TABLE.names())
def test_every_family_kind_has_a_rebuild_builder_or_says_why_not(name):
    pytest.importorskip("torch")
    pytest.importorskip("keras")
    from transcoder.models.rebuild import supported
    from transcoder.models.rebuild.core import MODULES

    family = registry.TABLE.by_name(name)
    assert rebuild_gaps(family, MODULES) == []
    if not _nn_kinds(family):   # a Keras layout of other modules (DepthwiseConv2D, CuDNNLSTM)
        assert family.cannot.get(REBUILD), f"{name}: no torch.nn kind, and no cannot['rebuild']"
        return
    rebuilt = [k for k in _nn_kinds(family) if not _cannot_rebuild(family, k)]
    assert rebuilt, f"{name}: none of its kinds is rebuilt"
    assert set(rebuilt) <= set(supported()["modules"])


def test_a_family_without_its_rebuild_builder_is_caught():
    pytest.importorskip("torch")
    pytest.importorskip("keras")
    from transcoder.models.rebuild.core import MODULES

    prelu = registry.TABLE.by_name("PReLU")
    assert rebuild_gaps(replace(prelu, rebuild=None), MODULES) == [
        "nn.PReLU: no rebuild builder of the family and no cannot['rebuild:PReLU'] reason"]
    untrue = replace(prelu, cannot={"rebuild:PReLU": "a reason that is not true"})
    assert rebuild_gaps(untrue, MODULES) == [
        "nn.PReLU has a builder, yet the family says it cannot: a reason that is not true"]
    lstm = registry.TABLE.by_name("LSTM")
    assert rebuild_gaps(replace(lstm, cannot={}), MODULES) == [
        "nn.LSTMCell: no rebuild builder of the family and no cannot['rebuild:LSTMCell'] reason"]


# ---------------------------------------------------------------- a family is one object

#: Where a family's names may appear as string literals outside ``rules/families/``, and why.
#: ``formats/_hdf5/keras_v3.py``'s ``NESTING`` is Keras' file layout (an LSTM's variables are in
#: ``cell/vars``, a MultiHeadAttention's in ``query_dense/vars`` ...), needed to find a layer's
#: variables before any family is asked; the families give the names of those variables.
EXEMPT = {("transcoder/formats/_hdf5/keras_v3.py", "NESTING")}


def family_words(table) -> set[str]:
    """Every family's name, PyTorch kinds and Keras class, from the registry."""
    return {w for f in table for w in (f.name, f.keras_kind, *f.torch_kinds)}


def _docstrings(tree: ast.AST) -> set[int]:
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {id(n.body[0].value) for n in ast.walk(tree) if isinstance(n, kinds) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}


def _exempt_nodes(tree: ast.AST, rel: str) -> set[int]:
    """The literals inside a module-level assignment that :data:`EXEMPT` lists."""
    names = {name for path, name in EXEMPT if path == rel}
    out = set()
    for node in getattr(tree, "body", []):
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id in names for t in targets):
            out |= {id(n) for n in ast.walk(node)}
    return out


def family_literals(source: str, rel: str, words: set[str]) -> list[str]:
    """``rel:line: 'Name'`` for every string literal of ``source`` that is a family's name,
    PyTorch kind or Keras class (docstrings and :data:`EXEMPT` assignments aside)."""
    tree = ast.parse(source)
    skip = _docstrings(tree) | _exempt_nodes(tree, rel)
    return [f"{rel}:{n.lineno}: {n.value!r}" for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in words
            and id(n) not in skip]


def test_no_module_outside_the_families_names_a_family():
    """A family is one object: what the code knows about it lives in its module under
    ``rules/families/`` (tests are outside the package, so not looked at)."""
    words = family_words(registry.TABLE)
    families = PACKAGE / "rules" / "families"
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if families not in path.parents:
            rel = path.relative_to(ROOT).as_posix()
            found += family_literals(path.read_text(), rel, words)
    assert not found, "family names outside rules/families/:\n" + "\n".join(found)


def test_a_family_name_outside_the_families_is_caught():
    words = family_words(registry.TABLE)
    source = ('"""Docstrings may say LSTM."""\nRECURRENT = ("RNN", "LSTM")\n'
              'NESTING = {"GRU": 1}\nOK = f"{x}" + "lstm"\n')
    assert family_literals(source, "transcoder/checks/x.py", words) == [
        "transcoder/checks/x.py:2: 'RNN'", "transcoder/checks/x.py:2: 'LSTM'",
        "transcoder/checks/x.py:3: 'GRU'"]
    assert family_literals(source, "transcoder/formats/_hdf5/keras_v3.py", words) == [
        "transcoder/formats/_hdf5/keras_v3.py:2: 'RNN'", "transcoder/formats/_hdf5/keras_v3.py:2: 'LSTM'"]
