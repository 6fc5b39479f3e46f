"""Benchmark: `transcode SRC DST --no-check` against `cp`, the byte-moving floor and a plain torch + h5py script.

    python bench/bench.py                 # 1 GiB checkpoints, a 4 GiB LLM, 3 runs each
    python bench/bench.py --quick         # 64 MiB (LLM 256 MiB), 2 runs: a smoke run
    python bench/bench.py --size-mib 4096 --runs 5 --workdir /mnt/scratch
    python bench/bench.py --cases conv1d,llm --llm-mib 1024

It generates the checkpoints (bench/make_checkpoints.py), then times every tool on every case
in the same invocation, interleaved round by round so that a noisy neighbour hurts all tools
alike. The cases (``--cases``, all by default):
  - ``linear``: ``--size-mib`` of Conv1d, Conv2d, Linear, BatchNorm and Embedding tensors, most
    of the bytes Linear, ``.pt`` and ``.safetensors`` -> ``.h5`` and -> ``.safetensors``;
  - ``conv1d``: the same size, 66 % Conv1d(512, 512, k=5), 26 % Linear, 7 % Conv2d (audio
    models), ``.pt`` and ``.safetensors`` -> ``.h5`` and -> ``.safetensors``;
  - ``small``: ``--small-mib`` (100 KiB) ``.pt`` -> ``.h5``, against the plain script too;
  - ``bulk``: a tree of ``--bulk-files`` checkpoints (half .pt, half .safetensors, about
    ``--size-mib`` in all) with `transcode bulk` against `cp -r`; bulk also flushes each
    output to disk before recording it in its manifest (hashes only with --checksums);
  - ``wide``: ``--wide-mib`` (1536) of Linear(4096, 4096) layers with normal(0, 1) weights
    (24 of them), ``.pt`` and ``.safetensors`` -> ``.h5``;
  - ``llm``: a bfloat16 checkpoint of ``--llm-mib`` (4 x ``--size-mib`` unless given) in 3
    safetensors shards with ``model.safetensors.index.json``, one embedding of 1/8 of the
    bytes and Linear layers for the rest, -> ``.h5`` (bfloat16 is stored there as exact
    float32: twice the bytes `cp -r` writes) and -> sharded ``.safetensors`` and ``.pt``
    (``--shard-size`` of the largest source shard), against `cp -r` of the folder.

Every case also times the **floor** (``bench/floor.py``): a whole process that starts Python
and numpy, maps the source read-only and copies it into a ``posix_fallocate``d output mapped
``MAP_SHARED`` and populated for writing (``MADV_POPULATE_WRITE``; until 2026-12-07 it used
``MAP_POPULATE``, which on Linux 6.x made the floor 2-5 x too slow: see floor.py) on two
threads (a folder file by file): the bytes moved and nothing else. The table gives each time against `cp` and against the floor. ``--mapped-row``
adds the conversion with ``TRANSCODER_NO_MMAP_WRITE=0`` (outputs written through shared
mappings, not with pwrite, the default) to compare both ways of writing.

The large one-file cases (linear, conv1d, wide) also time the conversion with its default
check (``transcode + check``) and the frameworks' start-up alone (``import torch, keras``
as the command's per-layer check imports them: Keras on its torch backend, without torch's
compiler, ``transcoder/frameworks.py``): the issue's target is
that the check adds at most that start-up plus 2 x the ``--no-check`` conversion's wall time,
and that its peak RSS stays within 400 MiB plus the largest layer (``--no-check-column`` leaves
them out).

Each run is a fresh process; its wall time is measured around it and its peak RSS comes from
``wait4`` (that process alone; Linux counts the few MiB of this lean script at fork time in it
too, which is why even `cp` shows about 15 MiB: this script imports nothing heavy for that
reason). Before each run the output is deleted and ``sync`` flushes earlier writes, so no run
pays for another's write-back. Sources stay in the page cache for all tools alike.

Prints a Markdown table: the best wall time and the median (min-max), the median CPU time
(user + system: what the run cost, which other jobs on the machine disturb less than the wall
time), peak RSS (largest over runs), ratios of bests and of medians to `cp` and to the plain
script, and whether the issue's targets (judged on the best of the runs, as the issue states
them) are met.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: the issue's targets (issue 21): wall time (best of the runs) <= this x the baseline's best
#: (`cp`, or `cp -r` for folders), and for the one-file cases <= TARGET_FLOOR x the floor's
TARGET_CP = {"linear": 1.5, "conv1d": 1.5, "bulk": 1.6, "llm-st": 1.5, "llm-pt": 1.5}
TARGET_FLOOR = {"linear": 1.2, "conv1d": 1.2}
TARGET_RSS_MIB = 400       # every large case: peak RSS <= 400 MiB
TARGET_PLAIN_RATIO = 0.25  # small checkpoint: wall time <= 1/4 of the plain script
CASES = ("linear", "conv1d", "wide", "small", "bulk", "llm")
#: the default check (issue 18): it adds at most the frameworks' start-up plus this many times
#: the --no-check conversion's wall time, and its peak RSS stays within TARGET_RSS_MIB plus
#: the largest layer
CHECK_TIMES_CONVERSION = 2.0


@dataclass
class Run:
    wall: float
    rss_mib: float
    cpu: float   # user + system time of the process (and of the children it waited for)


Tools = dict[str, tuple[list[str], Path]]   # tool name -> (command, the file or folder it writes)
CP, TRANSCODE, PLAIN = "cp", "transcode", "plain torch+h5py"
FLOOR, MAPPED = "floor", "transcode, mapped"
CHECK, STARTUP = "transcode + check", "import torch, keras"


@dataclass
class Case:
    name: str
    kind: str                     # one of CASES (llm-st, llm-pt: llm -> sharded .safetensors, .pt)
    tools: Tools
    runs: dict[str, list[Run]] = field(default_factory=dict)
    largest_mib: float = 0.0                     # the largest layer (its tensors together)

    def median(self, tool: str) -> float | None:
        runs = self.runs.get(tool)
        return statistics.median(r.wall for r in runs) if runs else None

    def best(self, tool: str) -> float | None:
        runs = self.runs.get(tool)
        return min(r.wall for r in runs) if runs else None


def generate(folder: Path, size_mib: float, mix: str = "linear") -> tuple[Path, Path]:
    """The checkpoints, made in a child process (this one stays lean: see the RSS note above);
    for ``llm`` the index of the shards, twice."""
    subprocess.run([sys.executable, str(HERE / "make_checkpoints.py"), str(folder), "--size-mib",
                    str(size_mib), "--mix", mix], check=True, stdout=subprocess.DEVNULL)
    if mix == "llm":
        return (folder / "model.safetensors.index.json",) * 2
    return folder / "model.pt", folder / "model.safetensors"


def compile_bytecode() -> None:
    """Compile the package's bytecode, as ``pip install`` does for a regular install. An
    editable install has none, and where PYTHONDONTWRITEBYTECODE is set (as on our development
    machines) every run would compile every module again: about 40 ms of each run's start-up."""
    subprocess.run([sys.executable, "-c", "import compileall, importlib.util; "
                    "[compileall.compile_dir(d, quiet=1) for d in "
                    "importlib.util.find_spec('transcoder').submodule_search_locations]"],
                   check=True)


