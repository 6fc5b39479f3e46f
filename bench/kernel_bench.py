"""Throughput of the permutation kernel, one thread, per axis order the rule table uses.

    python bench/kernel_bench.py            # best of 15 per case
    python bench/kernel_bench.py --numpy    # the numpy fallback instead of the C kernel

Four figures per case, all GiB/s of tensor bytes (each read once and written once):
  - ``whole, hot``: ``_transpose.permute`` of one tensor into a destination written before (no
    page faults), again and again, so both stay in the CPU caches when they fit: the kernel alone;
  - ``pieces, hot``: :func:`transcoder.rules.transpose.permuted_pieces` of that tensor through a
    1 MiB scratch buffer, as the .h5 and .safetensors writers use it (the scratch stays in the
    cache);
  - ``pieces, cold``: the same over copies of the tensor that together are far larger than the
    last-level cache, so the source comes from memory, as from the page cache in a conversion;
  - ``ordered, cold``: :func:`transcoder.rules.transpose.permuted_blocks` (consecutive blocks,
    as the .pt writer needs them), cold.
Not a timed test: figures depend on the machine and on what else runs on it.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import ml_dtypes
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from transcoder.rules import transpose  # noqa: E402

import kernel_build  # noqa: E402

SCRATCH = 1 << 20
COLD_BYTES = 256 << 20
#: (name, PyTorch shape, axes): forward (PyTorch -> Keras) and back
CASES = [
    ("Linear 4096x2048", (4096, 2048), (1, 0)),
    ("Conv1d 512x512x5", (512, 512, 5), (2, 1, 0)),
    ("Conv1d 512x512x5 back", (5, 512, 512), (2, 1, 0)),
    ("Conv2d 256x256x3x3", (256, 256, 3, 3), (2, 3, 1, 0)),
    ("Conv2d 256x256x3x3 back", (3, 3, 256, 256), (3, 2, 0, 1)),
    ("Conv3d 128x128x3x3x3", (128, 128, 3, 3, 3), (2, 3, 4, 1, 0)),
    ("Conv3d 128x128x3x3x3 back", (3, 3, 3, 128, 128), (4, 3, 0, 1, 2)),
]
DTYPES = [("float32", np.float32), ("float16", np.float16), ("bfloat16", ml_dtypes.bfloat16)]


def best(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def whole(x: np.ndarray, axes: tuple[int, ...]):
    view = x.transpose(axes)
    shape, strides = transpose.simplify(view.shape, view.strides)
    out = np.zeros(x.nbytes, np.uint8)
    src = transpose._bytes(x)
    if transpose._transpose is None:
        return lambda: transpose._copy(x, 0, (shape, strides), out)
    return lambda: transpose._transpose.permute(src, 0, out, shape, strides, x.itemsize)


def blocks(xs: list[np.ndarray], axes: tuple[int, ...], ordered: bool = False):
    scratch = np.zeros(SCRATCH, np.uint8)
    pieces = getattr(transpose, "permuted_pieces", None)
    if pieces is None or ordered:  # (the first version of the kernel had only ordered blocks)
        pieces = lambda x, axes, scratch: transpose.permuted_blocks(x, axes, scratch)  # noqa: E731

    def run():
        for x in xs:
            for _ in pieces(x, axes, scratch):
                pass
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numpy", action="store_true", help="time the numpy fallback")
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    ok, build = kernel_build.state()
    if not ok:
        sys.exit(build)
    if args.numpy:
        transpose._transpose = None
        build = "numpy fallback"
    print(f"kernel: {build}; GiB/s, best of {args.repeat}")
    print("| case | dtype | MiB | whole, hot | pieces, hot | pieces, cold | ordered, cold |")
    print("|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for name, shape, axes in CASES:
        for dname, dtype in DTYPES:
            x = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
            check = np.ascontiguousarray(x.transpose(axes))
            assert transpose.permute_array(x, axes).tobytes() == check.tobytes(), (name, dname)
            gib = x.nbytes / 2**30
            copies = [x.copy() for _ in range(max(1, COLD_BYTES // x.nbytes))]
            rates = [gib / best(whole(x, axes), args.repeat),
                     gib / best(blocks([x], axes), args.repeat),
                     gib * len(copies) / best(blocks(copies, axes), max(3, args.repeat // 3)),
                     gib * len(copies) / best(blocks(copies, axes, True), max(3, args.repeat // 3))]
            print(f"| {name} | {dname} | {x.nbytes / 2**20:.1f} | "
                  + " | ".join(f"{r:.2f}" for r in rates) + " |", flush=True)
            del copies


if __name__ == "__main__":
    main()
