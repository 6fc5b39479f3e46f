"""Hostile PyTorch files (issue 12): pickles and zip archives built by hand, byte by byte.

Each is refused with exit code 2 and one line naming the file, in bounded time and memory,
leaving nothing behind; the small expansions real checkpoints hold still convert. Bombs run
in a fresh process with an address-space limit, whose peak resident memory is compared with a
tiny valid conversion's.
"""
from __future__ import annotations

import pickle  # only to write the legacy header; nothing here is unpickled
import zipfile

import numpy as np
import pytest

import hostile
from hostile import Entry, assert_refused, run_bounded, state_dict_pickle, torch_zip
from conftest import assert_bit_exact
from transcoder.pipeline import read
from transcoder.formats._guard import limits
from transcoder.formats import pt

#: Peak memory a refused bomb may take beyond a tiny valid conversion (the files are < 1 MiB).
SLACK_MIB = 48


@pytest.fixture(scope="module")
def baseline_mib(tmp_path_factory):
    """Peak memory of converting a tiny valid file in a fresh process."""
    tmp = tmp_path_factory.mktemp("baseline")
    src = torch_zip(tmp / "ok.pt", state_dict_pickle([Entry("w", "0", 4, (4,), (1,))]),
                    {"0": np.arange(4, dtype=np.float32).tobytes()})
    run = run_bounded([src, tmp / "ok.h5", "--no-check"], tmp)
    assert run.code == 0, run.stderr
    return run.peak_mib


def _bounded_refusal(tmp_path, src, baseline_mib, seconds=15.0):
    dst = tmp_path / "out.safetensors"
    run = run_bounded([src, dst, "--no-check"], tmp_path, timeout=60)
    line = assert_refused(run.code, run.stderr, src, tmp_path, {src.name})
    assert run.peak_mib <= baseline_mib + SLACK_MIB, (run.peak_mib, baseline_mib)
    assert run.seconds < seconds, run.seconds
    return line


# ---------------------------------------------------------------------------------- class 1: hangs

@pytest.mark.parametrize("attack", ["dag_as_dict_key", "dag_in_frozenset", "dag_to_torch_size",
                                    "dag_as_persistent_id", "dag_key_through_ordered_dict",
                                    "deep_tuple_key", "memo_index_bomb", "reused_large_argument"])
def test_pickle_bombs_are_refused_quickly(tmp_path, baseline_mib, attack):
    src = torch_zip(tmp_path / "bomb.pt", getattr(hostile, attack)())
    line = _bounded_refusal(tmp_path, src, baseline_mib, seconds=10)
    assert "bomb" in line or "nests" in line or "out of sequence" in line or "too long" in line


def test_legacy_pickle_bomb_is_refused(tmp_path, baseline_mib):
    """The bomb is the main pickle of a legacy file, after a valid magic, protocol and sys info
    (alone, the file is refused earlier, as not a PyTorch file)."""
    src = tmp_path / "legacy.pt"
    header = b"".join(pickle.dumps(value, protocol=2) for value in
                      (pt.LEGACY_MAGIC, pt.LEGACY_PROTOCOL, {"little_endian": True}))
    src.write_bytes(header + hostile.dag_as_dict_key())
    line = _bounded_refusal(tmp_path, src, baseline_mib, seconds=10)
    assert "bomb" in line, line


def test_shared_module_dag_is_refused(tmp_path, baseline_mib):
    """2^40 paths: refused by counting the tree once per distinct module (0.3 s as a whole
    command), not after walking a million entries (3-7 s, and it failed its old 10 s bound
    under load)."""
    src = torch_zip(tmp_path / "modules.pt", hostile.module_dag(levels=40))
    line = _bounded_refusal(tmp_path, src, baseline_mib, seconds=5)
    assert "shared submodules" in line or "too long" in line


# --------------------------------------------------------------------------- class 2: memory bombs

def test_zero_stride_4_gib_from_4_bytes_is_refused(tmp_path, baseline_mib):
    pkl = state_dict_pickle([Entry("w", "0", 1, (1 << 30,), (0,))])
    src = torch_zip(tmp_path / "stride.pt", pkl, {"0": b"\x00\x00\x80\x3f"})
    line = _bounded_refusal(tmp_path, src, baseline_mib)
    assert "declares 4294967296 bytes from 4 stored" in line and "w" in line


def test_position_ids_and_small_broadcasts_still_convert(cli, tmp_path):
    """HF BERT's position_ids: arange(512).expand(1, -1), strides (0, 1); a 1000-float
    broadcast of one value stays under the floor."""
    ids = np.arange(512, dtype=np.int64)
    pkl = state_dict_pickle([Entry("embeddings.position_ids", "0", 512, (1, 512), (0, 1),
                                   storage="LongStorage"),
                             Entry("scale", "1", 1, (1000,), (0,))])
    src = torch_zip(tmp_path / "bert.pt", pkl, {"0": ids.tobytes(), "1": np.float32(0.5).tobytes()})
    code, _, err = cli(src, tmp_path / "bert.safetensors", "--no-check")
    assert code == 0, err
    with read(tmp_path / "bert.safetensors") as ckpt:
        assert_bit_exact(ckpt["embeddings.position_ids"].load(), ids.reshape(1, 512))
        assert_bit_exact(ckpt["scale"].load(), np.full(1000, 0.5, np.float32))


