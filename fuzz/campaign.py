"""The long fuzz campaign: structurally mutated inputs of every format we read, each checked
against the contract of :mod:`contract` (exit 0 or 2, one line, nothing left behind, output
reads back, bounded time and memory).

    python fuzz/campaign.py --inputs 10000                 # every format, 2 workers
    python fuzz/campaign.py --inputs 2000 --formats keras,rules --jobs 1 --seed 7
    python fuzz/campaign.py --replay fuzz/out/breaks/keras-1234   # rerun one, with traceback

Inputs are numbered per format and derived from ``(seed, format, number)`` alone, so any
input can be rebuilt. Workers run chunks of inputs in-process (``transcoder.cli.main``), each
under an interval timer and a watchdog that ends the worker if a C library hangs past three
times the time bound; the parent then records that input as a break and goes on after it.
Every break is saved under ``OUT/breaks/<format>-<number>/`` (the files, the arguments, the
problem); ``OUT/summary.json`` and the printed table give inputs, exit codes and breaks per
format.
"""
from __future__ import annotations

import argparse
import faulthandler
import functools
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

CHUNK = 1000
ADDRESS_SPACE = 6 << 30      # a worker's limit: a bomb that got through fails, not the machine
CANARY_EVERY = 250
MUTATOR_SECONDS = 300         # the fuzzer's own time to make an input (not transcoder's)
MUTATING = "mutating"


@functools.lru_cache(maxsize=1)
def _seed_cases() -> dict:
    from seeds import seeds

    return seeds()


def case_for(seed: int, fmt: str, number: int):
    """Input ``number`` of ``fmt``: the same for the same seed, wherever it is rebuilt."""
    from mutators import mutate

    rng = random.Random(f"{seed}-{fmt}-{number}")
    return mutate(rng, fmt, rng.choice(_seed_cases()[fmt]))


# ---------------------------------------------------------------------------------- worker

def worker(fmt: str, start: int, count: int, seed: int, out: Path, tag: str) -> None:
    """Inputs ``start .. start+count-1`` of ``fmt``; one JSON line per input in results."""
    from contract import SECONDS, check, peak_mib

    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
    marker, results = out / f"current-{tag}", out / f"results-{tag}.jsonl"
    canary = _seed_cases()[fmt][0]
    with tempfile.TemporaryDirectory() as tmp, open(results, "a") as log:
        folder = Path(tmp)
        check(canary, folder)
        baseline = peak_mib()
        for number in range(start, start + count):
            marker.write_text(f"{fmt} {number} {MUTATING}")
            faulthandler.dump_traceback_later(MUTATOR_SECONDS, exit=True)
            case = case_for(seed, fmt, number)
            marker.write_text(f"{fmt} {number} checking")
            faulthandler.dump_traceback_later(3 * SECONDS, exit=True)
            outcome = check(case, folder, baseline)
            if outcome.problem:
                save_break(out, fmt, number, case, outcome.problem)
            if number % CANARY_EVERY == 0 and _poisoned(check(canary, folder)):
                save_break(out, fmt, number, case, "the valid seed no longer converts right "
                                                   "after this input: the process was poisoned")
            log.write(json.dumps({"format": fmt, "number": number, "code": outcome.code,
                                  "problem": outcome.problem, "seconds": round(outcome.seconds, 4),
                                  "peak_mib": outcome.peak_mib}) + "\n")
            log.flush()
        faulthandler.cancel_dump_traceback_later()
    marker.unlink(missing_ok=True)


def _poisoned(outcome) -> bool:
    return outcome.code != 0 or outcome.problem is not None


def save_break(out: Path, fmt: str, number: int, case, problem: str) -> None:
    folder = out / "breaks" / f"{fmt}-{number}"
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in case.files.items():
        (folder / name).write_bytes(data)
    (folder / "case.json").write_text(json.dumps({"src": case.src, "dst": case.dst,
                                                  "extra": list(case.extra), "problem": problem}))


# ---------------------------------------------------------------------------------- parent

def run_chunk(fmt: str, start: int, count: int, args, tag: str) -> subprocess.Popen:
    command = [sys.executable, __file__, "--worker", fmt, str(start), str(count),
               "--seed", str(args.seed), "--out", str(args.out), "--tag", tag]
    log = open(args.out / f"worker-{tag}.log", "ab")
    return subprocess.Popen(command, stdout=log, stderr=log)


def chunks(formats: list[str], inputs: int) -> list[tuple[str, int, int]]:
    """(format, first number, count): interleaved, so every format progresses together."""
    per_format = [[(fmt, start, min(CHUNK, inputs - start)) for start in range(0, inputs, CHUNK)]
                  for fmt in formats]
    return [c for row in zip(*per_format) for c in row]


