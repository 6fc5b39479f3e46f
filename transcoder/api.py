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

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from . import formats
from .checkpoint import Checkpoint
from .formats.shards import parse_size
from .errors import TranscoderError, UsageError
from . import remote
from .formats import hf_folder
from .models import hf
from .models.spec import precheck
from .options import Architecture, CheckRequest, InputOptions, Tolerance, user_path
from .pipeline import Prepared, conversion, prepare
from .printing import with_schema
from .rules import COPY, TO_KERAS, Plan

#: ``transcode --verbose`` shows this logger's records on stderr: what is loaded and decided
log = logging.getLogger("transcoder")

if TYPE_CHECKING:   # the check's modules load only when a check runs
    from .checks.report import CheckReport

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
    files: list[Path] = field(default_factory=list)   # every file written (shards, index last)
    wrote: str = ""   # what was written: "18 tensors mapped, 1 carried", "SavedModel of ..."
    tensors: dict[str, int] = field(default_factory=dict)   # copied, mapped, carried
    seconds: float | None = None   # reading, planning and writing (the check not included)

    def __repr__(self) -> str:
        check = self.report.summary() if self.report is not None else "no check ran"
        what = self.wrote or ("planned, not written" if not self.written else "written")
        return f"<Conversion {self.src} -> {self.dst}: {what}; {check}>"

    def _repr_html_(self) -> str:
        """In a notebook: the check's picture (:mod:`.checks.html`), else the one line."""
        if self.report is not None:
            return self.report._repr_html_()
        from html import escape
        return f"<code>{escape(repr(self))}</code>"

    def to_dict(self) -> dict:
        """What ``transcode SRC DST --json`` prints (``--dry-run`` too: ``dry_run`` true,
        nothing written), with its ``schema``."""
        return with_schema({"command": "convert", "dry_run": not self.written,
                            "src": str(self.src), "dst": str(self.dst), "written": self.written,
                            "files": [str(p) for p in self.files], "wrote": self.wrote,
                            "tensors": self.tensors, "seconds": self.seconds,
                            "rows": self.rows, "pairs": self.pairs, "notes": self.notes,
                            "report": self.report.to_dict() if self.report else None})


@dataclass
class Inspection:
    """What :func:`inspect` found: ``rows`` as ``transcode inspect --json`` prints them."""

    path: Path
    format: str | None
    layout: str
    rows: list[dict]
    notes: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return (f"<Inspection {self.path}: {self.format}, {self.layout} layout, "
                f"{len(self.rows)} tensors>")


