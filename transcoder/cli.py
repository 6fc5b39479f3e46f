"""The ``transcode`` command.

``transcode SRC DST`` converts (the default command); ``inspect`` and ``rules`` explain.
Errors are one line on stderr with exit code 2 (bad usage or input), 1 when a check fails;
``TRANSCODER_DEBUG=1`` shows the traceback instead.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from . import __version__
from .convert import Architecture, prepare, transcode
from .errors import TranscoderError
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
) -> None:
    """Convert SRC to DST (the default command: `transcode SRC DST`)."""
    started = time.perf_counter()
    arch = Architecture(model, keras_model)
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
    if check:
        _note("no forward check ran: this version has no forward check yet (the weights were "
              "mapped by the rule table only)")


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
                          fail_fast=fail_fast, engine=engine, address=address)
    report = run_bulk(src_dir, dst_dir, options, Display(quiet=quiet))
    if check:
        _note("no forward check ran: this version has no forward check yet (the weights were "
              "mapped by the rule table only)")
    if report.exit_code:
        raise typer.Exit(report.exit_code)


COMMANDS = {"convert", "inspect", "rules", "version", "bulk"}
PASSTHROUGH = {"--help", "-h"}


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point: maps every error to its exit code and a one-line message."""
    args = list(sys.argv[1:] if argv is None else argv) or ["--help"]
    if args and args[0] not in COMMANDS | PASSTHROUGH:
        args.insert(0, "convert")
    debug = os.environ.get("TRANSCODER_DEBUG") == "1"
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
    sys.exit(main())
