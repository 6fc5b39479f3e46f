"""The legacy .h5 writer's layout through h5py's low-level calls (keras_h5._group,
keras_h5._strings_attr, the types _allocate caches per file) writes the bytes h5py's high-level
``create_group`` and ``attrs[...] = ...`` wrote before, on layers of every kind the writer takes:
ASCII and non-ASCII names, nested weight paths, a layer without weights, name lists split over
several attributes, bfloat16, bool, complex, scalars (written through the low-level calls too),
empty tensors and carried tensors. The written file reads back bit-exact.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import assert_bit_exact
from transcoder.checkpoint import DTYPES, LAYOUT_KERAS, Checkpoint, TensorRef
from transcoder.formats import keras_h5
from transcoder.formats._hdf5 import h5safety as h5s
from transcoder.formats.base import ReadOptions


def _checkpoint() -> Checkpoint:
    rng = np.random.default_rng(7)
    arrays = {
        "dense/kernel": rng.standard_normal((5, 3)).astype("float32"),
        "dense/bias": rng.standard_normal(3).astype("float16"),
        "conv/conv/kernel": rng.standard_normal((3, 3, 2, 4)).astype("float64"),
        "couche_é/poids": rng.integers(-9, 9, (4, 2)).astype("int64"),
        "層/权重": rng.integers(0, 2, (3,)).astype(bool),
        "cplx/w": (rng.standard_normal(4) + 1j).astype("complex64"),
        "scalar/s": np.array(2.5, "float32"),
        "empty/e": np.zeros((0, 3), "float32"),
        "many/" + "w" * 300 + "/0": rng.standard_normal(2).astype("float32"),
        "carried.step": np.array([3], "int32"),
        "carried.count": np.array(2**40 + 7, "int64"),   # a BatchNorm's num_batches_tracked
        "carried.nan": np.array(0x7C01, "uint16").view("float16"),   # a NaN payload, scalar
    }
    refs = {n: TensorRef.from_array(n, a) for n, a in arrays.items()}
    bf16 = rng.standard_normal(6).astype(DTYPES["bfloat16"])
    refs["bf/w"] = TensorRef.from_array("bf/w", bf16)
    # a layer whose weight_names exceed one attribute (64 KiB): split into weight_names0...
    long_names = [f"{'x' * 200}_{i}" for i in range(400)]
    for w in long_names:
        refs[f"long/{w}"] = TensorRef.from_array(f"long/{w}", np.array([1.0], "float32"))
    layers = [
        {"name": "dense", "class_name": "Dense", "weights": ["kernel", "bias"]},
        {"name": "conv", "class_name": "Conv2D", "weights": ["conv/kernel"]},
        {"name": "couche_é", "class_name": None, "weights": ["poids"]},
        {"name": "層", "class_name": None, "weights": ["权重"]},
        {"name": "cplx", "class_name": None, "weights": ["w"]},
        {"name": "scalar", "class_name": None, "weights": ["s"]},
        {"name": "empty", "class_name": None, "weights": ["e"]},
        {"name": "many", "class_name": None, "weights": ["w" * 300 + "/0"]},
        {"name": "bf", "class_name": None, "weights": ["w"]},
        {"name": "no_weights", "class_name": "Dropout", "weights": []},
        {"name": "long", "class_name": None, "weights": long_names},
    ]
    return Checkpoint(refs, LAYOUT_KERAS, meta={"keras_layers": layers,
                                                "carried": ["carried.step", "carried.count",
                                                            "carried.nan"]})


def _high_level_group(parent, name):
    return parent.create_group(name)


def _high_level_text(obj, name, text):
    obj.attrs[name] = text


def _high_level(patch) -> None:
    """The layout as h5py's high-level calls made it."""
    patch.setattr(keras_h5, "_group", _high_level_group)
    patch.setattr(keras_h5, "_strings_attr", h5s.write_strings_attr)
    patch.setattr(keras_h5, "_text_attr", _high_level_text)


def test_the_low_level_layout_writes_the_bytes_the_high_level_calls_wrote(tmp_path,
                                                                          monkeypatch):
    ckpt = _checkpoint()
    fast = tmp_path / "fast.h5"
    keras_h5.write(ckpt, fast)
    with monkeypatch.context() as patch:
        _high_level(patch)
        keras_h5.write(ckpt, tmp_path / "slow.h5")
    assert fast.read_bytes() == (tmp_path / "slow.h5").read_bytes()


def test_the_layout_reads_back_bit_exact(tmp_path):
    import h5py

    ckpt = _checkpoint()
    path = tmp_path / "out.h5"
    keras_h5.write(ckpt, path)
    back = keras_h5.read(path, ReadOptions())
    renamed = {"conv/conv/kernel": "conv/kernel"}   # the reader names a nested path by its end
    assert sorted(back.tensors) == sorted(renamed.get(n, n) for n in ckpt.tensors)
    for name, ref in ckpt.tensors.items():
        read = back.tensors[renamed.get(name, name)]
        assert read.dtype == ref.dtype, name
        assert_bit_exact(read.load(), ref.load(), name)
    with h5py.File(path, "r") as f:
        assert [n.decode() for n in f.attrs["layer_names"]][:2] == ["dense", "conv"]
        assert list(f["dense"].attrs["weight_names"]) == [b"dense/kernel", b"dense/bias"]
        assert f["no_weights"].attrs["weight_names"].shape == (0,)
        assert f["dense"].attrs[keras_h5.CLASS_ATTR] == "Dense"
        assert keras_h5.CLASS_ATTR not in f["cplx"].attrs
        assert "weight_names0" in f["long"].attrs and "weight_names" not in f["long"].attrs
        # names keep the character set h5py gives them: ASCII unless they need UTF-8
        assert f.id.links.get_info(b"dense").cset == h5py.h5t.CSET_ASCII
        assert f.id.links.get_info("層".encode()).cset == h5py.h5t.CSET_UTF8


@pytest.mark.parametrize("fixture", ["encoder.pt", "small_cnn.pt"])
def test_fixture_conversions_write_the_same_bytes_as_the_high_level_layout(fixture, tmp_path,
                                                                          monkeypatch):
    from transcoder import api

    root = Path(__file__).resolve().parents[1] / "fixtures"
    api.convert(root / fixture, tmp_path / "fast.h5", check=False)
    with monkeypatch.context() as patch:
        _high_level(patch)
        api.convert(root / fixture, tmp_path / "slow.h5", check=False)
    assert (tmp_path / "fast.h5").read_bytes() == (tmp_path / "slow.h5").read_bytes()
