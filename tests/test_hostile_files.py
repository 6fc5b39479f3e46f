"""Hostile safetensors, .h5, .keras, --rules files and output races (issue 12): each is bad input
(exit 2, one line naming the file, nothing left behind), never an internal error, a hang or a
gigabyte of memory; the odd-but-valid ones convert exactly."""
from __future__ import annotations

import json
import os
import time
import zipfile

import h5py
import numpy as np
import pytest
from safetensors.numpy import save_file

import hostile
from conftest import assert_bit_exact
from hostile import assert_refused, keras_archive, legacy_h5, one_error_line, run_bounded
from transcoder import pipeline
from transcoder.errors import OutputExistsError
from transcoder.formats._guard import limits
from transcoder.pipeline import atomic_output, read

SLACK_MIB = 48
DEEP = 100_000


def refused(cli, src, tmp_path, *extra, dst="out.pt"):
    code, _, err = cli(src, tmp_path / dst, "--no-check", *extra)
    return assert_refused(code, err, src, tmp_path, {p.name for p in tmp_path.iterdir()
                                                     if p.name != dst})


def small_valid(path):
    save_file({"fc.weight": np.ones((4, 3), np.float32), "fc.bias": np.zeros(4, np.float32)},
              str(path))
    return path


# --------------------------------------------------------------------------- safetensors

@pytest.mark.parametrize("header", [
    b"[" * DEEP + b"]" * DEEP,                                       # nested too deeply
    b'{"w": {"dtype": "F32", "shape": [' + b"[" * DEEP + b"]" * DEEP + b'], "data_offsets": [0, 4]}}',
    b'{"a\\ud800b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}',   # lone surrogate
    b'{"a\\u0000b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}',   # NUL
    b'{"w": {"dtype": "F32", "shape": [18446744073709551616], "data_offsets": [0, 4]}}',
    b'{"w": {"dtype": "F32", "shape": [' + b"1," * 99 + b'1], "data_offsets": [0, 4]}}',
    b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "__metadata__": '
    b'{"transcoder": "' + b"[" * DEEP + b'"}}',
    b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "__metadata__": '
    b'{"transcoder": "{\\"steps\\": 5}"}}',
    b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "__metadata__": '
    b'{"transcoder": "{\\"steps\\": [{\\"torch\\": [1], \\"keras\\": [], \\"op\\": {}}]}"}}',
])
def test_hostile_safetensors_headers_are_bad_input(cli, tmp_path, header):
    src = hostile.safetensors_raw(tmp_path / "bad.safetensors", header, bytes(4))
    for dst in ("out.pt", "out.h5", "out.safetensors"):
        refused(cli, src, tmp_path, dst=dst)


def test_a_tensor_named_like_the_metadata_is_refused_for_safetensors(cli, tmp_path):
    src = tmp_path / "meta.h5"
    legacy_h5(src, {"d": {"kernel": np.ones((2, 2), np.float32)}})
    with h5py.File(src, "a") as f:
        f.create_group("transcoder_carried")["0"] = np.ones(3, np.float32)
        f["transcoder_carried"]["0"].attrs["name"] = "__metadata__"
    assert "reserves the name" in refused(cli, src, tmp_path, dst="out.safetensors")


@pytest.mark.slow   # 22,500 tensors converted: 5-8 s of CPU on a loaded 2-core machine
def test_many_empty_tensors_take_linear_time(cli, tmp_path):
    """The time a tensor costs does not grow with the count: the time above a one-tensor file's
    grows 4x (< 8x) for 4x the tensors, where a step that went over every tensor again for
    each one would grow 16x. Best of 3 interleaved runs per size, so that a loaded machine
    slows every size alike. (200,000 empty tensors once did not finish in 30 s.)"""
    sizes = (1, 1_500, 6_000)
    sources = {n: tmp_path / f"empty{n}.safetensors" for n in sizes}
    for n, src in sources.items():
        save_file({f"t{i}": np.zeros(0, np.float32) for i in range(n)}, str(src))
    best = dict.fromkeys(sizes, float("inf"))
    for _ in range(3):
        for n, src in sources.items():
            dst = tmp_path / "empty.h5"
            dst.unlink(missing_ok=True)
            started = time.perf_counter()
            code, _, err = cli(src, dst, "--no-check", "-q")
            best[n] = min(best[n], time.perf_counter() - started)
            assert code == 0, err
    with read(tmp_path / "empty.h5") as ckpt:
        assert len(ckpt.tensors) == sizes[-1] and ckpt[f"t{sizes[-1] - 1}"].shape == (0,)
    small, large = (best[n] - best[1] for n in sizes[1:])
    assert large < 8 * small, {n: round(t, 3) for n, t in best.items()}


