"""The ``transcode`` command.

``transcode SRC DST`` converts (the default command); ``inspect`` and ``rules`` explain.
Errors are one line on stderr with exit code 2 (bad usage or input), 1 when a check fails;
``TRANSCODER_DEBUG=1`` shows the traceback instead.
"""
from __future__ import annotations

import gc
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import typer

# Before numpy is imported: the command does no linear algebra with numpy, and OpenBLAS's idle
# worker threads spin on the two cores a conversion needs (7 % of the CPU samples of a 1 GiB
# .pt -> .h5, measured with perf).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from . import __version__
from .convert import Architecture, CheckOptions, prepare, transcode
from .errors import MissingDependencyError, TranscoderError, UsageError
from .frameworks import import_frameworks
from .rules import COPY
from .report import (PAIR_COLUMNS, PLAN_COLUMNS, RULE_COLUMNS, pairing_rows, plan_rows, print_rows,
                     rule_rows)

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Move weights between PyTorch and Keras; `transcode SRC DST` converts.")

KeyOpt = typer.Option(None, "--key", help="Dotted path of the state dict inside a training "
                                          "checkpoint, e.g. state_dict or ema.")
RulesOpt = typer.Option(None, "--rules", exists=False, dir_okay=False,
                        help="TOML file stating layer kinds or tensor mappings (see README).")
ModelOpt = typer.Option(None, "--model", help="PyTorch model: path/to/file.py:Name or "
                                              "package.module:Name (exact layer kinds, num_heads...).")
InputShapeOpt = typer.Option(None, "--input-shape", help="Input shape for the check, PyTorch layout "
                             "(e.g. 4,10,128); repeat for several inputs.")
InputDtypeOpt = typer.Option(None, "--input-dtype", help="Input dtype (float32, int64, int64:HIGH "
                             "for a range); repeat per input.")
AtolOpt = typer.Option(None, "--atol", help="Absolute tolerance (default per dtype: float32 1e-5).")
RtolOpt = typer.Option(None, "--rtol", help="Relative tolerance (default per dtype: float32 1e-4).")
SeedOpt = typer.Option(0, "--seed", help="Seed of the random inputs.")
ReportOpt = typer.Option(None, "--report", help="Write the check report as JSON here.")
JunitOpt = typer.Option(None, "--junit", help="Write the check result as JUnit XML here.")
ChannelsLastOpt = typer.Option(False, "--channels-last", help="The Keras model takes and returns "
                               "channels-last tensors (rebuilt models too).")
KerasModelOpt = typer.Option(None, "--keras-model", help="Keras model to pair with and save "
                                                         "through: path/to/file.py:Name or "
                                                         "package.module:Name.")


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        typer.echo(message)


def _note(message: str) -> None:
    typer.echo(f"transcode: {message}", err=True)


