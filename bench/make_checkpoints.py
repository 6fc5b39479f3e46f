"""Synthetic checkpoints for the benchmark, seeded, named so that transcoder infers every layer
kind without --rules.

``python bench/make_checkpoints.py OUT_DIR --size-mib 1024 [--mix linear|conv1d|llm]``:
  - ``linear`` (the default): Conv1d, Conv2d, Linear, BatchNorm and Embedding tensors in
    float32, about 80 % of the bytes permuted on the way to .h5, most of them Linear;
  - ``conv1d``: the proportions of audio models: 66 % of the bytes Conv1d(512, 512, k=5)
    weights, 26 % Linear (2048x512 and 512x2048), 7 % Conv2d(256, 256, 3x3), plus biases;
both write ``OUT_DIR/model.pt`` (``torch.save``) and ``OUT_DIR/model.safetensors`` holding the
same tensors;
  - ``llm``: a bfloat16 decoder in 3 safetensors shards with ``model.safetensors.index.json``
    (as the Hugging Face hub has them): one embedding of 1/8 of the bytes, Linear layers
    (q, k, v, o, gate, up, down projections) for the rest.
"""
from __future__ import annotations

import argparse
import json
import math
from collections import OrderedDict
from pathlib import Path

import numpy as np

MIB = 2**20


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


def conv1d_tensors(size_mib: float, seed: int = 0) -> "OrderedDict[str, np.ndarray]":
    """66 % Conv1d(512, 512, 5), 26 % Linear, 7 % Conv2d(256, 256, 3x3) weights, with biases."""
    rng = np.random.default_rng(seed)
    counts = {"conv1d": 0.66 * size_mib / 5, "fc": 0.26 * size_mib / 4, "conv2d": 0.07 * size_mib / 2.25}
    counts = {k: max(1, round(v)) for k, v in counts.items()}
    shapes = {"conv1d": lambda i: (512, 512, 5), "conv2d": lambda i: (256, 256, 3, 3),
              "fc": lambda i: (2048, 512) if i % 2 == 0 else (512, 2048)}
    sd: OrderedDict[str, np.ndarray] = OrderedDict()
    for kind in ("conv1d", "fc", "conv2d"):
        for i in range(counts[kind]):
            shape = shapes[kind](i)
            sd[f"encoder.{kind}{i}.weight"] = rng.standard_normal(shape, dtype=np.float32)
            sd[f"encoder.{kind}{i}.bias"] = rng.standard_normal(shape[0], dtype=np.float32)
    return sd


def wide_tensors(size_mib: float, seed: int = 0) -> "OrderedDict[str, np.ndarray]":
    """Linear(4096, 4096) layers with normal(0, 1) weights and biases, 64 MiB each: 24 of them
    at 1.5 GiB (the issue's wide model)."""
    rng = np.random.default_rng(seed)
    sd: OrderedDict[str, np.ndarray] = OrderedDict()
    for i in range(max(1, round(size_mib / 64))):
        sd[f"layers.{i}.fc.weight"] = rng.standard_normal((4096, 4096), dtype=np.float32)
        sd[f"layers.{i}.fc.bias"] = rng.standard_normal(4096, dtype=np.float32)
    return sd


MIXES = {"linear": tensors, "conv1d": conv1d_tensors, "wide": wide_tensors}


def write(out_dir: Path, size_mib: float, seed: int = 0, mix: str = "linear") -> tuple[Path, Path]:
    import torch
    from safetensors.numpy import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    sd = MIXES[mix](size_mib, seed)
    pt, st = out_dir / "model.pt", out_dir / "model.safetensors"
    torch.save(OrderedDict((k, torch.from_numpy(v)) for k, v in sd.items()), pt)
    save_file(dict(sd), str(st))
    return pt, st


def llm_layout(size_mib: float) -> tuple[int, int, int, int]:
    """(hidden, intermediate, vocab, layers): the embedding 1/8 of the bytes, at least 4 layers
    of Linears for the rest; hidden 4096 (intermediate 11008, as Llama-7B) from about 4 GiB."""
    total = size_mib * MIB
    hidden = 4096
    while hidden > 64 and 4 * 2 * hidden * hidden * (4 + 3 * 2.6875) > total * 7 / 8:
        hidden //= 2
    inter = int(hidden * 2.6875) // 64 * 64
    per_layer = 2 * hidden * (4 * hidden + 3 * inter)
    vocab = max(64, int(total / 8 / (2 * hidden)) // 64 * 64)
    return hidden, inter, vocab, max(1, round(total * 7 / 8 / per_layer))


def llm_shapes(size_mib: float) -> list[tuple[str, tuple[int, int]]]:
    hidden, inter, vocab, layers = llm_layout(size_mib)
    names = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        names += [(p + f"self_attn.{x}_proj.weight", (hidden, hidden)) for x in "qkvo"]
        names += [(p + "mlp.gate_proj.weight", (inter, hidden)), (p + "mlp.up_proj.weight", (inter, hidden)),
                  (p + "mlp.down_proj.weight", (hidden, inter))]
    return names


def write_llm(out_dir: Path, size_mib: float, seed: int = 0, shards: int = 3) -> Path:
    """The shards and their index, one shard in memory at a time; returns the index's path."""
    import ml_dtypes
    from safetensors.numpy import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shapes = llm_shapes(size_mib)
    total = sum(math.prod(shape) * 2 for _, shape in shapes)
    weight_map, done, shard = {}, 0, 0
    pending: dict[str, np.ndarray] = {}
    for i, (name, shape) in enumerate(shapes):
        pending[name] = rng.standard_normal(shape, dtype=np.float32).astype(ml_dtypes.bfloat16)
        done += pending[name].nbytes
        if done >= total * (shard + 1) / shards or i == len(shapes) - 1:
            file = f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"
            save_file(pending, str(out_dir / file), metadata={"format": "pt"})
            weight_map.update((n, file) for n in pending)
            pending, shard = {}, shard + 1
    index = out_dir / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--size-mib", type=float, default=1024)
    parser.add_argument("--mix", choices=[*MIXES, "llm"], default="linear")
    args = parser.parse_args()
    if args.mix == "llm":
        paths = sorted(write_llm(args.out_dir, args.size_mib).parent.iterdir())
    else:
        paths = list(write(args.out_dir, args.size_mib, mix=args.mix))
    for path in paths:
        print(f"{path}: {path.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
