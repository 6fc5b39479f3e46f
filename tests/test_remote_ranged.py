"""A remote SRC is read by byte range where its format allows (issue 20): a safetensors file
(alone or sharded) and a ``torch.save`` zip give their header or directory first, then each
tensor's bytes when it is loaded; nothing is downloaded whole. Proved by counting the bytes the
filesystem returns: ``inspect`` of a 64 MiB file fetches under 1 % of it, a conversion fetches
each byte about once in blocks of at most 4 MiB, ``--key`` fetches only its state dict, and
the output is bit-exact with the local conversion. Truncated objects and lying headers are one
line with exit code 2, as local files are. Against moto's S3 server (the fixture is copied from
tests/test_remote.py, minimal) and against ``memory://`` (no server).
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_bit_exact

fsspec = pytest.importorskip("fsspec")

BUCKET = "ranged"
MIB = 1 << 20
#: at most what one request returns (transcoder.formats._io.ranged.BLOCK)
BLOCK = 4 * MIB


# ---------------------------------------------------------------- files

@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A 64 MiB safetensors file (16 Linear layers of 1024 x 1024 float32), the same as a
    torch.save zip and as shards of about 20 MB with their index, and each one's local
    conversion to .h5 (the reference)."""
    from safetensors.numpy import save_file

    from transcoder.cli import main

    root = tmp_path_factory.mktemp("ranged")
    rng = np.random.default_rng(0)
    tensors = {}
    for i in range(16):
        tensors[f"layers.{i}.weight"] = rng.standard_normal((1024, 1024), dtype=np.float32)
        tensors[f"layers.{i}.bias"] = rng.standard_normal((1024,), dtype=np.float32)
    out = {"safetensors": root / "big.safetensors", "pt": root / "big.pt",
           "index": root / "shards" / "model.safetensors.index.json"}
    save_file(tensors, out["safetensors"])
    (root / "shards").mkdir()
    assert main([str(out["safetensors"]), str(out["pt"]), "--no-check"]) == 0
    assert main([str(out["safetensors"]), str(root / "shards" / "model.safetensors"),
                 "--shard-size", "20MB", "--no-check"]) == 0
    for kind in ("safetensors", "pt", "index"):
        out[f"{kind}.h5"] = root / f"reference-{kind}.h5"
        assert main([str(out[kind]), str(out[f"{kind}.h5"]), "--no-check"]) == 0
    return out


def _assert_same_h5(got: Path, want: Path) -> None:
    import h5py

    with h5py.File(got) as a, h5py.File(want) as b:
        names: list[str] = []
        b.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        assert len(names) == 32
        for name in names:
            assert_bit_exact(a[name][()], b[name][()], name)