def campaign(args) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    todo, running, serial = chunks(args.formats, args.inputs), {}, 0
    started = shown = time.time()
    while todo or running:
        while todo and len(running) < args.jobs:
            fmt, start, count = todo.pop(0)
            serial += 1
            running[f"{fmt}-{start}-{serial}"] = (run_chunk(fmt, start, count, args,
                                                            f"{fmt}-{start}-{serial}"),
                                                  fmt, start, count)
        time.sleep(0.5)
        for tag, (proc, fmt, start, count) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[tag]
            if proc.returncode != 0:  # a hang or a crash: record it, go on after it
                rest = resume_after(args, tag, fmt, start, count, proc.returncode)
                todo[:0] = [rest] if rest[2] > 0 else []
        if time.time() - shown > (1 if sys.stderr.isatty() else 60):
            shown = time.time()
            print(f"{progress(args.out)} inputs in {shown - started:.0f} s", file=sys.stderr,
                  flush=True)
    report(args)


def resume_after(args, tag: str, fmt: str, start: int, count: int, returncode: int):
    """Record the input the worker died on (a break, unless it died making it) and go on."""
    marker = args.out / f"current-{tag}"
    _, number, phase = marker.read_text().split() if marker.exists() else (fmt, start, "?")
    number = int(number)
    marker.unlink(missing_ok=True)
    record = {"format": fmt, "number": number, "code": None}
    if phase == MUTATING:
        record["fuzzer_error"] = f"the mutator died making this input (exit {returncode})"
    else:
        record["problem"] = f"the worker died (exit {returncode}): a hang past the watchdog or a crash"
        save_break(args.out, fmt, number, case_for(args.seed, fmt, number), record["problem"])
    with open(args.out / f"results-{tag}.jsonl", "a") as log:
        log.write(json.dumps(record) + "\n")
    return fmt, number + 1, start + count - number - 1


def progress(out: Path) -> int:
    return sum(1 for path in out.glob("results-*.jsonl") for _ in open(path))


def results(out: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(out.glob("results-*.jsonl")) for line in open(path)]


def report(args) -> None:
    rows = {}
    for record in results(args.out):
        row = rows.setdefault(record["format"], Counter())
        row["inputs"] += 1
        row[f"exit {record['code']}"] += 1
        row["breaks"] += bool(record.get("problem"))
        row["fuzzer errors"] += bool(record.get("fuzzer_error"))
        row["seconds"] += record.get("seconds") or 0
    (args.out / "summary.json").write_text(json.dumps(rows, indent=1))
    print("| format | inputs | exit 0 | exit 2 | breaks | ms/input |\n|---|---|---|---|---|---|")
    for fmt in args.formats:
        row = rows.get(fmt, Counter())
        print(f"| {fmt} | {row['inputs']} | {row['exit 0']} | {row['exit 2']} | {row['breaks']} | "
              f"{1000 * row['seconds'] / max(row['inputs'], 1):.0f} |")
    errors = sum(row["fuzzer errors"] for row in rows.values())
    if errors:
        print(f"({errors} inputs the fuzzer itself failed to make; not counted as inputs' breaks)")


def replay(folder: Path) -> int:
    """Rerun one saved break with TRANSCODER_DEBUG=1 (tracebacks shown)."""
    from transcoder.cli import main

    case = json.loads((folder / "case.json").read_text())
    print(f"problem recorded: {case['problem']}", file=sys.stderr)
    os.environ["TRANSCODER_DEBUG"] = "1"
    with tempfile.TemporaryDirectory() as tmp:
        for path in folder.iterdir():
            if path.name != "case.json":
                (Path(tmp) / path.name).write_bytes(path.read_bytes())
        extra = [str(Path(tmp) / a) if (folder / a).exists() else a for a in case["extra"]]
        return main([str(Path(tmp) / case["src"]), str(Path(tmp) / case["dst"]), "--no-check",
                     *extra])


def main() -> None:
    from seeds import FORMATS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=10_000, help="inputs per format")
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "out")
    parser.add_argument("--replay", type=Path)
    parser.add_argument("--worker", nargs=3, metavar=("FORMAT", "START", "COUNT"))
    parser.add_argument("--tag", default="0")
    args = parser.parse_args()
    if args.replay:
        sys.exit(replay(args.replay))
    if args.worker:
        fmt, start, count = args.worker
        worker(fmt, int(start), int(count), args.seed, args.out, args.tag)
        return
    args.formats = args.formats.split(",")
    unknown = set(args.formats) - set(FORMATS)
    if unknown:
        parser.error(f"unknown formats {sorted(unknown)} (choose from {', '.join(FORMATS)})")
    campaign(args)


if __name__ == "__main__":
    main()
