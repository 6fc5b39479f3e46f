"""One pass over a pickle's opcodes before anything is unpickled: bounds the work it can cause.

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

The walk is one table lookup per opcode byte (:data:`HANDLERS`): each handler reads its own
argument from the buffered bytes and applies its effect (the ``STEPS`` by opcode name); the
binary opcodes a ``torch.save`` pickle is made of are decoded here, by hand, with
``pickletools``' own error messages; the rest go through ``pickletools``' argument readers.
It does what ``pickletools.genops`` followed by the steps did, about ten times faster (a .pt
read spent 70 % of its time in the old walk).
"""
from __future__ import annotations

import pickletools
import struct
import warnings
from typing import IO, Callable

from ...errors import FormatError

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
#: Bytes read from the file at a time.
CHUNK = 1 << 16
#: An opcode and its widest fixed-size argument: the walk reads this far ahead before each step.
AHEAD = 9

_ATOMS = ("INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "NONE", "NEWTRUE",
          "NEWFALSE", "FLOAT", "BINFLOAT", "EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET", "EXT1",
          "EXT2", "EXT4", "GLOBAL", "PERSID", "NEXT_BUFFER", "EMPTY_TUPLE")
_TEXTS = ("STRING", "BINSTRING", "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
          "BYTEARRAY8", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8")


class Machine:
    """The unpickler's stack, marks and memo, holding costs instead of objects; and the
    pickle's bytes read so far from ``file`` (:meth:`read` and :meth:`readline` serve
    ``pickletools``' argument readers at :attr:`cursor`)."""

    def __init__(self, file: IO[bytes]) -> None:
        self.stack: list[Cost] = []
        self.marks: list[int] = []  # stack heights at each MARK, as the C unpickler keeps them
        self.floor = 0              # the last mark's height: pop() may not go below it
        self.memo: dict[int, Cost] = {}
        self.work = 0
        self.opcodes = 0
        self.position = 0   # offset of the current opcode from the pickle's start
        self.file, self.start = file, file.tell()
        self.data = bytearray()
        self.eof = False
        self.cursor = 0

    def push(self, cost: Cost) -> None:
        self.stack.append(cost)

    def pop(self) -> Cost:
        if len(self.stack) <= self.floor:
            raise FormatError("corrupt pickle (stack underflow)")
        return self.stack.pop()

    def top(self) -> Cost:
        if len(self.stack) <= self.floor:
            raise FormatError("corrupt pickle (stack underflow)")
        return self.stack[-1]

    def mark(self) -> None:
        self.floor = len(self.stack)
        self.marks.append(self.floor)

    def pop_mark(self) -> list[Cost]:
        if not self.marks:
            raise FormatError("corrupt pickle (no MARK on the stack)")
        at = self.marks.pop()
        self.floor = self.marks[-1] if self.marks else 0
        items = self.stack[at:]
        del self.stack[at:]
        return items

    def put(self, index: int) -> None:
        # The C unpickler grows its memo table to twice the index and zeroes it: five bytes
        # naming index 2^27 would take 2 GiB. Picklers number memo entries from 0 upwards.
        if index > self.opcodes + 16:
            raise FormatError(f"corrupt pickle (memo index {index} out of sequence)")
        if len(self.stack) <= self.floor:
            raise FormatError("corrupt pickle (stack underflow)")
        self.memo[index] = self.stack[-1]

    def hashes(self, costs: list[Cost]) -> None:
        for cost, _ in costs:
            self.work += cost
        limit = work_budget(self.opcodes, self.position)
        if self.work > limit:
            raise FormatError("the pickle reuses objects so that loading it would take more than "
                              f"{limit} steps (a hash bomb); refusing it")

    def fill(self, end: int) -> None:
        """Read on until :attr:`data` holds ``end`` bytes or the file ends (in bounded chunks:
        a length field cannot make us allocate more than the file holds)."""
        data = self.data
        while len(data) < end and not self.eof:
            chunk = self.file.read(max(CHUNK, min(end - len(data), 256 * CHUNK)))
            self.eof = not chunk
            data += chunk

    def read(self, size: int) -> bytes:
        self.fill(self.cursor + size)
        out = bytes(self.data[self.cursor:self.cursor + size])
        self.cursor += len(out)
        return out

    def readline(self) -> bytes:
        while (newline := self.data.find(b"\n", self.cursor)) < 0 and not self.eof:
            self.fill(len(self.data) + CHUNK)
        end = newline + 1 if newline >= 0 else len(self.data)
        out = bytes(self.data[self.cursor:end])
        self.cursor = end
        return out


def combined(costs: list[Cost]) -> Cost:
    """A tuple of these (or what a call given them returns)."""
    total, depth = 1, 0
    for cost, nested in costs:
        total += cost
        if nested > depth:
            depth = nested
    if depth >= MAX_NESTING:
        raise FormatError(f"the pickle nests tuples more than {MAX_NESTING} deep; refusing it")
    return total, depth + 1


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


# ---------------------------------------------------------------------------------------------
# Handlers: opcode byte -> read the argument at ``at``, apply the step, return the next offset
# ---------------------------------------------------------------------------------------------

Handler = Callable[[Machine, bytearray, int], int]
STOPPED = -1


def _skipping(width: int, what: str, pushes: bool = True) -> Handler:
    """An opcode whose integer argument costs nothing (BININT*, PROTO, FRAME): only its bytes
    must be there (pickletools' ``read_<what>``); the BININTs push their constant."""
    def handler(m: Machine, data: bytearray, at: int) -> int:
        end = at + width
        if end > len(data):
            raise ValueError(f"not enough data in stream to read {what}")
        if pushes:
            m.stack.append(ONE)
        return end
    return handler


def _binput(m: Machine, data: bytearray, at: int) -> int:
    if at >= len(data):
        raise ValueError("not enough data in stream to read uint1")
    m.put(data[at])
    return at + 1


def _long_binput(m: Machine, data: bytearray, at: int) -> int:
    if at + 4 > len(data):
        raise ValueError("not enough data in stream to read uint4")
    m.put(_UINT4(data, at)[0])
    return at + 4


def _binget(m: Machine, data: bytearray, at: int) -> int:
    if at >= len(data):
        raise ValueError("not enough data in stream to read uint1")
    m.stack.append(m.memo.get(data[at], ONE))
    return at + 1


def _long_binget(m: Machine, data: bytearray, at: int) -> int:
    if at + 4 > len(data):
        raise ValueError("not enough data in stream to read uint4")
    m.stack.append(m.memo.get(_UINT4(data, at)[0], ONE))
    return at + 4


_UINT4 = struct.Struct("<I").unpack_from


def _with_unicode(width: int, what: str) -> Handler:
    """BINUNICODE and SHORT_BINUNICODE: a length, then that many bytes of UTF-8."""
    def handler(m: Machine, data: bytearray, at: int) -> int:
        end = at + width
        if end > len(data):
            raise ValueError(f"not enough data in stream to read uint{width}")
        size = int.from_bytes(data[at:end], "little")
        if end + size > len(data):
            m.fill(end + size)
        text = data[end:end + size]
        if len(text) != size:
            raise ValueError(f"expected {size} bytes in a {what}, but only {len(text)} remain")
        _text(m, str(text, "utf-8", "surrogatepass"))
        return end + size
    return handler


def _without_arg(step: Callable[[Machine, object], None]) -> Handler:
    def handler(m: Machine, _data: bytearray, at: int) -> int:
        step(m, None)
        return at
    return handler


def _via_pickletools(opcode: pickletools.OpcodeInfo) -> Handler:
    """Any other opcode: ``pickletools``' reader for its argument (reading from the machine)."""
    reader, step = opcode.arg.reader, STEPS[opcode.name]

    def handler(m: Machine, _data: bytearray, at: int) -> int:
        m.cursor = at
        step(m, reader(m))
        return m.cursor
    return handler


def _stop(m: Machine, _data: bytearray, at: int) -> int:
    m.pop()
    return STOPPED


def _unknown(m: Machine, data: bytearray, at: int) -> int:
    raise ValueError(f"at position {m.start + at - 1}, opcode {bytes(data[at - 1:at])!r} unknown")


def _atom(m: Machine, _data: bytearray, at: int) -> int:
    m.stack.append(ONE)
    return at


def _mark(m: Machine, _data: bytearray, at: int) -> int:
    m.mark()
    return at


def _tuple(m: Machine, _data: bytearray, at: int) -> int:
    m.stack.append(combined(m.pop_mark()))
    return at


def _tuple_of(count: int) -> Handler:
    def handler(m: Machine, _data: bytearray, at: int) -> int:
        stack = m.stack
        if len(stack) - count < m.floor:
            raise FormatError("corrupt pickle (stack underflow)")
        items = stack[-count:]
        del stack[-count:]
        stack.append(combined(items))
        return at
    return handler


def _reduce_fast(m: Machine, _data: bytearray, at: int) -> int:
    stack = m.stack
    if len(stack) - 2 < m.floor:
        raise FormatError("corrupt pickle (stack underflow)")
    args = stack.pop()
    stack[-1] = args  # the callable's slot: _call pushes what it returns
    _call_top(m)
    return at


def _persid(m: Machine, _data: bytearray, at: int) -> int:
    if len(m.stack) <= m.floor:
        raise FormatError("corrupt pickle (stack underflow)")
    _call_top(m)
    return at


def _call_top(m: Machine) -> None:
    """_call on the one argument on top of the stack, which it replaces."""
    args = m.stack[-1]
    m.work += args[0]
    if m.work > BASE_WORK and m.work > work_budget(m.opcodes, m.position):
        m.hashes([])  # raises
    m.stack[-1] = combined((args,))


def _setitem_fast(m: Machine, _data: bytearray, at: int) -> int:
    stack = m.stack
    if len(stack) - 2 < m.floor:
        raise FormatError("corrupt pickle (stack underflow)")
    del stack[-1]
    m.hashes((stack.pop(),))
    return at


#: The opcodes torch pickles are made of, decoded and applied here.
_FAST: dict[str, Handler] = {
    "BININT1": _skipping(1, "uint1"),
    "BININT2": _skipping(2, "uint2"),
    "BININT": _skipping(4, "int4"),
    "BINPUT": _binput,
    "LONG_BINPUT": _long_binput,
    "BINGET": _binget,
    "LONG_BINGET": _long_binget,
    "PROTO": _skipping(1, "uint1", pushes=False),
    "FRAME": _skipping(8, "uint8", pushes=False),
    "BINUNICODE": _with_unicode(4, "unicodestring4"),
    "SHORT_BINUNICODE": _with_unicode(1, "unicodestring1"),
    **{name: _atom for name in ("EMPTY_TUPLE", "EMPTY_DICT", "EMPTY_LIST", "EMPTY_SET", "NONE",
                                "NEWTRUE", "NEWFALSE")},
    "MARK": _mark,
    "TUPLE": _tuple,
    "TUPLE1": _tuple_of(1),
    "TUPLE2": _tuple_of(2),
    "TUPLE3": _tuple_of(3),
    "REDUCE": _reduce_fast,
    "NEWOBJ": _reduce_fast,
    "BINPERSID": _persid,
    "SETITEM": _setitem_fast,
    "STOP": _stop,
}


def _handlers() -> list[Handler]:
    table: list[Handler] = [_unknown] * 256
    for opcode in pickletools.opcodes:
        code = opcode.code.encode("latin-1")[0]
        if opcode.name in _FAST:
            table[code] = _FAST[opcode.name]
        elif opcode.arg is None:
            table[code] = _without_arg(STEPS[opcode.name])
        else:
            table[code] = _via_pickletools(opcode)
    return table


HANDLERS: list[Handler] = _handlers()

_ERRORS = (ValueError, UnicodeDecodeError, OverflowError, MemoryError, EOFError, KeyError)


def scan(file: IO[bytes]) -> tuple[int, int]:
    """Walk one pickle from ``file``'s position to its STOP; returns (opcodes, bytes).

    FormatError if the stream is corrupt or the hash work it implies exceeds the budget.
    The file is read past the STOP (in chunks): the caller rewinds ``file`` before unpickling.
    """
    m = Machine(file)
    data, at, handlers = m.data, 0, HANDLERS
    try:
        with warnings.catch_warnings():  # "invalid escape sequence" in STRING opcodes
            warnings.simplefilter("ignore", DeprecationWarning)
            while at != STOPPED:
                if at + AHEAD > len(data):
                    m.fill(at + AHEAD)
                    if at >= len(data):
                        raise ValueError("pickle exhausted before seeing STOP")
                m.opcodes += 1
                m.position = at
                at = handlers[data[at]](m, data, at + 1)
    except FormatError:
        raise
    except _ERRORS as exc:
        raise FormatError(f"corrupt pickle ({type(exc).__name__}: {exc})"[:300]) from None
    return m.opcodes, m.position + 1


def work_budget(opcodes: int, nbytes: int) -> int:
    """Work a pickle of this many opcodes and bytes may cause (hashing, stand-ins' calls)."""
    return int(BASE_WORK + WORK_PER_OPCODE * opcodes + WORK_PER_BYTE * nbytes)
