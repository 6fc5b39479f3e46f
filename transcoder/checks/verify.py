"""The check as the commands run it: a conversion (its source as read and planned, still open)
and the file it wrote, read back from disk.

- :func:`decide`: whether a check runs at all (asked for? both frameworks installed? anything
  mapped?), the one policy ``transcode SRC DST``, ``transcode check`` and ``bulk`` follow.
- :func:`check_written`: after ``transcode SRC DST`` and in ``bulk``: with ``--model`` and
  input shapes, the full-model check (the PyTorch module loaded with the PyTorch-layout side;
  the Keras side the ``--keras-model`` loaded with the Keras-layout file by Keras' own loader,
  or else the module rebuilt in Keras with that file's weights). Without: the per-layer check
  of every mapped layer, against DST's tensors.
- :func:`check_files`: ``transcode check SRC DST``: identifies both, reads and plans SRC once
  and checks as above; two files of one layout are compared tensor by tensor, bit for bit.
- An exported artifact (SavedModel, TFLite) is checked only in full, the artifact itself in
  the Keras model's place (:mod:`.artifacts`): it needs ``--model`` and the input shapes.

DST is always read back, so what is checked is what was written; SRC is never read again.
"""
from __future__ import annotations

import importlib.util
import inspect
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from .. import formats, progress
from ..checkpoint import LAYOUT_KERAS, LAYOUT_TORCH
from ..errors import (CheckFailed, MappingError, MissingDependencyError, TranscoderError,
                      UsageError)
from ..frameworks import CHECK_EXTRA, import_frameworks
from ..live import LiveModels
from ..models import keras_side, keras_source, torch_side
from ..models.inputs import from_options
from ..options import Architecture, CheckRequest
from ..pipeline import Prepared, prepare, read
from . import hyper
from .artifacts import ArtifactCheck, open_artifact
from .layers import check_layers
from .models import check_models
from .report import CheckReport
from .tensors import compare_tensors

LIVE_PACKAGES = ("torch", "keras", "tensorflow")
SAME_LAYOUT = ("both files hold one layout: tensors were copied, nothing was mapped (transcode "
               "check SRC DST compares them bit for bit)")
ARTIFACT_NEEDS = ("checking {} runs it beside the PyTorch module: pass --model and "
                  "--input-shape")
ARTIFACT_FROM_KERAS = ("checking {} runs it beside the PyTorch module loaded with a PyTorch "
                       "checkpoint, and {} holds the Keras layout: run transcode check "
                       "model.pt {} with the same options")


def unavailable() -> str | None:
    """Why no check can run here (None when torch and Keras are installed)."""
    missing = [p for p in LIVE_PACKAGES if importlib.util.find_spec(p) is None]
    if missing:
        return f"{' and '.join(missing)} not installed ({CHECK_EXTRA} to check conversions)"
    return None


@dataclass(frozen=True)
class Decision:
    run: bool
    note: str | None = None     # one line for the user when no check runs


def decide(asked: bool | None, same_layout: bool = False) -> Decision:
    """``asked``: True (``--check``), False (``--no-check``) or None (the default: check when
    possible). A check asked for that cannot run is an error (MissingDependencyError)."""
    if asked is False:
        return Decision(False)
    if same_layout:
        return Decision(False, f"no check ran: {SAME_LAYOUT}")
    reason = unavailable()
    if reason and asked:
        raise MissingDependencyError(f"cannot run the check: {reason}")
    return Decision(False, f"no check ran: {reason}") if reason else Decision(True)


def check_written(done: Prepared, request: CheckRequest, *, asked: bool | None,
                  dst: formats.Identified | None = None) -> tuple[CheckReport | None, list[str]]:
    """The check of a conversion as the policy (:func:`decide`) has it: the report (None when
    no check ran) and the notes for the user. ``done`` holds the source as the conversion read
    and planned it (still open); the written file (``done.dst``, or ``dst`` already
    identified) is read back: what is checked is what was written."""
    target = done.target_format
    decision = decide(asked, done.copy and not target.exported)
    if not decision.run:
        return None, [decision.note] if decision.note else []
    arch, notes = request.arch, []
    why = _artifact_unchecked(done.source.layout, done.src, done.dst, arch) \
        if target.exported else None
    if why and asked:
        raise UsageError(why)
    if why:
        return None, [f"no check ran: {why}"]
    full = bool(arch.model) and (bool(arch.inputs.input_shapes) or bool(asked))
    if arch.model and not full:
        notes.append("full-model check skipped (give --input-shape); checking each layer on its own")
    report = _verify(done, dst or formats.identify(done.dst), request, full=full)
    report.strict = request.strict
    return report, notes