def _one_line_exit_2(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word in err, err


# ---------------------------------------------------------------- memory:// (no server)

class Counted:
    """Every range a filesystem class returned (``cat_file``), and its whole-file copies."""

    def __init__(self) -> None:
        self.ranges: list[int] = []
        self.copies: list[str] = []

    @property
    def fetched(self) -> int:
        return sum(self.ranges)


@pytest.fixture
def memory(monkeypatch):
    from fsspec.implementations.memory import MemoryFileSystem

    counted = Counted()
    cat_file, get_file = MemoryFileSystem.cat_file, MemoryFileSystem.get_file

    def counting_cat(self, path, start=None, end=None, **kw):
        data = cat_file(self, path, start=start, end=end, **kw)
        counted.ranges.append(len(data))
        return data

    def counting_get(self, rpath, lpath, **kw):
        counted.copies.append(rpath)
        return get_file(self, rpath, lpath, **kw)

    monkeypatch.setattr(MemoryFileSystem, "cat_file", counting_cat)
    monkeypatch.setattr(MemoryFileSystem, "get_file", counting_get)
    fs = fsspec.filesystem("memory")
    yield fs, counted
    fs.rm("/ranged", recursive=True) if fs.exists("/ranged") else None


@pytest.mark.parametrize("kind", ["safetensors", "pt"])
def test_memory_url_is_read_by_range_and_bit_exact(cli, files, memory, tmp_path, kind):
    fs, counted = memory
    src = files[kind]
    fs.pipe_file(f"/ranged/{src.name}", src.read_bytes())
    size = src.stat().st_size
    counted.ranges.clear()
    out = tmp_path / "got.h5"
    code, _, err = cli("--verbose", f"memory://ranged/{src.name}", out, "--no-check")
    assert code == 0, err
    assert f"ranged reads from memory://ranged/{src.name}" in err
    _assert_same_h5(out, files[f"{kind}.h5"])
    assert counted.copies == []                         # never downloaded whole
    assert max(counted.ranges) <= BLOCK                 # tensors in blocks of <= 4 MiB
    assert size <= counted.fetched <= size + 256 * 1024   # each byte about once


@pytest.mark.parametrize("kind", ["safetensors", "pt"])
def test_memory_conversion_and_its_check_fetch_each_byte_once(cli, files, memory, tmp_path,
                                                              kind):
    """The default check reads every tensor again: from the stub, where the conversion kept
    what it fetched (last round each byte was fetched twice). `transcode check` of the URL
    against the written file fetches each byte once too."""
    pytest.importorskip("torch")
    pytest.importorskip("keras")
    fs, counted = memory
    src = files[kind]
    fs.pipe_file(f"/ranged/{src.name}", src.read_bytes())
    size = src.stat().st_size
    out = tmp_path / "got.h5"
    for args in (("--verbose", f"memory://ranged/{src.name}", out),
                 ("--verbose", "check", f"memory://ranged/{src.name}", out)):
        counted.ranges.clear()
        code, stdout, err = cli(*args)
        assert code == 0, stdout + err
        assert counted.copies == []
        assert size <= counted.fetched <= size + 256 * 1024, (args, counted.fetched)
        assert "read again from the local copy" in err, err
    _assert_same_h5(out, files[f"{kind}.h5"])


@pytest.mark.parametrize("disk", ["too small", "fills up"])
def test_where_the_disk_has_no_room_the_check_fetches_again(cli, files, memory, tmp_path,
                                                           monkeypatch, disk):
    """Kept bytes never fail a conversion: with less room than the object plus KEEP_MARGIN
    nothing is kept; when a write to the stub fails (ENOSPC after a few blocks) keeping
    stops. Either way the conversion and its check pass, the output is bit-exact, and what
    was not kept is fetched again (``--verbose`` says why)."""
    import errno
    import shutil
    import types

    pytest.importorskip("torch")
    pytest.importorskip("keras")
    from transcoder.formats._io import ranged

    fs, counted = memory
    src = files["safetensors"]
    fs.pipe_file(f"/ranged/{src.name}", src.read_bytes())
    size = src.stat().st_size
    if disk == "too small":
        usage = shutil.disk_usage("/")
        monkeypatch.setattr(ranged.shutil, "disk_usage",
                            lambda path: usage._replace(free=size + ranged.KEEP_MARGIN - 1))
        said = "not kept locally for the check"
    else:
        calls = []

        def pwrite(fd, data, offset):
            calls.append(offset)
            if len(calls) > 3:
                raise OSError(errno.ENOSPC, "No space left on device")
            return os.pwrite(fd, data, offset)
        monkeypatch.setattr(ranged, "os", types.SimpleNamespace(
            **{n: getattr(os, n) for n in dir(os) if n != "pwrite" and not n.startswith("__")},
            pwrite=pwrite))
        said = "no longer kept locally (No space left on device)"
    counted.ranges.clear()
    out = tmp_path / "got.h5"
    code, stdout, err = cli("--verbose", f"memory://ranged/{src.name}", out)
    assert code == 0, stdout + err
    assert said in err, err
    _assert_same_h5(out, files["safetensors.h5"])
    assert 1.5 * size < counted.fetched <= 2.1 * size, counted.fetched   # as before keeping


def test_kept_ranges_merge_and_cover_like_a_set_of_bytes():
    """``ranged._Ranges`` against the set of bytes it was given, on random ranges."""
    from transcoder.formats._io.ranged import _Ranges

    rng = np.random.default_rng(3)
    for _ in range(50):
        kept, covered = _Ranges(), np.zeros(300, bool)
        for _ in range(int(rng.integers(1, 12))):
            start = int(rng.integers(0, 280))
            end = start + int(rng.integers(1, 20))
            kept.add(start, end)
            covered[start:end] = True
            assert kept._starts == sorted(kept._starts) and all(
                e < s for e, s in zip(kept._ends, kept._starts[1:]))   # disjoint, not touching
            for _ in range(40):
                a = int(rng.integers(0, 299))
                b = a + int(rng.integers(1, 300 - a))
                assert kept.cover(a, b) == bool(covered[a:b].all()), (a, b)


def test_memory_inspect_reads_only_the_header(cli, files, memory):
    fs, counted = memory
    for kind in ("safetensors", "pt"):
        src = files[kind]
        fs.pipe_file(f"/ranged/{src.name}", src.read_bytes())
        counted.ranges.clear()
        code, out, err = cli("inspect", f"memory://ranged/{src.name}", "--json")
        assert code == 0, err
        assert len(json.loads(out)["rows"]) == 32
        assert counted.fetched < 0.01 * src.stat().st_size, (kind, counted.ranges)
        assert counted.copies == []


def test_formats_that_need_a_local_file_are_staged(cli, files, memory, tmp_path):
    fs, counted = memory
    fs.pipe_file("/ranged/big.h5", files["safetensors.h5"].read_bytes())
    out = tmp_path / "back.safetensors"
    code, _, err = cli("--verbose", "memory://ranged/big.h5", out, "--no-check")
    assert code == 0, err
    assert "staged memory://ranged/big.h5: copied whole (an HDF5 file" in err
    assert counted.copies == ["/ranged/big.h5"]
    from safetensors.numpy import load_file

    got, want = load_file(out), load_file(files["safetensors"])
    assert sorted(got) == sorted(want)
    for name in want:
        assert_bit_exact(got[name], want[name], name)


# ---------------------------------------------------------------- S3 (moto's server)

@pytest.fixture(scope="module")
def s3_endpoint():
    moto_server = pytest.importorskip("moto.server", reason="moto[server] runs the S3 server")
    pytest.importorskip("s3fs", reason="s3fs is the s3:// filesystem")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="module")
