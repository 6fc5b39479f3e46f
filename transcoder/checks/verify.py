"""The check as the commands run it: SRC and its converted DST, read back from disk.

- :func:`decide`: whether a check runs at all (asked for? both frameworks installed? anything
  mapped?), the one policy ``transcode SRC DST``, ``transcode check`` and ``bulk`` follow.
- :func:`verify`: two files of one layout: every tensor compared bit for bit. Else, with
  ``--model`` and input shapes, the full-model check (the PyTorch module
  loaded with the PyTorch-layout file; the Keras side the ``--keras-model`` loaded with the
  Keras-layout file by Keras' own loader, or else the module rebuilt in Keras with that file's
  weights). Without: the per-layer check of every mapped layer, against DST's tensors.
- An exported artifact (SavedModel, TFLite) is checked only in full, the artifact itself in
  the Keras model's place (:mod:`.artifacts`): it needs ``--model`` and the input shapes.

Both read the files back, so what is checked is what was written.
"""
from __future__ import annotations

import importlib.util
import inspect
from dataclasses import dataclass
from pathlib import Path

from .. import formats, progress
from ..checkpoint import LAYOUT_KERAS, LAYOUT_TORCH
from ..errors import CheckFailed, MissingDependencyError, TranscoderError, UsageError
from ..frameworks import CHECK_EXTRA, import_frameworks
from ..live import LiveModels
from ..models import keras_side, torch_side
from ..models.inputs import from_options
from ..options import Architecture, CheckRequest
from ..pipeline import prepare, read
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


def check_conversion(src: Path, dst: Path, request: CheckRequest, *, asked: bool | None,
                     same_layout: bool = False) -> tuple[CheckReport | None, list[str]]:
    """The check after a conversion as the policy (:func:`decide`) has it: the report (None
    when no check ran) and the notes for the user."""
    artifact = exported(dst) is not None
    decision = decide(asked, same_layout and not artifact)
    if not decision.run:
        return None, [decision.note] if decision.note else []
    arch, notes = request.arch, []
    why = _artifact_unchecked(src, dst, arch) if artifact else None
    if why and asked:
        raise UsageError(why)
    if why:
        return None, [f"no check ran: {why}"]
    full = bool(arch.model) and (bool(arch.inputs.input_shapes) or bool(asked))
    if arch.model and not full:
        notes.append("full-model check skipped (give --input-shape); checking each layer on its own")
    report = verify(src, dst, request, full=full)
    report.strict = request.strict
    return report, notes


def check_files(src: Path, dst: Path, request: CheckRequest) -> tuple[CheckReport, list[str]]:
    """``transcode check``: two files of one layout bit for bit (numpy only), else the check
    across frameworks, which needs torch and Keras (MissingDependencyError without them)."""
    if formats.layout_of(src) == formats.layout_of(dst) and not exported(dst):
        report, notes = verify(src, dst, request), []
        report.strict = request.strict
    else:
        report, notes = check_conversion(src, dst, request, asked=True)
    return report, notes


def _artifact_unchecked(src: Path, dst: Path, arch: Architecture) -> str | None:
    """Why the check of the exported artifact ``dst`` cannot run (None: it can)."""
    if formats.layout_of(src) != LAYOUT_TORCH:
        return ARTIFACT_FROM_KERAS.format(dst, src, dst)
    if not (arch.model and arch.inputs.input_shapes):
        return ARTIFACT_NEEDS.format(dst)
    return None


def exported(path: Path) -> formats.Format | None:
    """The format of an exported artifact (SavedModel, TFLite) at ``path``, else None."""
    fmt = formats.for_source(path)[0] if Path(path).exists() else formats.for_path(path)
    return fmt if fmt.exported else None


def after_write(exc: TranscoderError, dst: Path) -> TranscoderError:
    """An error of the check after DST was written says so: DST stays (README, "The forward
    check"). A failed check keeps its exit code 1, a check that could not run its own."""
    if isinstance(exc, CheckFailed) and exc.shown:   # its verdict line is printed already
        exc.message, exc.shown = f"{dst} was written and is kept; its check failed (above)", False
    elif isinstance(exc, CheckFailed):
        exc.message = f"{dst} was written, and its {exc.message}"
    else:
        exc.message = f"{dst} was written, but the check could not run: {exc.message}"
    return exc


def verify(src: Path, dst: Path, request: CheckRequest | None = None, *,
           full: bool = True) -> CheckReport:
    """Check DST against SRC: two files of one layout tensor by tensor, bit for bit (no
    framework needed); else the full-model check when ``request.arch.model`` is given and
    ``full``, else the per-layer check (which still takes layer kinds from the model)."""
    src, dst, request = Path(src), Path(dst), request or CheckRequest()
    if formats.layout_of(src) == formats.layout_of(dst):
        with _read_source(src, request) as original, read(dst) as copy:
            return compare_tensors(original, copy)
    import_frameworks()
    if request.arch.model and full:
        with progress.status(f"checking {dst.name}: both models on the same inputs"):
            return _check_model(src, dst, request)
    return _check_layers(src, dst, request)


