"""The restricted unpickler: torch pickles into inert stand-ins, in bounded time and memory.

Every global resolves through :func:`.torch_pickle.resolve_global` (nothing is imported or run).
Three guards keep one file from costing more than its size or reaching the next file:

- :func:`.pickle_scan.scan` walks the opcodes first and bounds the hashing the C unpickler
  itself does (dict keys, set elements);
- a :class:`Meter` per pickle charges every call the pickle makes (stand-in functions and
  placeholder classes) for the size of what it is given, and the stand-ins that build dicts
  and sets for the hashing they will do, against a budget proportional to the pickle's opcodes
  (a 1 MiB string encoded 100,000 times is refused, not run);
- :class:`StandIn` wraps each allow-listed function for one pickle: BUILD, SETITEM(S) and
  APPEND(S) on it are refused, so a pickle cannot set ``__defaults__`` on a function that later
  files use. Classes are our fresh placeholders or immutable builtin types, which refuse it too.
"""
from __future__ import annotations

import collections
import pickle
import struct
from collections.abc import Mapping
from functools import partial
from typing import IO, Any, Callable

from ...errors import FormatError, UnsafeFileError
from .._guard.brief import brief, key_text
from .pickle_scan import scan, work_budget
from .torch_pickle import (HASHING, Placeholder, StorageRef, StorageType, UnsupportedTensor,
                           canonical, resolve_global)

#: Exceptions a corrupt pickle can raise inside the C unpickler or our stand-ins.
PICKLE_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
                 AttributeError, struct.error, UnicodeDecodeError, OverflowError, RecursionError,
                 MemoryError)


class Meter:
    """The work one pickle's calls may still cause; FormatError once it is spent."""

    def __init__(self, budget: int) -> None:
        self.left = budget

    def charge(self, steps: int) -> None:
        self.left -= steps
        if self.left < 0:
            raise FormatError("the pickle makes calls on its data that would take too long "
                              "(it reuses large objects as arguments, or hashes them): refusing it")

    def charge_call(self, args: tuple, kwargs: Mapping | None = None) -> None:
        """A call costs at least a look at each argument (``*args`` copies them)."""
        steps = 1
        for value in args:
            steps += _size(value)
        for value in (kwargs or {}).values():
            steps += _size(value)
        self.charge(steps)


_TEXTS = (str, bytes, bytearray)
_SIZED = (list, tuple, dict, set, frozenset)
#: Arguments a pickle's calls take most (storage keys, offsets, flags): one step, found without
#: asking the Mapping ABC.
_ATOMIC = frozenset({int, float, bool, type(None)})


def _size(value: Any) -> int:
    if isinstance(value, _TEXTS):
        return 1 + len(value) // 64
    if isinstance(value, _SIZED):
        return 1 + len(value)
    if type(value) in _ATOMIC:
        return 1
    return 1 + len(value) if isinstance(value, Mapping) else 1


class StandIn:
    """What a pickle gets for an allow-listed function: ours, behind a wall, metered."""

    __slots__ = ("_function", "_meter", "qualname")

    def __init__(self, function: Callable[..., Any], qualname: str, meter: Meter) -> None:
        object.__setattr__(self, "_function", function)
        object.__setattr__(self, "_meter", meter)
        object.__setattr__(self, "qualname", qualname)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._meter.charge_call(args, kwargs)
        return self._function(*args, **kwargs)

    def _refuse(self, *_: Any) -> None:
        raise UnsafeFileError(f"the pickle tries to modify the function {self.qualname}; "
                              "refusing it")

    __setstate__ = __setattr__ = __setitem__ = __delattr__ = append = extend = _refuse

    def __repr__(self) -> str:
        return f"<{self.qualname}>"


def hash_cost(value: Any, pairs: bool = False) -> int:
    """Steps to hash every element of ``value`` (the first of each pair if ``pairs``: the keys
    of a dict built from pairs), counted as :mod:`.pickle_scan` does, each shared tuple once."""
    if isinstance(value, Mapping):
        items: Any = value.keys()
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = value
    else:
        return 1  # characters of a string, or a call that fails on its own
    if pairs:
        items = [p[0] if isinstance(p, (tuple, list)) and len(p) == 2 else p for p in items]
    seen: dict[int, int] = {}
    return sum(_cost(item, seen) for item in items)


