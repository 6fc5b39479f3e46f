"""Writers fill their outputs through shared mappings (formats/_io/mapout.py) or, where mapping
is impossible or TRANSCODER_NO_MMAP_WRITE=1, with pwrite: the same bytes either way; a full
disk is one line and exit code 2 either as an error before anything is mapped (fallocate) or
as a SIGBUS in a mapped write."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from transcoder.checkpoint import Target, TensorRef
from transcoder.cli import main
from transcoder.formats._io import mapout, rawfill
from transcoder.rules.ops import Permute

FIXTURES = Path(__file__).parent.parent / "fixtures"
PATHS = ("mapped", "pwrite")


def _use(monkeypatch, path: str) -> None:
    monkeypatch.setenv(mapout.NO_MAP_ENV, "1" if path == "pwrite" else "0")


def _permuted(x, axes):
    op = Permute(axes)
    return TensorRef("w", op.forward_shapes([x.shape])[0], str(x.dtype),
                     lambda: op.forward([x])[0],
                     lambda scratch, part=None: op.forward_blocks([x], scratch, part))


@pytest.mark.parametrize("shape, axes", [
    ((300, 70, 3), (2, 1, 0)),        # Conv1d (out, in, k) -> (k, in, out): cut along `in`
    ((32, 16, 3, 3), (2, 3, 1, 0)),   # Conv2d -> (kh, kw, in, out)
    ((96, 200), (1, 0)),              # Linear
    ((5, 7, 9, 11), (3, 1, 0, 2))])
@pytest.mark.parametrize("share_bytes", [1 << 30, 3000])
def test_permuted_tensors_fill_the_map_in_place_bit_exact(tmp_path, monkeypatch, shape, axes,
                                                        share_bytes):
    """The kernel writes the mapped output straight (no scratch piece is written), whole or in
    shares, with small blocks; the file is the same as through pwrite, bit for bit."""
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    want = np.ascontiguousarray(x.transpose(axes)).tobytes()
    monkeypatch.setattr(rawfill, "SCRATCH_BYTES", 4096)
    monkeypatch.setattr(rawfill, "SHARE_BYTES", share_bytes)
    outputs = {}
    for path in PATHS:
        _use(monkeypatch, path)
        out = tmp_path / path
        out.write_bytes(b"\xee" * 24 + bytes(x.nbytes) + b"\xee" * 8)
        rawfill.fill(out, [rawfill.Region(24, _permuted(x, axes))])
        outputs[path] = out.read_bytes()
    assert outputs["mapped"] == outputs["pwrite"] == b"\xee" * 24 + want + b"\xee" * 8


def test_the_kernel_writes_pieces_at_their_places_in_a_target(monkeypatch):
    """permuted_pieces with a Target yields views of its ``out``, already filled, in every
    share, with the C kernel and with the numpy fallback; ``ready`` sees every piece first."""
    from transcoder.rules import transpose

    x = np.random.default_rng(1).standard_normal((64, 48, 5), dtype=np.float32)
    want = np.ascontiguousarray(x.transpose(2, 1, 0)).reshape(-1).view(np.uint8)
    for kernel in (transpose._transpose, None):
        monkeypatch.setattr(transpose, "_transpose", kernel)
        out, readied = np.zeros(x.nbytes, np.uint8), []
        target = Target.of(np.empty(2048, np.uint8), out, readied.append)
        for k in range(3):
            for offset, block in transpose.permuted_pieces(x, (2, 1, 0), target, (k, 3)):
                address = out.__array_interface__["data"][0] + offset
                assert block.__array_interface__["data"][0] == address
                assert any(r.__array_interface__["data"][0] == address and len(r) == len(block)
                           for r in readied)
        assert np.array_equal(out, want)


def test_kernel_destination_strides_are_checked():
    from transcoder.rules import transpose

    if transpose._transpose is None:
        pytest.skip("no C kernel")
    src, dst = np.zeros(64, np.uint8), np.zeros(64, np.uint8)
    with pytest.raises(ValueError, match="too small"):
        transpose._transpose.permute(src, 0, dst, (2, 4), (4, 8), 4, (64, 4))
    with pytest.raises(ValueError, match="rows contiguous"):
        transpose._transpose.permute(src, 0, dst, (2, 4), (4, 8), 4, (4, 8))


@pytest.mark.parametrize("source", ["small_cnn.pt", "encoder.pt", "encoder.safetensors"])
def test_every_writer_gives_the_same_bytes_mapped_and_with_pwrite(tmp_path, monkeypatch, source):
    """.h5, .safetensors and sharded .safetensors from a mapped source, in tiny shares: the
    files are byte for byte the same both ways, and the round trip is bit-exact."""
    from transcoder.formats import pt, safetensors_format
    from transcoder.pipeline import read, transcode

    monkeypatch.setattr(pt, "MAP_FROM_BYTES", 1)
    monkeypatch.setattr(safetensors_format, "MAP_FROM_BYTES", 1)
    monkeypatch.setattr(rawfill, "SHARE_BYTES", 256)
    src = FIXTURES / source
    want = {n: r.load().copy() for n, r in read(src).tensors.items()}
    files = {}
    for path in PATHS:
        _use(monkeypatch, path)
        out = tmp_path / path
        out.mkdir()
        transcode(src, out / "m.h5")
        transcode(out / "m.h5", out / "back.safetensors")
        (out / "shards").mkdir()
        assert main([str(src), str(out / "shards" / "model.safetensors"), "--shard-size",
                     "1000", "--no-check", "--quiet"]) == 0
        files[path] = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*"))
                       if p.is_file()}
        back = read(out / "back.safetensors")
        assert list(back.tensors) == list(want)
        for name, array in want.items():
            got = back.tensors[name].load()
            assert got.dtype == array.dtype and got.tobytes() == array.tobytes(), name
    assert files["mapped"].keys() == files["pwrite"].keys()
    shards = [p for p in files["mapped"] if p.parent.name == "shards"]
    assert len(shards) > 2 or len(want) == 1   # sharded (an index and its shards)
    for name, data in files["mapped"].items():
        assert data == files["pwrite"][name], name


def test_bfloat16_is_widened_straight_into_the_map(tmp_path, monkeypatch):
    """bfloat16 -> .h5 stores exact float32 (bits shifted up 16, NaN payloads too), the same
    bytes mapped and with pwrite, whole and in shares."""
    import h5py
    import ml_dtypes

    from transcoder.formats import safetensors_format
    from transcoder.checkpoint import Checkpoint

    bits = np.random.default_rng(2).integers(0, 1 << 16, (64, 33), dtype=np.uint16)
    bits[0, :3] = [0x7FC1, 0xFF81, 0x0001]   # NaN payloads, a subnormal
    x = bits.view(ml_dtypes.bfloat16)
    ckpt = Checkpoint({"enc.layer/bias": TensorRef.from_array("enc.layer/bias", x)}, "keras")
    outputs = {}
    for share_bytes in (1 << 30, 1000):
        monkeypatch.setattr(rawfill, "SHARE_BYTES", share_bytes)
        for path in PATHS:
            _use(monkeypatch, path)
            out = tmp_path / f"{path}{share_bytes}.h5"
            from transcoder.formats import keras_h5

            keras_h5.write(ckpt, out)
            outputs[path, share_bytes] = out.read_bytes()
            with h5py.File(out) as f:
                stored = f["enc.layer"]["enc.layer"]["bias"][()] if "enc.layer" in f["enc.layer"] \
                    else f["enc.layer"]["bias"][()]
            assert stored.dtype == np.float32
            assert np.array_equal(stored.view(np.uint32), bits.astype(np.uint32) << 16)
    assert len(set(outputs.values())) == 1
    del safetensors_format


@pytest.mark.parametrize("path", PATHS)
def test_digest_sees_every_written_byte(tmp_path, monkeypatch, path):
    """A region's digest gets each piece as written, on the worker threads: together the pieces
    are the region's output bytes, each once (a permuted, a copied and a widened tensor)."""
    import ml_dtypes

    _use(monkeypatch, path)
    monkeypatch.setattr(rawfill, "SCRATCH_BYTES", 4096)
    monkeypatch.setattr(rawfill, "SHARE_BYTES", 5000)
    x = np.random.default_rng(3).standard_normal((60, 40, 3), dtype=np.float32)
    b = np.random.default_rng(4).integers(0, 1 << 16, 3000, dtype=np.uint16).view(ml_dtypes.bfloat16)
    refs = [_permuted(x, (2, 1, 0)), TensorRef.from_array("c", x), TensorRef.from_array("b", b)]
    seen = {i: bytearray(r.nbytes * (2 if i == 2 else 1)) for i, r in enumerate(refs)}
    counts = {i: 0 for i in seen}

    def digest(i):
        def see(offset, data):
            seen[i][offset:offset + len(data)] = bytes(data)
            counts[i] += len(data)
        return see
    offsets = [16, 16 + x.nbytes, 16 + 2 * x.nbytes]
    out = tmp_path / "out"
    out.write_bytes(bytes(16 + 2 * x.nbytes + 2 * b.nbytes))
    rawfill.fill(out, [rawfill.Region(offsets[i], r, as_float32=i == 2, digest=digest(i))
                       for i, r in enumerate(refs)])
    data = out.read_bytes()
    for i, ref in enumerate(refs):
        assert counts[i] == len(seen[i])
        assert bytes(seen[i]) == data[offsets[i]:offsets[i] + len(seen[i])]