def convert(src: PathLike, dst: PathLike, *, force: bool = False, dry_run: bool = False,
            key: str | None = None, rules: PathLike | None = None, model: str | None = None,
            keras_model: str | None = None, input_shape: Sequence[str] = (),
            input_dtype: Sequence[str] = (), seed: int = 0, channels_last: bool = False,
            check: bool | None = None, atol: float | None = None, rtol: float | None = None,
            strict: bool = False, source_format: str | None = None,
            quantize: str | None = None, shard_size: int | str | None = None,
            on_written: Callable[[Conversion], None] | None = None,
            revision: str | None = None) -> Conversion:
    """``transcode SRC DST``: convert, then check as the command does (``check=None``: when
    torch and Keras are installed; True: or raise MissingDependencyError; False: never).
    ``dst`` ending in ``.savedmodel`` or ``.tflite`` is exported, and the check runs it;
    ``quantize`` ("float16" or "dynamic") for a ``.tflite``; ``shard_size`` (bytes or
    ``"5GB"``) writes shards and their index (the result's ``dst`` is then the index).
    ``on_written`` is called with the result once DST is written, before the check runs.
    SRC and DST may be fsspec URLs (``s3://bucket/m.pt``; :mod:`.remote`)."""
    if remote.is_url(src) or remote.is_url(dst):
        return _convert_remote(src, dst, force=force, dry_run=dry_run, key=key, rules=rules,
                               model=model, keras_model=keras_model, input_shape=input_shape,
                               input_dtype=input_dtype, seed=seed, channels_last=channels_last,
                               check=check, atol=atol, rtol=rtol, strict=strict,
                               source_format=source_format, quantize=quantize,
                               shard_size=shard_size, on_written=on_written,
                               revision=revision)
    src, dst = user_path(remote.local(src), "SRC"), user_path(remote.local(dst), "DST")
    src = snapshot(src, revision)
    rules = user_path(rules, "rules") if rules is not None else None
    target = formats.for_path(dst)
    arch = _architecture(src, model, keras_model, InputOptions(
        input_shape or (), input_dtype or (), seed, channels_last), quantize,
        needs_model=target.needs_model, checking=check is not False)
    request = CheckRequest(arch, key, rules, Tolerance(atol, rtol), strict, source_format)
    started = time.perf_counter()
    log.info("converting %s to %s (%s)", src, dst, target.description or target.name)
    if dry_run:
        with prepare(src, target, key=key, rules=rules, arch=arch,
                     source_format=source_format) as prepared:
            return _result(src, dst, prepared, written=False)
    with conversion(src, dst, force=force, key=key, rules=rules, arch=arch,
                    source_format=source_format,
                    shard_size=None if shard_size is None else parse_size(shard_size)) as done:
        result = _result(src, done.dst, done)
        result.seconds = round(time.perf_counter() - started, 3)
        log.info("read %s as %s (%s layout); %d tensors planned %s", src, done.source.format,
                 done.source.layout, len(done.plan.steps), done.plan.direction)
        if on_written is not None:
            on_written(result)
        if check is not False:   # --no-check: not even the check's modules are imported
            _check_written(result, done, request, check)
    return result


def snapshot(src: Path, revision: str | None) -> Path:
    """SRC itself; with a ``revision``, the snapshot folder of that revision of a Hugging Face
    repo id or cache folder (UsageError for anything else)."""
    if revision is None:
        return src
    folder = hf_folder.resolve(src, revision)
    if folder is None:
        raise UsageError("--revision picks a snapshot of a Hugging Face repo id or cache folder",
                         path=src)
    return folder.folder


def may_build_model(src: PathLike) -> bool:
    """Could SRC bring its own architecture (a Hugging Face folder, with transformers)? Then a
    check may rebuild it in Keras, whatever the options say."""
    return hf.available() and (hf_folder.is_model_folder(src) or (
        not Path(src).exists() and bool(hf_folder.REPO_ID.match(str(src)))))


def writes_keras_model(dst: PathLike) -> bool:
    """Is DST written through a Keras model (``.keras``, ``.weights.h5``, an export)? Then a
    model is rebuilt or loaded for it, whatever the check does."""
    return formats.for_path(remote.local(dst) if not remote.is_url(dst) else dst).needs_model


def _convert_remote(src: PathLike, dst: PathLike, *, force: bool,
                    on_written: Callable[[Conversion], None] | None, **options) -> Conversion:
    """:func:`convert` through local stand-ins for URLs: SRC read by range where its format
    allows, else copied down (:mod:`.formats.remote_source`), DST written locally and
    published under its URL when done (nothing partial is ever under DST's name); results
    and errors name the URLs."""
    def named(result: Conversion) -> Conversion:
        result.src, result.dst = src, dst
        result.notes = [_named(note, {local_src: src, local_dst: dst}) for note in result.notes]
        return result

    with _source(src, keep=options.get("check") is not False) as given_src, \
            remote.local_paths(given_src, dst, force=force) as (local_src, local_dst):
        try:   # a URL DST was refused above unless --force, and its stand-in is new
            result = convert(local_src, local_dst, force=force or remote.is_url(dst), **options,
                             on_written=(lambda r: on_written(named(r))) if on_written else None)
        except TranscoderError as exc:
            raise _renamed(exc, {local_src: src, local_dst: dst}) from None
    return named(result)


