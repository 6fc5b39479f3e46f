"""Formats by content: a file is read for what it is, whatever its name; a name that says
otherwise gets a one-line note; --from overrides; the destination's name still decides."""
from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pytest

from conftest import FIXTURES, assert_bit_exact
from transcoder import formats
from transcoder.formats.sniff import sniff
from transcoder.pipeline import read


@pytest.mark.parametrize("name, kind", [("small_cnn.pt", "pt"), ("small_cnn_scripted.pt", "pt"),
                                        ("encoder.safetensors", "safetensors"),
                                        ("small_cnn_training.ckpt", "pt")])
def test_shipped_fixtures_are_recognised_by_content(name, kind):
    assert sniff(FIXTURES / name) == kind


def test_keras_files_and_legacy_pickles_by_content(cli, tmp_path):
    cli(FIXTURES / "small_cnn.pt", tmp_path / "m.h5", "--no-check")
    assert sniff(tmp_path / "m.h5") == "keras_h5"
    with zipfile.ZipFile(tmp_path / "m.keras", "w") as z:
        z.writestr("config.json", "{}")
        z.writestr("metadata.json", "{}")
        z.write(tmp_path / "m.h5", "model.weights.h5")
    assert sniff(tmp_path / "m.keras") == "keras_zip"
    (tmp_path / "p.bin").write_bytes(b"\x80\x02" + b"\x00" * 20)
    assert sniff(tmp_path / "p.bin") == "pt"
    for junk in (b"", b"hello world, no format", b"PK\x03\x04broken", b"\x08" + b"\x00" * 15):
        (tmp_path / "j").write_bytes(junk)
        assert sniff(tmp_path / "j") is None


@pytest.mark.parametrize("length", [0x280, 0x380, 0x480, 0x580])
def test_a_safetensors_header_length_that_starts_like_a_pickle_is_safetensors(cli, tmp_path,
                                                                             length):
    """Lengths whose low byte is 0x80, then 2-5: the file starts 0x80 0x02-0x05 like a pickle's
    PROTO opcode. Such files were read as legacy pickles and refused (found by the fuzz
    campaign, on a file this tool had written)."""
    import struct

    values = np.arange(6, dtype=np.float32)
    header = json.dumps({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}})
    header = header.encode().ljust(length)   # the format allows trailing spaces
    src = tmp_path / "odd.safetensors"
    src.write_bytes(struct.pack("<Q", length) + header + values.tobytes())
    assert src.read_bytes()[:2] == bytes([0x80, length >> 8])
    assert sniff(src) == "safetensors"
    code, _, err = cli(src, tmp_path / "back.safetensors", "--no-check")
    assert code == 0, err
    with read(tmp_path / "back.safetensors") as back:
        assert_bit_exact(back["w"].load(), values.reshape(2, 3), "w")


def test_a_torchscript_archive_named_jit_is_read_with_a_note(cli, tmp_path):
    shutil.copy(FIXTURES / "small_cnn_scripted.pt", tmp_path / "vad.jit")
    code, out, err = cli(tmp_path / "vad.jit", tmp_path / "vad.h5", "--no-check")
    assert code == 0, err
    assert "vad.jit: read as PyTorch checkpoint (torch.save zip, legacy pickle, TorchScript), " \
           "by its content (its name says nothing known)" in err
    with read(tmp_path / "vad.h5") as back, read(FIXTURES / "small_cnn_scripted.pt") as orig:
        assert len(back.tensors) == len(orig.tensors)


def test_safetensors_named_pt_is_read_as_safetensors(cli, tmp_path):
    shutil.copy(FIXTURES / "encoder.safetensors", tmp_path / "enc.pt")
    code, _, err = cli(tmp_path / "enc.pt", tmp_path / "out.safetensors", "--no-check")
    assert code == 0 and "read as safetensors" in err and "its name says PyTorch" in err
    with read(tmp_path / "out.safetensors") as a, read(FIXTURES / "encoder.safetensors") as b:
        assert list(a.tensors) == list(b.tensors)
        for name in a.tensors:
            assert_bit_exact(a[name].load(), b[name].load(), name)


def test_from_overrides_and_the_destination_keeps_its_name(cli, tmp_path):
    shutil.copy(FIXTURES / "encoder.safetensors", tmp_path / "enc.pt")
    code, _, err = cli(tmp_path / "enc.pt", tmp_path / "x.h5", "--no-check", "--from", "pt")
    assert code == 2 and "enc.pt" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(tmp_path / "enc.pt", tmp_path / "x.h5", "--no-check", "--from", "onnx")
    assert code == 2 and "unknown format 'onnx'" in err
    assert formats.for_path(tmp_path / "new.safetensors").name == "safetensors"
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    code, _, err = cli(tmp_path / "notes.txt", tmp_path / "x.h5", "--no-check")
    assert code == 2 and "unknown file type" in err


def test_deployment_artifacts_are_recognised_by_content(tmp_path):
    (tmp_path / "export" / "1").mkdir(parents=True)
    (tmp_path / "export" / "1" / "saved_model.pb").write_bytes(b"\x08\x01")
    assert sniff(tmp_path / "export" / "1") == "savedmodel"
    assert sniff(tmp_path / "export") is None
    (tmp_path / "m.bin").write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\x00" * 24)
    assert sniff(tmp_path / "m.bin") == "tflite"
    assert formats.for_source(tmp_path / "export" / "1")[0].name == "savedmodel"