@pytest.mark.parametrize("index", [
    "[" * DEEP + "]" * DEEP,
    json.dumps({"weight_map": {"w": 5}}),
    json.dumps({"weight_map": ["a.safetensors"]}),
    json.dumps({"weight_map": {"w": ".."}}),
    json.dumps({"weight_map": {"w": "../elsewhere.safetensors"}}),
    json.dumps({"weight_map": {"w": "a\u0000.safetensors"}}),
])
def test_hostile_indexes_are_bad_input(cli, tmp_path, index):
    src = tmp_path / "model.safetensors.index.json"
    src.write_text(index)
    refused(cli, src, tmp_path)


# ------------------------------------------------------------------------------ HDF5

def test_gzip_bomb_in_h5_is_refused_in_bounded_memory(tmp_path):
    """64 MiB of zeros in a 1 MiB-chunked gzip dataset: about 1000:1."""
    src = legacy_h5(tmp_path / "bomb.h5", {"d": {"kernel": np.zeros((4096, 4096), np.float32)}},
                    compression="gzip", chunks=(512, 512))
    run = run_bounded([src, tmp_path / "out.pt", "--no-check"], tmp_path, timeout=60)
    line = assert_refused(run.code, run.stderr, src, tmp_path, {"bomb.h5"})
    assert f"more than {limits.RATIO}:1" in line
    assert run.peak_mib < 200, run.peak_mib


def test_gzip_within_the_ratio_converts(cli, tmp_path):
    kernel = np.random.default_rng(0).standard_normal((64, 32), dtype=np.float32)
    src = legacy_h5(tmp_path / "gz.h5", {"fc": {"kernel": kernel, "bias": np.ones(32, np.float32)}},
                    compression="gzip")
    code, _, err = cli(src, tmp_path / "gz.safetensors", "--no-check")
    assert code == 0, err
    with read(tmp_path / "gz.safetensors") as ckpt:
        assert_bit_exact(ckpt["fc.weight"].load(), kernel.T)


def test_one_dataset_under_many_weight_names_is_refused(cli, tmp_path):
    src = legacy_h5(tmp_path / "reuse.h5", {"d0": {"kernel": np.ones((256, 256), np.float32)}})
    with h5py.File(src, "a") as f:
        names = [b"d0"]
        for i in range(1, 50):
            grp = f.create_group(f"d{i}")
            grp.attrs["weight_names"] = np.array([f"d{i}/kernel".encode()])
            grp[f"d{i}/kernel"] = f["d0/d0/kernel"]   # a hard link to the same dataset
            names.append(f"d{i}".encode())
        f.attrs["layer_names"] = np.array(names)
    assert "reuses datasets" in refused(cli, src, tmp_path)


@pytest.mark.parametrize("meta", ['{"steps": 5}', '[1, 2]', '{"steps": [{"torch": "a"}]}',
                                  '{"version": "x"}', '{"carried": [1]}', "[" * DEEP])
def test_our_metadata_with_wrong_types_is_bad_input(cli, tmp_path, meta):
    src = legacy_h5(tmp_path / "ours.h5", {"fc": {"kernel": np.ones((3, 4), np.float32)}})
    with h5py.File(src, "a") as f:
        f.attrs["transcoder"] = meta
    refused(cli, src, tmp_path)