@pytest.mark.parametrize("env, line", [
    ("0", "through a shared memory mapping"),
    ("1", f"with pwrite ({mapout.NO_MAP_ENV}=1)")])
def test_verbose_says_which_path_ran(tmp_path, monkeypatch, capsys, env, line):
    monkeypatch.setenv(mapout.NO_MAP_ENV, env)
    assert main(["-v", str(FIXTURES / "encoder.safetensors"), str(tmp_path / "o.h5"),
                 "--no-check"]) == 0
    assert line in capsys.readouterr().err


def test_a_file_system_refusing_mmap_falls_back_to_pwrite(tmp_path, monkeypatch, caplog):
    """mmap refused (ENODEV): the fill goes on with pwrite, same bytes, and says so."""
    def refuse(*args, **kwargs):
        raise OSError(19, "No such device")
    monkeypatch.setenv(mapout.NO_MAP_ENV, "0")
    monkeypatch.setattr(mapout.mmap, "mmap", refuse)
    x = np.random.default_rng(5).standard_normal((64, 40), dtype=np.float32)
    out = tmp_path / "out"
    out.write_bytes(bytes(x.nbytes))
    with caplog.at_level("INFO", logger="transcoder"):
        rawfill.fill(out, [rawfill.Region(0, _permuted(x, (1, 0)))])
    assert out.read_bytes() == np.ascontiguousarray(x.T).tobytes()
    assert "with pwrite (mmap refused: No such device)" in caplog.text