def _read_source(src: Path, request: CheckRequest):
    return read(src, key=request.key, source_format=request.source_format)


def _check_layers(src: Path, dst: Path, request: CheckRequest) -> CheckReport:
    arch, tolerance = request.arch, request.tolerance
    # read SRC as the conversion did: kinds from --model; a Keras SRC named by --keras-model
    keras_src = formats.layout_of(src) == LAYOUT_KERAS and arch.keras_model
    kinds_from = Architecture(model=arch.model, keras_model=arch.keras_model if keras_src else None)
    prepared = prepare(src, formats.layout_of(dst), key=request.key, rules=request.rules,
                       arch=kinds_from, source_format=request.source_format)
    try:
        with _written(dst, prepared, arch) as written:
            return check_layers(prepared.source, prepared.plan, written, seed=arch.inputs.seed,
                                atol=tolerance.atol, rtol=tolerance.rtol)
    finally:
        prepared.close()


def _written(dst: Path, prepared, arch: Architecture):
    """DST as a checkpoint named like the plan's target (Keras files saved through a user's
    model name their layers their own way: paired back as the conversion paired them)."""
    written = read(dst)
    if written.layout != LAYOUT_KERAS:
        return written
    if arch.keras_model:
        written = LiveModels(keras_model=keras_side.load_spec(arch.keras_model)).attach(written, dst)
    expected = prepared.plan.apply(prepared.source)
    if all(name in written.tensors for name in expected.tensors):
        return written
    ours = keras_side.layers_of_checkpoint(expected)
    pairs = keras_side.pair(ours, keras_side.layers_of_checkpoint(written))
    renamed = keras_side.renamed_to_ours(pairs, written)
    renamed.on_close(written.close)
    return renamed


def _check_model(src: Path, dst: Path, request: CheckRequest) -> CheckReport:
    arch = request.arch
    if not arch.inputs.input_shapes:
        raise UsageError("the full-model check needs the input shape(s)",
                         hint="pass --input-shape 4,10,128 (PyTorch layout), or --no-check")
    specs = from_options(arch.inputs)
    torch_file, keras_file = (src, dst) if formats.layout_of(src) == LAYOUT_TORCH else (dst, src)
    if formats.layout_of(keras_file) == LAYOUT_TORCH:
        raise UsageError("both files are PyTorch checkpoints: nothing to check across frameworks")
    module = torch_side.load_spec(arch.model)
    with (_read_source(src, request) if torch_file == src else read(torch_file)) as ckpt:
        torch_side.load_strict(module, ckpt)
    fmt = exported(keras_file)
    if fmt is not None:
        return _check_artifact(torch_file, keras_file, fmt, module, request)
    keras_model = _keras_side(module, keras_file, arch, specs)
    pairs = keras_side.pairs_by_path(module, keras_model) if arch.keras_model else None
    return check_models(module, keras_model, specs, seed=arch.inputs.seed,
                        tolerance=request.tolerance, keras_layout=arch.inputs.keras_layout,
                        pairs=pairs)


def _keras_side(module, keras_file: Path, arch: Architecture, specs):
    """The user's Keras model loaded with the file, or the module rebuilt with its weights."""
    from ..models.rebuild import rebuild_for_inputs  # torch and keras

    if arch.keras_model:
        model = keras_side.load_spec(arch.keras_model)
        keras_side.load_into(model, keras_file)
        return model
    ckpt = LiveModels(torch_model=module).attach(read(keras_file), keras_file)
    try:
        return rebuild_for_inputs(module, specs, arch.inputs, keras_ckpt=ckpt)
    finally:
        ckpt.close()


def _check_artifact(torch_file: Path, path: Path, fmt, module, request: CheckRequest
                    ) -> CheckReport:
    """The artifact at ``path`` run beside ``module``; a divergence is localised in the Keras
    model it is exported from, made again from ``torch_file`` as the conversion made it."""
    arch = request.arch
    specs = from_options(arch.inputs)
    artifact = open_artifact(path, fmt.name, _input_names(module, arch, len(specs)))

    def exported_from():
        prepared = prepare(torch_file, fmt, key=request.key, rules=request.rules, arch=arch,
                           source_format=request.source_format)
        try:
            model = prepared.live.keras_model_of(prepared.plan.apply(prepared.source), path)
        finally:
            prepared.close()
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
