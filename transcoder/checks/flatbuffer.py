"""A TFLite flatbuffer walked with bounds checks before an interpreter sees it.

The interpreter trusts its file: a valid header and 2 KiB of junk, or 40 flipped bytes, made
it read out of bounds (SIGSEGV). :func:`validate` reads the parts of the schema
(``tensorflow/lite/schema/schema.fbs``) the interpreter follows at load: every table and its
vtable inside the file, every vector and string inside the file with its declared length,
every index an operator, tensor or signature holds pointing at something that exists, every
buffer's extent (``offset``/``size`` of a large model) inside the file; and only builtin
operators (a custom or Flex op can run TensorFlow ops, files included). FormatError (or
UnsafeFileError) naming the first fault. A file that passes can still crash a kernel: the
interpreter runs in a child process anyway (:mod:`.tflite_child`).
"""
from __future__ import annotations

import struct
from pathlib import Path

from ..errors import FormatError, UnsafeFileError

IDENTIFIER = b"TFL3"
CUSTOM = 32          # BuiltinOperator.CUSTOM
MAX_RANK = 64


class _Bad(Exception):
    pass


class _Table:
    """A table at ``pos`` of ``buf``, its vtable checked; fields read by their id."""

    def __init__(self, buf: bytes, pos: int) -> None:
        n = len(buf)
        if not 0 <= pos <= n - 4:
            raise _Bad(f"a table at {pos} outside the file")
        vtable = pos - struct.unpack_from("<i", buf, pos)[0]
        if not 0 <= vtable <= n - 4:
            raise _Bad(f"a vtable at {vtable} outside the file")
        vlen, tlen = struct.unpack_from("<HH", buf, vtable)
        if vlen < 4 or vlen % 2 or vtable + vlen > n or pos + tlen > n or tlen < 4:
            raise _Bad(f"a malformed vtable at {vtable}")
        self.buf, self.pos, self.vtable, self.vlen, self.tlen = buf, pos, vtable, vlen, tlen

    def _at(self, field: int, size: int) -> int | None:
        slot = 4 + 2 * field
        if slot + 2 > self.vlen:
            return None
        offset = struct.unpack_from("<H", self.buf, self.vtable + slot)[0]
        if offset == 0:
            return None
        if offset + size > self.tlen:
            raise _Bad(f"field {field} of the table at {self.pos} outside it")
        return self.pos + offset

    def scalar(self, field: int, fmt: str, default: int = 0) -> int:
        at = self._at(field, struct.calcsize(fmt))
        return default if at is None else struct.unpack_from("<" + fmt, self.buf, at)[0]

    def _target(self, field: int) -> int | None:
        at = self._at(field, 4)
        return None if at is None else at + struct.unpack_from("<I", self.buf, at)[0]

    def table(self, field: int) -> "_Table | None":
        target = self._target(field)
        return None if target is None else _Table(self.buf, target)

    def vector(self, field: int, elem: int) -> tuple[int, int]:
        """``(start, length)`` of a vector field (``(0, 0)`` when absent), inside the file."""
        target = self._target(field)
        if target is None:
            return 0, 0
        if target > len(self.buf) - 4:
            raise _Bad(f"a vector at {target} outside the file")
        length = struct.unpack_from("<I", self.buf, target)[0]
        if target + 4 + length * elem > len(self.buf):
            raise _Bad(f"a vector of {length} at {target} runs past the end of the file")
        return target + 4, length

    def ints(self, field: int, fmt: str = "i") -> list[int]:
        start, length = self.vector(field, struct.calcsize(fmt))
        return list(struct.unpack_from(f"<{length}{fmt}", self.buf, start)) if length else []

    def tables(self, field: int) -> list["_Table"]:
        start, length = self.vector(field, 4)
        return [_Table(self.buf, start + 4 * j + struct.unpack_from("<I", self.buf, start + 4 * j)[0])
                for j in range(length)]

    def string(self, field: int) -> str:
        start, length = self.vector(field, 1)
        return self.buf[start:start + length].decode("utf-8", "replace") if length else ""


def validate(path: Path, data: bytes) -> None:
    """FormatError unless ``data`` (the file at ``path``) is a TFLite model whose structure
    the interpreter can follow without leaving it; UnsafeFileError for a custom op."""
    if len(data) < 8 or data[4:8] != IDENTIFIER:
        raise FormatError("not a TFLite flatbuffer (no TFL3 identifier)", path=path)
    try:
        _model(data, _Table(data, struct.unpack_from("<I", data, 0)[0]), path)
    except (_Bad, struct.error) as exc:
        raise FormatError(f"malformed TFLite flatbuffer ({exc})", path=path) from None


def _model(data: bytes, model: _Table, path: Path) -> None:
    codes = [_operator_code(c, path) for c in model.tables(1)]
    buffers = model.tables(4)
    for buffer in buffers:
        buffer.vector(0, 1)
        offset, size = buffer.scalar(1, "Q"), buffer.scalar(2, "Q")
        if offset > 1 and offset + size > len(data):
            raise _Bad(f"a buffer of {size} bytes at {offset} runs past the end of the file")
    subgraphs = model.tables(2)
    if not subgraphs:
        raise _Bad("no subgraph")
    counts = [_subgraph(g, len(codes), len(buffers)) for g in subgraphs]
    for metadata in model.tables(6):
        _index(metadata.scalar(1, "I"), len(buffers), "a metadata buffer")
    for signature in model.tables(7):
        graph = _index(signature.scalar(4, "I"), len(subgraphs), "a signature's subgraph")
        for tensor_map in signature.tables(0) + signature.tables(1):
            tensor_map.string(0)
            _index(tensor_map.scalar(1, "I"), counts[graph], "a signature's tensor")


def _operator_code(code: _Table, path: Path) -> int:
    builtin = max(code.scalar(0, "b"), code.scalar(3, "i"))
    custom = code.string(1)
    if builtin == CUSTOM or custom:
        raise UnsafeFileError(f"custom operator {custom or '?'!r}: refused (only builtin "
                              f"operators are run; a Flex op runs TensorFlow ops)", path=path)
    return builtin


def _subgraph(graph: _Table, codes: int, buffers: int) -> int:
    tensors = graph.tables(0)
    for tensor in tensors:
        shape = tensor.ints(0)
        if len(shape) > MAX_RANK or any(d < -1 for d in shape + tensor.ints(7)):
            raise _Bad(f"a tensor of shape {shape[:8]}")
        _index(tensor.scalar(2, "I"), buffers, "a tensor's buffer")
        tensor.string(3)
        quantization = tensor.table(4)
        if quantization is not None:
            for field, elem in ((0, 4), (1, 4), (2, 4), (3, 8)):
                quantization.vector(field, elem)
        if tensor.table(6) is not None:
            raise _Bad("a sparse tensor")   # its index vectors: not walked, so not run
    count = len(tensors)
    for field in (1, 2):
        for index in graph.ints(field):
            _index(index, count, "a subgraph's input or output")
    for operator in graph.tables(3):
        _index(operator.scalar(0, "I"), codes, "an operator's code")
        for field in (1, 2, 8):
            for index in operator.ints(field):
                if index != -1:   # an omitted optional input
                    _index(index, count, "an operator's tensor")
        operator.table(4)            # builtin options: a table inside the file
        operator.vector(5, 1)        # custom options
        operator.vector(7, 1)        # mutating variable inputs
    return count


def _index(value: int, count: int, what: str) -> int:
    if not 0 <= value < count:
        raise _Bad(f"{what} is {value}, of {count}")
    return value
