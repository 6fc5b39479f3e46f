"""The baseline a user would write by hand: load with torch, write every tensor with h5py.

``python bench/plain_torch_h5.py SRC DST.h5`` (SRC: .pt via ``torch.load``, .safetensors via
``safetensors.torch``). It neither permutes nor groups by layer, so it does less than
transcoder does; it is here to price what torch's import and a whole-file load cost.
"""
import sys

import h5py
import torch


def main(src: str, dst: str) -> None:
    if src.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(src)
    else:
        state = torch.load(src, map_location="cpu", weights_only=True)
    with h5py.File(dst, "w") as f:
        for name, tensor in state.items():
            f.create_dataset(name, data=tensor.numpy())


if __name__ == "__main__":
    main(*sys.argv[1:3])