def bucket(s3_endpoint, files):
    """A bucket holding the files, for the module; every range s3fs fetches counted
    (``_cat_file``), and every whole-object copy (``_get_file``)."""
    boto3 = pytest.importorskip("boto3")
    import s3fs

    counted = Counted()
    cat_file, get_file = s3fs.S3FileSystem._cat_file, s3fs.S3FileSystem._get_file

    async def counting_cat(self, path, version_id=None, start=None, end=None, **kw):
        data = await cat_file(self, path, version_id=version_id, start=start, end=end, **kw)
        counted.ranges.append(len(data))
        return data

    async def counting_get(self, rpath, lpath, **kw):
        counted.copies.append(rpath)
        return await get_file(self, rpath, lpath, **kw)

    with pytest.MonkeyPatch.context() as patch:
        for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                           "AWS_DEFAULT_REGION": "us-east-1",
                           "AWS_ENDPOINT_URL_S3": s3_endpoint}.items():
            patch.setenv(key, value)
        patch.setattr(s3fs.S3FileSystem, "_cat_file", counting_cat)
        patch.setattr(s3fs.S3FileSystem, "_get_file", counting_get)
        s3fs.S3FileSystem.clear_instance_cache()   # instances bind the methods when made
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        for kind in ("safetensors", "pt"):
            client.upload_file(str(files[kind]), BUCKET, f"in/{files[kind].name}")
        for shard in files["index"].parent.iterdir():
            client.upload_file(str(shard), BUCKET, f"shards/{shard.name}")
        yield client, counted
        for item in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=item["Key"])
        client.delete_bucket(Bucket=BUCKET)
        s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def s3(bucket):
    """The bucket, its counts set to zero."""
    client, counted = bucket
    counted.ranges.clear()
    counted.copies.clear()
    return client, counted


