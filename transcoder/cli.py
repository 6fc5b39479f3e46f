"""The ``transcode`` command.

``transcode SRC DST`` converts (the default command); ``check`` validates, ``inspect`` and
``rules`` explain, ``bulk`` converts a tree. Errors are one line on stderr with exit code 2
(bad usage or input), 1 when a check fails, 3 for a bug; ``TRANSCODER_DEBUG=1`` shows the
traceback instead. Options that several commands take are declared once, below.
"""
from __future__ import annotations

import gc
import os
import signal
import sys
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

# Before numpy is imported: the command does no linear algebra with numpy, and OpenBLAS's
# idle worker threads would spin on the cores a conversion needs.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from . import formats  # noqa: E402
from .formats.shards import parse_size  # noqa: E402
from ._version import __version__  # noqa: E402
from .errors import INTERNAL_ERROR_EXIT, TranscoderError, UsageError, one_line  # noqa: E402
from .frameworks import prefer_keras_backend  # noqa: E402
from .options import Architecture, CheckRequest, InputOptions, Tolerance  # noqa: E402
from .pipeline import prepare, transcode  # noqa: E402
from .rules import COPY  # noqa: E402
from .tables import (PAIR_COLUMNS, PLAN_COLUMNS, RULE_COLUMNS, pairing_rows, plan_rows,  # noqa: E402
                     print_rows, rule_rows)

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Move weights between PyTorch and Keras; `transcode SRC DST` converts.")

# ---------------------------------------------------------------- options shared by commands

KeyOpt = Annotated[Optional[str], typer.Option(
    "--key", help="Dotted path of the state dict inside a training checkpoint, e.g. state_dict "
                  "or ema.")]
RulesOpt = Annotated[Optional[Path], typer.Option(
    "--rules", exists=False, dir_okay=False,
    help="TOML file stating layer kinds or tensor mappings (see README).")]
ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", help="PyTorch model: path/to/file.py:Name or package.module:Name (exact layer "
                    "kinds, num_heads...).")]
KerasModelOpt = Annotated[Optional[str], typer.Option(
    "--keras-model", help="Keras model to pair with and save through: path/to/file.py:Name or "
                          "package.module:Name.")]
InputShapeOpt = Annotated[Optional[list[str]], typer.Option(
    "--input-shape", help="Input shape for the check, PyTorch layout (e.g. 4,10,128); repeat "
                          "for several inputs.")]
InputDtypeOpt = Annotated[Optional[list[str]], typer.Option(
    "--input-dtype", help="Input dtype (float32, int64, int64:HIGH for a range); repeat per "
                          "input.")]
AtolOpt = Annotated[Optional[float], typer.Option(
    "--atol", help="Absolute tolerance (default per dtype: float32 1e-5).")]
RtolOpt = Annotated[Optional[float], typer.Option(
    "--rtol", help="Relative tolerance (default per dtype: float32 1e-4).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the random inputs.")]
ReportOpt = Annotated[Optional[Path], typer.Option(
    "--report", help="Write the check report as JSON here.")]
JunitOpt = Annotated[Optional[Path], typer.Option(
    "--junit", help="Write the check result as JUnit XML here.")]
ChannelsLastOpt = Annotated[bool, typer.Option(
    "--channels-last", help="The Keras model takes and returns channels-last tensors (rebuilt "
                            "models too).")]
CheckOpt = Annotated[Optional[bool], typer.Option(
    "--check/--no-check", help="Run the forward check after converting.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")]
