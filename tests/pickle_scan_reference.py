"""The opcode scan as it was before the single-pass rewrite (pickletools.genops plus a step per
opcode name): the reference tests/test_pickle_scan.py compares the fast scan against.

A pickle can name one object many times (the memo), so a few hundred bytes can describe a
tuple of tuples with 2^40 leaves. Building it is cheap, but hashing it (as a dict key or a
set element) visits every leaf, and the C unpickler does that before any of our code could
stop it; hashing a tuple nested a million deep overflows the C stack. This scan simulates
the unpickler's stack holding, for each object, what hashing it would cost and how deeply its
tuples nest:

- a tuple costs one plus its elements' costs (tuples are immutable, so this stays true);
- a string or bytes costs one per 64 bytes; a frozenset one per element (it caches its hash);
- lists, dicts, sets and other objects cost one: they are unhashable or hashed by identity;
- what a call (REDUCE, NEWOBJ, ...) returns costs at most what its arguments cost: every
  stand-in returns one of its arguments or an object that hashes in constant time
  (:mod:`.torch_pickle` checks at run time the stand-ins that hash what they are given).

Every key, set element and attribute name the unpickler hashes adds its cost to one budget,
proportional to the pickle's length; tuples may nest at most :data:`MAX_NESTING` deep. Errors
in the opcode stream (unknown opcodes, truncated arguments) are reported as FormatError here,
before the unpickler allocates whatever a length field declares.
"""
from __future__ import annotations

import pickletools
import warnings
from typing import IO, Callable

from transcoder.errors import FormatError

#: Hash work allowed for any pickle, plus WORK_PER_OPCODE per opcode and WORK_PER_BYTE per byte
#: read so far. Real state-dict pickles cost about one unit per opcode (each tensor's argument
#: tuple, each key); a string costs one per 64 bytes, once, so a pickle holding large bytes
#: (protocol 2 pickles them through ``_codecs.encode``) stays well within the byte allowance.
BASE_WORK = 1_000_000
WORK_PER_OPCODE = 16
WORK_PER_BYTE = 1 / 8
#: Tuples nested deeper than this are refused (real pickles nest a handful of levels).
MAX_NESTING = 100

Cost = tuple[int, int]  # (hash cost, tuple nesting depth)
ONE: Cost = (1, 0)

_ATOMS = ("INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "NONE", "NEWTRUE",
          "NEWFALSE", "FLOAT", "BINFLOAT", "EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET", "EXT1",
          "EXT2", "EXT4", "GLOBAL", "PERSID", "NEXT_BUFFER", "EMPTY_TUPLE")