def check_files(src: Path, dst: Path, request: CheckRequest) -> CheckReport:
    """``transcode check``: two files of one layout bit for bit (numpy only), else the check
    across frameworks, which needs torch and Keras (MissingDependencyError without them). Each
    file is identified once and SRC read and planned once, then checked as a conversion is.
    Asked for, a check that cannot run is an error: there is nothing to note."""
    source = formats.identify(src, request.source_format)
    written = formats.identify(dst)
    target = written.format
    if source.layout == target.layout and not target.exported:
        with read(source, key=request.key) as original, read(written) as copy:
            report = compare_tensors(original, copy)
        report.strict = request.strict
        return report
    decide(True)   # MissingDependencyError before anything is read, as always
    why = _artifact_unchecked(source.layout, src, dst, request.arch) \
        if target.exported else None
    if why:
        raise UsageError(why)
    with prepare(source, target, key=request.key, rules=request.rules, arch=request.arch,
                 source_format=request.source_format) as done:
        done.written = [Path(dst)]
        return check_written(done, request, asked=True, dst=written)[0]


def _artifact_unchecked(src_layout: str, src: Path, dst: Path, arch: Architecture
                        ) -> str | None:
    """Why the check of the exported artifact ``dst`` cannot run (None: it can)."""
    if src_layout != LAYOUT_TORCH:
        return ARTIFACT_FROM_KERAS.format(dst, src, dst)
    if not (arch.model and arch.inputs.input_shapes):
        return ARTIFACT_NEEDS.format(dst)
    return None


def after_write(exc: TranscoderError, dst: Path) -> TranscoderError:
    """An error of the check after DST was written says so: DST stays (docs/check.md, "The forward
    check"). A failed check keeps its exit code 1, a check that could not run its own."""
    if isinstance(exc, CheckFailed) and exc.shown:   # its verdict line is printed already
        exc.message, exc.shown = f"{dst} was written and is kept; its check failed (above)", False
    elif isinstance(exc, CheckFailed):
        exc.message = f"{dst} was written, and its {exc.message}"
    else:
        exc.message = f"{dst} was written, but the check could not run: {exc.message}"
    return exc


def _verify(done: Prepared, dst: formats.Identified, request: CheckRequest, *,
            full: bool) -> CheckReport:
    """Check the written ``dst`` against the conversion ``done`` across frameworks: the
    full-model check when ``request.arch.model`` is given and ``full``, else the per-layer
    check (which still takes layer kinds from the model)."""
    import_frameworks()
    if request.arch.model and full:
        with progress.status(f"checking {dst.path.name}: both models on the same inputs"):
            report = _check_model(done, dst, request)
    else:
        report = _check_layers(done, dst, request)
    return hyper.judge(report, done.source.as_stated, request)


def _check_layers(done: Prepared, dst: formats.Identified, request: CheckRequest) -> CheckReport:
    arch, tolerance = request.arch, request.tolerance
    with _written(dst, done, arch) as written:
        return check_layers(done.source, done.plan, written, seed=arch.inputs.seed,
                            atol=tolerance.atol, rtol=tolerance.rtol)


def _written(dst: formats.Identified, done: Prepared, arch: Architecture):
    """DST as a checkpoint named like the plan's target (Keras files saved through a user's
    model name their layers their own way: paired back as the conversion paired them)."""
    written = read(dst)
    if written.layout != LAYOUT_KERAS:
        return written
    if arch.keras_model:
        written = LiveModels(keras_model=keras_side.load_spec(arch.keras_model)).attach(
            written, dst.path)
    expected = done.plan.apply(done.source)
    if all(name in written.tensors for name in expected.tensors):
        return written
    ours = keras_side.layers_of_checkpoint(expected)
    pairs = keras_side.pair(ours, keras_side.layers_of_checkpoint(written))
    renamed = keras_side.renamed_to_ours(pairs, written)
    renamed.on_close(written.close)
    return renamed