def test_one_storage_named_by_many_tensors_is_refused(tmp_path, baseline_mib):
    count, numel = 200, 1 << 18   # 200 x 1 MiB declared over one 1 MiB storage
    pkl = state_dict_pickle([Entry(f"w{i}", "0", numel, (numel,), (1,)) for i in range(count)])
    src = torch_zip(tmp_path / "tied.pt", pkl, {"0": bytes(4 * numel)})
    line = _bounded_refusal(tmp_path, src, baseline_mib)
    assert f"more than {limits.RATIO}:1" in line


def test_tied_weights_still_convert(cli, tmp_path):
    """An embedding and an LM head sharing one storage (2:1) convert, both bit-exact."""
    table = np.random.default_rng(0).standard_normal((64, 16), dtype=np.float32)
    pkl = state_dict_pickle([Entry("embed.weight", "0", table.size, table.shape, (16, 1)),
                             Entry("head.weight", "0", table.size, table.shape, (16, 1))])
    src = torch_zip(tmp_path / "tied.pt", pkl, {"0": table.tobytes()})
    code, _, err = cli(src, tmp_path / "tied.safetensors", "--no-check")
    assert code == 0, err
    with read(tmp_path / "tied.safetensors") as ckpt:
        assert_bit_exact(ckpt["head.weight"].load(), table)


def _recompress(src, dst, method, only=None):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            chosen = method if only is None or info.filename.endswith(only) else zipfile.ZIP_STORED
            zout.writestr(info.filename, zin.read(info), compress_type=chosen)
    return dst


@pytest.mark.parametrize("method,only", [(zipfile.ZIP_BZIP2, "data.pkl"),
                                         (zipfile.ZIP_LZMA, "data/0"),
                                         (zipfile.ZIP_BZIP2, None)])
def test_bzip2_and_lzma_records_are_refused(tmp_path, method, only, cli):
    ok = torch_zip(tmp_path / "ok.bin", state_dict_pickle([Entry("w", "0", 4, (4,), (1,))]),
                   {"0": bytes(16)})
    src = _recompress(ok, tmp_path / "packed.pt", method, only)
    ok.unlink()
    code, _, err = cli(src, tmp_path / "out.h5", "--no-check")
    line = assert_refused(code, err, src, tmp_path, {"packed.pt"})
    assert f"compression method {method}" in line


def test_deflated_record_beyond_the_ratio_is_refused(tmp_path, baseline_mib):
    numel = 16 << 20  # 64 MiB of zeros deflate to about 64 KiB (1000:1)
    pkl = state_dict_pickle([Entry("w", "0", numel, (numel,), (1,))])
    src = torch_zip(tmp_path / "zeros.pt", pkl, {"0": bytes(4 * numel)}, zipfile.ZIP_DEFLATED)
    line = _bounded_refusal(tmp_path, src, baseline_mib)
    assert "data/0" in line and "bomb" in line


def test_deflated_records_within_the_ratio_convert(cli, tmp_path):
    """A re-zipped (deflated) checkpoint of trained-like weights still reads bit-exact."""
    weights = np.random.default_rng(1).standard_normal(4096, dtype=np.float32)
    pkl = state_dict_pickle([Entry("w", "0", weights.size, weights.shape, (1,))])
    src = torch_zip(tmp_path / "z.pt", pkl, {"0": weights.tobytes()}, zipfile.ZIP_DEFLATED)
    code, _, err = cli(src, tmp_path / "z.safetensors", "--no-check")
    assert code == 0, err
    with read(tmp_path / "z.safetensors") as ckpt:
        assert_bit_exact(ckpt["w"].load(), weights)


