"""`transcode SRC DST --force` over an existing DST: the swap against a plain rename, and `cp`.

    python bench/replace_bench.py [--size-mib 1024] [--runs 5] [--workdir DIR]

A rename over an existing file makes ext4 write the new file's delayed blocks out before the
rename returns (``auto_da_alloc``); ``transcoder.pipeline`` swaps the two names instead
(``renameat2(RENAME_EXCHANGE)``) and then removes the old file. Each run, in turn, with
``DST`` written once beforehand (not timed) and ``sync`` before the timed command:

- ``fresh``: ``transcode SRC DST --no-check`` with no DST (what bench.py times);
- ``--force, swap``: the same over the existing DST, as shipped;
- ``--force, rename``: the same with the swap switched off in that process (``os.replace``,
  the code before the swap);
- ``cp over``: ``cp SRC DST2`` over an existing DST2 of the same size.

SRC is bench.py's Linear-heavy ``.pt`` (made by make_checkpoints.py). Prints bests and medians;
compare ratios from one invocation, not times across invocations.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench  # noqa: E402  (generate, compile_bytecode, transcode_command)

NO_SWAP = ("import sys; from transcoder import pipeline; "
           "pipeline._exchange_file = lambda tmp, dst: False; "
           "from transcoder.cli import main; sys.exit(main(sys.argv[1:]))")


def timed(command: list[str]) -> float:
    os.sync()
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def tools(src: Path, out: Path) -> dict[str, tuple[list[str], Path | None]]:
    """name -> (command, the file to write beforehand or None)"""
    dst, copy = out / "model.h5", out / "copy.pt"
    transcode = bench.transcode_command() + [str(src), str(dst), "--no-check"]
    return {"fresh": (transcode, None),
            "--force, swap": (transcode + ["--force"], dst),
            "--force, rename": ([sys.executable, "-c", NO_SWAP] + transcode[-3:] + ["--force"],
                                dst),
            "cp over": (["cp", str(src), str(copy)], copy)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=float, default=1024)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="replace-bench-"))
    src = work / "linear" / "model.pt"
    if not src.exists():
        (work / "linear").mkdir(parents=True, exist_ok=True)
        bench.generate(work / "linear", args.size_mib)
    out = work / "replace-out"
    out.mkdir(exist_ok=True)
    bench.compile_bytecode()
    table = tools(src, out)
    seen: dict[str, list[float]] = {name: [] for name in table}
    for round_ in range(args.runs):
        for name, (command, existing) in table.items():
            for path in out.iterdir():
                path.unlink()
            if existing is not None:   # the output of an earlier run, on disk
                subprocess.run(table["fresh"][0] if existing.suffix == ".h5"
                               else ["cp", str(src), str(existing)], check=True,
                               stdout=subprocess.DEVNULL)
            seen[name].append(timed(command))
            print(f"  round {round_ + 1}/{args.runs}  {name:16s} {seen[name][-1]:.2f} s",
                  flush=True)
    shutil.rmtree(out)
    base = min(seen["fresh"])
    print(f"\n{src.stat().st_size / 2**20:.0f} MiB Linear-heavy .pt -> .h5, {args.runs} runs\n")
    print("| run | best | median | best / fresh |\n|---|---|---|---|")
    for name, walls in seen.items():
        print(f"| {name} | {min(walls):.2f} s | {statistics.median(walls):.2f} s | "
              f"{min(walls) / base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
