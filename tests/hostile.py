"""Builders of hostile inputs, shared by the hostile-input tests and the fuzz campaign.

Each builder returns the bytes (or writes the file) of one attack from issue 12; none needs
torch. Pickles are assembled opcode by opcode (``pickletools`` names in comments).
"""
from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

PROTO2 = b"\x80\x02"
STOP = b"."


def text(value: str) -> bytes:
    """BINUNICODE."""
    data = value.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(data)) + data


def glob(module: str, name: str) -> bytes:
    """GLOBAL."""
    return b"c" + f"{module}\n{name}\n".encode()


def memoize_get(index: int) -> bytes:
    """LONG_BINGET."""
    return b"j" + struct.pack("<I", index)


def dag(levels: int) -> bytes:
    """A tuple naming the previous level twice, ``levels`` deep: 2^levels leaves, ~10 bytes
    a level. Leaves the root on the stack; uses memo entries 0..levels."""
    out = b")\x94"  # EMPTY_TUPLE, MEMOIZE
    for level in range(levels):
        out += memoize_get(level) + memoize_get(level) + b"\x86\x94"  # TUPLE2, MEMOIZE
    return out


def proto4(body: bytes) -> bytes:
    return b"\x80\x04" + body + STOP


def dag_as_dict_key(levels: int = 40) -> bytes:
    return proto4(b"}" + dag(levels) + b"N" + b"s")  # EMPTY_DICT, key, NONE, SETITEM


def dag_in_frozenset(levels: int = 40) -> bytes:
    return proto4(b"(" + dag(levels) + b"\x91")  # MARK, FROZENSET


def dag_to_torch_size(levels: int = 40) -> bytes:
    """torch.Size(dag): its error message used to repr the whole structure."""
    return proto4(dag(levels) + glob("torch", "Size") + memoize_get(levels) + b"\x85R")


def dag_as_persistent_id(levels: int = 40) -> bytes:
    return proto4(dag(levels) + b"Q")  # BINPERSID


def dag_key_through_ordered_dict(levels: int = 40) -> bytes:
    """OrderedDict([(dag, None)]): the hashing happens inside the stand-in, not the unpickler."""
    pairs = b"]" + b"(" + dag(levels) + b"N\x86" + b"e"  # EMPTY_LIST, MARK, (dag, None), APPENDS
    return proto4(glob("collections", "OrderedDict") + pairs + b"\x85R")


def deep_tuple_key(depth: int = 200_000) -> bytes:
    """A tuple nested ``depth`` deep used as a dict key: hashing it recursed in C (a crash)."""
    return proto4(b"}" + b")" + b"\x85" * depth + b"N" + b"s")


def memo_index_bomb() -> bytes:
    """LONG_BINPUT 2^27: the C unpickler zeroes a 2 GiB memo table."""
    return proto4(b"N" + b"r" + struct.pack("<I", 1 << 27))


def build_on_function() -> bytes:
    """BUILD on torch._utils._rebuild_tensor_v2 setting its __defaults__ (poisons the process)."""
    state = b"N" + b"}" + text("__defaults__") + b"(" + b"K\x07" * 3 + b"t" + b"s" + b"\x86"
    return PROTO2 + glob("torch._utils", "_rebuild_tensor_v2") + state + b"b" + b"0" + b"}" + STOP


def setitem_on_class() -> bytes:
    """SETITEM on the OrderedDict stand-in itself."""
    return PROTO2 + glob("collections", "OrderedDict") + text("k") + b"N" + b"s" + STOP


def append_on_function() -> bytes:
    """APPEND onto a stand-in function."""
    return PROTO2 + glob("torch._utils", "_rebuild_tensor_v2") + b"N" + b"a" + STOP


def reused_large_argument(calls: int = 20_000, size: int = 1 << 20) -> bytes:
    """_codecs.encode of one memoized 1 MiB string, 20,000 times (20 GiB of work)."""
    body = text("x" * size) + b"\x94" + glob("_codecs", "encode") + b"\x94"
    body += (memoize_get(1) + memoize_get(0) + b"\x85R0") * calls
    return proto4(body + b"N")


def module_dag(levels: int = 40) -> bytes:
    """A pickled nn.Module whose two submodules are one object, at every level: 2^40 paths."""
    def module(children: bytes) -> bytes:
        state = b"}(" + text("_parameters") + b"}" + text("_buffers") + b"}" + text("_modules")
        state += b"}" + children + b"u"
        return memoize_get(0) + b")\x81" + state + b"b\x94"  # NEWOBJ, BUILD, MEMOIZE
    out = glob("torch.nn.modules.container", "Sequential") + b"\x94" + module(b"")
    for level in range(1, levels + 1):
        out += module(b"(" + text("a") + memoize_get(level) + text("b") + memoize_get(level) + b"u")
    return proto4(out)


def torch_zip(path: Path, data_pkl: bytes, records: dict[str, bytes] | None = None,
              compression: int = zipfile.ZIP_STORED, prefix: str = "archive") -> Path:
    """A torch.save-like zip archive around ``data_pkl`` and storage records ``data/<key>``."""
    with zipfile.ZipFile(path, "w", compression) as zf:
        zf.writestr(f"{prefix}/data.pkl", data_pkl)
        zf.writestr(f"{prefix}/byteorder", b"little")
        for key, data in (records or {}).items():
            zf.writestr(f"{prefix}/data/{key}", data)
        zf.writestr(f"{prefix}/version", b"3\n")
    return path