def test_s3_inspect_fetches_under_one_percent(cli, s3, files):
    _, counted = s3
    for kind in ("safetensors", "pt"):
        size = files[kind].stat().st_size
        assert size >= 64 * MIB
        counted.ranges.clear()
        code, out, err = cli("--verbose", "inspect", f"s3://{BUCKET}/in/{files[kind].name}")
        assert code == 0, err
        assert f"ranged reads from s3://{BUCKET}/in/{files[kind].name}" in err
        assert "layers.15.weight" in out
        assert counted.fetched < 0.01 * size, (kind, counted.fetched)
        assert counted.copies == []


@pytest.mark.parametrize("kind", ["safetensors", "pt"])
def test_s3_to_local_h5_is_bit_exact_and_ranged(cli, s3, files, tmp_path, kind):
    _, counted = s3
    size = files[kind].stat().st_size
    out = tmp_path / "got.h5"
    code, _, err = cli(f"s3://{BUCKET}/in/{files[kind].name}", out, "--no-check")
    assert code == 0, err
    _assert_same_h5(out, files[f"{kind}.h5"])
    assert counted.copies == []
    assert max(counted.ranges) <= BLOCK
    assert size <= counted.fetched <= size + 256 * 1024


def test_s3_sharded_index_is_read_by_range(cli, s3, files, tmp_path):
    _, counted = s3
    out = tmp_path / "got.h5"
    code, _, err = cli("--verbose", f"s3://{BUCKET}/shards/model.safetensors.index.json", out,
                       "--no-check")
    assert code == 0, err
    _assert_same_h5(out, files["index.h5"])
    assert counted.copies == []
    shards = [p for p in files["index"].parent.iterdir() if p.suffix == ".safetensors"]
    assert len(shards) >= 3
    assert err.count("ranged reads from s3://") == len(shards)
    total = sum(p.stat().st_size for p in shards)
    assert total <= counted.fetched <= total + len(shards) * 256 * 1024


def test_s3_key_fetches_only_its_state_dict(cli, s3, tmp_path):
    """A training checkpoint: the 1 MiB model is fetched, not the 64 MiB optimizer state."""
    torch = pytest.importorskip("torch")
    client, counted = s3
    model = {"fc.weight": torch.randn(512, 512), "fc.bias": torch.randn(512)}
    state = {f"m{i}": torch.randn(1024, 1024) for i in range(16)}
    path = tmp_path / "train.pt"
    torch.save({"model": model, "optimizer": {"state": state}}, path)
    client.upload_file(str(path), BUCKET, "in/train.pt")
    counted.ranges.clear()
    out = tmp_path / "model.safetensors"
    code, _, err = cli(f"s3://{BUCKET}/in/train.pt", out, "--key", "model", "--no-check")
    assert code == 0, err
    from safetensors.numpy import load_file

    got = load_file(out)
    for name, tensor in model.items():
        assert_bit_exact(got[name], tensor.numpy(), name)
    assert counted.fetched < 0.03 * path.stat().st_size, counted.fetched
    assert counted.copies == []