def test_not_a_regular_file_is_written_with_pwrite(tmp_path):
    fd = os.open(os.devnull, os.O_RDWR)
    try:
        assert mapout.open_map(fd, os.devnull) is None
    finally:
        os.close(fd)


# -- a full disk: a 2 MiB tmpfs in a mount namespace of its own ----------------------------------

def _source(folder: Path) -> Path:
    """A 4 MiB safetensors of a Linear layer: permuted into a .h5 (the map path)."""
    from transcoder.formats import safetensors_format
    from transcoder.checkpoint import Checkpoint

    w = np.random.default_rng(6).standard_normal((1024, 1024), dtype=np.float32)
    src = folder / "src.safetensors"
    safetensors_format.write(Checkpoint({"fc.weight": TensorRef.from_array("fc.weight", w)},
                                        "torch"), src)
    return src


def _in_small_tmpfs(tmp_path: Path, prelude: str, args: list[str]) -> tuple[subprocess.CompletedProcess, list]:
    """Run ``transcode ARGS`` (after ``prelude``) with ``{mnt}`` in ARGS a 2 MiB tmpfs."""
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        pytest.skip("needs Linux and unshare")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    code = (f"import sys; {prelude}\nfrom transcoder.cli import main\n"
            f"sys.exit(main({json.dumps([a.format(mnt=mnt) for a in args])}))")
    listing = f"python_rc=$?; ls -A {mnt} > {tmp_path}/left; exit $python_rc"
    script = (f"mount -t tmpfs -o size=2m tmpfs {mnt} || exit 99; "
              f"{sys.executable} -c {shlex_quote(code)}; {listing}")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent), mapout.NO_MAP_ENV: "0"}
    for flags in (["-m"], ["-rm"]):
        done = subprocess.run(["unshare", *flags, "sh", "-c", script], capture_output=True,
                              text=True, env=env, timeout=300)
        if done.returncode != 99 and "unshare failed" not in done.stderr:
            return done, (tmp_path / "left").read_text().split()
    pytest.skip("cannot mount a tmpfs here (no root, no user namespaces)")