def _source(src: PathLike, keep: bool = False):
    """A local stand-in for a URL SRC (:func:`.formats.remote_source.stand_in`), else SRC;
    ``keep``: what is fetched by range is kept locally for a second read (a check)."""
    if not remote.is_url(src):
        return nullcontext(src)
    from .formats import remote_source   # the readers it needs load with it

    return remote_source.stand_in(src, keep=keep)


def _renamed(exc: TranscoderError, names: dict[Path, PathLike]) -> TranscoderError:
    """The error naming what the user gave where it names a local stand-in."""
    exc.message = _named(exc.message, names)
    for local, given in names.items():
        if local is not None and exc.path is not None and str(exc.path) == str(local):
            exc.path = given
    return exc


def _named(text: str, names: dict[Path, PathLike]) -> str:
    """``text`` naming what the user gave where it names a local stand-in."""
    for local, given in names.items():
        if local is not None and str(local) != str(given):
            text = text.replace(str(local), str(given))
    return text


def _architecture(src: Path, model: str | None, keras_model: str | None, inputs: InputOptions,
                  quantize: str | None = None, *, needs_model: bool = False,
                  checking: bool = False) -> Architecture:
    """What the user said about the model, each spec checked before anything loads (a typo is
    one line with the closest names, not a framework start-up later); for a Hugging Face
    folder without ``--model``, its own architecture (``hf:DIR``, built by transformers) when
    a check or a Keras model will use it, with its main input where a model is rebuilt."""
    for option, spec in (("--model", model), ("--keras-model", keras_model)):
        if spec:
            precheck(spec, option)
    arch = Architecture(model, keras_model, inputs, quantize)
    if model or keras_model or not (needs_model or checking) or not hf.available():
        return arch
    folder = hf_folder.resolve(src)
    if folder is None or not hf.knows(folder.config):
        return arch
    if needs_model and not inputs.input_shapes:
        given = hf.default_inputs(folder.config)
        inputs = replace(inputs, input_shapes=given.input_shapes, input_dtypes=given.input_dtypes)
    log.info("architecture: %s, built by transformers from its config.json; inputs %s",
             folder.model_type, ", ".join(inputs.input_shapes) or "(per-layer check)")
    return replace(arch, model=hf.spec_for(folder.folder), inputs=inputs)


def _check_written(result: Conversion, done: Prepared, request: CheckRequest,
                   asked: bool | None) -> None:
    from .checks.verify import after_write, check_written

    try:
        result.report, notes = check_written(done, request, asked=asked)
    except TranscoderError as exc:
        raise after_write(exc, result.dst) from None
    result.notes += notes


def _result(src: Path, dst: Path, prepared: Prepared, written: bool = True) -> Conversion:
    target = prepared.plan.apply(prepared.source)
    return Conversion(src, dst, prepared.plan, plan_rows(prepared.plan, prepared.source, target),
                      pairing_rows(prepared.pairs), list(prepared.plan.notes), written=written,
                      files=list(prepared.written),
                      wrote=prepared.described() if written else "", tensors=prepared.counts())


def inspect(path: PathLike, *, key: str | None = None, rules: PathLike | None = None,
            source_format: str | None = None, revision: str | None = None) -> Inspection:
    """``transcode inspect PATH``: every tensor, its inferred kind and planned mapping. PATH
    may be a URL: then only what describes its tensors is fetched, where the format allows
    (:mod:`.formats.remote_source`)."""
    if remote.is_url(path):
        with _source(path) as local:
            try:
                found = inspect(local, key=key, rules=rules, source_format=source_format,
                                revision=revision)
            except TranscoderError as exc:
                raise _renamed(exc, {local: path}) from None
        found.path, found.notes = path, [_named(note, {local: path}) for note in found.notes]
        return found
    found = formats.identify(snapshot(user_path(path), revision), source_format)
    with prepare(found, formats.other_layout(found.layout), key=key,
                 rules=user_path(rules, "rules") if rules else None) as prepared:
        target = prepared.plan.apply(prepared.source)
        return Inspection(found.path, prepared.source.format, prepared.source.layout,
                          plan_rows(prepared.plan, prepared.source, target),
                          list(prepared.plan.notes))