_TEXTS = ("STRING", "BINSTRING", "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
          "BYTEARRAY8", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8")


class Machine:
    """The unpickler's stack, marks and memo, holding costs instead of objects."""

    def __init__(self) -> None:
        self.stack: list[Cost] = []
        self.marks: list[int] = []  # stack heights at each MARK, as the C unpickler keeps them
        self.memo: dict[int, Cost] = {}
        self.work = 0
        self.opcodes = 0
        self.position = 0   # bytes read so far

    def push(self, cost: Cost) -> None:
        self.stack.append(cost)

    def pop(self) -> Cost:
        if len(self.stack) <= (self.marks[-1] if self.marks else 0):
            raise FormatError("corrupt pickle (stack underflow)")
        return self.stack.pop()

    def top(self) -> Cost:
        cost = self.pop()
        self.stack.append(cost)
        return cost

    def mark(self) -> None:
        self.marks.append(len(self.stack))

    def pop_mark(self) -> list[Cost]:
        if not self.marks:
            raise FormatError("corrupt pickle (no MARK on the stack)")
        at = self.marks.pop()
        items = self.stack[at:]
        del self.stack[at:]
        return items

    def put(self, index: int) -> None:
        # The C unpickler grows its memo table to twice the index and zeroes it: five bytes
        # naming index 2^27 would take 2 GiB. Picklers number memo entries from 0 upwards.
        if index > self.opcodes + 16:
            raise FormatError(f"corrupt pickle (memo index {index} out of sequence)")
        self.memo[index] = self.top()

    def hashes(self, costs: list[Cost]) -> None:
        self.work += sum(c for c, _ in costs)
        limit = work_budget(self.opcodes, self.position)
        if self.work > limit:
            raise FormatError("the pickle reuses objects so that loading it would take more than "
                              f"{limit} steps (a hash bomb); refusing it")


def combined(costs: list[Cost]) -> Cost:
    """A tuple of these (or what a call given them returns)."""
    depth = 1 + max((d for _, d in costs), default=0)
    if depth > MAX_NESTING:
        raise FormatError(f"the pickle nests tuples more than {MAX_NESTING} deep; refusing it")
    return 1 + sum(c for c, _ in costs), depth


def _call(m: Machine, args: list[Cost]) -> None:
    """A stand-in may hash its arguments (a dict or set from them), or return them."""
    m.hashes(args)
    m.push(combined(args))


def _reduce(m: Machine, _arg: object) -> None:
    args = m.pop()
    m.pop()
    _call(m, [args])


def _newobj_ex(m: Machine, _arg: object) -> None:
    kwargs, args = m.pop(), m.pop()
    m.pop()
    _call(m, [args, kwargs])


def _build(m: Machine, _arg: object) -> None:
    m.hashes([m.pop()])  # the state's names become attributes


def _frozenset(m: Machine, _arg: object) -> None:
    items = m.pop_mark()
    m.hashes(items)
    m.push((1 + len(items), 0))


def _setitem(m: Machine, _arg: object) -> None:
    m.pop()
    m.hashes([m.pop()])


def _dict(m: Machine, _arg: object) -> None:
    m.hashes(m.pop_mark()[0::2])
    m.push(ONE)


def _text(m: Machine, arg: object) -> None:
    m.push((1 + len(arg) // 64, 0))  # hashing reads every byte once


def _tuple_n(count: int) -> Callable[[Machine, object], None]:
    def step(m: Machine, _arg: object) -> None:
        m.push(combined([m.pop() for _ in range(count)]))
    return step


def _pop_n(count: int, then_push: bool = False) -> Callable[[Machine, object], None]:
    def step(m: Machine, _arg: object) -> None:
        for _ in range(count):
            m.pop()
        if then_push:
            m.push(ONE)
    return step


#: opcode name -> its effect on the simulated stack (pickletools' stack_before/after).
STEPS: dict[str, Callable[[Machine, object], None]] = {
    **{name: (lambda m, arg: m.push(ONE)) for name in _ATOMS},
    **{name: _text for name in _TEXTS},
    **{name: (lambda m, arg: m.push(m.memo.get(arg, ONE))) for name in ("GET", "BINGET",
                                                                            "LONG_BINGET")},
    **{name: (lambda m, arg: m.put(arg)) for name in ("PUT", "BINPUT", "LONG_BINPUT")},
    **{name: (lambda m, arg: None) for name in ("PROTO", "FRAME", "READONLY_BUFFER")},
    "MEMOIZE": lambda m, arg: m.put(len(m.memo)),
    "MARK": lambda m, arg: m.mark(),
    "POP": _pop_n(1),
    "STOP": _pop_n(1),
    "APPEND": _pop_n(1),
    "POP_MARK": lambda m, arg: m.pop_mark(),
    "APPENDS": lambda m, arg: m.pop_mark(),
    "LIST": lambda m, arg: (m.pop_mark(), m.push(ONE)),
    "DUP": lambda m, arg: m.push(m.top()),
    "TUPLE1": _tuple_n(1),
    "TUPLE2": _tuple_n(2),
    "TUPLE3": _tuple_n(3),
    "TUPLE": lambda m, arg: m.push(combined(m.pop_mark())),
    "DICT": _dict,
    "SETITEM": _setitem,
    "SETITEMS": lambda m, arg: m.hashes(m.pop_mark()[0::2]),
    "FROZENSET": _frozenset,
    "ADDITEMS": lambda m, arg: m.hashes(m.pop_mark()),
    "REDUCE": _reduce,
    "NEWOBJ": _reduce,
    "NEWOBJ_EX": _newobj_ex,
    "INST": lambda m, arg: _call(m, m.pop_mark()),
    "OBJ": lambda m, arg: _call(m, m.pop_mark()),
    "BUILD": _build,
    "STACK_GLOBAL": _pop_n(2, then_push=True),
    "BINPERSID": lambda m, arg: _call(m, [m.pop()]),
}

_ERRORS = (ValueError, UnicodeDecodeError, OverflowError, MemoryError, EOFError, KeyError)


def scan(file: IO[bytes]) -> tuple[int, int]:
    """Walk one pickle from ``file``'s position to its STOP; returns (opcodes, bytes).

    FormatError if the stream is corrupt or the hash work it implies exceeds the budget.
    The caller rewinds ``file`` before unpickling.
    """
    machine = Machine()
    try:
        with warnings.catch_warnings():  # "invalid escape sequence" in STRING opcodes
            warnings.simplefilter("ignore", DeprecationWarning)
            start = file.tell()
            for opcode, arg, position in pickletools.genops(file):
                machine.opcodes += 1
                machine.position = position - start
                STEPS[opcode.name](machine, arg)
    except FormatError:
        raise
    except _ERRORS as exc:
        raise FormatError(f"corrupt pickle ({type(exc).__name__}: {exc})"[:300]) from None
    return machine.opcodes, machine.position + 1


def work_budget(opcodes: int, nbytes: int) -> int:
    """Work a pickle of this many opcodes and bytes may cause (hashing, stand-ins' calls)."""
    return int(BASE_WORK + WORK_PER_OPCODE * opcodes + WORK_PER_BYTE * nbytes)
