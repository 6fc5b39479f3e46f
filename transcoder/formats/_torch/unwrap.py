"""Finding the state dict inside what a PyTorch file holds. Pure functions, no I/O.

After restricted unpickling a file is a tree of dicts, lists, :class:`Placeholder` objects and
tensor descriptors. The weights are one of:

- the whole tree (a plain ``torch.save(model.state_dict())``);
- a nested mapping in a training checkpoint (Lightning ``state_dict``, ``model``, ``ema`` ...),
  found by :func:`find_state_dict`, or picked with ``--key``;
- a pickled ``nn.Module`` (``torch.save(model)``), rebuilt by :func:`module_state_dict`;
- a TorchScript module tree, rebuilt by :func:`script_state_dict` from the classes'
  ``__parameters__``/``__buffers__`` lists read by :func:`parse_script_classes`.

Then :func:`strip_prefixes` removes ``module.`` (DataParallel) and ``_orig_mod.`` (torch.compile).
"""
from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from ...errors import AmbiguousError, FormatError, UsageError
from .._guard.brief import brief, key_text
from .torch_pickle import Placeholder

IsTensor = Callable[[Any], bool]

#: Keys under which training checkpoints conventionally keep model weights.
CONVENTIONAL_KEYS = frozenset({
    "state_dict", "model", "model_state", "model_state_dict", "module", "net", "network",
    "ema", "state_dict_ema", "model_ema", "ema_state_dict", "ema_model", "params", "weights",
})

#: Keys whose subtree is optimizer/training state, never model weights.
IGNORED_KEYS = frozenset({
    "optimizer", "optimizers", "optimizer_states", "optimizer_state", "optimizer_state_dict",
    "optim", "optim_state", "opt_state", "lr_scheduler", "lr_schedulers", "scheduler",
    "schedulers", "scaler", "grad_scaler", "amp",
})

#: Prefixes that wrappers add to every key: DataParallel/DDP and torch.compile.
STRIP_PREFIXES = ("module.", "_orig_mod.")

MAX_DEPTH = 64
MAX_LISTED = 20
#: A module tree may name one submodule in several places (tied modules), so walking it could
#: visit a shared subtree exponentially often: a walk reading more entries than this is refused.
MAX_WALK_ENTRIES = 1_000_000


@dataclass
class StateDict:
    """Names -> tensor descriptors, plus what was skipped and the torch.nn kinds found."""

    tensors: dict[str, Any]
    skipped: list[str] = field(default_factory=list)
    module_kinds: dict[str, str] = field(default_factory=dict)


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f", ... ({len(names)} in all)" if len(names) > MAX_LISTED else "")


def children(obj: Any) -> list[tuple[str, Any]]:
    """The (key, value) pairs below a node: mapping items, list items, placeholder contents."""
    if isinstance(obj, Mapping):
        return [(key_text(k), v) for k, v in obj.items()]
    if isinstance(obj, (list, tuple)):
        return [(str(i), v) for i, v in enumerate(obj)]
    if isinstance(obj, Placeholder):
        return obj.children()
    return []


def nn_kind(cls: type) -> str | None:
    """``Conv1d`` for a placeholder of ``torch.nn.modules.conv.Conv1d`` (TorchScript too)."""
    module = getattr(cls, "module", "")
    if module.startswith(("torch.nn.", "__torch__.torch.nn.")):
        return cls.qualname.rsplit(".", 1)[-1]
    return None


# ---------------------------------------------------------------------------------------------
# Recognising a state dict
# ---------------------------------------------------------------------------------------------

def _ignorable(key: str, value: Any) -> bool:
    """Non-tensor entries a state dict may carry (``_metadata``, ``*._extra_state``, None)."""
    return value is None or key.startswith("_") or key.endswith("_extra_state")


def _scalar(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool)) or value is None


def _mapping_of(obj: Any) -> Mapping | None:
    if isinstance(obj, Mapping):
        return obj
    if isinstance(obj, Placeholder) and obj.items:  # a dict subclass we did not import
        return obj.items
    return None


