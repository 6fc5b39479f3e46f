"""A TFLite interpreter in a child process, so that a crash in it (SIGSEGV on a malformed
or hostile flatbuffer) is one line and exit code 2, not the end of ``transcode check``.

The parent (:func:`start`) sends the flatbuffer's bytes, the ones it validated
(:mod:`.flatbuffer`), never a path the child would open again; the child answers with what
the interpreter says of it (signatures, input dtypes, the dtypes it holds), then runs the
``serving_default`` signature on each batch of inputs it is sent. Messages are a kind byte
(``J``: JSON, ``N``: ``.npz`` arrays, read with ``allow_pickle=False``), a length and the
payload, both ways: nothing the child sends can make the parent run code.
"""
from __future__ import annotations

import io
import json
import os
import select
import struct
import subprocess
import sys
import time
import warnings
import weakref
from pathlib import Path

import numpy as np

from ..errors import FormatError, one_line

SIGNATURE = "serving_default"   # export.SIGNATURE (not imported: the child stays light)
#: Seconds the child may take to load a model or to run it once before it is killed.
TIMEOUT = 600.0


# ---------------------------------------------------------------- framing

def _send(fd: int, kind: bytes, payload: bytes) -> None:
    data = kind + struct.pack("<Q", len(payload)) + payload
    while data:
        data = data[os.write(fd, data):]


def _read(fd: int, n: int, deadline: float | None) -> bytes | None:
    chunks, left = [], n
    while left:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _receive(fd: int, deadline: float | None = None) -> tuple[bytes, bytes] | None:
    head = _read(fd, 9, deadline)
    if head is None:
        return None
    payload = _read(fd, struct.unpack("<Q", head[1:])[0], deadline)
    return None if payload is None else (head[:1], payload)


def _arrays(payload: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(payload), allow_pickle=False) as found:
        return {name: found[name] for name in found.files}


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


# ---------------------------------------------------------------- the parent's side

class Child:
    """The interpreter process of one flatbuffer; ``info`` is what it said of the model."""

    def __init__(self, path: Path, flatbuffer: bytes) -> None:
        self.path = path
        package = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [package, *filter(None, [os.environ.get("PYTHONPATH")])]),
            "TF_CPP_MIN_LOG_LEVEL": "3"}
        self.proc = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        weakref.finalize(self, _stop, self.proc)
        self._call(b"M", flatbuffer, "loading it")
        self.info = self._last

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._call(b"N", _npz(feeds), "running it")

    def _call(self, kind: bytes, payload: bytes, doing: str):
        try:
            _send(self.proc.stdin.fileno(), kind, payload)
            answer = _receive(self.proc.stdout.fileno(), time.monotonic() + TIMEOUT)
        except BrokenPipeError:
            answer = None
        except TimeoutError:
            _stop(self.proc)
            raise FormatError(f"the TFLite interpreter took more than {TIMEOUT:g} s {doing}: "
                              f"stopped", path=self.path) from None
        if answer is None:
            code = _stop(self.proc)
            how = f"signal {-code}" if code and code < 0 else f"exit code {code}"
            raise FormatError(f"the TFLite interpreter crashed {doing} ({how}): a malformed "
                              f"flatbuffer", path=self.path)
        got, data = answer
        if got == b"J":
            message = json.loads(data)
            if "error" in message:
                raise ChildError(message["error"])
            self._last = message
            return message
        return _arrays(data)


class ChildError(RuntimeError):
    """The interpreter raised (its message); the caller says what it means."""


def _stop(proc: subprocess.Popen) -> int | None:
    if proc.poll() is None:
        proc.kill()
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        return None


# ---------------------------------------------------------------- the child's side

def _interpreter(flatbuffer: bytes):
    """LiteRT's interpreter (``ai_edge_litert``) if installed, else TensorFlow's."""
    try:
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter(model_content=flatbuffer), "ai_edge_litert.interpreter.Interpreter"
    except ImportError:
        import tensorflow as tf

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return tf.lite.Interpreter(model_content=flatbuffer), "tf.lite.Interpreter"


def _describe(interpreter, runtime: str) -> dict:
    signatures = interpreter.get_signature_list()
    info = {"runtime": runtime, "signatures": signatures, "inputs": {},
            "held": sorted({np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()})}
    if SIGNATURE in signatures:
        details = interpreter.get_signature_runner(SIGNATURE).get_input_details()
        info["inputs"] = {n: np.dtype(d["dtype"]).str for n, d in details.items()}
    return info


def main() -> None:
    inp, out = sys.stdin.buffer.fileno(), os.dup(1)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)   # a library's print must not break the framing
    runner = None
    while (message := _receive(inp)) is not None:
        kind, payload = message
        try:
            if kind == b"M":
                interpreter, runtime = _interpreter(payload)
                info = _describe(interpreter, runtime)
                if SIGNATURE in info["signatures"]:
                    runner = interpreter.get_signature_runner(SIGNATURE)
                _send(out, b"J", json.dumps(info).encode())
            else:
                _send(out, b"N", _npz(runner(**_arrays(payload))))
        except Exception as exc:  # noqa: BLE001 - the interpreter's errors, sent as one line
            _send(out, b"J", json.dumps({"error": one_line(exc)}).encode())


if __name__ == "__main__":
    main()