def _cost(obj: Any, seen: dict[int, int]) -> int:
    if isinstance(obj, tuple):  # nested at most pickle_scan.MAX_NESTING deep
        if id(obj) not in seen:
            seen[id(obj)] = 1 + sum(_cost(item, seen) for item in obj)
        return seen[id(obj)]
    if isinstance(obj, frozenset):
        return 1 + len(obj)
    if isinstance(obj, (str, bytes)):
        return 1 + len(obj) // 64
    return 1


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a torch pickle into stand-ins; ``storages`` collects every storage by key."""

    def __init__(self, file: IO[bytes], budget: int) -> None:
        super().__init__(file, encoding="utf-8")
        self.storages: dict[str, StorageRef] = {}
        self._classes: dict[tuple[str, str], Any] = {}
        self._meter = Meter(budget)

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key not in self._classes:  # one Placeholder class per global, so isinstance works
            self._classes[key] = self._resolve(module, name)
        return self._classes[key]

    def _resolve(self, module: str, name: str) -> Any:
        qualified = ".".join(canonical(module, name))
        if qualified in HASHING:
            return StandIn(partial(self._hashing, HASHING[qualified]), qualified, self._meter)
        found = resolve_global(module, name)
        if isinstance(found, type) and issubclass(found, Placeholder):
            found.meter = self._meter  # a fresh class for this pickle: its calls are charged
        elif callable(found) and not isinstance(found, type):
            found = StandIn(found, qualified, self._meter)
        return found

    def _hashing(self, builder: Callable[..., Any], *args: Any) -> Any:
        """``builder(*args)`` once hashing what it is given fits in the budget."""
        if args:
            self._meter.charge(hash_cost(args[0], pairs=builder is collections.OrderedDict))
        return builder(*args)

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid:
            raise FormatError(f"unexpected persistent id {brief(pid)}")
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind == "storage" and len(pid) in (5, 6):
            return self._storage(*pid[1:])
        if kind == "module":  # legacy whole-model saves record the module source: not needed
            return None
        raise FormatError(f"unexpected persistent id {brief(pid)}")

    def _storage(self, storage_type: Any, key: Any, location: Any, numel: Any,
                 view_metadata: Any = None) -> Any:
        if not isinstance(storage_type, StorageType):
            raise FormatError(f"storage of unknown type {brief(storage_type)}")
        if not storage_type.supported:
            return UnsupportedTensor(f"{storage_type.name} (quantized) storages are not supported")
        if not isinstance(key, (str, int)) or not isinstance(numel, int) or numel < 0 \
                or not isinstance(location, str):
            raise FormatError(f"malformed storage reference {brief((key, location, numel))}")
        key = key_text(key)
        if key not in self.storages:
            self.storages[key] = StorageRef(key, storage_type.dtype, numel, location)
        root = self.storages[key]
        if view_metadata is None:
            return root
        return self._legacy_view(root, view_metadata)

    @staticmethod
    def _legacy_view(root: StorageRef, view_metadata: Any) -> StorageRef:
        if not isinstance(view_metadata, tuple) or len(view_metadata) != 3:
            raise FormatError("malformed legacy storage view")
        _view_key, offset, size = view_metadata
        if not all(isinstance(v, int) and v >= 0 for v in (offset, size)):
            raise FormatError("malformed legacy storage view")
        return StorageRef(root.key, root.dtype, int(size), root.location,
                          root.byte_offset + int(offset) * root.itemsize)


def unpickle(file: IO[bytes]) -> tuple[Any, dict[str, StorageRef]]:
    """Load one pickle with the restricted unpickler: (root object, storages by key).

    The opcodes are scanned first (:func:`.pickle_scan.scan`). FormatError for corrupt data or
    a bomb, UnsafeFileError for a pickle that names code or tries to modify a function.
    """
    start = file.tell()
    opcodes, nbytes = scan(file)
    file.seek(start)
    unpickler = RestrictedUnpickler(file, work_budget(opcodes, nbytes))
    try:
        root = unpickler.load()
    except FormatError:
        raise
    except PICKLE_ERRORS as exc:
        raise FormatError(f"corrupt pickle ({type(exc).__name__}: {exc})"[:300]) from None
    return root, unpickler.storages
