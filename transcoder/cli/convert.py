"""``transcode SRC DST`` (the ``convert`` command): parse, call :func:`transcoder.api.convert`,
print what it did and the check's report."""
from __future__ import annotations

import time
from typing import Annotated

import typer

from .. import api
from ..errors import TranscoderError
from ..printing import print_json
from .options import (AtolOpt, ChannelsLastOpt, CheckOpt, FromOpt, InputDtypeOpt, InputShapeOpt,
                      JsonOpt, JunitOpt, KerasModelOpt, KeyOpt, ModelOpt, QuantizeOpt, QuietOpt,
                      ReportHtmlOpt, RevisionOpt, ReportOpt, RtolOpt, RulesOpt, SeedOpt, ShardSizeOpt,
                      StrictOpt)
from .output import CheckOutputs, light_check, note, outputs_of, report as print_report, say
from .tables import PAIR_COLUMNS, PLAN_COLUMNS, print_rows


def convert_cmd(
    src: Annotated[str, typer.Argument(help="Checkpoint to read (.pt .pth .bin .ckpt "
                                            ".safetensors .h5 .keras, a Hugging Face folder or "
                                            "cached repo id, or an fsspec URL such as "
                                            "s3://bucket/m.pt).")],
    dst: Annotated[str, typer.Argument(help="File to write (.h5 .weights.h5 .keras .pt "
                                            ".safetensors .savedmodel .tflite; a path or an "
                                            "fsspec URL); its extension picks the format and "
                                            "layout.")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite DST if it exists.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; write nothing.")
                       ] = False,
    key: KeyOpt = None, rules: RulesOpt = None, quiet: QuietOpt = False, check: CheckOpt = None,
    model: ModelOpt = None, keras_model: KerasModelOpt = None,
    input_shape: InputShapeOpt = None, input_dtype: InputDtypeOpt = None,
    atol: AtolOpt = None, rtol: RtolOpt = None, seed: SeedOpt = 0,
    report: ReportOpt = None, junit: JunitOpt = None, channels_last: ChannelsLastOpt = False,
    strict: StrictOpt = False, source_format: FromOpt = None, quantize: QuantizeOpt = None,
    shard_size: ShardSizeOpt = None, as_json: JsonOpt = False, report_html: ReportHtmlOpt = None,
    revision: RevisionOpt = None,
) -> None:
    """Convert SRC to DST (the default command: `transcode SRC DST`), then check it.

    The check runs by default when torch and Keras are installed: the full-model check with
    --model and --input-shape, else every mapped layer on its own. --no-check skips it.
    DST stays whatever the check finds: exit 1 when it differs, 2 when it cannot run.
    DST.savedmodel and DST.tflite are exported from the Keras model (--model rebuilt, or
    --keras-model), and the check runs the exported artifact itself.
    """
    outputs = CheckOutputs(report, junit, quiet, as_json, report_html)
    with outputs_of(outputs):
        _convert(src, dst, outputs, dict(
            force=force, dry_run=dry_run, key=key, rules=rules, model=model,
            keras_model=keras_model, input_shape=input_shape or (), input_dtype=input_dtype or (),
            seed=seed, channels_last=channels_last, check=check, atol=atol, rtol=rtol,
            strict=strict, source_format=source_format, quantize=quantize,
            shard_size=shard_size, revision=revision))


def _convert(src: str, dst: str, outputs: CheckOutputs, options: dict) -> None:
    """Call :func:`api.convert` with the command's ``options``; print and write its results."""
    started = time.perf_counter()
    if options["check"] is not False:
        light_check(bool(options["model"] or options["keras_model"])
                    or api.writes_keras_model(dst))
    printed: list[str] = []

    def written(result: api.Conversion) -> None:
        _print_written(result, outputs, time.perf_counter() - started)
        printed.extend(result.notes)

    result = api.convert(src, dst, on_written=written, **options)
    if options["dry_run"]:
        _print_dry_run(result, outputs.as_json)
        return
    for line in result.notes[len(printed):]:   # the check's own
        note(line)
    if result.report is None:
        if outputs.as_json:
            print_json(result.to_dict())
        return
    try:
        print_report(result.report, outputs, result.to_dict() if outputs.as_json else None)
    except TranscoderError as exc:
        from ..checks.verify import after_write

        raise after_write(exc, result.dst) from None


def _print_written(result: api.Conversion, outputs: CheckOutputs, seconds: float) -> None:
    """``wrote m.h5: 18 tensors mapped, 1 carried (0.23 s)`` (a sharded output: its index
    ``and 3 shards``; an export: what it holds), after the layer pairing, before the notes.
    With ``--json`` stdout is the one document: the notes still go to stderr."""
    quiet = outputs.quiet or outputs.as_json
    if result.pairs and not quiet:
        print_rows(result.pairs, PAIR_COLUMNS, title="layer pairing")
    shards = f" and {len(result.files) - 1} shards" if len(result.files) > 1 else ""
    say(quiet, f"wrote {result.dst}{shards}: {result.wrote} ({seconds:.2f} s)")
    for line in [] if outputs.quiet else result.notes:
        note(line)


def _print_dry_run(result: api.Conversion, as_json: bool) -> None:
    if as_json:
        print_json(result.to_dict())
        return
    print_rows(result.rows, PLAN_COLUMNS,
               title=f"{result.src} -> {result.dst} (dry run: nothing written)")
    if result.pairs:
        print_rows(result.pairs, PAIR_COLUMNS, title="layer pairing")
    for line in result.notes:
        note(line)