def test_a_scalar_dense_bias_is_bad_input(cli, tmp_path):
    """No Linear has a 0-d bias: exit 2 naming it, not a file the check then fails."""
    src = legacy_h5(tmp_path / "scalar.h5", {"dense": {"kernel": np.ones((3, 4), np.float32),
                                                        "bias": np.float32(2.5)}})
    with h5py.File(src, "a") as f:
        f["dense"].attrs["transcoder_class_name"] = "Dense"
    code, _, err = cli(src, tmp_path / "scalar.pt", "--no-check")
    assert code == 2 and "dense/bias: a Linear bias must have shape [4], not []" in err
    assert not (tmp_path / "scalar.pt").exists()


# ------------------------------------------------------------------------------ .keras

def _weights_h5(tmp_path, data, **options) -> bytes:
    path = tmp_path / "w.h5"
    with h5py.File(path, "w") as f:
        grp = f.create_group("layers/dense/vars")
        grp.create_dataset("0", data=data, **options)
        grp.create_dataset("1", data=np.zeros(data.shape[1], np.float32))
    blob = path.read_bytes()
    path.unlink()
    return blob


def test_keras_config_nested_too_deeply_is_bad_input(cli, tmp_path):
    src = keras_archive(tmp_path / "deep.keras", b"[" * DEEP + b"]" * DEEP,
                        _weights_h5(tmp_path, np.ones((3, 4), np.float32)))
    assert "nested" in refused(cli, src, tmp_path)


def test_compressed_keras_weights_beyond_the_ratio_are_refused(tmp_path):
    config = json.dumps({"class_name": "Sequential", "config": {"layers": [
        {"class_name": "Dense", "config": {"name": "dense"}}]}}).encode()
    src = keras_archive(tmp_path / "bomb.keras", config,
                        _weights_h5(tmp_path, np.zeros((4096, 4096), np.float32)),
                        zipfile.ZIP_DEFLATED)
    run = run_bounded([src, tmp_path / "out.pt", "--no-check"], tmp_path, timeout=60)
    assert_refused(run.code, run.stderr, src, tmp_path, {"bomb.keras"})
    assert run.peak_mib < 200, run.peak_mib


# ------------------------------------------------------------------------------ --rules

@pytest.mark.parametrize("rules", [
    b'layer = "abc"', b"layer = 5", b"layer = [1, 2]", b"tensor = [1]",
    b"\xff\xfe not utf-8", b"[[layer]]\nmatch = \"*\"\nkind = \"MultiheadAttention\"\nnum_heads = \"x\"",
    b"[[layer]]\nmatch = \"*\"\nkind = \"Conv2d\"\ngroups = 0",
    b"[[tensor]]\ntorch = \"fc.weight\"\nkeras = \"fc/kernel\"\npermute = [1.0, 0.0]",
    b"[[tensor]]\ntorch = \"fc.weight\"\nkeras = \"f\\u0000c/kernel\"",
    b"x = " + b"[" * DEEP + b"]" * DEEP,
])
def test_hostile_rules_files_are_bad_input(cli, tmp_path, rules):
    src = small_valid(tmp_path / "ok.safetensors")
    (tmp_path / "rules.toml").write_bytes(rules)
    code, _, err = cli(src, tmp_path / "out.h5", "--no-check", "--rules", tmp_path / "rules.toml")
    assert_refused(code, err, tmp_path / "rules.toml", tmp_path, {"ok.safetensors", "rules.toml"})


@pytest.mark.parametrize("special", ["/dev/zero", "fifo"])
def test_rules_from_a_device_or_fifo_are_refused_without_blocking(tmp_path, special):
    src = small_valid(tmp_path / "ok.safetensors")
    rules = tmp_path / "fifo.toml"
    if special == "fifo":
        os.mkfifo(rules)
    else:
        rules = special
    run = run_bounded([src, tmp_path / "out.h5", "--no-check", "--rules", rules], tmp_path,
                      timeout=30)
    assert run.code == 2 and "not a regular file" in one_error_line(run.stderr)
    assert not (tmp_path / "out.h5").exists()


# ------------------------------------------------------------------------- outputs