def check_kernel() -> str:
    """The permutation kernel the `transcode` runs will import (``kernel_build.py``, run by
    the same interpreter); raises SystemExit if it is a stale build."""
    done = subprocess.run([sys.executable, str(HERE / "kernel_build.py")], capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(done.stdout.strip() or done.stderr.strip())
    return done.stdout.strip()


def transcode_command() -> list[str]:
    script = Path(sys.executable).parent / "transcode"
    return [str(script)] if script.exists() else [sys.executable, "-m", "transcoder"]


def check_tools(src: Path, out_dir: Path) -> Tools:
    """The conversion with its default check, and the frameworks' start-up alone (the check's
    imports: torch, and Keras on its torch backend, as the command runs a per-layer check)."""
    h5, marker = out_dir / "checked.h5", out_dir / "imported"
    code = ("import pathlib; from transcoder.frameworks import import_frameworks, "
            "prefer_keras_backend; prefer_keras_backend('torch'); import_frameworks(); "
            f"pathlib.Path({str(marker)!r}).touch()")
    return {CHECK: (transcode_command() + [str(src), str(h5), "--quiet"], h5),
            STARTUP: (["env", "KERAS_BACKEND=torch", "TF_CPP_MIN_LOG_LEVEL=3", sys.executable,
                       "-c", code], marker)}


def largest_layer_mib(safetensors: Path) -> float:
    """MiB of the largest layer (tensors of one module path together), from the header."""
    import json
    import struct

    with open(safetensors, "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    layers: dict[str, int] = {}
    for name, info in header.items():
        if name != "__metadata__":
            start, end = info["data_offsets"]
            layers[name.rpartition(".")[0]] = layers.get(name.rpartition(".")[0], 0) + end - start
    return max(layers.values(), default=0) / 2**20


def floor_command(src: Path, dst: Path) -> list[str]:
    return [sys.executable, str(HERE / "floor.py"), str(src), str(dst)]


def with_mapped(tools: Tools, mapped: bool) -> Tools:
    """With ``--mapped-row``: the conversion again, writing through shared mappings (the
    default writes with pwrite: docs/performance.md says why)."""
    if mapped:
        command, output = tools[TRANSCODE]
        tools[MAPPED] = (["env", "TRANSCODER_NO_MMAP_WRITE=0"] + command, output)
    return tools


def one_file_tools(src: Path, out_dir: Path, plain: bool = True, suffix: str = ".h5",
                   mapped: bool = False) -> Tools:
    copy, out = out_dir / ("copy" + "".join(src.suffixes)), out_dir / ("out" + suffix)
    tools = {
        CP: (["cp", str(src), str(copy)], copy),
        FLOOR: (floor_command(src, copy), copy),
        TRANSCODE: (transcode_command() + [str(src), str(out), "--no-check", "--quiet"], out),
        PLAIN: ([sys.executable, str(HERE / "plain_torch_h5.py"), str(src), str(out)], out),
    }
    if not plain or suffix != ".h5":  # at 1 GiB it only shows that loading everything costs
        del tools[PLAIN]              # memory (1.3 GiB)
    return with_mapped(tools, mapped)


def in_new_folder(folder: Path, command: list[str]) -> list[str]:
    """``command`` run after creating ``folder`` (a sharded output's), in the same process."""
    return ["sh", "-c", 'mkdir -p "$1" && shift && exec "$@"', "sh", str(folder), *command]


def sharded_tools(index: Path, out_dir: Path, suffix: str = ".h5", mapped: bool = False) -> Tools:
    copy = out_dir / "shards-copy"
    if suffix == ".h5":
        out = out_dir / "llm.h5"
        command = transcode_command() + [str(index), str(out), "--no-check", "--quiet"]
    else:   # as many shards as the source, about: its largest shard's size
        out = out_dir / ("llm-shards" + suffix)
        largest = max(p.stat().st_size for p in index.parent.glob("*.safetensors"))
        name = "model.safetensors" if suffix == ".safetensors" else "pytorch_model.bin.index.json"
        command = in_new_folder(out, transcode_command() + [
            str(index), str(out / name), "--shard-size", str(largest), "--no-check", "--quiet"])
    return with_mapped({
        CP: (["cp", "-r", str(index.parent), str(copy)], copy),
        FLOOR: (floor_command(index.parent, copy), copy),
        TRANSCODE: (command, out),
    }, mapped)


def bulk_tools(tree: Path, out_dir: Path, jobs: int, mapped: bool = False) -> Tools:
    copy, converted = out_dir / "tree-copy", out_dir / "tree-h5"
    return with_mapped({
        CP: (["cp", "-r", str(tree), str(copy)], copy),
        FLOOR: (floor_command(tree, copy), copy),
        TRANSCODE: (transcode_command() + ["bulk", str(tree), str(converted), "--to", "h5",
                                           "--jobs", str(jobs), "--quiet", "--no-check"], converted),
    }, mapped)


def make_tree(folder: Path, pt: Path, st: Path, files: int) -> Path:
    """``files`` checkpoints in two folders, half .pt and half .safetensors (copies)."""
    for i in range(files):
        src = pt if i % 2 else st
        dst = folder / f"part{i % 2}" / f"model{i:02d}{src.suffix}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    return folder


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def measure(command: list[str], output: Path) -> Run:
    """One run in a fresh process: wall time and peak RSS (of that process, or of its largest
    child for `bulk`: Linux reports the maximum over a process and the children it waited for)."""
    _remove(output)
    os.sync()
    with tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0 or not output.exists():
            err.seek(0)
            raise SystemExit(f"bench: {' '.join(command)} failed ({proc.returncode}):\n"
                             f"{err.read().decode(errors='replace')}")
    _remove(output)
    return Run(wall, usage.ru_maxrss / 1024,  # ru_maxrss is in KiB on Linux
               usage.ru_utime + usage.ru_stime)


def run_cases(cases: list[Case], runs: int, log) -> None:
    for round_ in range(runs):
        for case in cases:
            for tool, (command, output) in case.tools.items():
                run = measure(command, output)
                case.runs.setdefault(tool, []).append(run)
                log(f"  round {round_ + 1}/{runs}  {case.name:34s} {tool:18s} "
                    f"{run.wall:7.2f} s {run.rss_mib:8.1f} MiB {run.cpu:7.2f} s CPU")


def table(cases: list[Case]) -> str:
    rows = ["| case | tool | best | median (min-max) | CPU, median | peak RSS | best / cp "
            "| median / cp | best / floor | best / plain | target (on bests) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for case in cases:
        for tool, runs in case.runs.items():
            walls = [r.wall for r in runs]
            best, median, rss = min(walls), statistics.median(walls), max(r.rss_mib for r in runs)
            to_cp = best / case.best(CP)
            to_plain = best / case.best(PLAIN) if case.best(PLAIN) else None
            plain_cell = "" if to_plain is None else f"{to_plain:.2f}"
            to_floor = best / case.best(FLOOR) if case.best(FLOOR) else None
            floor_cell = "" if to_floor is None else f"{to_floor:.2f}"
            cpu = statistics.median(r.cpu for r in runs)
            rows.append(f"| {case.name} | {tool} | {best:.2f} s | {median:.2f} s ({min(walls):.2f}-"
                        f"{max(walls):.2f}) | {cpu:.2f} s | {rss:.0f} MiB | {to_cp:.2f} | "
                        f"{median / case.median(CP):.2f} | {floor_cell} | {plain_cell} | "
                        f"{verdict(case, tool, to_cp, to_plain, rss, to_floor)} |")
    return "\n".join(rows)


def check_verdict(case: Case, rss: float) -> str:
    """The check's cost against its target (bests of the runs of this invocation)."""
    check, plain, startup = case.best(CHECK), case.best(TRANSCODE), case.best(STARTUP)
    limit = startup + (1 + CHECK_TIMES_CONVERSION) * plain
    rss_limit = TARGET_RSS_MIB + case.largest_mib
    cpu = {tool: statistics.median(r.cpu for r in case.runs[tool]) for tool in (CHECK, TRANSCODE, STARTUP)}
    cpu_limit = cpu[STARTUP] + (1 + CHECK_TIMES_CONVERSION) * cpu[TRANSCODE]
    return (f"wall: check adds {check - plain:.2f} s = start-up {startup:.2f} s + "
            f"{(check - plain - startup) / plain:.2f} x no-check; <= start-up + "
            f"{CHECK_TIMES_CONVERSION:g} x: {'met' if check <= limit else 'MISSED'}; CPU (medians): "
            f"adds {cpu[CHECK] - cpu[TRANSCODE]:.2f} s = start-up {cpu[STARTUP]:.2f} s + "
            f"{(cpu[CHECK] - cpu[TRANSCODE] - cpu[STARTUP]) / cpu[TRANSCODE]:.2f} x no-check: "
            f"{'met' if cpu[CHECK] <= cpu_limit else 'MISSED'}; RSS <= {TARGET_RSS_MIB} + "
            f"{case.largest_mib:.0f} MiB: {'met' if rss <= rss_limit else 'MISSED'}")


def verdict(case: Case, tool: str, to_cp: float, to_plain: float | None, rss: float,
            to_floor: float | None = None) -> str:
    if tool == CHECK:
        return check_verdict(case, rss)
    if tool not in (TRANSCODE, MAPPED):
        return ""
    if case.kind == "small":
        ok = to_plain is not None and to_plain <= TARGET_PLAIN_RATIO
        return f"time <= {TARGET_PLAIN_RATIO} x plain: {'met' if ok else 'MISSED'}"
    cells = []
    if case.kind in TARGET_CP:
        limit = TARGET_CP[case.kind]
        baseline = "cp -r" if case.kind in ("bulk", "llm-st", "llm-pt") else "cp"
        cells.append(f"time <= {limit} x {baseline}: {'met' if to_cp <= limit else 'MISSED'}")
    if case.kind in TARGET_FLOOR and to_floor is not None:
        limit = TARGET_FLOOR[case.kind]
        cells.append(f"time <= {limit} x floor: {'met' if to_floor <= limit else 'MISSED'}")
    cells.append(f"RSS <= {TARGET_RSS_MIB} MiB: {'met' if rss <= TARGET_RSS_MIB else 'MISSED'}")
    return "; ".join(cells)


def make_cases(kinds: list[str], work: Path, args: argparse.Namespace) -> list[Case]:
    """Generate the checkpoints of the chosen cases; the cases, in the order of CASES."""
    out = work / "out"
    out.mkdir(parents=True, exist_ok=True)
    mib = lambda p: p.stat().st_size / 2**20  # noqa: E731
    cases = []
    labels = {"linear": "Linear-heavy", "conv1d": "Conv1d-heavy", "wide": "24 x Linear(4096)"}
    for kind in ("linear", "conv1d", "wide"):
        if kind in kinds:
            size = args.wide_mib if kind == "wide" else args.size_mib
            pt, st = generate(work / kind, size, kind)
            largest = largest_layer_mib(st)
            suffixes = (".h5",) if kind == "wide" else (".h5", ".safetensors")
            for src in (pt, st):
                for suffix in suffixes:
                    tools = one_file_tools(src, out, False, suffix, args.mapped_row)
                    if not args.no_check_column and suffix == ".h5":
                        tools.update(check_tools(src, out))
                    cases.append(Case(f"{labels[kind]} {mib(src):.0f} MiB {src.suffix} -> {suffix}",
                                      kind, tools, largest_mib=largest))
    if "small" in kinds:
        small_pt, _ = generate(work / "small", args.small_mib)
        cases.append(Case(f"{mib(small_pt) * 1024:.0f} KiB .pt -> .h5", "small",
                          one_file_tools(small_pt, out)))
    if "bulk" in kinds:
        part_pt, part_st = generate(work / "part", args.size_mib / args.bulk_files)
        tree = make_tree(work / "tree", part_pt, part_st, args.bulk_files)
        tree_mib = sum(mib(p) for p in tree.rglob("*") if p.is_file())
        cases.append(Case(f"bulk: {args.bulk_files} files, {tree_mib:.0f} MiB -> .h5, --jobs "
                          f"{args.jobs}", "bulk",
                          bulk_tools(tree, out, args.jobs, args.mapped_row)))
    if "llm" in kinds:
        index, _ = generate(work / "llm", args.llm_mib or 4 * args.size_mib, "llm")
        shards_mib = sum(mib(p) for p in index.parent.iterdir())
        cases.append(Case(f"LLM bf16, 3 shards, {shards_mib:.0f} MiB -> .h5", "llm",
                          sharded_tools(index, out, ".h5", args.mapped_row)))
        cases.append(Case(f"LLM bf16, 3 shards, {shards_mib:.0f} MiB -> sharded .safetensors",
                          "llm-st", sharded_tools(index, out, ".safetensors", args.mapped_row)))
        cases.append(Case(f"LLM bf16, 3 shards, {shards_mib:.0f} MiB -> sharded .pt",
                          "llm-pt", sharded_tools(index, out, ".pt", args.mapped_row)))
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=float, default=1024, help="large checkpoint size")
    parser.add_argument("--small-mib", type=float, default=0.1, help="small checkpoint size")
    parser.add_argument("--llm-mib", type=float, help="LLM checkpoint size (4 x --size-mib)")
    parser.add_argument("--cases", default=",".join(CASES),
                        help=f"comma-separated, of {', '.join(CASES)} (default: all)")
    parser.add_argument("--runs", type=int, default=3, help="runs per tool and case")
    parser.add_argument("--bulk-files", type=int, default=8,
                        help="files in the `transcode bulk` tree (together about --size-mib)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="`transcode bulk --jobs` (default: the number of cores)")
    parser.add_argument("--wide-mib", type=float, default=1536,
                        help="the wide case: Linear(4096, 4096) layers of 64 MiB (1536: 24)")
    parser.add_argument("--mapped-row", action="store_true",
                        help="also time each conversion writing through shared mappings "
                             "(TRANSCODER_NO_MMAP_WRITE=0), not with pwrite (the default)")
    parser.add_argument("--no-check-column", action="store_true",
                        help="time the conversions without their default check only")
    parser.add_argument("--quick", action="store_true",
                        help="64 MiB (LLM 256 MiB) and 2 runs (smoke run)")
    parser.add_argument("--workdir", type=Path, help="where checkpoints and outputs go "
                                                     "(default: a temporary folder, removed after)")
    args = parser.parse_args(argv)
    if args.quick:
        args.size_mib, args.runs = min(args.size_mib, 64), min(args.runs, 2)
        args.wide_mib = min(args.wide_mib, 128)
    kinds = [k for k in args.cases.split(",") if k]
    unknown = sorted(set(kinds) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    kernel = check_kernel()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="transcoder-bench-"))
    try:
        compile_bytecode()
        log(f"generating checkpoints in {work} ...")
        cases = make_cases(kinds, work, args)
        run_cases(cases, args.runs, log)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"transcoder bench: {args.runs} runs per cell, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}, kernel: {kernel}; "
          f"command: python bench/bench.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print()
    print(table(cases))
    return 0


if __name__ == "__main__":
    sys.exit(main())
