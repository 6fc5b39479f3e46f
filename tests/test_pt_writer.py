"""The .pt writer laid out first and filled by rawfill's threads (issue 21): zip CRCs from pieces
written in shares on several threads, joined with crc32_combine; the archive byte for byte what
the streaming writer (one record after another) makes; torch.load and zipfile accept it."""
from __future__ import annotations

import collections
import hashlib
import io
import sys
import threading
import zipfile
import zlib

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from transcoder.checkpoint import LAYOUT_TORCH, Checkpoint, TensorRef
from transcoder.errors import TranscoderError
from transcoder.formats import ReadOptions, pt
from transcoder.formats._io import crc, rawfill
from transcoder.formats._torch import torch_zip
from transcoder.formats._torch.torch_pickle import dump_state_dict


# ------------------------------------------------------------------ crc32_combine

@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=5000), st.lists(st.integers(0, 5000), max_size=8))
def test_combine_of_pieces_is_the_crc_of_the_whole(data, cuts):
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    value = 0
    for lo, hi in zip(bounds, bounds[1:]):
        value = crc.combine(value, zlib.crc32(data[lo:hi]), hi - lo)
    assert value == zlib.crc32(data)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFFFFFF), st.integers(0, 1 << 40))
def test_combine_matches_checksumming_zero_bytes(crc1, crc2, length):
    """The slow identity: crc(A + B) = crc(zeros(len B), crc(A)) ^ crc(zeros(len B)) ^ crc(B),
    checked for lengths up to a few MiB (past that only the fast method is affordable: the
    lengths are reduced, the property is the same)."""
    length %= 3 << 20
    zeros = bytes(length)
    assert crc.combine(crc1, crc2, length) == zlib.crc32(zeros, crc1) ^ zlib.crc32(zeros) ^ crc2


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=4000), st.lists(st.integers(1, 4000), max_size=10),
       st.randoms(use_true_random=False))
def test_piece_crc_takes_pieces_in_any_order(data, cuts, rng):
    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    pieces = list(zip(bounds, bounds[1:]))
    rng.shuffle(pieces)
    digest = crc.PieceCrc()
    for lo, hi in pieces:
        digest(lo, np.frombuffer(data[lo:hi], np.uint8))
    assert digest.value(len(data)) == zlib.crc32(data)