def test_dst_an_existing_directory_is_refused_even_with_force(cli, tmp_path):
    src = small_valid(tmp_path / "ok.safetensors")
    (tmp_path / "out.h5").mkdir()
    (tmp_path / "out.h5" / "keep").write_text("x")
    code, _, err = cli(src, tmp_path / "out.h5", "--force", "--no-check")
    assert code == 2 and "is a directory" in one_error_line(err)
    assert (tmp_path / "out.h5" / "keep").read_text() == "x"


def _appear_while_writing(monkeypatch, dst, content=b"theirs"):
    """DST appears between the exists check and the rename (another process wins the race)."""
    from transcoder.formats import safetensors_format

    real = safetensors_format.write

    def write(ckpt, path):
        real(ckpt, path)
        dst.write_bytes(content)
    monkeypatch.setattr(safetensors_format, "write", write)


@pytest.mark.parametrize("fallback", ["link", "renameat2", "check"])
def test_a_dst_that_appears_meanwhile_is_kept_without_force(cli, tmp_path, monkeypatch, fallback):
    src = small_valid(tmp_path / "ok.safetensors")
    dst = tmp_path / "out.safetensors"
    if fallback != "link":
        monkeypatch.setattr(pipeline, "_link", lambda tmp, dst: False)
    if fallback == "check":
        monkeypatch.setattr(pipeline, "_rename_noreplace", lambda tmp, dst: False)
    _appear_while_writing(monkeypatch, dst)
    code, _, err = cli(src, dst, "--no-check")
    assert code == 2 and "appeared while it was being written" in one_error_line(err)
    assert dst.read_bytes() == b"theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.safetensors", "out.safetensors"]


def test_with_force_the_race_is_won_by_the_conversion(cli, tmp_path, monkeypatch):
    src = small_valid(tmp_path / "ok.safetensors")
    dst = tmp_path / "out.safetensors"
    _appear_while_writing(monkeypatch, dst)
    code, _, err = cli(src, dst, "--no-check", "--force")
    assert code == 0, err
    with read(dst) as ckpt:
        assert_bit_exact(ckpt["fc.weight"].load(), np.ones((4, 3), np.float32))


def test_atomic_output_refuses_a_file_that_appears_meanwhile(tmp_path):
    dst = tmp_path / "dst"
    with pytest.raises(OutputExistsError):
        with atomic_output(dst) as tmp:
            tmp.write_bytes(b"ours")
            dst.write_bytes(b"theirs")
    assert dst.read_bytes() == b"theirs" and [p.name for p in tmp_path.iterdir()] == ["dst"]


_TRUNCATE = """
import os, sys
from transcoder.formats import pt, safetensors_format
from transcoder.formats._io import filemap
real, seen = filemap.map_range, []
def truncating(fd, offset, nbytes):
    array = real(fd, offset, nbytes)
    seen.append(1)
    if len(seen) == 2:
        os.truncate(sys.argv[1], 4096)   # another process cuts the source mid-conversion
    return array
pt.map_range = safetensors_format.map_range = truncating
from transcoder.cli import main
sys.exit(main(sys.argv[1:] + ["--no-check"]))
"""


@pytest.mark.parametrize("target", ["out.h5", "out.pt", "out.safetensors"])
def test_a_source_truncated_while_mapped_is_one_line_and_exit_2(tmp_path, target):
    import subprocess
    import sys

    src = tmp_path / "big.safetensors"
    save_file({f"l{i}.{p}": np.ones((512, 1024) if p == "weight" else 512, np.float32)
               for i in range(6) for p in ("weight", "bias")}, str(src))
    done = subprocess.run([sys.executable, "-c", _TRUNCATE, src, tmp_path / target],
                          capture_output=True, text=True, timeout=60)
    line = assert_refused(done.returncode, done.stderr, src, tmp_path, {"big.safetensors"})
    # a mapped tensor faults (SIGBUS, or EFAULT in a write call); a small one read after the
    # cut finds the file short: which comes first depends on the two fill threads
    assert "truncated or changed while it was being read" in line or "ends early" in line


