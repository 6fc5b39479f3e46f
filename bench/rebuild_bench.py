"""Rebuild + check + export of a BERT-base-shaped model (110 M parameters) through ``--model``:
wall time and peak RSS of one fresh ``transcode`` process per target (``.keras``, ``.tflite``),
and of litert-torch (PyTorch -> TFLite) on the same model where it is installed.

    python bench/rebuild_bench.py [--workdir DIR] [--seq 128] [--targets keras,tflite,litert]

Each figure is one run in a fresh process (peak RSS from ``wait4``). The machine is shared:
read the figures as orders of magnitude, and the ratios between targets run in one invocation.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LITERT = """
import os, sys, torch
sys.path.insert(0, {here!r})
import litert_torch
from bert_base import bert_base
m = bert_base()
ids = torch.randint(0, 30522, (1, {seq}))
edge = litert_torch.convert(m, (ids,))
edge.export({out!r})
"""


def run(cmd: list[str], env: dict) -> tuple[float, float, int, str]:
    """(wall seconds, peak RSS MiB, exit code, last lines of output) of one process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            cwd=ROOT)
    out = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    return wall, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status), \
        " | ".join(out.strip().splitlines()[-3:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--targets", default="keras,tflite,litert")
    ap.add_argument("--no-check", action="store_true", help="pass --no-check to transcode "
                    "(the rebuild and export alone)")
    ap.add_argument("--litert-path", default="", help="a folder holding litert-torch and its "
                    "dependencies (pip install --no-deps --target DIR ...), put on PYTHONPATH "
                    "for the litert target only, so that pip never replaces torch")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="rebuild-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", "USE_TF": "0"}
    ckpt = work / "bert_base.pt"
    if not ckpt.exists():
        subprocess.run([sys.executable, "-c", f"import sys, torch; sys.path.insert(0, {str(HERE)!r}); "
                        f"from bert_base import bert_base; "
                        f"torch.save(bert_base().state_dict(), {str(ckpt)!r})"], check=True, env=env)
    print(f"| target | wall s | peak RSS MiB | exit | output |\n|---|---|---|---|---|")
    for target in args.targets.split(","):
        out = work / f"bert_base.{target if target != 'litert' else 'litert.tflite'}"
        target_env = env
        if target == "litert":
            cmd = [sys.executable, "-c", LITERT.format(here=str(HERE), seq=args.seq, out=str(out))]
            target_env = {**env, "PYTHONPATH": os.pathsep.join(
                p for p in (args.litert_path, env["PYTHONPATH"]) if p)}
        else:
            cmd = [sys.executable, "-m", "transcoder", str(ckpt), str(out), "--force",
                   "--model", f"{HERE / 'bert_base.py'}:bert_base",
                   "--input-shape", f"1,{args.seq}", "--input-dtype", "int64",
                   *(["--no-check"] if args.no_check else [])]
        wall, rss, code, tail = run(cmd, target_env)
        print(f"| {target} | {wall:.1f} | {rss:.0f} | {code} | {tail[:160]} |", flush=True)


if __name__ == "__main__":
    main()
