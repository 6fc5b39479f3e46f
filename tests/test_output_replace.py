"""Atomic outputs, filling pre-allocated output regions (rawfill) and memory-mapped reads."""
import errno
import os
import threading
import time

import numpy as np
import pytest

from transcoder.checkpoint import TensorRef
from transcoder import pipeline
from transcoder.pipeline import atomic_output
from transcoder.errors import FormatError
from transcoder.formats._io import rawfill
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


@pytest.mark.parametrize("exchange", [True, False])
def test_force_swaps_the_new_file_in_and_removes_the_old_one(tmp_path, monkeypatch, exchange):
    """Over an existing file, --force swaps (RENAME_EXCHANGE: ext4 then does not write the new
    file out first); where the swap is unavailable, a plain rename. Either way: one file of that
    name, the new bytes, a hard link elsewhere keeps the old ones, nothing left beside."""
    if not exchange:
        monkeypatch.setattr(pipeline, "_renameat2", lambda tmp, dst, flags: errno.ENOSYS)
    dst, other = tmp_path / "dst", tmp_path / "elsewhere"
    dst.write_bytes(b"old")
    os.link(dst, other)
    with atomic_output(dst, force=True) as tmp:
        tmp.write_bytes(b"new")
    assert dst.read_bytes() == b"new" and other.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "elsewhere"]
    assert os.stat(dst).st_nlink == 1 and os.stat(other).st_nlink == 1


def test_force_replaces_a_link_not_its_target(tmp_path):
    target, dst = tmp_path / "target", tmp_path / "dst"
    target.write_bytes(b"theirs")
    dst.symlink_to(target)
    with atomic_output(dst, force=True) as tmp:
        tmp.write_bytes(b"new")
    assert not dst.is_symlink() and dst.read_bytes() == b"new"
    assert target.read_bytes() == b"theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "target"]


def test_the_swap_is_what_ran(tmp_path, monkeypatch):
    """On this machine (Linux, a local file system) the swap runs; it is not silently the
    fallback."""
    calls = []
    real = pipeline._renameat2

    def spy(tmp, dst, flags):
        calls.append(flags)
        return real(tmp, dst, flags)
    monkeypatch.setattr(pipeline, "_renameat2", spy)
    dst = tmp_path / "dst"
    dst.write_bytes(b"old")
    with atomic_output(dst, force=True) as tmp:
        tmp.write_bytes(b"new")
    assert calls == [pipeline.RENAME_EXCHANGE] and dst.read_bytes() == b"new"


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


@pytest.mark.parametrize("share_bytes", [1 << 30, 40_000, 1000])
def test_fill_streams_permuted_blocks_through_a_small_scratch(tmp_path, monkeypatch, share_bytes):
    """A permuted tensor larger than the scratch buffer arrives block by block, bit-exact,
    whole or in shares (one share per row, and more shares than rows)."""
    x = np.random.default_rng(0).standard_normal((300, 70, 3), dtype=np.float32)
    op = Permute((2, 1, 0))
    ref = TensorRef("w", op.forward_shapes([x.shape])[0], "float32", lambda: op.forward([x])[0],
                    lambda scratch, part=None: op.forward_blocks([x], scratch, part))
    monkeypatch.setattr(rawfill, "SCRATCH_BYTES", 4096)
    monkeypatch.setattr(rawfill, "SHARE_BYTES", share_bytes)
    path = tmp_path / "out"
    path.write_bytes(bytes(8 + x.nbytes))
    rawfill.fill(path, [rawfill.Region(8, ref)])
    assert path.read_bytes()[8:] == np.ascontiguousarray(x.transpose(2, 1, 0)).tobytes()


def _counted(array):
    calls = []

    def load():
        calls.append(1)
        return array
    return load, calls