StrictOpt = Annotated[bool, typer.Option(
    "--strict", help="Fail the check (exit 1) unless every layer was verified: none SKIPPED or "
                     "NOT CHECKED.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
QuantizeOpt = Annotated[Optional[str], typer.Option(
    "--quantize", help="A .tflite export's weights: float16, or dynamic (int8 weights of 1024 "
                       "elements or more); the check's default tolerance follows it.")]
FromOpt = Annotated[Optional[str], typer.Option(
    "--from", help="Read SRC as this format (pt, safetensors, keras_h5, keras_zip), whatever "
                   "its content and name say.")]


def _architecture(model: Optional[str], keras_model: Optional[str],
                  input_shape: Optional[list[str]], input_dtype: Optional[list[str]], seed: int,
                  channels_last: bool, quantize: Optional[str] = None) -> Architecture:
    return Architecture(model, keras_model, InputOptions(input_shape or [], input_dtype or [],
                                                         seed, channels_last), quantize)


@dataclass
class CheckOutputs:
    """Where a check's results go: ``--report`` JSON, ``--junit`` XML, and the terminal."""

    report: Optional[Path] = None
    junit: Optional[Path] = None
    quiet: bool = False


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        typer.echo(message)


def _note(message: str) -> None:
    typer.echo(f"transcode: {message}", err=True)


# ---------------------------------------------------------------- convert

ShardSizeOpt = Annotated[Optional[str], typer.Option(
    "--shard-size", help="Write .safetensors or .pt in shards of at most this size (5GB, 500MB: "
                         "decimal units, or bytes) with their index, as Hugging Face does; a DST "
                         "naming the index shards at 5GB.")]

@app.command("convert")
def convert_cmd(
    src: Annotated[Path, typer.Argument(help="Checkpoint to read (.pt .pth .bin .ckpt "
                                             ".safetensors .h5 .keras).")],
    dst: Annotated[Path, typer.Argument(help="File to write (.h5 .weights.h5 .keras .pt "
                                             ".safetensors .savedmodel .tflite); its extension "
                                             "picks the format and layout.")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite DST if it exists.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; write nothing.")
                       ] = False,
    key: KeyOpt = None, rules: RulesOpt = None, quiet: QuietOpt = False, check: CheckOpt = None,
    model: ModelOpt = None, keras_model: KerasModelOpt = None,
    input_shape: InputShapeOpt = None, input_dtype: InputDtypeOpt = None,
    atol: AtolOpt = None, rtol: RtolOpt = None, seed: SeedOpt = 0,
    report: ReportOpt = None, junit: JunitOpt = None, channels_last: ChannelsLastOpt = False,
    strict: StrictOpt = False, source_format: FromOpt = None, quantize: QuantizeOpt = None,
    shard_size: ShardSizeOpt = None,
) -> None:
    """Convert SRC to DST (the default command: `transcode SRC DST`), then check it.

    The check runs by default when torch and Keras are installed: the full-model check with
    --model and --input-shape, else every mapped layer on its own. --no-check skips it.
    DST stays whatever the check finds: exit 1 when it differs, 2 when it cannot run.
    DST.savedmodel and DST.tflite are exported from the Keras model (--model rebuilt, or
    --keras-model), and the check runs the exported artifact itself.
    """
    started = time.perf_counter()
    arch = _architecture(model, keras_model, input_shape, input_dtype, seed, channels_last,
                         quantize)
    request = CheckRequest(arch, key, rules, Tolerance(atol, rtol), strict, source_format)
    if dry_run:
        _dry_run(src, dst, request)
        return
    prepared = transcode(src, dst, force=force, key=key, rules=rules, arch=arch,
                         source_format=source_format,
                         shard_size=None if shard_size is None else parse_size(shard_size))
    plan, dst = prepared.plan, prepared.written[-1]   # a sharded output: its index
    if prepared.pairs and not quiet:
        print_rows(pairing_rows(prepared.pairs), PAIR_COLUMNS, title="layer pairing")
    mapped = sum(len(s.torch) for s in plan.steps)
    shards = f" and {len(prepared.written) - 1} shards" if len(prepared.written) > 1 else ""
    _say(quiet, f"wrote {dst}{shards}: {mapped} tensors mapped, {len(plan.carried)} carried "
                f"({time.perf_counter() - started:.2f} s)")
    for note in [] if quiet else plan.notes:
        _note(note)
    try:
        _run_check(src, dst, request, CheckOutputs(report, junit, quiet), asked=check,
                   same_layout=plan.direction == COPY)
    except TranscoderError as exc:
        from .checks.verify import after_write

        raise after_write(exc, dst) from None


def _light_check(arch: Architecture) -> None:
    """Without an architecture the check is per layer, built from the weights alone and
    deployed nowhere: Keras runs it on its torch backend, the same layer code without
    importing TensorFlow (about 2 s less; measured in the closing notes of issue 13). With an
    architecture, Keras keeps TensorFlow: twins, rebuilt models and exports deploy there."""
    if not arch:
        prefer_keras_backend("torch")


def _run_check(src: Path, dst: Path, request: CheckRequest, outputs: CheckOutputs, *,
               asked: Optional[bool], same_layout: bool = False) -> None:
    """Check DST against SRC when the policy says so; raises CheckFailed (exit 1) when they
    differ."""
    if asked is False:
        return   # --no-check: not even the check's modules are imported
    from .checks.verify import check_conversion  # the check's modules: only when one may run

    _light_check(request.arch)
    result, notes = check_conversion(src, dst, request, asked=asked, same_layout=same_layout)
    for note in notes:
        _note(note)
    if result is not None:
        _report(result, outputs)


def _report(result, outputs: CheckOutputs) -> None:
    from .checks import print_table

    if outputs.quiet:
        typer.echo(result.summary())
    else:
        print_table(result)  # ends with the verdict line
    if outputs.report:
        result.write_json(outputs.report)
    if outputs.junit:
        result.write_junit(outputs.junit)
    result.raise_for_status()


def _dry_run(src: Path, dst: Path, request: CheckRequest) -> None:
    prepared = prepare(src, formats.for_path(dst), key=request.key, rules=request.rules,
                       arch=request.arch, source_format=request.source_format)
    try:
        target = prepared.plan.apply(prepared.source)
        print_rows(plan_rows(prepared.plan, prepared.source, target), PLAN_COLUMNS,
                   title=f"{src} -> {dst} (dry run: nothing written)")
        if prepared.pairs:
            print_rows(pairing_rows(prepared.pairs), PAIR_COLUMNS, title="layer pairing")
        for note in prepared.plan.notes:
            _note(note)
    finally:
        prepared.close()


# ---------------------------------------------------------------- check, inspect, rules

@app.command("check")
def check_cmd(
    src: Annotated[Path, typer.Argument(help="The original checkpoint.")],
    dst: Annotated[Path, typer.Argument(help="Its conversion (the file, SavedModel or TFLite "
                                             "artifact to validate).")],
    key: KeyOpt = None, rules: RulesOpt = None,
    model: ModelOpt = None, keras_model: KerasModelOpt = None,
    input_shape: InputShapeOpt = None, input_dtype: InputDtypeOpt = None,
    atol: AtolOpt = None, rtol: RtolOpt = None, seed: SeedOpt = 0,
    report: ReportOpt = None, junit: JunitOpt = None, channels_last: ChannelsLastOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the verdict line.")
                     ] = False,
    strict: StrictOpt = False, source_format: FromOpt = None,
) -> None:
    """Validate DST against SRC without writing anything: exit 0 same, 1 differ, 2 bad input.

    With --model (and --input-shape): both models run on the same seeded inputs and every
    output is compared; the first diverging layer is named. Without: each mapped layer is built
    in both frameworks from the two files' tensors and compared. Two files of one layout
    (a.pt and a.safetensors): every tensor is compared bit for bit.
    """
    for path in (src, dst):
        if not path.exists():
            raise UsageError("no such file", path=path)
    arch = _architecture(model, keras_model, input_shape, input_dtype, seed, channels_last)
    from .checks.verify import check_files

    _light_check(arch)
    result, notes = check_files(src, dst, CheckRequest(arch, key, rules, Tolerance(atol, rtol),
                                                       strict, source_format))
    for note in notes:
        _note(note)
    _report(result, CheckOutputs(report, junit, quiet))


@app.command("inspect")
def inspect_cmd(
    file: Annotated[Path, typer.Argument(help="Checkpoint to describe.")],
    as_json: JsonOpt = False, key: KeyOpt = None, rules: RulesOpt = None,
    source_format: FromOpt = None,
) -> None:
    """List every tensor with shape and dtype, its inferred layer kind and planned mapping."""
    layout = formats.for_source(file, source_format)[0].layout
    prepared = prepare(file, formats.other_layout(layout), key=key, rules=rules,
                       source_format=source_format)
    try:
        target = prepared.plan.apply(prepared.source)
        print_rows(plan_rows(prepared.plan, prepared.source, target), PLAN_COLUMNS,
                   as_json=as_json, title=f"{file} ({prepared.source.format}, "
                                          f"{prepared.source.layout} layout)")
        for note in prepared.plan.notes:
            _note(note)
    finally:
        prepared.close()


@app.command("rules")
def rules_cmd(as_json: JsonOpt = False) -> None:
    """Print the rule table: PyTorch tensor -> Keras weight, and the operation between them."""
    print_rows(rule_rows(), RULE_COLUMNS, as_json=as_json, title="transcoder rules")


@app.command("version")
def version_cmd() -> None:
    """Print the version."""
    typer.echo(__version__)


# ---------------------------------------------------------------- bulk

ChecksumsOpt = Annotated[bool, typer.Option(
    "--checksums", help="Record the SHA-256 of every source and output in the manifest (about "
                        "0.65 s of CPU per GiB each); a rerun then also trusts files whose "
                        "mtime alone changed.")]

class Target(str, Enum):
    h5 = "h5"
    safetensors = "safetensors"
    pt = "pt"


class Engine(str, Enum):
    local = "local"
    ray = "ray"


@app.command("bulk")
def bulk_cmd(
    src_dir: Annotated[Path, typer.Argument(help="Folder tree of checkpoints to convert.")],
    dst_dir: Annotated[Path, typer.Argument(help="Folder for the mirrored tree and the "
                                                 "manifest.")],
    to: Annotated[Target, typer.Option("--to", help="Output format.")],
    jobs: Annotated[Optional[int], typer.Option("--jobs", "-j", help="Worker processes "
                                                "(default: the number of cores).")] = None,
    pattern: Annotated[Optional[str], typer.Option(
        "--pattern", help="Only files whose name (or, with a /, relative path) matches this "
                          "glob, e.g. '*.pt'.")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Redo every file, even those the manifest lists as done and intact "
                        "(outputs not listed so are always redone).")] = False,
    key: KeyOpt = None, rules: RulesOpt = None,
    check: Annotated[Optional[bool], typer.Option(
        "--check/--no-check", help="Run the forward check after converting each file.")] = None,
    fail_fast: Annotated[bool, typer.Option("--fail-fast", help="Stop at the first failed "
                                                                "file.")] = False,
    timeout: Annotated[Optional[float], typer.Option(
        "--timeout", help="Seconds one file may take (local engine): past it, the file fails "
                          "and its worker is killed (default: no limit).")] = None,
    engine: Annotated[Engine, typer.Option("--engine", help="Where the files convert: a local "
                                                            "process pool or Ray.")
                      ] = Engine.local,
    address: Annotated[Optional[str], typer.Option(
        "--address", help="Ray cluster address for --engine ray (default: start a local Ray "
                          "instance).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but failures.")
                     ] = False,
    checksums: ChecksumsOpt = False,
) -> None:
    """Convert every checkpoint under SRC_DIR into the same tree under DST_DIR, resumably.

    Outputs keep their relative folder and file stem, with the new extension; other files are skipped.

    DST_DIR/transcode-manifest.jsonl records each file: a rerun redoes only what is not done and intact.

    Exit code 0 only if every checkpoint converted, 2 if some input was bad.
    """
    from .bulk import BulkOptions, run_bulk
    from .bulk.display import Display
    from .checks.verify import decide

    decision = decide(check)
    _light_check(Architecture())   # each file's check is per layer
    options = BulkOptions(to=to.value, jobs=jobs, pattern=pattern, force=force, key=key,
                          rules=rules, fail_fast=fail_fast, engine=engine.value, address=address,
                          check=decision.run, timeout=timeout, checksums=checksums)
    report = run_bulk(src_dir, dst_dir, options, Display(quiet=quiet))
    if decision.note:   # after the run: a refused SRC_DIR or DST_DIR stays one line
        _note(decision.note)
    if report.exit_code:
        raise typer.Exit(report.exit_code)


