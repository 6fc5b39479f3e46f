"""The Python API: what ``transcode``, ``transcode inspect`` and ``transcode check`` do, for
pipelines, notebooks and CI steps written in Python.

    import transcoder

    result = transcoder.convert("model.pt", "model.h5", check=True)
    result.report.raise_for_status()          # CheckFailed (exit code 1) when outputs differ
    rows = transcoder.inspect("model.pt").rows
    report = transcoder.check("model.pt", "model.h5", model="net.py:Net", input_shape=["1,3,32,32"])

The keyword arguments are the command line's options. Results carry what ``--json`` and
``--report`` print (``to_dict()``). Bad input raises the one error family
(:class:`transcoder.errors.TranscoderError`); a failed check does not raise: look at
``report.passed`` or call ``report.raise_for_status()``. Importing ``transcoder`` imports
neither torch nor TensorFlow; they load when a live model is needed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from . import formats
from .formats.shards import parse_size
from .checks.report import CheckReport
from .checks.verify import after_write, check_conversion, check_files
from .errors import TranscoderError
from .options import Architecture, CheckRequest, InputOptions, Tolerance, user_path
from .pipeline import prepare, transcode
from .rules import COPY, Plan
from .tables import pairing_rows, plan_rows

PathLike = str | Path


@dataclass
class Conversion:
    """What :func:`convert` did: the plan, its rows (``--dry-run --json``), the layer pairing,
    the notes the command prints, and the check's report (None when no check ran)."""

    src: Path
    dst: Path
    plan: Plan
    rows: list[dict]
    pairs: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    report: CheckReport | None = None
    written: bool = True

    def to_dict(self) -> dict:
        return {"src": str(self.src), "dst": str(self.dst), "written": self.written,
                "rows": self.rows, "pairs": self.pairs, "notes": self.notes,
                "report": self.report.to_dict() if self.report else None}


@dataclass
class Inspection:
    """What :func:`inspect` found: ``rows`` as ``transcode inspect --json`` prints them."""

    path: Path
    format: str | None
    layout: str
    rows: list[dict]
    notes: list[str] = field(default_factory=list)


def _architecture(model, keras_model, input_shape, input_dtype, seed, channels_last,
                  quantize=None) -> Architecture:
    return Architecture(model, keras_model, InputOptions(input_shape, input_dtype,
                                                         seed, channels_last), quantize)


def convert(src: PathLike, dst: PathLike, *, force: bool = False, dry_run: bool = False,
            key: str | None = None, rules: PathLike | None = None, model: str | None = None,
            keras_model: str | None = None, input_shape: Sequence[str] = (),
            input_dtype: Sequence[str] = (), seed: int = 0, channels_last: bool = False,
            check: bool | None = None, atol: float | None = None, rtol: float | None = None,
            strict: bool = False, source_format: str | None = None,
            quantize: str | None = None, shard_size: int | str | None = None) -> Conversion:
    """``transcode SRC DST``: convert, then check as the command does (``check=None``: when
    torch and Keras are installed; True: or raise MissingDependencyError; False: never).
    ``dst`` ending in ``.savedmodel`` or ``.tflite`` is exported, and the check runs it;
    ``quantize`` ("float16" or "dynamic") for a ``.tflite``; ``shard_size`` (bytes or
    ``"5GB"``) writes shards and their index (the result's ``dst`` is then the index)."""
    src, dst = user_path(src, "SRC"), user_path(dst, "DST")
    rules = user_path(rules, "rules") if rules is not None else None
    arch = _architecture(model, keras_model, input_shape, input_dtype, seed, channels_last,
                         quantize)
    request = CheckRequest(arch, key, rules, Tolerance(atol, rtol), strict, source_format)
    if dry_run:
        return _dry_run(src, dst, request)
    prepared = transcode(src, dst, force=force, key=key, rules=rules, arch=arch,
                         source_format=source_format,
                         shard_size=None if shard_size is None else parse_size(shard_size))
    dst = prepared.written[-1]
    result = _conversion(src, dst, prepared)
    try:
        result.report, notes = check_conversion(src, dst, request, asked=check,
                                                same_layout=prepared.plan.direction == COPY)
    except TranscoderError as exc:
        raise after_write(exc, dst) from None
    result.notes += notes
    return result


def _conversion(src: Path, dst: Path, prepared, written: bool = True) -> Conversion:
    target = prepared.plan.apply(prepared.source)
    return Conversion(src, dst, prepared.plan, plan_rows(prepared.plan, prepared.source, target),
                      pairing_rows(prepared.pairs), list(prepared.plan.notes), written=written)


def _dry_run(src: Path, dst: Path, request: CheckRequest) -> Conversion:
    prepared = prepare(src, formats.for_path(dst), key=request.key, rules=request.rules,
                       arch=request.arch, source_format=request.source_format)
    try:
        return _conversion(src, dst, prepared, written=False)
    finally:
        prepared.close()


def inspect(path: PathLike, *, key: str | None = None, rules: PathLike | None = None,
            source_format: str | None = None) -> Inspection:
    """``transcode inspect PATH``: every tensor, its inferred kind and planned mapping."""
    path = user_path(path)
    layout = formats.other_layout(formats.for_source(path, source_format)[0].layout)
    prepared = prepare(path, layout, key=key, rules=user_path(rules, "rules") if rules else None,
                       source_format=source_format)
    try:
        target = prepared.plan.apply(prepared.source)
        return Inspection(path, prepared.source.format, prepared.source.layout,
                          plan_rows(prepared.plan, prepared.source, target),
                          list(prepared.plan.notes))
    finally:
        prepared.close()


def check(src: PathLike, dst: PathLike, *, key: str | None = None,
          rules: PathLike | None = None, model: str | None = None,
          keras_model: str | None = None, input_shape: Sequence[str] = (),
          input_dtype: Sequence[str] = (), seed: int = 0, channels_last: bool = False,
          atol: float | None = None, rtol: float | None = None, strict: bool = False,
          source_format: str | None = None) -> CheckReport:
    """``transcode check SRC DST``: the report (``report.passed``, ``report.to_dict()`` as
    ``--report`` writes it); raises only for bad input."""
    arch = _architecture(model, keras_model, input_shape, input_dtype, seed, channels_last)
    request = CheckRequest(arch, key, user_path(rules, "rules") if rules else None,
                           Tolerance(atol, rtol), strict, source_format)
    return check_files(user_path(src, "SRC"), user_path(dst, "DST"), request)[0]
