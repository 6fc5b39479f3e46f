"""Conversion streams: peak memory grows with the largest tensor, not with the checkpoint.

Each conversion runs in a fresh Python that reports its own ``VmHWM`` (the peak resident set
of its address space; ``ru_maxrss`` would count the test process it was forked from).
"""
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

pytestmark = [pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc"),
              pytest.mark.slow]   # each converts about 200 MiB in a fresh process

TENSOR_MIB = 8
LAYERS = 24          # 24 x 8 MiB Linear weights, all permuted on the way to .h5

CHILD = """
import os, sys
if sys.argv[1] == "no-copy-file-range":
    del os.copy_file_range
from transcoder.cli import main
code = main(sys.argv[2:])
peak = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
print(code, int(peak) // 1024)
"""


def _peak_mib(src: Path, dst: Path, copy: str = "copy-file-range") -> int:
    out = subprocess.run([sys.executable, "-c", CHILD, copy, str(src), str(dst), "--no-check"],
                         capture_output=True, text=True, check=True)
    code, peak = out.stdout.split()[-2:]
    assert code == "0", out.stderr
    return int(peak)


def _linears(layers: int, rows: int, cols: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    tensors = {}
    for i in range(layers):
        tensors[f"l{i}.weight"] = rng.standard_normal((rows, cols), dtype=np.float32)
        tensors[f"l{i}.bias"] = rng.standard_normal(rows, dtype=np.float32)
    return tensors


def test_peak_memory_follows_the_largest_tensor_not_the_file(tmp_path):
    from safetensors.numpy import save_file

    rows, cols = 2048, TENSOR_MIB * 2**20 // (4 * 2048)
    big = _linears(LAYERS, rows, cols)
    save_file(big, str(tmp_path / "big.safetensors"))
    save_file(_linears(1, 8, 8), str(tmp_path / "tiny.safetensors"))
    size_mib = (tmp_path / "big.safetensors").stat().st_size / 2**20

    base = _peak_mib(tmp_path / "tiny.safetensors", tmp_path / "tiny.h5")
    peak = _peak_mib(tmp_path / "big.safetensors", tmp_path / "big.h5")
    # two tensors in flight (their mapped source), two 1 MiB scratch buffers, and slack
    assert peak - base <= 4 * TENSOR_MIB + 8, (peak, base, size_mib)
    assert size_mib >= LAYERS * TENSOR_MIB

    with h5py.File(tmp_path / "big.h5") as f:
        for i in (0, LAYERS - 1):
            kernel = f[f"l{i}"][f"l{i}"]["kernel"][()]
            assert kernel.tobytes() == np.ascontiguousarray(big[f"l{i}.weight"].T).tobytes()


@pytest.mark.parametrize("copy", ["copy-file-range", "no-copy-file-range"])
def test_a_huge_tensor_copied_unchanged_does_not_stay_in_memory(tmp_path, copy):
    """A 192 MiB embedding goes to the .h5 in shares, by copy_file_range from the source file
    (its map is never touched) or, where that is missing, written from its map whose pages are
    given back share by share: the peak follows the permuted 16 MiB Linear, not the embedding."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    tensors = {"embed.weight": rng.standard_normal((49152, 1024), dtype=np.float32),
               "fc.weight": rng.standard_normal((2048, 2048), dtype=np.float32)}
    save_file(tensors, str(tmp_path / "big.safetensors"))
    save_file(_linears(1, 8, 8), str(tmp_path / "tiny.safetensors"))

    base = _peak_mib(tmp_path / "tiny.safetensors", tmp_path / "tiny.h5", copy)
    peak = _peak_mib(tmp_path / "big.safetensors", tmp_path / "big.h5", copy)
    assert peak - base <= 2 * 16 + 2 * 8 + 8, (peak, base)
    with h5py.File(tmp_path / "big.h5") as f:
        embeddings = f["embed"]["embed"]["embeddings"][()]
        kernel = f["fc"]["fc"]["kernel"][()]
    assert embeddings.tobytes() == tensors["embed.weight"].tobytes()
    assert kernel.tobytes() == np.ascontiguousarray(tensors["fc.weight"].T).tobytes()


def test_a_huge_tensor_written_unchanged_to_pt_does_not_stay_in_memory(tmp_path):
    """The .pt writer checksums and writes an unchanged 192 MiB embedding from its map 8 MiB at
    a time, giving the pages back: the peak does not grow with the tensor."""
    from safetensors.numpy import save_file

    from transcoder.pipeline import read

    rng = np.random.default_rng(1)
    embed = rng.standard_normal((49152, 1024), dtype=np.float32)
    save_file({"embed.weight": embed}, str(tmp_path / "big.safetensors"))
    save_file(_linears(1, 8, 8), str(tmp_path / "tiny.safetensors"))
    base = _peak_mib(tmp_path / "tiny.safetensors", tmp_path / "tiny.pt")
    peak = _peak_mib(tmp_path / "big.safetensors", tmp_path / "big.pt")
    assert peak - base <= 2 * 8 + 16, (peak, base)
    with read(tmp_path / "big.pt") as ckpt:
        assert ckpt.tensors["embed.weight"].load().tobytes() == embed.tobytes()