@pytest.mark.parametrize("permuted", [True, False])
def test_a_large_tensor_is_filled_in_shares_on_every_thread(tmp_path, monkeypatch, permuted):
    """Its shares run on both threads and load the source once between them."""
    x = np.random.default_rng(1).standard_normal((256, 64, 5), dtype=np.float32)
    load, calls = _counted(x)
    source = TensorRef("w", x.shape, "float32", load)
    axes = (2, 1, 0) if permuted else (0, 1, 2)
    ref = source   # a reader's tensor: no blocker, its loaded bytes in shares
    if permuted:
        op = Permute(axes)
        ref = TensorRef("k", op.forward_shapes([x.shape])[0], "float32", lambda: op.forward([x])[0],
                        lambda scratch, part=None: op.forward_blocks([source.load()], scratch, part))
    threads = set()

    def slowed(write):
        def slow_write(*args):
            threads.add(threading.current_thread().name)
            time.sleep(0.002)
            return write(*args)
        return slow_write
    monkeypatch.setattr(rawfill, "pwrite_all", slowed(rawfill.pwrite_all))     # pwrite path
    monkeypatch.setattr(rawfill, "_fill_mapped", slowed(rawfill._fill_mapped))  # mapped path
    monkeypatch.setattr(rawfill, "SHARE_BYTES", x.nbytes // 16)
    path = tmp_path / "out"
    path.write_bytes(bytes(x.nbytes))
    rawfill.fill(path, [rawfill.Region(0, ref)])
    assert path.read_bytes() == np.ascontiguousarray(x.transpose(axes)).tobytes()
    assert len(threads) == rawfill.WORKERS and len(calls) == 1


def test_fill_raises_the_first_error_in_order(tmp_path):
    path = tmp_path / "out"
    path.write_bytes(bytes(72))
    with pytest.raises(FormatError, match="broken"):
        rawfill.fill(path, [rawfill.Region(24 * i, _ref(i, fail=i == 1)) for i in range(3)])


def _pieces(sizes):
    """A blocker that yields consecutive pieces of these sizes, in every share."""
    def blocker(scratch, part=None):
        offset = 0
        for n in sizes:
            yield offset, np.zeros(n, np.uint8)
            offset += n
    return blocker


@pytest.mark.parametrize("shares", [1, 3])
@pytest.mark.parametrize("blocks", [[16], [16, 16, 1], [40], [8, 8]])
def test_fill_refuses_data_of_the_wrong_size(tmp_path, monkeypatch, blocks, shares):
    """Too few or too many bytes in all (whole, or over all shares: each share here yields the
    same pieces), or bytes past the end, fail the fill."""
    monkeypatch.setattr(rawfill, "SHARE_BYTES", 32 // shares - 1 if shares > 1 else 1 << 20)
    path = tmp_path / "out"
    path.write_bytes(bytes(48))
    wrong = TensorRef("t", (4,), "int64", lambda: np.zeros(4, np.int64), _pieces(blocks))
    with pytest.raises(FormatError, match="does not have the 32 bytes"):
        rawfill.fill(path, [rawfill.Region(0, wrong)])


def test_small_tensors_go_in_batches_and_errors_keep_region_order(tmp_path, monkeypatch):
    """Tensors under BATCH_BELOW_BYTES are written SCRATCH_BYTES at a time, one task per batch;
    the error raised is still the one of the first failing region."""
    big = lambda name, fail: TensorRef(name, (64 << 10,), "int64", lambda: (  # noqa: E731
        (_ for _ in ()).throw(FormatError("broken", tensor=name)) if fail
        else np.arange(64 << 10, dtype=np.int64)))
    tasks = []
    submit = rawfill.ThreadPoolExecutor.submit
    monkeypatch.setattr(rawfill.ThreadPoolExecutor, "submit",
                        lambda self, fn, *a: tasks.append(fn.__name__) or submit(self, fn, *a))
    path = tmp_path / "out"
    path.write_bytes(bytes(24 * 100 + (512 << 10)))
    rawfill.fill(path, [rawfill.Region(24 * i, _ref(i)) for i in range(100)]
                 + [rawfill.Region(2400, big("b", False))])
    data = np.frombuffer(path.read_bytes(), np.int64)
    assert np.array_equal(data[:300], np.arange(300))
    assert np.array_equal(data[300:], np.arange(64 << 10))
    assert sorted(tasks) == ["_one", "_small"]   # 100 small tensors: one task
    with pytest.raises(FormatError, match="^t1: broken"):   # t1 before b, b before a later t1
        rawfill.fill(path, [rawfill.Region(0, _ref(0)), rawfill.Region(24, _ref(1, fail=True)),
                            rawfill.Region(48, big("b", True))])
    with pytest.raises(FormatError, match="^b: broken"):
        rawfill.fill(path, [rawfill.Region(0, big("b", True)),
                            rawfill.Region(1 << 20, _ref(1, fail=True))])


def test_an_error_in_one_share_fails_the_fill(tmp_path, monkeypatch):
    x = np.arange(4096, dtype=np.float32).reshape(64, 64)

    def blocker(scratch, part=None):
        if part is not None and part[0] == 5:
            raise FormatError("broken share", tensor="w")
        yield from Permute((1, 0)).forward_blocks([x], scratch, part)
    monkeypatch.setattr(rawfill, "SHARE_BYTES", 1024)
    path = tmp_path / "out"
    path.write_bytes(bytes(x.nbytes))
    ref = TensorRef("w", (64, 64), "float32", lambda: x.T.copy(), blocker)
    with pytest.raises(FormatError, match="broken share"):
        rawfill.fill(path, [rawfill.Region(0, ref)])


def test_fill_without_os_pwrite_seeks_and_writes(tmp_path, monkeypatch):
    """Windows has no os.pwrite: the fallback puts every block at its offset too."""
    monkeypatch.delattr("os.pwrite")
    path = tmp_path / "out"
    path.write_bytes(bytes(72))
    rawfill.fill(path, [rawfill.Region(24 * i, _ref(i)) for i in range(3)])
    assert np.array_equal(np.frombuffer(path.read_bytes(), np.int64), np.arange(9))


@pytest.mark.parametrize("share_bytes", [1 << 30, 256])
@pytest.mark.parametrize("source", ["small_cnn.pt", "encoder.pt", "encoder.safetensors"])
def test_memory_mapped_tensors_round_trip(tmp_path, monkeypatch, source, share_bytes):
    """Every tensor through the memory-map path (filemap), to .h5 and back, bit for bit; whole
    or filled in shares of a few hundred bytes."""
    from pathlib import Path

    from transcoder.pipeline import read, transcode
    from transcoder.formats import pt, safetensors_format

    src = Path(__file__).parent.parent / "fixtures" / source
    want = {n: r.load().copy() for n, r in read(src).tensors.items()}
    monkeypatch.setattr(pt, "MAP_FROM_BYTES", 1)
    monkeypatch.setattr(safetensors_format, "MAP_FROM_BYTES", 1)
    monkeypatch.setattr(rawfill, "SHARE_BYTES", share_bytes)
    transcode(src, tmp_path / "m.h5")
    transcode(tmp_path / "m.h5", tmp_path / ("back" + src.suffix))
    back = read(tmp_path / ("back" + src.suffix))
    got = {n: r.load() for n, r in back.tensors.items()}
    assert list(got) == list(want)
    for name, array in want.items():
        assert got[name].dtype == array.dtype and got[name].tobytes() == array.tobytes(), name
    back.close()


def test_map_range_refuses_a_short_file(tmp_path):
    from transcoder.formats._io.filemap import map_range

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


def test_h5_writer_fails_whole_when_one_share_of_a_tensor_fails(tmp_path, monkeypatch):
    """Shares of one tensor run on both threads: an error in one of them fails the write and
    leaves nothing behind."""
    from transcoder.checkpoint import LAYOUT_KERAS, Checkpoint
    from transcoder.formats import keras_h5

    x = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)

    def blocker(scratch, part=None):
        if part is not None and part[0] == 9:
            raise FormatError("broken share", tensor="d/kernel")
        yield from Permute((1, 0)).forward_blocks([x], scratch, part)
    monkeypatch.setattr(rawfill, "SHARE_BYTES", 1024)
    tensors = {"d/kernel": TensorRef("d/kernel", (64, 64), "float32", lambda: x.T.copy(), blocker),
               "d/bias": TensorRef.from_array("d/bias", np.ones(64, np.float32))}
    dst = tmp_path / "out.h5"
    with pytest.raises(FormatError, match="broken share"):
        with atomic_output(dst, force=False) as tmp:
            keras_h5.write(Checkpoint(tensors, LAYOUT_KERAS), tmp)
    assert list(tmp_path.iterdir()) == []


def test_file_range_finds_the_bytes_of_a_mapped_view(tmp_path):
    from transcoder.formats._io.filemap import file_range, map_range

    path = tmp_path / "f"
    path.write_bytes(bytes(range(256)) * 64)
    with open(path, "rb") as fh:
        mapped = map_range(fh.fileno(), 70000 % 16384, 9000)
        as_floats = mapped[2:8002].view(np.float32).reshape(50, 40)
        block = np.ascontiguousarray(as_floats).reshape(-1).view(np.uint8)[100:300]
        fd, offset = file_range(block)
        assert fd == fh.fileno() and offset == 70000 % 16384 + 2 + 100
        assert os.pread(fd, 200, offset) == block.tobytes()
        assert file_range(np.frombuffer(bytes(10), np.uint8)) is None
        assert file_range(mapped[::2]) is None
    assert file_range(block) is None   # the file is closed


def _mapped_ref(tmp_path, x):
    """A tensor whose data is a map of the file it was saved in, as the readers give them."""
    from transcoder.formats._io.filemap import map_range

    path = tmp_path / "src"
    path.write_bytes(b"head" + x.tobytes())
    fh = open(path, "rb")
    return fh, TensorRef("e", x.shape, "float32",
                         lambda: map_range(fh.fileno(), 4, x.nbytes).view(np.float32).reshape(x.shape))


@pytest.mark.parametrize("refuse", [None, errno.EXDEV, errno.ENOSYS, "missing"])
def test_unchanged_mapped_tensors_are_copied_file_to_file(tmp_path, monkeypatch, refuse):
    """By copy_file_range in shares; where the kernel refuses (other file system, old kernel)
    or Python lacks it, by pwrite: the same bytes either way."""
    x = np.random.default_rng(0).standard_normal((512, 300), dtype=np.float32)
    calls = []
    copy = os.copy_file_range

    def copy_file_range(src, dst, count, offset_src, offset_dst):
        calls.append(count)
        if refuse is not None:
            raise OSError(refuse, os.strerror(refuse))
        return copy(src, dst, count, offset_src, offset_dst)
    if refuse == "missing":
        monkeypatch.delattr(os, "copy_file_range")
    else:
        monkeypatch.setattr(os, "copy_file_range", copy_file_range)
    monkeypatch.setattr(rawfill, "SHARE_BYTES", x.nbytes // 5)
    fh, ref = _mapped_ref(tmp_path, x)
    with fh:
        path = tmp_path / "out"
        path.write_bytes(bytes(16 + x.nbytes))
        rawfill.fill(path, [rawfill.Region(16, ref)])
    assert path.read_bytes() == bytes(16) + x.tobytes()
    if refuse in (None, "missing"):
        assert len(calls) == {None: 5, "missing": 0}[refuse]
    else:  # refused once on each thread at most (both may try at once), then never again
        assert 1 <= len(calls) <= rawfill.WORKERS


def _no_space(*args):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("copy, error, match", [
    (_no_space, OSError, "No space"),   # a real copy error fails the fill
    # copying nothing means the source file shrank since it was mapped: reading the map there
    # would crash the process (SIGBUS), so the fill stops with an error naming the tensor
    (lambda *args: 0, FormatError, "e: the source file ends early")])
def test_a_copy_that_fails_or_ends_early_fails_the_fill(tmp_path, monkeypatch, copy, error, match):
    monkeypatch.setattr(os, "copy_file_range", copy)
    x = np.ones((1024, 300), np.float32)
    fh, ref = _mapped_ref(tmp_path, x)
    with fh, pytest.raises(error, match=match):
        path = tmp_path / "out"
        path.write_bytes(bytes(x.nbytes))
        rawfill.fill(path, [rawfill.Region(0, ref)])


@pytest.mark.parametrize("share_bytes", [1 << 30, 3000])
def test_bfloat16_goes_to_h5_as_exact_float32_through_the_fill(tmp_path, monkeypatch, share_bytes):
    """Streamed like the other dtypes (permuted or not, whole or in shares), bfloat16 lands in
    the .h5 as the same float32 bits and attribute as the in-memory writer gives it, and comes
    back bit for bit, NaN payloads included."""
    import h5py
    import ml_dtypes
    from safetensors.numpy import save_file

    from transcoder.formats._hdf5 import h5safety
    from transcoder.pipeline import read, transcode

    rng = np.random.default_rng(3)
    bits = rng.integers(0, 1 << 16, 64 * 48 + 40 * 24, dtype=np.uint16)
    tensors = {"fc.weight": bits[:64 * 48].view(ml_dtypes.bfloat16).reshape(64, 48),
               "embed.weight": bits[64 * 48:].view(ml_dtypes.bfloat16).reshape(40, 24)}
    save_file(tensors, str(tmp_path / "m.safetensors"))
    monkeypatch.setattr(rawfill, "SHARE_BYTES", share_bytes)
    transcode(tmp_path / "m.safetensors", tmp_path / "m.h5")
    with h5py.File(tmp_path / "m.h5") as f:
        for path, want in (("fc/fc/kernel", tensors["fc.weight"].T), ("embed/embed/embeddings",
                                                                          tensors["embed.weight"])):
            ds = f[path]
            assert ds.dtype == np.float32 and ds.attrs["transcoder_dtype"] == "bfloat16"
            assert ds[()].tobytes() == h5safety.bf16_to_float32(np.ascontiguousarray(want)).tobytes()
    transcode(tmp_path / "m.h5", tmp_path / "back.safetensors")
    back = read(tmp_path / "back.safetensors")
    for name, array in tensors.items():
        got = back[name].load()
        assert got.dtype == array.dtype and got.tobytes() == array.tobytes(), name
    back.close()