@app.command("convert")
def convert_cmd(
    src: Path = typer.Argument(..., help="Checkpoint to read (.pt .pth .bin .ckpt .safetensors .h5 .keras)."),
    dst: Path = typer.Argument(..., help="File to write; its extension picks the format and layout."),
    force: bool = typer.Option(False, "--force", help="Overwrite DST if it exists."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan; write nothing."),
    key: Optional[str] = KeyOpt,
    rules: Optional[Path] = RulesOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
    check: Optional[bool] = typer.Option(None, "--check/--no-check",
                                         help="Run the forward check after converting."),
    model: Optional[str] = ModelOpt,
    keras_model: Optional[str] = KerasModelOpt,
    input_shape: Optional[list[str]] = InputShapeOpt,
    input_dtype: Optional[list[str]] = InputDtypeOpt,
    atol: Optional[float] = AtolOpt,
    rtol: Optional[float] = RtolOpt,
    seed: int = SeedOpt,
    report: Optional[Path] = ReportOpt,
    junit: Optional[Path] = JunitOpt,
    channels_last: bool = ChannelsLastOpt,
) -> None:
    """Convert SRC to DST (the default command: `transcode SRC DST`), then check it.

    The check runs by default when torch and Keras are installed: the full-model check with
    --model and --input-shape, else every mapped layer on its own. --no-check skips it.
    """
    started = time.perf_counter()
    options = CheckOptions(input_shape or [], input_dtype or [], atol, rtol, seed, channels_last)
    arch = Architecture(model, keras_model, options)
    if dry_run:
        _dry_run(src, dst, key, rules, arch)
        return
    prepared = transcode(src, dst, force=force, key=key, rules=rules, arch=arch)
    plan = prepared.plan
    if prepared.pairs and not quiet:
        print_rows(pairing_rows(prepared.pairs), PAIR_COLUMNS, title="layer pairing")
    mapped = sum(len(s.torch) for s in plan.steps)
    _say(quiet, f"wrote {dst}: {mapped} tensors mapped, {len(plan.carried)} carried "
                f"({time.perf_counter() - started:.2f} s)")
    for note in [] if quiet else plan.notes:
        _note(note)
    if check is not False:
        _run_check(src, dst, arch, key, rules, CheckOutputs(report, junit, quiet),
                   explicit=bool(check), same_layout=plan.direction == COPY)


@dataclass
class CheckOutputs:
    report: Optional[Path] = None
    junit: Optional[Path] = None
    quiet: bool = False


def _run_check(src: Path, dst: Path, arch: Architecture, key, rules, outputs: CheckOutputs, *,
               explicit: bool, same_layout: bool = False) -> None:
    """Check DST against SRC; raises CheckFailed (exit 1) when they differ."""
    from .check.verify import unavailable, verify

    reason = unavailable() or ("both files hold the PyTorch layout: tensors were copied, nothing "
                               "was mapped" if same_layout else None)
    if reason and explicit and not same_layout:
        raise MissingDependencyError(f"cannot run the check: {reason}")
    if reason:
        _note(f"no check ran: {reason}")
        return
    full = bool(arch.model) and (bool(arch.inputs.input_shapes) or explicit)
    if arch.model and not full:
        _note("full-model check skipped (give --input-shape); checking each layer on its own")
    import_frameworks()
    _report(verify(src, dst, arch=arch, key=key, rules=rules, options=arch.inputs, full=full),
            outputs)


def _report(result, outputs: CheckOutputs) -> None:
    from .check import print_table

    if outputs.quiet:
        typer.echo(result.summary())
    else:
        print_table(result)  # ends with the verdict line
    if outputs.report:
        result.write_json(outputs.report)
    if outputs.junit:
        result.write_junit(outputs.junit)
    result.raise_for_status()


@app.command("check")
def check_cmd(
    src: Path = typer.Argument(..., help="The original checkpoint."),
    dst: Path = typer.Argument(..., help="Its conversion (the file to validate)."),
    key: Optional[str] = KeyOpt,
    rules: Optional[Path] = RulesOpt,
    model: Optional[str] = ModelOpt,
    keras_model: Optional[str] = KerasModelOpt,
    input_shape: Optional[list[str]] = InputShapeOpt,
    input_dtype: Optional[list[str]] = InputDtypeOpt,
    atol: Optional[float] = AtolOpt,
    rtol: Optional[float] = RtolOpt,
    seed: int = SeedOpt,
    report: Optional[Path] = ReportOpt,
    junit: Optional[Path] = JunitOpt,
    channels_last: bool = ChannelsLastOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the verdict line."),
) -> None:
    """Validate DST against SRC without writing anything: exit 0 same, 1 differ, 2 bad input.

    With --model (and --input-shape): both models run on the same seeded inputs and every
    output is compared; the first diverging layer is named. Without: each mapped layer is built
    in both frameworks from the two files' tensors and compared.
    """
    for path in (src, dst):
        if not path.is_file():
            raise UsageError("no such file", path=path)
    options = CheckOptions(input_shape or [], input_dtype or [], atol, rtol, seed, channels_last)
    arch = Architecture(model, keras_model, options)
    _run_check(src, dst, arch, key, rules, CheckOutputs(report, junit, quiet), explicit=True)


def _dry_run(src: Path, dst: Path, key: Optional[str], rules: Optional[Path],
             arch: Architecture) -> None:
    prepared = prepare(src, dst, key=key, rules=rules, arch=arch)
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


@app.command("inspect")
def inspect_cmd(
    file: Path = typer.Argument(..., help="Checkpoint to describe."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    key: Optional[str] = KeyOpt,
    rules: Optional[Path] = RulesOpt,
) -> None:
    """List every tensor with shape and dtype, its inferred layer kind and planned mapping."""
    probe = file.with_name(file.name + (".h5" if _is_torch_file(file) else ".pt"))
    prepared = prepare(file, probe, key=key, rules=rules)
    try:
        target = prepared.plan.apply(prepared.source)
        print_rows(plan_rows(prepared.plan, prepared.source, target), PLAN_COLUMNS,
                   as_json=as_json, title=f"{file} ({prepared.source.format}, "
                                          f"{prepared.source.layout} layout)")
    finally:
        prepared.close()


def _is_torch_file(path: Path) -> bool:
    from .formats import for_path

    return for_path(path).layout == "torch"


@app.command("rules")
def rules_cmd(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Print the rule table: PyTorch tensor -> Keras weight, and the operation between them."""
    print_rows(rule_rows(), RULE_COLUMNS, as_json=as_json, title="transcoder rules")


@app.command("version")
def version_cmd() -> None:
    """Print the version."""
    typer.echo(__version__)


@app.command("bulk")
def bulk_cmd(
    src_dir: Path = typer.Argument(..., help="Folder tree of checkpoints to convert."),
    dst_dir: Path = typer.Argument(..., help="Folder for the mirrored tree and the manifest."),
    to: str = typer.Option(..., "--to", help="Output format: h5, safetensors or pt."),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help="Worker processes (default: the "
                                                                   "number of cores)."),
    pattern: Optional[str] = typer.Option(None, "--pattern", help="Only files whose name (or, with "
                                          "a /, relative path) matches this glob, e.g. '*.pt'."),
    force: bool = typer.Option(False, "--force", help="Redo every file, even those the manifest "
                               "lists as done and intact (outputs not listed so are always redone)."),
    key: Optional[str] = KeyOpt,
    rules: Optional[Path] = RulesOpt,
    check: Optional[bool] = typer.Option(None, "--check/--no-check",
                                         help="Run the forward check after converting each file."),
    fail_fast: bool = typer.Option(False, "--fail-fast", help="Stop at the first failed file."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Seconds one file may take "
                                            "(local engine): past it, the file fails and its "
                                            "worker is killed (default: no limit)."),
    engine: str = typer.Option("local", "--engine", help="local (process pool) or ray."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address for "
                                          "--engine ray (default: start a local Ray instance)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but failures."),
) -> None:
    """Convert every checkpoint under SRC_DIR into the same tree under DST_DIR, resumably.

    Outputs keep their relative folder and file stem, with the new extension; other files are skipped.

    DST_DIR/transcode-manifest.jsonl records each file: a rerun redoes only what is not done and intact.

    Exit code 0 only if every checkpoint converted, 2 if some input was bad.
    """
    from .bulk import BulkOptions, run_bulk
    from .bulk.display import Display

    options = BulkOptions(to=to, jobs=jobs, pattern=pattern, force=force, key=key, rules=rules,
                          fail_fast=fail_fast, engine=engine, address=address,
                          check=_bulk_check(check), timeout=timeout)
    report = run_bulk(src_dir, dst_dir, options, Display(quiet=quiet))
    if report.exit_code:
        raise typer.Exit(report.exit_code)


def _bulk_check(asked: Optional[bool]) -> bool:
    """Check each file (per layer) unless --no-check or torch/Keras are missing (then say so)."""
    from .check.verify import unavailable

    reason = unavailable() if asked is not False else None
    if reason and asked:
        raise MissingDependencyError(f"cannot run the check: {reason}")
    if reason:
        _note(f"no check ran: {reason}")
    return asked is not False and reason is None


QUIET_FRAMEWORKS = {"TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
COMMANDS = {"convert", "check", "inspect", "rules", "version", "bulk"}
PASSTHROUGH = {"--help", "-h"}


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point: maps every error to its exit code and a one-line message."""
    args = list(sys.argv[1:] if argv is None else argv) or ["--help"]
    if args and args[0] not in COMMANDS | PASSTHROUGH:
        args.insert(0, "convert")
    debug = os.environ.get("TRANSCODER_DEBUG") == "1"
    for name, value in QUIET_FRAMEWORKS.items():  # only read if a check imports them
        os.environ.setdefault(name, value)
    try:
        result = app(args, prog_name="transcode", standalone_mode=False)
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
        return 130
    except Exception as exc:  # a bug: still one line, unless debugging
        if debug:
            raise
        _note(f"internal error: {type(exc).__name__}: {exc} (set TRANSCODER_DEBUG=1 for the "
              "traceback, and please report it)")
        return 3


def run() -> None:
    """The console script. The modules imported so far live until exit: freezing them keeps the
    garbage collector from scanning them again on every full collection (a 1 GiB .pt -> .h5
    took 10 % less wall time, measured). Not in :func:`main`, which tests call many times."""
    gc.freeze()
    sys.exit(main())