def as_state_dict(obj: Any, is_tensor: IsTensor) -> StateDict | None:
    """The state dict ``obj`` is, or None.

    A mapping qualifies when its keys are strings, it holds at least one tensor and its other
    entries are ignorable (``_metadata``, extra state) or a few scalars (at most 1 in 10).
    A pickled ``nn.Module`` qualifies through :func:`module_state_dict`.
    """
    if is_module(obj):
        return module_state_dict(obj, is_tensor)
    mapping = _mapping_of(obj)
    if not mapping or not all(isinstance(k, str) for k in mapping):
        return None
    tensors = {k: v for k, v in mapping.items() if is_tensor(v)}
    others = [k for k in mapping if k not in tensors]
    if not tensors:
        return None
    few_scalars = len(others) * 10 <= len(tensors) and all(_scalar(mapping[k]) for k in others)
    if few_scalars or all(_ignorable(k, mapping[k]) for k in others):
        return StateDict(tensors, skipped=others)
    return None


def is_module(obj: Any) -> bool:
    """A pickled ``nn.Module``: a placeholder whose state has ``_parameters`` and ``_modules``."""
    if not isinstance(obj, Placeholder) or not isinstance(obj.state, (dict, tuple)):
        return False
    fields = obj.fields()
    return isinstance(fields.get("_parameters"), Mapping) and isinstance(
        fields.get("_modules"), Mapping)


