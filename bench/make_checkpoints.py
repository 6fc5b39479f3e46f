"""Synthetic checkpoints for the benchmark: Conv1d, Conv2d, Linear, BatchNorm and Embedding
tensors (float32, seeded), named so that transcoder infers every layer kind without --rules.

``python bench/make_checkpoints.py OUT_DIR --size-mib 1024`` writes ``OUT_DIR/model.pt``
(``torch.save``) and ``OUT_DIR/model.safetensors`` holding the same tensors.
"""
from __future__ import annotations

import argparse
import math
from collections import OrderedDict
from pathlib import Path

import numpy as np


def block_bytes(width: int) -> int:
    """float32 bytes of one block at ``width`` (conv2d, conv1d, two linears; BN is negligible)."""
    w = width
    return 4 * ((w // 8) ** 2 * 9 + (w // 4) ** 2 * 5 + 2 * (2 * w * w))


def layout(size_mib: float) -> tuple[int, int]:
    """(width, blocks) so that the checkpoint is at least ``size_mib`` (less than one block more);
    at 1 GiB the largest tensor is a 64 MiB Embedding (32768x512), the Linears 32 MiB."""
    target = size_mib * 2**20
    width = 2048
    while width > 32 and block_bytes(width) > target / 8:
        width //= 2
    embed = 16 * width * (width // 4) * 4
    return width, max(1, math.ceil((target - embed) / block_bytes(width)))


def tensors(size_mib: float, seed: int = 0) -> "OrderedDict[str, np.ndarray]":
    width, blocks = layout(size_mib)
    rng = np.random.default_rng(seed)

    def r(*shape):
        return rng.standard_normal(shape, dtype=np.float32)

    sd: OrderedDict[str, np.ndarray] = OrderedDict()
    sd["embed.weight"] = r(16 * width, width // 4)
    c2, c1 = width // 8, width // 4
    for i in range(blocks):
        p = f"blocks.{i}."
        sd[p + "conv2d.weight"], sd[p + "conv2d.bias"] = r(c2, c2, 3, 3), r(c2)
        for name, c in (("bn2d", c2), ("bn1d", c1)):
            if name == "bn1d":
                sd[p + "conv1d.weight"], sd[p + "conv1d.bias"] = r(c1, c1, 5), r(c1)
            sd[p + name + ".weight"], sd[p + name + ".bias"] = r(c), r(c)
            sd[p + name + ".running_mean"], sd[p + name + ".running_var"] = r(c), np.abs(r(c))
            sd[p + name + ".num_batches_tracked"] = np.array(i, dtype=np.int64)
        sd[p + "fc1.weight"], sd[p + "fc1.bias"] = r(2 * width, width), r(2 * width)
        sd[p + "fc2.weight"], sd[p + "fc2.bias"] = r(width, 2 * width), r(width)
    return sd


def write(out_dir: Path, size_mib: float, seed: int = 0) -> tuple[Path, Path]:
    import torch
    from safetensors.numpy import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    sd = tensors(size_mib, seed)
    pt, st = out_dir / "model.pt", out_dir / "model.safetensors"
    torch.save(OrderedDict((k, torch.from_numpy(v)) for k, v in sd.items()), pt)
    save_file(dict(sd), str(st))
    return pt, st


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--size-mib", type=float, default=1024)
    args = parser.parse_args()
    for path in write(args.out_dir, args.size_mib):
        print(f"{path}: {path.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