@pytest.mark.parametrize("checksum", ["default", "zlib"])
def test_piece_crc_from_threads_and_refusing_gaps(monkeypatch, checksum):
    if checksum == "zlib":   # the fallback where zlib-ng is not installed
        monkeypatch.setattr(crc, "checksum", lambda: zlib.crc32)
    data = np.random.default_rng(0).integers(0, 256, 3 << 20, dtype=np.uint8)
    shares = [(k * len(data) // 6, (k + 1) * len(data) // 6) for k in range(6)]
    digest = crc.PieceCrc()

    def fill(lo: int, hi: int) -> None:
        for at in range(lo, hi, 4096 * 7):
            digest(at, data[at:min(hi, at + 4096 * 7)])

    threads = [threading.Thread(target=fill, args=share) for share in shares]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert digest.value(len(data)) == zlib.crc32(data)
    gap = crc.PieceCrc()
    gap(0, data[:10]), gap(11, data[11:20])
    with pytest.raises(ValueError):
        gap.value(20)


# ------------------------------------------------------------------ rawfill's digest hook

def test_rawfill_digest_sees_every_byte_it_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(rawfill, "SHARE_BYTES", 64 << 10)   # shares on both threads
    values = np.random.default_rng(1).standard_normal((700, 300)).astype(np.float32)
    ref = TensorRef.from_array("w", values)
    path = tmp_path / "out.bin"
    path.write_bytes(bytes(100 + ref.nbytes))
    seen, threads = crc.PieceCrc(), set()

    def digest(offset, data):
        threads.add(threading.current_thread().name)
        seen(offset, data)

    rawfill.fill(path, [rawfill.Region(100, ref, digest=digest)])
    assert seen.value(ref.nbytes) == zlib.crc32(values.tobytes())
    assert path.read_bytes()[100:] == values.tobytes()
    assert all(name.startswith("transcoder-fill") for name in threads)


# ------------------------------------------------------------------ the writer

def streamed(ckpt: Checkpoint, path) -> None:
    """The archive as the writer made it before issue 21: one record after another through
    TorchZipWriter.write_stream, CRCs as the data streams (the reference for byte equality)."""
    entries = pt._entries(ckpt)
    with open(path, "wb") as fh:
        zw = torch_zip.TorchZipWriter(fh, pt.ARCHIVE_PREFIX)
        zw.write_record("data.pkl", dump_state_dict(entries))
        zw.write_record(".format_version", b"1")
        zw.write_record(".storage_alignment", b"64")
        zw.write_record("byteorder", sys.byteorder.encode())
        digest = hashlib.sha256()
        for entry in entries:
            data = ckpt.tensors[entry.name].load().tobytes()
            value = zw.write_stream(f"data/{entry.key}", len(data), [data])
            digest.update(f"{entry.name}\0{len(data)}\0{value}\0".encode())
        zw.write_record("version", b"3\n")
        zw.write_record(".data/serialization_id", pt._serialization_id(digest))
        zw.close()


def arrays() -> dict[str, np.ndarray]:
    """Tensors of every size class rawfill treats apart: batched small ones, one-share ones,
    several shares (with SHARE_BYTES lowered), empty ones, odd byte counts."""
    rng = np.random.default_rng(2)
    return collections.OrderedDict(
        embed=rng.standard_normal((2000, 96)).astype(np.float32),
        bias=rng.standard_normal(7).astype(np.float16),
        empty=np.zeros((0, 3), np.float32),
        ids=np.arange(13, dtype=np.int64),
        flags=rng.integers(0, 2, 5).astype(bool),
        mid=rng.standard_normal((300, 333)).astype(np.float64),
        byte=rng.integers(0, 255, 1001).astype(np.uint8),
    )


def checkpoint(values: dict[str, np.ndarray]) -> Checkpoint:
    return Checkpoint({k: TensorRef.from_array(k, v) for k, v in values.items()}, LAYOUT_TORCH)


@pytest.mark.parametrize("share_kib", [8 << 10, 16])
def test_written_archive_is_byte_for_byte_the_streamed_one(tmp_path, monkeypatch, share_kib):
    monkeypatch.setattr(rawfill, "SHARE_BYTES", share_kib << 10)
    monkeypatch.setattr(rawfill, "BATCH_BELOW_BYTES", 1 << 10)
    values = arrays()
    pt.write(checkpoint(values), tmp_path / "new.pt")
    streamed(checkpoint(values), tmp_path / "old.pt")
    new = (tmp_path / "new.pt").read_bytes()
    assert new == (tmp_path / "old.pt").read_bytes()
    with zipfile.ZipFile(io.BytesIO(new)) as zf:
        assert zf.testzip() is None
        for name, value in values.items():
            key = list(values).index(name)
            info = zf.getinfo(f"archive/data/{key}")
            assert info.CRC == zlib.crc32(value.tobytes()) and info.compress_type == 0


def test_the_fill_runs_on_rawfill_threads(tmp_path):
    """The tensors' bytes are asked for on rawfill's worker threads (not streamed here)."""
    names: set[str] = set()
    value = np.arange(1 << 18, dtype=np.float32)

    def loader():
        names.add(threading.current_thread().name)
        return value

    ckpt = Checkpoint({"w": TensorRef("w", value.shape, "float32", loader)}, LAYOUT_TORCH)
    pt.write(ckpt, tmp_path / "t.pt")
    assert names and all(n.startswith("transcoder-fill") for n in names)
    with pt.read(tmp_path / "t.pt", ReadOptions()) as back:
        assert back["w"].load().tobytes() == value.tobytes()


def test_zip64_layout_is_the_streamed_one(tmp_path, monkeypatch):
    monkeypatch.setattr(torch_zip, "ZIP64_LIMIT", 100)   # zip64 descriptors and offsets
    values = arrays()
    pt.write(checkpoint(values), tmp_path / "new.pt")
    streamed(checkpoint(values), tmp_path / "old.pt")
    assert (tmp_path / "new.pt").read_bytes() == (tmp_path / "old.pt").read_bytes()


def test_a_failing_tensor_leaves_no_file(tmp_path):
    def broken():
        raise OSError(5, "Input/output error")

    ckpt = checkpoint(arrays())
    ckpt.tensors["late"] = TensorRef("late", (1 << 16,), "float32", broken)
    with pytest.raises(TranscoderError, match="Input/output error"):
        pt.write(ckpt, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


# ------------------------------------------------------------------ torch reads it back

torch_needed = pytest.mark.skipif(not __import__("importlib").util.find_spec("torch"),
                                  reason="needs torch")


@torch_needed
@pytest.mark.parametrize("source", ["pt", "safetensors"])
def test_conversions_to_pt_load_in_torch_bit_exact(tmp_path, monkeypatch, source):
    import torch
    from safetensors.torch import save_file

    from transcoder.pipeline import transcode

    monkeypatch.setattr(rawfill, "SHARE_BYTES", 32 << 10)
    g = torch.Generator().manual_seed(3)
    sd = {"a.weight": torch.randn(400, 300, generator=g), "b": torch.randn(999, generator=g).bfloat16(),
          "c": torch.arange(77, dtype=torch.int32), "d": torch.randn(64, 32, 3, 3, generator=g)}
    src = tmp_path / f"src.{source}"
    torch.save(sd, src) if source == "pt" else save_file(sd, str(src))
    transcode(src, tmp_path / "out.pt")
    for mmap in (False, True):
        back = torch.load(tmp_path / "out.pt", weights_only=True, mmap=mmap)
        assert sorted(back) == sorted(sd)   # safetensors orders tensors its own way
        for name, t in sd.items():
            assert back[name].dtype == t.dtype and torch.equal(back[name].view(torch.uint8),
                                                               t.view(torch.uint8))
    assert zipfile.ZipFile(tmp_path / "out.pt").testzip() is None


@torch_needed
def test_sharded_pt_output_loads_bit_exact(tmp_path, monkeypatch):
    import torch

    from transcoder.pipeline import transcode

    monkeypatch.setattr(rawfill, "SHARE_BYTES", 16 << 10)
    g = torch.Generator().manual_seed(4)
    sd = {f"layers.{i}.w": torch.randn(128, 96, generator=g).bfloat16() for i in range(6)}
    torch.save(sd, tmp_path / "src.pt")
    out = tmp_path / "out"
    out.mkdir()
    written = transcode(tmp_path / "src.pt", out / "pytorch_model.bin", shard_size=60_000).written
    shard_files = [p for p in written if p.name.endswith(".bin")]
    assert len(shard_files) == 3
    back = {}
    for path in shard_files:
        assert zipfile.ZipFile(path).testzip() is None
        back.update(torch.load(path, weights_only=True))
    assert list(back) == list(sd)
    for name, t in sd.items():
        assert torch.equal(back[name].view(torch.int16), t.view(torch.int16))


def test_a_full_disk_during_the_fill_is_one_error_and_no_file(tmp_path, monkeypatch):
    from transcoder.errors import UsageError

    def no_space(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setenv("TRANSCODER_NO_MMAP_WRITE", "1")   # the pwrite path (mapped: test_mapped_output)
    monkeypatch.setattr(rawfill, "pwrite_all", no_space)
    with pytest.raises(UsageError, match="cannot write: No space left on device"):
        pt.write(checkpoint(arrays()), tmp_path / "full.pt")
    assert list(tmp_path.iterdir()) == []