def _check_model(done: Prepared, dst: formats.Identified, request: CheckRequest) -> CheckReport:
    arch = request.arch
    if not arch.inputs.input_shapes:
        raise UsageError("the full-model check needs the input shape(s)",
                         hint="pass --input-shape 4,10,128 (PyTorch layout), or --no-check")
    specs = from_options(arch.inputs)
    torch_is_src = done.source.layout == LAYOUT_TORCH
    if (dst.layout if torch_is_src else done.source.layout) == LAYOUT_TORCH:
        raise UsageError("both files are PyTorch checkpoints: nothing to check across frameworks")
    module = torch_side.load_spec(arch.model)
    with (nullcontext(done.source) if torch_is_src else read(dst)) as ckpt:
        torch_side.load_strict(module, ckpt)
    if torch_is_src and done.target_format.exported:
        return _check_artifact(done, dst.path, module, request)
    source, why = (None, None) if torch_is_src else _source_model(done, request)
    keras_model = source or _keras_side(module, dst if torch_is_src else None, done, arch, specs)
    layout = arch.inputs.keras_layout
    if source is not None:
        layout = keras_source.layout_for(source, [s.shape for s in specs], layout)
    pairs = _pairs(module, keras_model) if arch.keras_model or source else None
    report = check_models(module, keras_model, specs, seed=arch.inputs.seed,
                          tolerance=request.tolerance, keras_layout=layout, pairs=pairs)
    name = done.src.name
    if source is not None:
        report.notes.append(f"the reference is {name} itself: its model built from its own "
                            f"config by Keras (built-in classes only)")
    elif why is not None:
        report.notes.append(f"the reference is the module rebuilt in Keras with {name}'s "
                            f"weights ({name} cannot be built: {why}); its config's "
                            f"hyper-parameters are compared with the module's")
    return report


def _pairs(module, keras_model) -> list[tuple[str, str]] | None:
    """(module path, Keras layer) for localising; None (by name) where they do not pair."""
    try:
        return keras_side.pairs_by_path(module, keras_model)
    except MappingError:
        return None


def _source_model(done: Prepared, request: CheckRequest):
    """A Keras SRC's own model (without --keras-model): ``(model, None)``, else ``(None, why
    not)``. Its config is what the conversion read (``done.source``): SRC is not read again."""
    if request.arch.keras_model:
        return None, None
    stated = done.source.as_stated
    return keras_source.build(done.src, stated.format, stated.meta.get("keras_config"))


def _keras_side(module, written: formats.Identified | None, done: Prepared, arch: Architecture,
                specs):
    """The user's Keras model loaded with the Keras file (``written``, else the source), or
    the module rebuilt with its weights."""
    from ..models.rebuild import rebuild_for_inputs  # torch and keras

    keras_file = written.path if written is not None else done.src
    if arch.keras_model:
        model = keras_side.load_spec(arch.keras_model)
        keras_side.load_into(model, keras_file)
        return model
    if written is None:   # the source, as the conversion read it: named by the module already
        return rebuild_for_inputs(module, specs, arch.inputs, keras_ckpt=done.source)
    ckpt = LiveModels(torch_model=module).attach(read(written), keras_file)
    try:
        return rebuild_for_inputs(module, specs, arch.inputs, keras_ckpt=ckpt)
    finally:
        ckpt.close()


def _check_artifact(done: Prepared, path: Path, module, request: CheckRequest) -> CheckReport:
    """The artifact at ``path`` run beside ``module``; a divergence is localised in the Keras
    model it is exported from, made again from the source as the conversion made it."""
    arch, fmt = request.arch, done.target_format
    specs = from_options(arch.inputs)
    artifact = open_artifact(path, fmt.name, _input_names(module, arch, len(specs)))

    def exported_from():
        model = done.live.keras_model_of(done.plan.apply(done.source), path, fmt)
        return model, keras_side.pairs_by_path(module, model) if arch.keras_model else None

    check = ArtifactCheck(module, artifact, exported_from, specs, arch.inputs.seed,
                          arch.inputs.keras_layout)
    return check.run(request.tolerance)


def _input_names(module, arch: Architecture, count: int) -> list[str]:
    """The Keras model's input names, in order: the ``--keras-model``'s, or (a rebuilt model)
    the module's ``forward`` arguments, which name its inputs."""
    if arch.keras_model:
        return [t.name for t in keras_side.load_spec(arch.keras_model).inputs]
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names = [p.name for p in inspect.signature(module.forward).parameters.values()
             if p.kind in kinds]
    return names[:count]
