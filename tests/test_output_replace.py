"""Atomic outputs, filling pre-allocated output regions (rawfill) and memory-mapped reads."""
import numpy as np
import pytest

from transcoder.checkpoint import TensorRef
from transcoder.pipeline import atomic_output
from transcoder.errors import FormatError
from transcoder.formats import rawfill
from transcoder.rules.ops import Permute


def test_atomic_output_replaces_only_on_success(tmp_path):
    dst = tmp_path / "dst"
    dst.write_bytes(b"old")
    with atomic_output(dst, force=True) as tmp:
        tmp.write_bytes(b"new")
    assert dst.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["dst"]
    with pytest.raises(RuntimeError):
        with atomic_output(dst, force=True) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("writer failed")
    assert dst.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["dst"]


def _ref(i, fail=False):
    def load():
        if fail:
            raise FormatError("broken", tensor=f"t{i}")
        return np.arange(3 * i, 3 * i + 3, dtype=np.int64)
    return TensorRef(f"t{i}", (3,), "int64", load)


def test_fill_writes_each_tensor_at_its_offset(tmp_path):
    path = tmp_path / "out"
    path.write_bytes(b"\xff" * 100)
    rawfill.fill(path, [rawfill.Region(10 + 24 * i, _ref(i)) for i in range(3)])
    data = path.read_bytes()
    assert data[:10] == b"\xff" * 10 and data[82:] == b"\xff" * 18
    assert np.array_equal(np.frombuffer(data[10:82], np.int64), np.arange(9))


def test_fill_streams_permuted_blocks_through_a_small_scratch(tmp_path, monkeypatch):
    """A permuted tensor larger than the scratch buffer arrives block by block, bit-exact."""
    x = np.random.default_rng(0).standard_normal((300, 70, 3), dtype=np.float32)
    op = Permute((2, 1, 0))
    ref = TensorRef("w", op.forward_shapes([x.shape])[0], "float32", lambda: op.forward([x])[0],
                    lambda scratch: op.forward_blocks([x], scratch))
    monkeypatch.setattr(rawfill, "SCRATCH_BYTES", 4096)
    path = tmp_path / "out"
    path.write_bytes(bytes(8 + x.nbytes))
    rawfill.fill(path, [rawfill.Region(8, ref)])
    assert path.read_bytes()[8:] == np.ascontiguousarray(x.transpose(2, 1, 0)).tobytes()


def test_fill_raises_the_first_error_in_order(tmp_path):
    path = tmp_path / "out"
    path.write_bytes(bytes(72))
    with pytest.raises(FormatError, match="broken"):
        rawfill.fill(path, [rawfill.Region(24 * i, _ref(i, fail=i == 1)) for i in range(3)])


@pytest.mark.parametrize("blocks", [[16], [16, 16, 1], [40]])
def test_fill_refuses_data_of_the_wrong_size(tmp_path, blocks):
    path = tmp_path / "out"
    path.write_bytes(bytes(48))
    wrong = TensorRef("t", (4,), "int64", lambda: np.zeros(4, np.int64),
                      lambda scratch: iter([np.zeros(n, np.uint8) for n in blocks]))
    with pytest.raises(FormatError, match="does not have the 32 bytes"):
        rawfill.fill(path, [rawfill.Region(0, wrong)])


def test_fill_without_os_pwrite_seeks_and_writes(tmp_path, monkeypatch):
    """Windows has no os.pwrite: the fallback puts every block at its offset too."""
    monkeypatch.delattr("os.pwrite")
    path = tmp_path / "out"
    path.write_bytes(bytes(72))
    rawfill.fill(path, [rawfill.Region(24 * i, _ref(i)) for i in range(3)])
    assert np.array_equal(np.frombuffer(path.read_bytes(), np.int64), np.arange(9))


@pytest.mark.parametrize("source", ["small_cnn.pt", "encoder.pt", "encoder.safetensors"])
def test_memory_mapped_tensors_round_trip(tmp_path, monkeypatch, source):
    """Every tensor through the memory-map path (filemap), to .h5 and back, bit for bit."""
    from pathlib import Path

    from transcoder.pipeline import read, transcode
    from transcoder.formats import pt, safetensors_format

    src = Path(__file__).parent.parent / "fixtures" / source
    want = {n: r.load().copy() for n, r in read(src).tensors.items()}
    monkeypatch.setattr(pt, "MAP_FROM_BYTES", 1)
    monkeypatch.setattr(safetensors_format, "MAP_FROM_BYTES", 1)
    transcode(src, tmp_path / "m.h5")
    transcode(tmp_path / "m.h5", tmp_path / ("back" + src.suffix))
    back = read(tmp_path / ("back" + src.suffix))
    got = {n: r.load() for n, r in back.tensors.items()}
    assert list(got) == list(want)
    for name, array in want.items():
        assert got[name].dtype == array.dtype and got[name].tobytes() == array.tobytes(), name
    back.close()


def test_map_range_refuses_a_short_file(tmp_path):
    from transcoder.formats.filemap import map_range

    path = tmp_path / "f"
    path.write_bytes(bytes(range(100)))
    with open(path, "rb") as fh:
        assert map_range(fh.fileno(), 90, 20) is None
        assert map_range(fh.fileno(), 70, 20).tobytes() == bytes(range(70, 90))


def test_h5_writer_fails_whole_when_a_tensor_fails_while_filling(tmp_path):
    """A load error on a fill thread reaches the caller; atomic_output leaves nothing behind."""
    from transcoder.checkpoint import LAYOUT_KERAS, Checkpoint
    from transcoder.formats import keras_h5

    refs = [_ref(i, fail=i == 2) for i in range(4)]
    tensors = {f"d{i}/kernel": TensorRef(f"d{i}/kernel", r.shape, r.dtype, r.loader)
               for i, r in enumerate(refs)}
    dst = tmp_path / "out.h5"
    with pytest.raises(FormatError, match="broken"):
        with atomic_output(dst, force=False) as tmp:
            keras_h5.write(Checkpoint(tensors, LAYOUT_KERAS), tmp)
    assert list(tmp_path.iterdir()) == []