def _loop_heap(path):
    """Make the free-space object of the file's global heap collection size 0: HDF5 1.14.6
    loops forever decoding it (found by the fuzz campaign)."""
    import struct

    data = bytearray(path.read_bytes())
    at = data.find(b"GCOL")
    end, place = at + struct.unpack_from("<Q", data, at + 8)[0], at + 16
    while place + 16 <= end:
        index, size = struct.unpack_from("<H", data, place)[0], struct.unpack_from("<Q", data, place + 8)[0]
        if index == 0:
            struct.pack_into("<Q", data, place + 8, 0)
            break
        place += 16 + (size + 7) // 8 * 8
    path.write_bytes(bytes(data))


def _refused_bounded(h5, in_keras: bool, tmp_path):
    """Convert ``h5`` (or a .keras holding it) in a bounded child: (the run, its one line),
    once it is known to be a refusal that left nothing behind."""
    src = h5
    if in_keras:
        src = keras_archive(tmp_path / "m.keras", b"{}", h5.read_bytes())
        h5.unlink()
    run = run_bounded([src, tmp_path / "out.pt", "--no-check"], tmp_path, timeout=60)
    return run, assert_refused(run.code, run.stderr, src, tmp_path, {src.name})


def _inflate_vlen(path, value: str, declared: int):
    """Make the variable-length attribute holding ``value`` declare ``declared`` bytes: its
    data is the length, then the global heap collection's address and the object's index."""
    import struct

    data = bytearray(path.read_bytes())
    ref = struct.pack("<IQ", len(value.encode()), data.find(b"GCOL"))
    at = data.find(ref)
    assert at > 0 and data.find(ref, at + 1) == -1
    struct.pack_into("<I", data, at, declared)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", ["h5", "keras", "carried"])
def test_a_variable_length_attribute_declaring_gigabytes_is_refused(cli, tmp_path, where):
    """HDF5 1.14.6 allocates and zeroes what a variable-length value declares before reading
    it: 16 bytes declaring 4 GiB took 4.2 GB and 6 s (found by the fuzz campaign); here 2 GiB,
    under the child's address limit, so that only the check can keep the memory down."""
    if where == "carried":   # our own carried-name attribute, on a file we wrote
        torch = pytest.importorskip("torch")
        bn = torch.nn.BatchNorm1d(3)
        torch.save(bn.state_dict(), tmp_path / "bn.pt")
        assert cli(tmp_path / "bn.pt", tmp_path / "m.h5", "--no-check")[0] == 0
        (tmp_path / "bn.pt").unlink()
        h5, value = tmp_path / "m.h5", "num_batches_tracked"
    elif where == "keras":   # a Keras 3 layer's variables named by a str attribute
        h5, value = tmp_path / "m.h5", "dense_layer_name"
        with h5py.File(h5, "w") as f:
            f.create_dataset("layers/dense/vars/0", data=np.ones((3, 4), np.float32))
            f["layers/dense/vars"].attrs["name"] = value
    else:
        h5, value = legacy_h5(tmp_path / "m.h5", {"fc": {"kernel": np.ones((3, 4), np.float32)}}), \
            json.dumps({"class_name": "Sequential"})
        with h5py.File(h5, "a") as f:
            f.attrs["model_config"] = value   # a str: variable-length, in a global heap
    _inflate_vlen(h5, value, 2 << 30)
    run, line = _refused_bounded(h5, where == "keras", tmp_path)
    assert f"declares {2 << 30} bytes of values" in line, line
    assert run.peak_mib < 400, run.peak_mib


@pytest.mark.parametrize("where", ["h5", "keras"])
def test_a_global_heap_that_would_hang_hdf5_is_refused(tmp_path, where):
    h5 = legacy_h5(tmp_path / "m.h5", {"fc": {"kernel": np.ones((3, 4), np.float32)}})
    with h5py.File(h5, "a") as f:
        f.attrs["model_config"] = json.dumps({"class_name": "Sequential"})  # a str: vlen, heap
    _loop_heap(h5)
    run, line = _refused_bounded(h5, where == "keras", tmp_path)
    assert "global heap" in line and run.seconds < 30