# ---------------------------------------------------------------- entry points

COMMANDS = {c.name for c in app.registered_commands}
PASSTHROUGH = {"--help", "-h"}


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point: maps every error to its exit code and a one-line message."""
    args = list(sys.argv[1:] if argv is None else argv) or ["--help"]
    if args and args[0] not in COMMANDS | PASSTHROUGH:
        args.insert(0, "convert")
    debug = os.environ.get("TRANSCODER_DEBUG") == "1"
    try:
        result = app(args, prog_name="transcode", standalone_mode=False)
        if _RECEIVED:   # Typer returns 130 for any KeyboardInterrupt
            _note("interrupted")
            return 128 + _RECEIVED[-1]
        return result if isinstance(result, int) else 0
    except TranscoderError as exc:
        if debug:
            raise
        _note(f"error: {exc}")
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except typer.TyperException as exc:  # usage errors from the command-line parser
        _note(f"error: {exc.format_message()} (see transcode --help)")
        return 2
    except (typer.Abort, KeyboardInterrupt):
        _note("interrupted")
        return 128 + (_RECEIVED[-1] if _RECEIVED else signal.SIGINT)
    except Exception as exc:  # a bug: still one line, unless debugging
        if debug:
            raise
        _note(f"internal error: {type(exc).__name__}: {one_line(exc)} (set TRANSCODER_DEBUG=1 "
              "for the traceback, and please report it)")
        return INTERNAL_ERROR_EXIT


def run() -> None:
    """The console script. The modules imported so far live until exit: freezing them keeps the
    garbage collector from scanning them again on every full collection. Not in :func:`main`,
    which tests call many times."""
    gc.freeze()
    for signum in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if signum is not None:
            signal.signal(signum, _interrupt)
    sys.exit(main())


_RECEIVED: list[int] = []


def _interrupt(signum: int, frame) -> None:
    """SIGTERM or SIGHUP, raised as Ctrl-C's KeyboardInterrupt so that the same clean-up runs
    (temporary outputs removed, a bulk run's manifest written); exit code 128 + the signal."""
    _RECEIVED.append(signum)
    raise KeyboardInterrupt
