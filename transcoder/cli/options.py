"""The options several commands take, declared once (``Annotated`` aliases for typer), and the
choices of ``bulk``."""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

KeyOpt = Annotated[Optional[str], typer.Option(
    "--key", help="Dotted path of the state dict inside a training checkpoint, e.g. state_dict "
                  "or ema.")]
RulesOpt = Annotated[Optional[Path], typer.Option(
    "--rules", exists=False, dir_okay=False,
    help="TOML file stating layer kinds or tensor mappings (see docs/cli.md).")]
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
ReportHtmlOpt = Annotated[Optional[Path], typer.Option(
    "--report-html", help="Write the check report as one self-contained HTML page here (a bar "
                          "per layer or output: its error against the tolerance).")]
ChannelsLastOpt = Annotated[bool, typer.Option(
    "--channels-last", help="The Keras model takes and returns channels-last tensors (rebuilt "
                            "models too).")]
CheckOpt = Annotated[Optional[bool], typer.Option(
    "--check/--no-check", help="Run the forward check after converting.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")]
StrictOpt = Annotated[bool, typer.Option(
    "--strict", help="Fail the check (exit 1) unless every layer was verified: none SKIPPED or "
                     "NOT CHECKED.")]
JsonOpt = Annotated[bool, typer.Option(
    "--json", help="Machine-readable output: one JSON document on stdout (with its schema).")]
QuantizeOpt = Annotated[Optional[str], typer.Option(
    "--quantize", help="A .tflite export's weights: float16, or dynamic (int8 weights of 1024 "
                       "elements or more); the check's default tolerance follows it.")]
RevisionOpt = Annotated[Optional[str], typer.Option(
    "--revision", help="For SRC in the local Hugging Face cache (a repo id or its cache "
                       "folder): the snapshot, by branch, tag or commit (default: main).")]
FromOpt = Annotated[Optional[str], typer.Option(
    "--from", help="Read SRC as this format (pt, safetensors, keras_h5, keras_zip), whatever "
                   "its content and name say.")]

ShardSizeOpt = Annotated[Optional[str], typer.Option(
    "--shard-size", help="Write .safetensors or .pt in shards of at most this size (5GB, 500MB: "
                         "decimal units, or bytes) with their index, as Hugging Face does; a DST "
                         "naming the index shards at 5GB.")]

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
