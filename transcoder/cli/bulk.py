"""``transcode bulk``: a tree of checkpoints converted by :mod:`transcoder.bulk`."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from .. import progress
from .options import ChecksumsOpt, Engine, KeyOpt, RulesOpt, Target
from .output import light_check, note


def bulk_cmd(
    src_dir: Annotated[str, typer.Argument(help="Folder tree of checkpoints to convert (or a "
                                                "bucket URL: s3://bucket/prefix).")],
    dst_dir: Annotated[str, typer.Argument(help="Folder (or bucket URL) for the mirrored tree "
                                                "and the manifest.")],
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
    from ..bulk import BulkOptions, run_bulk
    from ..bulk.display import Display
    if check is False:   # the check's modules (a tenth of a second) only when it may run
        run_check, check_note = False, None
    else:
        from ..checks.verify import decide

        decision = decide(check)
        run_check, check_note = decision.run, decision.note
    progress.mute()   # bulk.display draws its own bar (bytes within files included)
    light_check(False)   # each file's check is per layer
    options = BulkOptions(to=to.value, jobs=jobs, pattern=pattern, force=force, key=key,
                          rules=rules, fail_fast=fail_fast, engine=engine.value, address=address,
                          check=run_check, timeout=timeout, checksums=checksums)
    report = run_bulk(src_dir, dst_dir, options, Display(quiet=quiet))
    if check_note:   # after the run: a refused SRC_DIR or DST_DIR stays one line
        note(check_note)
    if report.exit_code:
        raise typer.Exit(report.exit_code)
