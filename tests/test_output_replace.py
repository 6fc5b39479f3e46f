"""Atomic outputs, the .h5 writer's prefetching and memory-mapped reads."""
import numpy as np
import pytest

from transcoder.checkpoint import TensorRef
from transcoder.convert import atomic_output
from transcoder.errors import FormatError
from transcoder.formats.keras_h5 import prefetch


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
        return np.full(3, i)
    return TensorRef(f"t{i}", (3,), "int64", load)


@pytest.mark.parametrize("ahead", [0, 1, 2, 5])
def test_prefetch_keeps_order(ahead):
    arrays = list(prefetch([_ref(i) for i in range(4)], ahead))
    assert [int(a[0]) for a in arrays] == [0, 1, 2, 3]


def test_prefetch_raises_the_load_error_in_order():
    arrays = prefetch([_ref(0), _ref(1, fail=True), _ref(2)])
    assert int(next(arrays)[0]) == 0
    with pytest.raises(FormatError, match="broken"):
        next(arrays)


@pytest.mark.parametrize("source", ["small_cnn.pt", "encoder.pt", "encoder.safetensors"])
def test_memory_mapped_tensors_round_trip(tmp_path, monkeypatch, source):
    """Every tensor through the memory-map path (filemap), to .h5 and back, bit for bit."""
    from pathlib import Path

    from transcoder.convert import read, transcode
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