def module_state_dict(root: Placeholder, is_tensor: IsTensor) -> StateDict:
    """What ``module.state_dict()`` would give for a pickled module: parameters, persistent
    buffers, then submodules, depth first."""
    result = StateDict({})
    visits = _Visits("module tree")
    visits.precount(root, _module_cost, _submodules)

    def walk(module: Placeholder, path: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise FormatError(f"module tree deeper than {MAX_DEPTH} levels at {brief(path)}")
        fields = module.fields()
        params, modules = fields["_parameters"], fields["_modules"]
        stored = _mapping(fields.get("_buffers"))
        visits.count(len(fields) + len(params) + len(stored) + len(modules))
        if kind := nn_kind(type(module)):
            result.module_kinds[path] = kind
        prefix = f"{path}." if path else ""
        hidden = _names(fields.get("_non_persistent_buffers_set"))
        buffers = [(k, v) for k, v in stored.items() if not (isinstance(k, str) and k in hidden)]
        for name, value in [*params.items(), *buffers]:
            if is_tensor(value):
                result.tensors[prefix + key_text(name)] = value
        for name, child in modules.items():
            if is_module(child):
                walk(child, prefix + key_text(name), depth + 1)

    walk(root, "", 0)
    return result


def _module_cost(module: Placeholder) -> int:
    """The entries :func:`module_state_dict`'s walk reads at ``module`` (its visit's count)."""
    fields = module.fields()
    return (len(fields) + len(fields["_parameters"]) + len(_mapping(fields.get("_buffers")))
            + len(fields["_modules"]))


def _submodules(module: Placeholder) -> list[Placeholder]:
    return [child for child in module.fields()["_modules"].values() if is_module(child)]


def _mapping(value: Any) -> Mapping:
    return value if isinstance(value, Mapping) else {}


def _names(value: Any) -> frozenset:
    """The names in a set or list from the pickle (in a list, each test would be a scan)."""
    if isinstance(value, (set, frozenset, list, tuple)):
        return frozenset(v for v in value if isinstance(v, str))
    return frozenset()


class _Visits:
    """Counts the entries one walk reads; FormatError past :data:`MAX_WALK_ENTRIES`."""

    def __init__(self, what: str) -> None:
        self.what, self.done = what, 0

    def count(self, entries: int) -> None:
        self.done += 1 + entries
        if self.done > MAX_WALK_ENTRIES:
            self.refuse()

    def refuse(self) -> None:
        raise FormatError(f"the {self.what} names shared submodules so often that walking it "
                          f"reads more than {MAX_WALK_ENTRIES} entries; refusing it")

    def precount(self, root: Any, cost: Callable[[Any], int],
                 children: Callable[[Any], list]) -> None:
        """Refuse before walking what the walk would refuse: the entries it would read, summed
        once per distinct node (a subtree named in k places counts k times, as the walk reads
        it), so a tree of 40 levels of shared pairs (2^40 paths) is refused after 41 steps, not
        after a million entries and 200 000 path names (3-7 s). A node seen again while being
        counted (a cycle) or below MAX_DEPTH adds nothing: the walk refuses those by depth, and
        its own count stays the bound."""
        sizes: dict[int, int] = {}

        def size(node: Any, depth: int) -> int:
            if id(node) in sizes:
                return sizes[id(node)]
            if depth > MAX_DEPTH:
                return 0
            sizes[id(node)] = 0
            total = 1 + cost(node) + sum(size(child, depth + 1) for child in children(node))
            sizes[id(node)] = min(total, MAX_WALK_ENTRIES + 1)
            return sizes[id(node)]

        if size(root, 0) > MAX_WALK_ENTRIES:
            self.refuse()


# ---------------------------------------------------------------------------------------------
# Finding it in a training checkpoint
# ---------------------------------------------------------------------------------------------

def _is_optimizer_state(obj: Any) -> bool:
    """``optimizer.state_dict()`` wherever it is stored: ``state`` beside ``param_groups``."""
    return isinstance(obj, Mapping) and "param_groups" in obj and "state" in obj


def candidates(root: Any, is_tensor: IsTensor) -> list[tuple[str, StateDict]]:
    """Every state dict below ``root`` with its dotted path, optimizer subtrees skipped."""
    found: list[tuple[str, StateDict]] = []
    seen: set[int] = set()

    def walk(obj: Any, path: str, depth: int) -> None:
        if id(obj) in seen or depth > MAX_DEPTH:
            return
        seen.add(id(obj))
        for key, value in children(obj):
            if key in IGNORED_KEYS or id(value) in seen or _is_optimizer_state(value):
                continue
            sub = f"{path}.{key}" if path else key
            state = as_state_dict(value, is_tensor)
            if state is not None:
                seen.add(id(value))
                found.append((sub, state))
            else:
                walk(value, sub, depth + 1)

    walk(root, "", 0)
    return found


def _lookup(obj: Any, parts: list[str]) -> tuple[Any, int] | None:
    """The child named by the longest prefix of ``parts`` (keys may contain dots)."""
    pairs = children(obj)
    for n in range(len(parts), 0, -1):
        wanted = ".".join(parts[:n])
        for key, value in pairs:
            if key == wanted:
                return value, n
    return None


def select(root: Any, key: str, is_tensor: IsTensor) -> StateDict:
    """The state dict at dotted path ``key``; UsageError listing what is there otherwise."""
    obj, parts, walked = root, key.split("."), []
    while parts:
        hit = _lookup(obj, parts)
        if hit is None:
            where = ".".join(walked) or "the top level"
            keys = [k for k, _ in children(obj)]
            raise UsageError(f"--key {key}: no entry {parts[0]!r} at {where}; available keys: "
                             f"{_listing(keys) or '(none)'}")
        obj, used = hit
        walked, parts = walked + parts[:used], parts[used:]
    state = as_state_dict(obj, is_tensor)
    if state is None:
        found = [p for p, _ in candidates(root, is_tensor)]
        raise UsageError(f"--key {key} is not a mapping of names to tensors; state dicts in this "
                         f"file: {_listing(found) or '(none)'}")
    return state


def find_state_dict(root: Any, key: str | None, is_tensor: IsTensor) -> tuple[str | None, StateDict]:
    """(path used or None, state dict): ``key`` if given, else the root, else the one candidate.

    Candidates under conventional keys (``state_dict``, ``model``, ``ema`` ...) win over others;
    several of the same rank raise AmbiguousError listing them.
    """
    if key:
        return key, select(root, key, is_tensor)
    if isinstance(root, Mapping) and not root:
        return None, StateDict({})  # torch.save({}): what an empty checkpoint converts to
    state = as_state_dict(root, is_tensor)
    if state is not None:
        return None, state
    found = candidates(root, is_tensor)
    conventional = [c for c in found if c[0].rsplit(".", 1)[-1] in CONVENTIONAL_KEYS]
    chosen = conventional or found
    if len(chosen) == 1:
        return chosen[0]
    if not chosen:
        top = [k for k, _ in children(root)]
        raise FormatError("no state dict found (no mapping of names to tensors); top-level keys: "
                          f"{_listing(top) or '(none)'}")
    raise AmbiguousError(f"several state dicts found: {_listing([p for p, _ in chosen])}",
                         hint="pick one with --key <path>")


def strip_prefixes(tensors: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Remove ``module.``/``_orig_mod.`` while every key has it; returns (tensors, removed).
    (Keys are cut once at the end: a key of a million ``module.`` stays linear.)"""
    removed: list[str] = []
    at = 0
    while tensors:
        prefix = next((p for p in STRIP_PREFIXES
                       if all(k.startswith(p, at) and len(k) > at + len(p) for k in tensors)),
                      None)
        if prefix is None:
            break
        removed.append(prefix)
        at += len(prefix)
    return ({k[at:]: v for k, v in tensors.items()} if at else tensors), removed


# ---------------------------------------------------------------------------------------------
# TorchScript
# ---------------------------------------------------------------------------------------------

#: Longest ``__parameters__ = [...]`` line read (real ones list a few names).
MAX_NAME_LIST = 1 << 20
_CLASS_LINE = re.compile(r"^class\s+(\w+)\s*[(:]")
_NAMES_LINE = re.compile(r"^\s+(__parameters__|__buffers__)\s*=\s*(\[.*\])\s*$")


@dataclass
class ScriptClass:
    parameters: list[str] = field(default_factory=list)
    buffers: list[str] = field(default_factory=list)


def _name_list(text: str, where: str) -> list[str]:
    if len(text) > MAX_NAME_LIST:  # ast needs ~100 times the text's size in memory
        raise FormatError(f"TorchScript code {where}: a name list of {len(text)} characters")
    try:
        names = ast.literal_eval(text)  # a literal list of strings; never evaluated as code
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise FormatError(f"TorchScript code {where}: unreadable name list {text[:80]!r}")
    return names


def parse_script_classes(code: Iterable[tuple[str, Iterable[str]]]) -> dict[str, ScriptClass]:
    """``{qualified class: ScriptClass}`` for every TorchScript module class in the archive.

    ``code`` gives (module name, source lines) pairs (``__torch__.torch.nn.modules.conv``); the
    lines are read as text and never executed. Classes without ``__parameters__`` (plain
    TorchScript classes, NamedTuples) are not modules and are left out.
    """
    classes: dict[str, ScriptClass] = {}
    for module, lines in code:
        current: str | None = None
        for line in lines:
            if match := _CLASS_LINE.match(line):
                current = f"{module}.{match.group(1)}"
            elif (match := _NAMES_LINE.match(line)) and current:
                names = _name_list(match.group(2), module)
                entry = classes.setdefault(current, ScriptClass())
                setattr(entry, match.group(1).strip("_"), names)
    return classes


def _script_class(obj: Any) -> str | None:
    return f"{obj.module}.{obj.qualname}" if isinstance(obj, Placeholder) else None


def script_state_dict(root: Any, classes: dict[str, ScriptClass],
                      is_tensor: IsTensor) -> StateDict:
    """What ``torch.jit.load(f).state_dict()`` gives: per module its parameters, then its
    buffers, then its submodules in attribute order; plus torch.nn kinds by module path."""
    if _script_class(root) not in classes:
        raise FormatError(f"TorchScript archive: no code for the root class {brief(root)}")
    result = StateDict({})
    visits = _Visits("TorchScript module tree")

    def cost(module: Placeholder) -> int:
        info = classes[_script_class(module)]
        return len(module.fields()) + len(info.parameters) + len(info.buffers)

    def children(module: Placeholder) -> list[Placeholder]:
        return [value for value in module.fields().values() if _script_class(value) in classes]

    visits.precount(root, cost, children)

    def walk(module: Placeholder, path: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise FormatError(f"TorchScript module tree deeper than {MAX_DEPTH} levels")
        info, fields = classes[_script_class(module)], module.fields()
        visits.count(len(fields) + len(info.parameters) + len(info.buffers))
        if kind := nn_kind(type(module)):
            result.module_kinds[path] = kind
        prefix = f"{path}." if path else ""
        for name in info.parameters + info.buffers:
            if is_tensor(fields.get(name)):
                result.tensors[prefix + name] = fields[name]
        for name, value in fields.items():
            if _script_class(value) in classes:
                walk(value, prefix + key_text(name), depth + 1)

    walk(root, "", 0)
    return result
