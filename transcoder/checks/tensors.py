"""Checking a copy: two files of the same layout (``a.pt`` and ``a.safetensors``) hold the same
tensors, bit for bit, under the same names, in the same dtypes and shapes. numpy only."""
from __future__ import annotations

import numpy as np

from ..checkpoint import Checkpoint
from .compare import FAIL, SUCCESS, Comparison
from .report import CheckReport


def compare_tensors(src: Checkpoint, dst: Checkpoint) -> CheckReport:
    """One entry per tensor of either file: SUCCESS when both hold it with the same dtype,
    shape and bytes, FAIL otherwise (the message says what differs). Tensor by tensor."""
    report = CheckReport("tensors", reference=src.layout)
    for name in src.tensors:
        report.entries.append(_one(name, src, dst))
    report.entries += [Comparison(name, FAIL, kind="tensor", message="only in the converted file")
                       for name in dst.tensors if name not in src.tensors]
    first = next((e for e in report.entries if e.status == FAIL), None)
    if first is not None:
        report.first_divergence = {"name": first.name, "status": FAIL, "max_abs_error": None,
                                   "message": f"first difference: {first.name}: {first.message}"}
    return report


def _one(name: str, src: Checkpoint, dst: Checkpoint) -> Comparison:
    a = src[name]
    entry = Comparison(name, SUCCESS, kind="tensor", shape=list(a.shape), dtype=a.dtype,
                       size=int(np.prod(a.shape, dtype=np.int64)))
    if name not in dst.tensors:
        return _failed(entry, "missing from the converted file")
    b = dst[name]
    entry.actual_shape = list(b.shape)
    if (a.dtype, tuple(a.shape)) != (b.dtype, tuple(b.shape)):
        return _failed(entry, f"{b.dtype}{list(b.shape)} where the original is "
                              f"{a.dtype}{list(a.shape)}")
    x, y = np.ascontiguousarray(a.load()), np.ascontiguousarray(b.load())
    if x.tobytes() != y.tobytes():
        differ = int(np.count_nonzero(x.view(np.uint8).reshape(-1) != y.view(np.uint8).reshape(-1)))
        return _failed(entry, f"{differ} of {x.nbytes} bytes differ")
    entry.max_abs_error = entry.max_rel_error = 0.0
    entry.message = "bit-exact"
    return entry


def _failed(entry: Comparison, why: str) -> Comparison:
    entry.status, entry.message = FAIL, why
    return entry