def test_s3_truncated_objects_are_one_line_exit_2(cli, s3, files, tmp_path):
    client, counted = s3
    for kind in ("safetensors", "pt"):
        data = files[kind].read_bytes()
        client.put_object(Bucket=BUCKET, Key=f"cut/{files[kind].name}", Body=data[:len(data) // 2])
        counted.ranges.clear()
        out = tmp_path / f"{kind}.h5"
        code, _, err = cli(f"s3://{BUCKET}/cut/{files[kind].name}", out, "--no-check")
        _one_line_exit_2(code, err, f"s3://{BUCKET}/cut/{files[kind].name}")
        assert not out.exists()
        assert counted.fetched < 0.01 * len(data), (kind, counted.fetched)
        assert counted.copies == []


def test_s3_header_claiming_more_than_the_object_is_exit_2(cli, s3, tmp_path):
    """The header says 64 MiB of data, the object holds 1 KiB: refused from the header (the
    same bound as for a local file), nothing else fetched."""
    client, counted = s3
    header = b'{"w":{"dtype":"F32","shape":[4096,4096],"data_offsets":[0,67108864]}}'
    header += b" " * (-len(header) % 8)
    body = struct.pack("<Q", len(header)) + header + b"\0" * 1024
    client.put_object(Bucket=BUCKET, Key="lies/w.safetensors", Body=body)
    local = tmp_path / "w.safetensors"
    local.write_bytes(body)
    code, _, local_err = cli(local, tmp_path / "local.h5", "--no-check")
    assert code == 2
    counted.ranges.clear()
    out = tmp_path / "w.h5"
    code, _, err = cli(f"s3://{BUCKET}/lies/w.safetensors", out, "--no-check")
    _one_line_exit_2(code, err, f"s3://{BUCKET}/lies/w.safetensors")
    assert err.split("w.safetensors: ")[1] == local_err.split("w.safetensors: ")[1]   # as local
    assert not out.exists()
    assert counted.fetched <= len(body)


def test_s3_missing_key_is_one_line_exit_2(cli, s3, tmp_path):
    code, _, err = cli("inspect", f"s3://{BUCKET}/in/absent.safetensors")
    _one_line_exit_2(code, err, "no such file", f"s3://{BUCKET}/in/absent.safetensors")


def test_memory_model_folder_reads_its_weights_by_range(cli, files, memory, tmp_path):
    """A Hugging Face folder: config.json copied, model.safetensors read by range, the other
    framework's weights beside them not fetched at all; notes name the URL."""
    fs, counted = memory
    fs.pipe_file("/ranged/model/config.json", json.dumps({"model_type": "bert"}).encode())
    fs.pipe_file("/ranged/model/model.safetensors", files["safetensors"].read_bytes())
    fs.pipe_file("/ranged/model/tf_model.h5", files["safetensors.h5"].read_bytes())
    counted.ranges.clear()
    out = tmp_path / "got.h5"
    code, stdout, err = cli("--verbose", "memory://ranged/model", out, "--no-check")
    assert code == 0, err
    _assert_same_h5(out, files["safetensors.h5"])
    assert counted.copies == []
    assert "tf_model.h5" not in err
    size = files["safetensors"].stat().st_size
    assert size <= counted.fetched <= size + 256 * 1024
    assert "memory://ranged/model: Hugging Face folder" in stdout + err
    assert "transcoder-src-" not in stdout


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM (Linux)")
def test_s3_peak_memory_does_not_grow_with_the_file(s3, s3_endpoint, tmp_path):
    """16 MiB and 128 MiB files of 4 MiB tensors, converted to .h5 in fresh processes: the
    peak resident set differs by far less than the files do (tensors in flight, not files)."""
    import os
    import subprocess
    import sys

    from safetensors.numpy import save_file

    from conftest import ROOT

    client, _ = s3
    # VmHWM, the process's own peak (ru_maxrss of a child starts at its parent's at fork)
    code = ("import re, sys\nfrom transcoder.cli import main\ncode = main(sys.argv[1:])\n"
            "print(re.search(r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read())[1])\n"
            "sys.exit(code)")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL_S3": s3_endpoint}
    peaks = {}
    for count in (4, 32):
        tensors = {}
        for i in range(count):
            tensors[f"layers.{i}.weight"] = np.full((1024, 1024), i, np.float32)
            tensors[f"layers.{i}.bias"] = np.full((1024,), i, np.float32)
        local = tmp_path / f"f{count}.safetensors"
        save_file(tensors, local)
        client.upload_file(str(local), BUCKET, f"rss/{local.name}")
        proc = subprocess.run([sys.executable, "-c", code, f"s3://{BUCKET}/rss/{local.name}",
                               str(tmp_path / f"f{count}.h5"), "--no-check"], env=env,
                              capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        peaks[count] = int(proc.stdout.split()[-1]) * 1024
    print(f"peak RSS: {peaks[4] / MIB:.0f} MiB for 16 MiB, {peaks[32] / MIB:.0f} MiB for 128 MiB")
    grown = peaks[32] - peaks[4]
    assert grown < 32 * MIB, (peaks, "the file grew by 112 MiB")


def _hostile_files(folder: Path) -> dict[str, Path]:
    """Attacks from the hostile-input tests (tests/hostile.py), each as a local file."""
    import zipfile

    import hostile

    bomb = hostile.state_dict_pickle([hostile.Entry("w", "0", 1 << 40, (1 << 20, 1 << 20),
                                                    (1 << 20, 1))])
    small = hostile.state_dict_pickle([hostile.Entry("w", "0", 4, (2, 2), (2, 1))])
    return {
        "shape bomb": hostile.torch_zip(folder / "bomb.pt", bomb, {"0": b"\0" * 16}),
        "code in the pickle": hostile.torch_zip(folder / "code.pt", hostile.proto4(
            hostile.build_on_function())),
        "deflated storages": hostile.torch_zip(folder / "deflated.pt", small,
                                               {"0": b"\1" * 16}, zipfile.ZIP_DEFLATED),
        "overlapping offsets": hostile.safetensors_raw(
            folder / "overlap.safetensors",
            b'{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},'
            b'"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}', b"\0" * 24),
        "header past its object": hostile.safetensors_raw(
            folder / "long.safetensors", b'{"a":{"dtype":"F32","shape":[4],"data_offsets"'),
    }


def test_memory_hostile_files_get_the_local_answer(cli, memory, tmp_path, monkeypatch):
    """The same bounds as for local files: each attack read from memory:// ends as it does
    from the local file (exit code, and the error after the file's name); a zip with deflated
    storages is staged and converts to the same numbers."""
    import h5py

    from transcoder.formats import remote_source

    monkeypatch.setattr(remote_source, "HEAD", 16)   # small files too: the stub path
    fs, counted = memory
    for what, local in _hostile_files(tmp_path).items():
        fs.pipe_file(f"/ranged/hostile/{local.name}", local.read_bytes())
        outs = tmp_path / "local.h5", tmp_path / "remote.h5"
        want = cli(local, outs[0], "--no-check")
        got = cli("--verbose", f"memory://ranged/hostile/{local.name}", outs[1], "--no-check")
        assert got[0] == want[0] == (0 if what == "deflated storages" else 2), (what, got, want)
        if want[0] == 0:
            assert f"staged memory://ranged/hostile/{local.name}" in got[2]
            with h5py.File(outs[0]) as a, h5py.File(outs[1]) as b:
                names: list[str] = []
                a.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
                assert len(names) == 1
                assert_bit_exact(b[names[0]][()], a[names[0]][()], what)
                assert_bit_exact(a[names[0]][()].reshape(-1).view(np.uint8),
                                 np.full(16, 1, np.uint8), what)
        else:
            assert f"ranged reads from memory://ranged/hostile/{local.name}" in got[2]
            error = got[2].strip().splitlines()[-1]   # after what --verbose says
            assert error.split(f"{local.name}: ", 1)[1] == \
                want[2].strip().split(f"{local.name}: ", 1)[1]
            assert not outs[1].exists()
        for out in outs:
            out.unlink(missing_ok=True)


def test_a_store_without_ranged_reads_is_staged(cli, files, tmp_path, monkeypatch):
    """A store that answers a range with the whole object (an HTTP server ignoring Range) is
    noticed on the first request: the object is copied whole, and converts the same."""
    from fsspec.implementations.memory import MemoryFileSystem

    cat_file = MemoryFileSystem.cat_file
    monkeypatch.setattr(MemoryFileSystem, "cat_file",
                        lambda self, path, start=None, end=None, **kw: cat_file(self, path, **kw))
    fs = fsspec.filesystem("memory")
    fs.pipe_file("/whole/big.safetensors", files["safetensors"].read_bytes())
    out = tmp_path / "got.h5"
    try:
        code, _, err = cli("--verbose", "memory://whole/big.safetensors", out, "--no-check")
    finally:
        fs.rm("/whole", recursive=True)
    assert code == 0, err
    assert "staged memory://whole/big.safetensors: copied whole (the store has no ranged " \
           "reads)" in err
    _assert_same_h5(out, files["safetensors.h5"])


def test_memory_index_is_read_only_as_far_as_its_bound(cli, memory, tmp_path, monkeypatch):
    """An index larger than the reader's bound: refused as a local one is, after fetching
    only the bound (plus one byte), not the object."""
    from transcoder.formats import shards

    monkeypatch.setattr(shards, "MAX_INDEX", 1000)
    fs, counted = memory
    index = b'{"weight_map": {}, "pad": "' + b"x" * 200_000 + b'"}'
    fs.pipe_file("/ranged/big/model.safetensors.index.json", index)
    local = tmp_path / "model.safetensors.index.json"
    local.write_bytes(index)
    want = cli(local, tmp_path / "local.h5", "--no-check")
    counted.ranges.clear()
    got = cli("memory://ranged/big/model.safetensors.index.json", tmp_path / "r.h5", "--no-check")
    _one_line_exit_2(got[0], got[2], "memory://ranged/big/model.safetensors.index.json",
                     "larger than 1000 bytes")
    assert got[2].split("json: ")[1] == want[2].split("json: ")[1]
    assert counted.fetched == 1001


def test_memory_keras_zip_is_staged(cli, memory, tmp_path):
    """A zip that is not a torch.save archive (a .keras file) is copied whole, and read as a
    local one is (here: refused for what it lacks, with the local words)."""
    import zipfile

    fs, counted = memory
    local = tmp_path / "m.keras"
    with zipfile.ZipFile(local, "w") as zf:
        zf.writestr("metadata.json", "{}")
        zf.writestr("assets/pad.bin", np.random.default_rng(0).bytes(100_000))
    fs.pipe_file("/ranged/m.keras", local.read_bytes())
    want = cli("inspect", local)
    got = cli("--verbose", "inspect", "memory://ranged/m.keras")
    assert "staged memory://ranged/m.keras: copied whole (a zip archive other than " \
           "torch.save's" in got[2]
    assert counted.copies == ["/ranged/m.keras"]
    assert got[0] == want[0] == 2
    assert got[2].strip().splitlines()[-1].split("m.keras: ")[1] == \
        want[2].strip().split("m.keras: ")[1]


def test_memory_check_reads_both_by_range(cli, files, memory, tmp_path):
    """``transcode check URL URL`` (one layout: bit for bit, numpy only): both read by range,
    each byte about once; a changed tensor is found (exit 1)."""
    fs, counted = memory
    data = files["safetensors"].read_bytes()
    fs.pipe_file("/ranged/a.safetensors", data)
    fs.pipe_file("/ranged/b.safetensors", data)
    counted.ranges.clear()
    code, out, err = cli("check", "memory://ranged/a.safetensors", "memory://ranged/b.safetensors")
    assert code == 0, err
    assert counted.copies == []
    assert 2 * len(data) <= counted.fetched <= 2 * len(data) + 512 * 1024
    changed = bytearray(data)
    changed[-1] ^= 0x40                      # the last tensor's last byte
    fs.pipe_file("/ranged/b.safetensors", bytes(changed))
    code, out, err = cli("check", "memory://ranged/a.safetensors", "memory://ranged/b.safetensors")
    assert code == 1, out + err