# ---------------------------------------------------------------------------------------------
# Running the command under bounds, and the contract for bad input
# ---------------------------------------------------------------------------------------------

_CHILD = """
import resource, sys
limit = int(sys.argv[2]) << 20
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from transcoder.cli import main
code = main(sys.argv[3:])
peak = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
open(sys.argv[1], "w").write(f"{code} {int(peak) // 1024}")
"""


@dataclass
class Run:
    code: int | None         # None: killed (timeout or signal)
    stdout: str
    stderr: str
    peak_mib: int | None     # VmHWM of the process
    seconds: float


def run_bounded(args: list, tmp: Path, *, timeout: float = 60.0, address_mib: int = 3072) -> Run:
    """``transcode ARGS`` in a fresh process limited to ``address_mib`` of address space and
    ``timeout`` seconds; reports its exit code, output and peak resident memory."""
    report = tmp / ".run-report"
    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-c", _CHILD, str(report), str(address_mib),
                               *map(str, args)], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "TRANSCODER_DEBUG": ""})
    except subprocess.TimeoutExpired as exc:
        return Run(None, exc.stdout or "", exc.stderr or "", None, time.perf_counter() - started)
    seconds = time.perf_counter() - started
    code, peak = (report.read_text().split() if report.exists() else (None, None))
    report.unlink(missing_ok=True)
    code = int(code) if code is not None else -abs(done.returncode)
    return Run(code, done.stdout, done.stderr, int(peak) if peak else None, seconds)


def one_error_line(stderr: str) -> str:
    """The single line a refused input prints (no traceback, nothing else)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {stderr!r}"
    assert "Traceback" not in stderr
    assert lines[0].startswith("transcode: error: "), lines[0]
    return lines[0]


def assert_refused(code: int | None, stderr: str, names: Path, folder: Path,
                   leave: set[str]) -> str:
    """Exit 2, one line naming ``names`` (the file), and ``folder`` holds only ``leave``."""
    assert code == 2, f"exit code {code}: {stderr!r}"
    line = one_error_line(stderr)
    assert str(names) in line, line
    left = {p.name for p in folder.iterdir()} - {".run-report"}
    assert left == leave, f"left behind: {sorted(left - leave)}, missing {sorted(leave - left)}"
    return line


# ---------------------------------------------------------------------------------------------
# torch.save-like pickles with chosen shapes and strides
# ---------------------------------------------------------------------------------------------

def long1(value: int) -> bytes:
    """LONG1 (any size of integer)."""
    data = value.to_bytes((value.bit_length() + 8) // 8 or 1, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data


def int_tuple(values) -> bytes:
    return b"(" + b"".join(long1(v) for v in values) + b"t"


@dataclass
class Entry:
    """One tensor of a hand-made state dict: ``storage_key`` names ``data/<key>``."""

    name: str
    storage_key: str
    numel: int
    shape: tuple
    stride: tuple
    offset: int = 0
    storage: str = "FloatStorage"


def state_dict_pickle(entries: list[Entry]) -> bytes:
    """The data.pkl torch.save writes for an OrderedDict of (possibly strided) tensors."""
    empty_odict = glob("collections", "OrderedDict") + b")R"
    out = PROTO2 + empty_odict + b"("
    for e in entries:
        pid = b"(" + text("storage") + glob("torch", e.storage) + text(e.storage_key) + text("cpu")
        pid += long1(e.numel) + b"tQ"
        args = b"(" + pid + long1(e.offset) + int_tuple(e.shape) + int_tuple(e.stride) + b"\x89"
        out += text(e.name) + glob("torch._utils", "_rebuild_tensor_v2") + args + empty_odict
        out += b"tR"
    return out + b"u" + STOP


# ---------------------------------------------------------------------------------------------
# Keras files and safetensors headers written by hand
# ---------------------------------------------------------------------------------------------

def legacy_h5(path: Path, layers: dict[str, dict[str, "np.ndarray"]], **dataset_options) -> Path:
    """A legacy weights-only ``.h5``: ``{layer: {weight: array}}``, weight names ``layer/weight``."""
    import h5py
    import numpy as np

    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([n.encode() for n in layers])
        for layer, weights in layers.items():
            grp = f.create_group(layer)
            grp.attrs["weight_names"] = np.array([f"{layer}/{w}".encode() for w in weights])
            for weight, array in weights.items():
                grp.create_dataset(f"{layer}/{weight}", data=array, **dataset_options)
    return path


def safetensors_raw(path: Path, header: bytes, data: bytes = b"") -> Path:
    """A safetensors file with exactly this header text (8-byte length first)."""
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


def keras_archive(path: Path, config: bytes, weights: bytes,
                  compression: int = zipfile.ZIP_STORED) -> Path:
    """A ``.keras`` zip of config.json, metadata.json and model.weights.h5."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config.json", config)
        zf.writestr("metadata.json", b'{"keras_version": "3.15.0"}')
        zf.writestr("model.weights.h5", weights, compress_type=compression)
    return path