def shlex_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def test_a_full_disk_is_an_error_before_anything_is_mapped(tmp_path):
    """fallocate up front turns ENOSPC into one line, exit code 2, no output left."""
    src = _source(tmp_path)
    done, left = _in_small_tmpfs(tmp_path, "", [str(src), "{mnt}/out.h5", "--no-check"])
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "No space left on device" in done.stderr
    assert "Traceback" not in done.stderr and left == []


def test_a_mapped_write_the_disk_cannot_hold_is_one_line_not_a_crash(tmp_path):
    """Where the file system allocates nothing up front (here: fallocate replaced by ftruncate),
    a mapped write into a full tmpfs raises SIGBUS: one line, exit code 2, the temporary
    output deleted."""
    src = _source(tmp_path)
    prelude = ("import os\nfrom transcoder.formats._io import mapout\n"
               "mapout._allocate = lambda fd, offset, n: os.ftruncate(fd, max(offset + n, "
               "os.fstat(fd).st_size))")
    done, left = _in_small_tmpfs(tmp_path, prelude, [str(src), "{mnt}/out.h5", "--no-check"])
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert "no space left on the device" in done.stderr and "SIGBUS" in done.stderr
    assert "Traceback" not in done.stderr and left == []


@pytest.mark.parametrize("populate", ["map", "write", "none"])
def test_the_benchmark_floor_copies_files_and_folders_bit_exact(tmp_path, populate):
    """bench/floor.py (the floor row of bench.py): every byte of a file, and of a tree."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("floor", Path(__file__).parent.parent / "bench" / "floor.py")
    floor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(floor)
    tree = tmp_path / "src"
    (tree / "a" / "b").mkdir(parents=True)
    data = {tree / "one.bin": np.random.default_rng(7).bytes(3 << 20 | 5),
            tree / "a" / "b" / "two.bin": np.random.default_rng(8).bytes(4097),
            tree / "a" / "empty": b""}
    for path, content in data.items():
        path.write_bytes(content)
    assert floor.main([str(tree / "one.bin"), str(tmp_path / "copy.bin"), "--populate", populate]) == 0
    assert (tmp_path / "copy.bin").read_bytes() == data[tree / "one.bin"]
    assert floor.main([str(tree), str(tmp_path / "copy"), "--populate", populate]) == 0
    for path, content in data.items():
        assert (tmp_path / "copy" / path.relative_to(tree)).read_bytes() == content