def check(src: PathLike, dst: PathLike, *, key: str | None = None,
          rules: PathLike | None = None, model: str | None = None,
          keras_model: str | None = None, input_shape: Sequence[str] = (),
          input_dtype: Sequence[str] = (), seed: int = 0, channels_last: bool = False,
          atol: float | None = None, rtol: float | None = None, strict: bool = False,
          source_format: str | None = None, revision: str | None = None) -> CheckReport:
    """``transcode check SRC DST``: the report (``report.passed``, ``report.to_dict()`` as
    ``--report`` writes it); raises only for bad input. SRC and DST may be URLs (read by
    range where the format allows, :mod:`.formats.remote_source`)."""
    if remote.is_url(src) or remote.is_url(dst):
        with _source(src, keep=True) as local_src, _source(dst, keep=True) as local_dst:
            try:
                return check(local_src, local_dst, key=key, rules=rules, model=model,
                             keras_model=keras_model, input_shape=input_shape,
                             input_dtype=input_dtype, seed=seed, channels_last=channels_last,
                             atol=atol, rtol=rtol, strict=strict, source_format=source_format,
                             revision=revision)
            except TranscoderError as exc:
                raise _renamed(exc, {local_src: src, local_dst: dst}) from None
    src, dst = snapshot(user_path(src, "SRC"), revision), user_path(dst, "DST")
    for path in (src, dst):
        if not path.exists() and not formats.identify(path).format.folder:
            raise UsageError("no such file", path=path)
    from .checks.verify import check_files

    arch = _architecture(Path(src), model, keras_model, InputOptions(
        input_shape or (), input_dtype or (), seed, channels_last), needs_model=True,
        checking=True)   # transcode check runs the model itself: its inputs too
    request = CheckRequest(arch, key, user_path(rules, "rules") if rules else None,
                           Tolerance(atol, rtol), strict, source_format)
    return check_files(src, dst, request)


# ---------------------------------------------------------------- rows (what --json prints)

def plan_rows(plan: Plan, src: Checkpoint, target: Checkpoint) -> list[dict]:
    """One row per source tensor: what it becomes and by which rule. A layer whose kind the
    names leave open shows its rule as ``LayerNorm?`` and lists the others (``alternatives``)."""
    rows, seen = [], set()
    for step in plan.steps:
        sources = step.torch if plan.direction == TO_KERAS else step.keras
        targets = step.keras if plan.direction == TO_KERAS else step.torch
        open_kinds = plan.ambiguous.get(step.layer)
        for name in sources:
            ref = src[name]
            seen.add(name)
            rows.append({"source": name, "shape": list(ref.shape), "dtype": ref.dtype,
                         "rule": f"{step.rule}?" if open_kinds else step.rule,
                         "op": step.op.describe(), "target": ", ".join(targets),
                         "target shape": [list(target[t].shape) for t in targets],
                         "alternatives": list(open_kinds[1:]) if open_kinds else []})
    kept = plan.carried if plan.direction != COPY else list(src.tensors)
    for name in (n for n in kept if n not in seen):   # a carried LSTM bias pair is also a source
        ref = src[name]
        rows.append({"source": name, "shape": list(ref.shape), "dtype": ref.dtype,
                     "rule": "carried" if plan.direction != COPY else "copy", "op": "keep",
                     "target": name, "target shape": [list(ref.shape)], "alternatives": []})
    return rows


def pairing_rows(pairs) -> list[dict]:
    """One row per paired layer (PyTorch module path <-> Keras layer)."""
    return [{"pytorch": p.ours.name, "kind": p.ours.class_name or "", "keras": p.theirs.name,
             "keras class": p.theirs.class_name or "", "paired by": p.how,
             "weights": len(p.ours.weights)} for p in pairs]
