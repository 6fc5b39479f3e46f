"""``transcode check``, ``inspect`` and ``rules``: parse, call :mod:`transcoder.api`, print."""
from __future__ import annotations

from typing import Annotated

import typer

from .. import api
from .options import (AtolOpt, ChannelsLastOpt, FromOpt, InputDtypeOpt, InputShapeOpt, JsonOpt,
                      JunitOpt, KerasModelOpt, KeyOpt, ModelOpt, ReportHtmlOpt, ReportOpt,
                      RevisionOpt, RtolOpt, RulesOpt, SeedOpt, StrictOpt)
from .output import CheckOutputs, light_check, note, outputs_of, report as print_report
from ..printing import markdown_table
from .tables import PLAN_COLUMNS, RULE_COLUMNS, print_rows, rule_rows


def check_cmd(
    src: Annotated[str, typer.Argument(help="The original checkpoint (a file, a Hugging Face "
                                            "folder or cached repo id, an fsspec URL).")],
    dst: Annotated[str, typer.Argument(help="Its conversion (the file, SavedModel or TFLite "
                                            "artifact to validate; or its URL).")],
    key: KeyOpt = None, rules: RulesOpt = None,
    model: ModelOpt = None, keras_model: KerasModelOpt = None,
    input_shape: InputShapeOpt = None, input_dtype: InputDtypeOpt = None,
    atol: AtolOpt = None, rtol: RtolOpt = None, seed: SeedOpt = 0,
    report: ReportOpt = None, junit: JunitOpt = None, channels_last: ChannelsLastOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the verdict line.")
                     ] = False,
    strict: StrictOpt = False, source_format: FromOpt = None, as_json: JsonOpt = False,
    report_html: ReportHtmlOpt = None, revision: RevisionOpt = None,
) -> None:
    """Validate DST against SRC without writing anything: exit 0 same, 1 differ, 2 bad input.

    With --model (and --input-shape): both models run on the same seeded inputs and every
    output is compared; the first diverging layer is named. Without: each mapped layer is built
    in both frameworks from the two files' tensors and compared. Two files of one layout
    (a.pt and a.safetensors): every tensor is compared bit for bit.
    """
    outputs = CheckOutputs(report, junit, quiet, as_json, report_html)
    with outputs_of(outputs):
        light_check(bool(model or keras_model) or api.may_build_model(src))
        result = api.check(src, dst, key=key, rules=rules, model=model, keras_model=keras_model,
                           input_shape=input_shape or (), input_dtype=input_dtype or (),
                           seed=seed, channels_last=channels_last, atol=atol, rtol=rtol,
                           strict=strict, source_format=source_format, revision=revision)
        print_report(result, outputs)


def inspect_cmd(
    file: Annotated[str, typer.Argument(help="Checkpoint to describe (a file, a Hugging Face "
                                             "folder or cached repo id, an fsspec URL).")],
    as_json: JsonOpt = False, key: KeyOpt = None, rules: RulesOpt = None,
    source_format: FromOpt = None, revision: RevisionOpt = None,
) -> None:
    """List every tensor with shape and dtype, its inferred layer kind and planned mapping."""
    found = api.inspect(file, key=key, rules=rules, source_format=source_format,
                        revision=revision)
    print_rows(found.rows, PLAN_COLUMNS, as_json=as_json,
               title=f"{file} ({found.format}, {found.layout} layout)")
    for line in found.notes:
        note(line)


def rules_cmd(as_json: JsonOpt = False, markdown: Annotated[bool, typer.Option(
        "--markdown", help="A Markdown table (docs/layers.md is made of it).")] = False) -> None:
    """Print the rule table: PyTorch tensor -> Keras weight, and the operation between them."""
    if markdown:
        typer.echo(markdown_table(rule_rows(), RULE_COLUMNS), nl=False)
        return
    print_rows(rule_rows(), RULE_COLUMNS, as_json=as_json, title="transcoder rules")