@pytest.mark.slow
def test_torchscript_code_bomb_is_refused(tmp_path, baseline_mib):
    """24 code records of 64 MiB deflated to 64 KiB each: decompressed whole, they took 1.5 GiB."""
    src = tmp_path / "script.pt"
    with zipfile.ZipFile(src, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", hostile.PROTO2 + b"N.")
        for i in range(24):
            zf.writestr(f"archive/code/__torch__/m{i}.py", b"\n" * (64 << 20))
    line = _bounded_refusal(tmp_path, src, baseline_mib, seconds=30)
    assert "archive/code/__torch__/m0.py" in line and f"more than {limits.RATIO}:1" in line, line


@pytest.mark.slow
def test_torchscript_code_of_short_lines_is_read_line_by_line(tmp_path, baseline_mib):
    """A stored 32 MiB record of two-character lines (as a list: about 20 times its size)."""
    src = tmp_path / "lines.pt"
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr("archive/data.pkl", hostile.PROTO2 + b"N.")
        zf.writestr("archive/code/__torch__/m.py", b"a\n" * (16 << 20))
    dst = tmp_path / "out.h5"
    run = run_bounded([src, dst, "--no-check"], tmp_path, timeout=60)
    assert_refused(run.code, run.stderr, src, tmp_path, {src.name})
    assert run.peak_mib <= baseline_mib + SLACK_MIB + 32, (run.peak_mib, baseline_mib)


def test_repeated_decompression_of_one_record_is_bounded(tmp_path, cli):
    """Thousands of tensors at rising offsets of one deflated record: each read used to
    decompress the record from its start (quadratic)."""
    count, each = 4000, 64
    data = np.random.default_rng(2).integers(0, 255, count * each, dtype=np.uint8).tobytes()
    entries = [Entry(f"t{i}", "0", count * each, (each,), (1,), offset=i * each, storage="ByteStorage")
               for i in range(count)]
    src = torch_zip(tmp_path / "many.pt", state_dict_pickle(entries), {"0": data},
                    zipfile.ZIP_DEFLATED)
    code, _, err = cli(src, tmp_path / "many.safetensors", "--no-check")
    assert_refused(code, err, src, tmp_path, {"many.pt"})


# -------------------------------------------------------------------------- class 3: poisoning

def test_build_on_a_function_is_refused_and_the_next_file_reads_right(cli, tmp_path):
    bad = torch_zip(tmp_path / "bad.pt", hostile.build_on_function())
    code, _, err = cli(bad, tmp_path / "bad.h5", "--no-check")
    line = assert_refused(code, err, bad, tmp_path, {"bad.pt"})
    assert "modify the function torch._utils._rebuild_tensor_v2" in line
    values = np.arange(6, dtype=np.float32)
    good = torch_zip(tmp_path / "good.pt", state_dict_pickle([Entry("w", "0", 6, (2, 3), (3, 1))]),
                     {"0": values.tobytes()})
    code, _, err = cli(good, tmp_path / "good.safetensors", "--no-check")
    assert code == 0, err
    with read(tmp_path / "good.safetensors") as ckpt:
        assert_bit_exact(ckpt["w"].load(), values.reshape(2, 3))


@pytest.mark.parametrize("attack", ["setitem_on_class", "append_on_function"])
def test_setitem_and_append_on_globals_are_refused(cli, tmp_path, attack):
    src = torch_zip(tmp_path / "bad.pt", getattr(hostile, attack)())
    code, _, err = cli(src, tmp_path / "bad.h5", "--no-check")
    assert "modify the function" in assert_refused(code, err, src, tmp_path, {"bad.pt"})


# ----------------------------------------------------------------- class 6: wrong shapes, names

@pytest.mark.parametrize("shape,stride", [((1 << 64,), (1,)), ((1,) * 100, (1,) * 100),
                                          ((1 << 40, 1 << 40), (1, 1))])
def test_absurd_shapes_are_bad_input(cli, tmp_path, shape, stride):
    src = torch_zip(tmp_path / "shape.pt", state_dict_pickle([Entry("w", "0", 1, shape, stride)]),
                    {"0": bytes(4)})
    code, _, err = cli(src, tmp_path / "out.h5", "--no-check")
    assert_refused(code, err, src, tmp_path, {"shape.pt"})


@pytest.mark.parametrize("name", ["a\ud800b", "a\x00b"])
def test_tensor_names_no_format_can_hold_are_refused(cli, tmp_path, name):
    src = torch_zip(tmp_path / "names.pt", state_dict_pickle([Entry(name, "0", 1, (1,), (1,))]),
                    {"0": bytes(4)})
    for target in ("out.safetensors", "out.h5", "out.pt"):
        code, _, err = cli(src, tmp_path / target, "--no-check")
        line = assert_refused(code, err, src, tmp_path, {"names.pt"})
        assert "\\x00" in line or "\\ud800" in line  # shown escaped, on one line


def test_large_bytes_beside_the_weights_still_convert(cli, tmp_path):
    """Protocol 2 pickles bytes as _codecs.encode(text): 96 MiB of them costs one call's worth
    of work, within the budget that grows with the pickle's size (20,000 such calls would not)."""
    value = hostile.glob("_codecs", "encode") + hostile.text("\x01" * (96 << 20))
    value += hostile.text("latin1") + b"\x86R"   # TUPLE2, REDUCE: what pickle writes for bytes
    pkl = state_dict_pickle([Entry("w", "0", 4, (4,), (1,))])
    data = pkl[:-2] + hostile.text("_note") + value + pkl[-2:]   # one more item before SETITEMS
    src = torch_zip(tmp_path / "blob.pt", data, {"0": np.arange(4, dtype=np.float32).tobytes()})
    code, _, err = cli(src, tmp_path / "blob.safetensors", "--no-check")
    assert code == 0, err
    with read(tmp_path / "blob.safetensors") as ckpt:
        assert_bit_exact(ckpt["w"].load(), np.arange(4, dtype=np.float32))
