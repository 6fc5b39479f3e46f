"""Keras file formats read and written with h5py only, checked against files Keras 3 writes.

Keras is imported only by the fixtures that build real models (once per module); the
round-trip and hostile-file tests run without it.
"""
from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import json  # noqa: E402
import struct  # noqa: E402
import zipfile  # noqa: E402
from pathlib import Path  # noqa: E402

import h5py  # noqa: E402
import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from transcoder.checkpoint import LAYOUT_KERAS, Checkpoint, TensorRef  # noqa: E402
from transcoder.errors import (FormatError, MappingError, UnsafeFileError,  # noqa: E402
                              UnsupportedError, UsageError)
from transcoder.formats import ReadOptions, for_path, keras_h5, keras_zip
from transcoder.formats._hdf5 import keras_config  # noqa: E402
from transcoder.formats._hdf5.h5safety import text  # noqa: E402

BF16 = ml_dtypes.bfloat16


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-exact equality: dtype, shape and bytes (NaN payloads and -0.0 included)."""
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def read(path: Path) -> Checkpoint:
    """Through the registry, as the pipeline does (suffix -> format, magic bytes checked)."""
    return for_path(path).read(Path(path))


def values(ckpt: Checkpoint, layer: str) -> list[np.ndarray]:
    entry = next(e for e in ckpt.meta["keras_layers"] if e["name"] == layer)
    return [ckpt[f"{layer}/{w}"].load() for w in entry["weights"]]


def make_ckpt(layers: list[tuple[str, str | None, dict[str, np.ndarray]]],
              carried: dict[str, np.ndarray] | None = None, transcoder: dict | None = None
              ) -> Checkpoint:
    tensors: dict[str, TensorRef] = {}
    meta: dict = {"keras_layers": []}
    for name, cls, weights in layers:
        meta["keras_layers"].append({"name": name, "class_name": cls, "weights": list(weights)})
        for w, array in weights.items():
            tensors[f"{name}/{w}"] = TensorRef.from_array(f"{name}/{w}", array)
    for name, array in (carried or {}).items():
        tensors[name] = TensorRef.from_array(name, array)
    if carried:
        meta["carried"] = list(carried)
    if transcoder is not None:
        meta["transcoder"] = transcoder
    return Checkpoint(tensors, LAYOUT_KERAS, meta=meta)


# -- real Keras models -------------------------------------------------------------------------

#: Short weight paths per layer of the reference model (the checkpoint convention).
EXPECTED = {
    "enc.conv1d": ("Conv1D", ["kernel", "bias"]),
    "enc.conv1d_nb": ("Conv1D", ["kernel"]),
    "enc.bn": ("BatchNormalization", ["gamma", "beta", "moving_mean", "moving_variance"]),
    "enc.ln": ("LayerNormalization", ["gamma", "beta"]),
    "enc.gn": ("GroupNormalization", ["gamma", "beta"]),
    "enc.prelu": ("PReLU", ["alpha"]),
    "rnn.lstm": ("LSTM", ["kernel", "recurrent_kernel", "bias"]),
    "rnn.gru": ("GRU", ["kernel", "recurrent_kernel", "bias"]),
    "rnn.srnn": ("SimpleRNN", ["kernel", "recurrent_kernel", "bias"]),
    "rnn.bi": ("Bidirectional", [f"{d}/{w}" for d in ("forward", "backward")
                                 for w in ("kernel", "recurrent_kernel", "bias")]),
    "att.mha": ("MultiHeadAttention", [f"{p}/{w}" for p in ("query", "key", "value",
                                                            "attention_output")
                                       for w in ("kernel", "bias")]),
    "head.dense": ("Dense", ["kernel", "bias"]),
    "head.bf16": ("Dense", ["kernel", "bias"]),
    "img.conv2d": ("Conv2D", ["kernel", "bias"]),
    "img.deconv": ("Conv2DTranspose", ["kernel", "bias"]),
    "vol.conv3d": ("Conv3D", ["kernel", "bias"]),
    "tok.emb": ("Embedding", ["embeddings"]),
    "block.d1": ("Dense", ["kernel", "bias"]),      # the layers of a nested Sequential
    "block.d2": ("Dense", ["kernel"]),
}
#: Without a config, a nested model is one layer: its group holds its layers' weights.
NESTED_AS_ONE = ("block", ["block.d1/kernel", "block.d1/bias", "block.d2/kernel"])


@pytest.fixture(scope="module")
def keras():
    return pytest.importorskip("keras")


def randomize(model, seed: int = 0) -> None:
    """Non-trivial values everywhere (initializers give zeros and ones), in each layer's dtype."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        layer.set_weights([rng.standard_normal(w.shape).astype(w.dtype) + 0.5
                           for w in layer.get_weights()])


def reference_model(keras):
    L = keras.layers
    seq = keras.Input((6, 4), name="seq")
    y = L.Conv1D(5, 3, padding="same", name="enc.conv1d")(seq)
    y = L.Conv1D(5, 3, padding="same", use_bias=False, name="enc.conv1d_nb")(y)
    y = L.BatchNormalization(name="enc.bn")(y)
    y = L.LayerNormalization(name="enc.ln")(y)
    y = L.GroupNormalization(groups=5, name="enc.gn")(y)
    y = L.PReLU(name="enc.prelu")(y)
    y = L.LSTM(3, return_sequences=True, name="rnn.lstm")(y)
    y = L.GRU(3, return_sequences=True, name="rnn.gru")(y)
    y = L.SimpleRNN(3, return_sequences=True, name="rnn.srnn")(y)
    y = L.Bidirectional(L.LSTM(2, return_sequences=True), name="rnn.bi")(y)
    y = L.MultiHeadAttention(num_heads=2, key_dim=2, name="att.mha")(y, y)
    y = L.Dense(3, name="head.dense")(y)
    y = L.Dense(2, dtype="bfloat16", name="head.bf16")(y)
    block = keras.Sequential([keras.Input((3,)), L.Dense(3, name="block.d1"),
                              L.Dense(2, use_bias=False, name="block.d2")], name="block")
    z = block(L.Dense(3, name="pre")(keras.ops.mean(y, axis=1)))
    img = keras.Input((5, 5, 2), name="img")
    c = L.Conv2DTranspose(2, 3, name="img.deconv")(L.Conv2D(3, 3, name="img.conv2d")(img))
    vol = keras.Input((4, 4, 4, 1), name="vol")
    v = L.Conv3D(2, 2, name="vol.conv3d")(vol)
    tok = keras.Input((5,), dtype="int32", name="tok")
    e = L.Embedding(10, 3, name="tok.emb")(tok)
    model = keras.Model([seq, img, vol, tok], [y, z, c, v, e], name="reference")
    randomize(model)
    return model


@pytest.fixture(scope="module")
def keras_files(keras, tmp_path_factory):
    """The reference model saved by Keras 3 in every layout, and its weights per layer."""
    from keras.src.legacy.saving import legacy_h5_format

    d = tmp_path_factory.mktemp("keras_files")
    model = reference_model(keras)
    model.save(d / "full.h5")
    with h5py.File(d / "weights_only.h5", "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    model.save_weights(d / "model.weights.h5")
    model.save(d / "model.keras")
    expected = {layer.name: layer.get_weights() for layer in leaf_layers(model) if layer.weights}
    return d, expected


def leaf_layers(model) -> list:
    """The model's layers, nested models' layers in their place."""
    return [leaf for layer in model.layers
            for leaf in (leaf_layers(layer) if hasattr(layer, "layers") else [layer])]


LAYOUTS = ["full.h5", "weights_only.h5", "model.weights.h5", "model.keras"]


@pytest.mark.parametrize("name", LAYOUTS)
def test_reads_keras_files_with_names_classes_and_values(keras_files, name):
    d, expected = keras_files
    expected_layers = dict(EXPECTED)
    if name == "weights_only.h5":
        expected_layers = {k: (None, v[1]) for k, v in EXPECTED.items() if k[:6] != "block."}
        expected_layers[NESTED_AS_ONE[0]] = (None, NESTED_AS_ONE[1])
        expected = {**{k: v for k, v in expected.items() if k[:6] != "block."},
                    "block": expected["block.d1"] + expected["block.d2"]}
    with read(d / name) as ckpt:
        layers = {e["name"]: e for e in ckpt.meta["keras_layers"]}
        assert set(layers) == set(expected_layers) | {"pre"}
        for layer, weights in expected.items():
            got = values(ckpt, layer)
            assert len(got) == len(weights), layer
            assert all(same(g, w) for g, w in zip(got, weights)), layer
        for layer, (cls, short) in expected_layers.items():
            assert layers[layer]["class_name"] == cls, layer
            if not (name == "model.weights.h5" and layer in ("enc.conv1d_nb", "block.d2")):
                assert layers[layer]["weights"] == short, (name, layer)
        assert all(ckpt[t].shape == ckpt[t].load().shape for t in ckpt.tensors)


def test_legacy_and_keras_zip_give_the_same_checkpoint(keras_files):
    d, _ = keras_files
    with read(d / "full.h5") as legacy, read(d / "model.keras") as archive:
        def strip(ckpt):   # each layer's config as the file states it (objects differ in ids)
            return [{"name": e["name"], "class_name": e["class_name"], "weights": e["weights"],
                     "config": {k: v for k, v in e["config"].items() if not isinstance(v, dict)}}
                    for e in ckpt.meta["keras_layers"]]
        assert strip(archive) == strip(legacy)
        assert list(archive.tensors) == list(legacy.tensors)
        assert all(same(archive[n].load(), legacy[n].load()) for n in legacy.tensors)
        assert archive.meta["keras_config"]["class_name"] == "Functional"
        assert legacy.meta["keras_config"]["config"]["name"] == "reference"


def test_weights_h5_without_config_names_by_index_where_the_table_does_not_fit(keras_files):
    d, _ = keras_files
    with read(d / "model.weights.h5") as ckpt:
        layers = {e["name"]: e for e in ckpt.meta["keras_layers"]}
        assert layers["enc.conv1d_nb"]["weights"] == ["0"]
        assert layers["enc.conv1d_nb"]["class_name"] == "Conv1D"
        assert layers["enc.conv1d_nb"]["h5_path"] == "/layers/conv1d_1"
        assert layers["block.d1"]["weights"] == ["kernel", "bias"]
        assert layers["block.d2"]["weights"] == ["0"]
        assert layers["block.d2"]["h5_path"] == "/layers/sequential/layers/dense_1"
        assert ckpt.format == "keras_weights_h5"


def test_bfloat16_from_keras_loads_bit_exact(keras_files):
    d, expected = keras_files
    for name in LAYOUTS:
        with read(d / name) as ckpt:
            kernel = ckpt["head.bf16/kernel"]
            assert kernel.dtype == "bfloat16"
            assert same(kernel.load(), expected["head.bf16"][0])


def test_sequential_names_strip_the_model_scope(keras, tmp_path):
    """Layers built inside a Sequential are named ``<model>/<layer>/...`` in legacy files."""
    L = keras.layers
    model = keras.Sequential([keras.Input((2, 4)), L.LSTM(3, name="lstm"),
                              L.Dense(2, name="out")], name="out")
    randomize(model)
    model.save(tmp_path / "seq.h5")
    model.save(tmp_path / "seq.keras")
    with h5py.File(tmp_path / "seq.h5") as f:
        names = [n.decode() if isinstance(n, bytes) else n
                 for n in f["model_weights/out"].attrs["weight_names"]]
        assert names == ["out/out/kernel", "out/out/bias"]
    for name in ("seq.h5", "seq.keras"):
        with read(tmp_path / name) as ckpt:
            assert [(e["name"], e["class_name"], e["weights"]) for e in ckpt.meta["keras_layers"]] \
                == [("lstm", "LSTM", ["kernel", "recurrent_kernel", "bias"]),
                    ("out", "Dense", ["kernel", "bias"])]
            assert all(same(a, b) for a, b in zip(values(ckpt, "lstm"), model.layers[0].get_weights()))


def test_keras_zip_with_a_compressed_weights_member(keras_files, tmp_path):
    d, expected = keras_files
    target = tmp_path / "deflated.keras"
    with zipfile.ZipFile(d / "model.keras") as src, \
            zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    with read(target) as ckpt:
        assert all(same(a, b) for a, b in zip(values(ckpt, "rnn.bi"), expected["rnn.bi"]))


# -- the writer, loaded by Keras -------------------------------------------------------------------

def writer_model(keras):
    L = keras.layers
    tok = keras.Input((5,), dtype="int32")
    y = L.Embedding(11, 4, name="emb")(tok)
    y = L.Conv1D(4, 3, padding="same", use_bias=False, name="enc.conv")(y)
    y = L.BatchNormalization(name="enc.bn")(y)
    y = L.LSTM(3, return_sequences=True, name="rnn")(y)
    y = L.Bidirectional(L.LSTM(2, return_sequences=True), name="bi")(y)
    y = L.MultiHeadAttention(num_heads=2, key_dim=3, name="att")(y, y)
    y = L.Dense(2, name="head")(y)
    y = L.Dense(2, dtype="bfloat16", name="head.bf16")(y)
    img = keras.Input((5, 5, 2))
    c = L.Conv2D(3, 3, name="img.conv")(img)
    return keras.Model([tok, img], [y, c])


WRITER_WEIGHTS = {
    "emb": ("Embedding", ["embeddings"]),
    "enc.conv": ("Conv1D", ["kernel"]),
    "enc.bn": ("BatchNormalization", ["gamma", "beta", "moving_mean", "moving_variance"]),
    "rnn": ("LSTM", ["kernel", "recurrent_kernel", "bias"]),
    "bi": ("Bidirectional", EXPECTED["rnn.bi"][1]),
    "att": ("MultiHeadAttention", EXPECTED["att.mha"][1]),
    "head": ("Dense", ["kernel", "bias"]),
    "head.bf16": ("Dense", ["kernel", "bias"]),
    "img.conv": ("Conv2D", ["kernel", "bias"]),
}


def checkpoint_for(model, seed: int = 1) -> Checkpoint:
    """Random values shaped like the model's weights, in the keras-layout convention."""
    rng = np.random.default_rng(seed)
    layers = []
    for layer in model.layers:
        if not layer.weights:
            continue
        cls, short = WRITER_WEIGHTS[layer.name]
        arrays = [rng.standard_normal(w.shape).astype(np.dtype(w.dtype)) for w in layer.weights]
        layers.append((layer.name, cls, dict(zip(short, arrays))))
    carried = {"enc.bn.num_batches_tracked": np.array(7, np.int64)}
    return make_ckpt(layers, carried, {"source": "test"})


@pytest.mark.parametrize("by_name", [True, False])
def test_written_h5_loads_into_keras_bit_exact(keras, tmp_path, by_name):
    source = writer_model(keras)
    ckpt = checkpoint_for(source)
    keras_h5.write(ckpt, tmp_path / "w.h5")
    model = writer_model(keras)
    if by_name:
        model.load_weights(tmp_path / "w.h5", by_name=True)
    else:
        model.load_weights(tmp_path / "w.h5")
    for entry in ckpt.meta["keras_layers"]:
        layer = model.get_layer(entry["name"])
        wanted = [ckpt[f"{entry['name']}/{w}"].load() for w in entry["weights"]]
        got = layer.get_weights()
        assert len(got) == len(wanted), entry["name"]
        assert all(same(g, w) for g, w in zip(got, wanted)), entry["name"]


def test_written_h5_reads_back_with_class_names(keras, tmp_path):
    ckpt = checkpoint_for(writer_model(keras))
    keras_h5.write(ckpt, tmp_path / "w.h5")
    with read(tmp_path / "w.h5") as back:
        assert back.meta["keras_layers"] == ckpt.meta["keras_layers"]
        assert ckpt["head.bf16/kernel"].dtype == back["head.bf16/kernel"].dtype == "bfloat16"


# -- round trip without Keras ----------------------------------------------------------------------

def odd_bfloat16() -> np.ndarray:
    bits = np.array([0x3F80, 0x8000, 0x7F80, 0xFF80, 0x7FC1, 0xFFA5, 0x0001, 0x7F7F], np.uint16)
    return bits.view(BF16).reshape(2, 4)


def mixed_ckpt() -> Checkpoint:
    rng = np.random.default_rng(3)
    layers = [
        ("a.fc", "Dense", {"kernel": rng.standard_normal((3, 2)).astype(np.float32),
                           "bias": rng.standard_normal(2).astype(np.float16)}),
        ("b.bn", None, {"gamma": rng.standard_normal(4),  # float64
                        "moving_mean": np.arange(4, dtype=np.int32)}),
        ("c.bi", "Bidirectional", {"forward/kernel": odd_bfloat16(),
                                   "backward/kernel": np.full((2, 4), np.nan, np.float32)}),
        ("d.mha", "MultiHeadAttention", {"query/kernel": np.ones((2, 1, 2), np.float32)}),
    ]
    carried = {"b.bn.num_batches_tracked": np.array(12, np.int64),
               "pos.ids": np.arange(5, dtype=np.int64)[None],
               "mask": np.array([True, False]),
               "scale": odd_bfloat16()[0]}
    return make_ckpt(layers, carried, {"version": 1, "lstm_bias": {"x": [1, 2]}})


def test_round_trip_is_bit_exact(tmp_path):
    ckpt = mixed_ckpt()
    keras_h5.write(ckpt, tmp_path / "m.h5")
    with read(tmp_path / "m.h5") as back:
        assert list(back.tensors) == list(ckpt.tensors)
        for name, ref in ckpt.tensors.items():
            assert (back[name].shape, back[name].dtype) == (ref.shape, ref.dtype), name
            assert same(back[name].load(), ref.load()), name
        assert back.meta["keras_layers"] == ckpt.meta["keras_layers"]
        assert back.meta["carried"] == ckpt.meta["carried"]
        assert back.meta["transcoder"] == ckpt.meta["transcoder"]
        assert back.layout == LAYOUT_KERAS and back.format == "keras_h5"


def test_written_file_layout(tmp_path):
    keras_h5.write(mixed_ckpt(), tmp_path / "m.h5")
    with h5py.File(tmp_path / "m.h5") as f:
        assert [n.decode() for n in f.attrs["layer_names"]] == ["a.fc", "b.bn", "c.bi", "d.mha"]
        assert text(f.attrs["backend"]) == "tensorflow"
        assert text(f.attrs["keras_version"]).startswith("3.")
        assert list(f["c.bi"].attrs["weight_names"]) == [b"c.bi/forward/kernel",
                                                          b"c.bi/backward/kernel"]
        bf = f["c.bi/c.bi/forward/kernel"]
        assert bf.dtype == np.float32 and bf.attrs["transcoder_dtype"] == "bfloat16"
        assert same(bf[()], odd_bfloat16().astype(np.float32)) or np.array_equal(
            bf[()].view(np.uint32) >> 16, odd_bfloat16().view(np.uint16))
        assert f["transcoder_carried/0"].attrs["name"] == "b.bn.num_batches_tracked"
        assert json.loads(f.attrs["transcoder"]) == {"version": 1, "lstm_bias": {"x": [1, 2]}}
    assert not list(tmp_path.glob(".*tmp"))


def test_layer_names_over_64_kib_are_split(tmp_path):
    names = [f"encoder.blocks.{i:04d}.attention.output.dense_projection" for i in range(1500)]
    ckpt = make_ckpt([(n, "Dense", {"bias": np.full(1, i, np.float32)}) for i, n in enumerate(names)])
    keras_h5.write(ckpt, tmp_path / "long.h5")
    with h5py.File(tmp_path / "long.h5") as f:
        assert "layer_names" not in f.attrs and "layer_names1" in f.attrs
        assert all(f.attrs[k].nbytes <= 64512 for k in f.attrs if k.startswith("layer_names"))
    with read(tmp_path / "long.h5") as back:
        assert [e["name"] for e in back.meta["keras_layers"]] == names
        assert same(back[f"{names[-1]}/bias"].load(), np.full(1, 1499, np.float32))


def test_writer_derives_layers_from_names_without_keras_layers(tmp_path):
    ckpt = Checkpoint({"x/kernel": TensorRef.from_array("x/kernel", np.ones((2, 2), np.float32))},
                      LAYOUT_KERAS)
    keras_h5.write(ckpt, tmp_path / "x.h5")
    with read(tmp_path / "x.h5") as back:
        assert back.meta["keras_layers"] == [{"name": "x", "class_name": None, "weights": ["kernel"]}]


def test_writer_refuses_weights_h5_and_keras_zip(tmp_path):
    with pytest.raises(UsageError, match="--keras-model"):
        keras_h5.write(mixed_ckpt(), tmp_path / "m.weights.h5")
    with pytest.raises(UsageError, match="architecture"):
        for_path("m.weights.h5").write(mixed_ckpt(), tmp_path / "m.weights.h5")
    with pytest.raises(UsageError, match="architecture"):
        keras_zip.write(mixed_ckpt(), tmp_path / "m.keras")
    assert not list(tmp_path.iterdir())


def test_writer_refuses_to_drop_a_tensor(tmp_path):
    ckpt = mixed_ckpt()
    ckpt.meta["carried"] = ckpt.meta["carried"][1:]
    with pytest.raises(MappingError, match="neither a Keras weight nor carried"):
        keras_h5.write(ckpt, tmp_path / "m.h5")
    ckpt = mixed_ckpt()
    ckpt.meta["keras_layers"][0]["weights"].append("gamma")
    with pytest.raises(MappingError, match="a.fc/gamma"):
        keras_h5.write(ckpt, tmp_path / "m.h5")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("weight_name, layer, bidirectional, short", [
    ("conv/kernel", "conv", False, "kernel"),                                  # Keras 3 functional
    ("conv/kernel:0", "conv", False, "kernel"),                                # tf.keras 2
    ("seq/conv/kernel", "conv", False, "kernel"),                              # built in a Sequential
    ("d/d/kernel", "d", False, "kernel"),                                      # model named like a layer
    ("lstm_1/lstm_cell_3/recurrent_kernel:0", "lstm_1", False, "recurrent_kernel"),
    ("m/gru/gru_cell/bias", "gru", False, "bias"),
    ("bi/forward_lstm/lstm_cell/kernel", "bi", True, "forward/kernel"),
    ("bi/backward_my_gru/gru_cell_2/bias:0", "bi", True, "backward/bias"),
    ("mha/attention_output/kernel", "mha", False, "attention_output/kernel"),
    ("inner/in.d1/kernel", "inner", False, "in.d1/kernel"),                    # nested Sequential
    ("f.d/kernel", "subf", False, "f.d/kernel"),                               # nested Functional
    ("forward_x/kernel", "x", False, "forward_x/kernel"),                      # not a Bidirectional
    ("conv2d_1_1/kernel:0", "conv2d_1", False, "kernel"),                      # Keras 2.0-2.2 scope
    ("bidirectional_1_2/backward_lstm_1/bias:0", "bidirectional_1", True, "backward/bias"),
    ("dense_10/kernel:0", "dense_1", False, "dense_10/kernel"),                # another scope
])
def test_short_weight_path(weight_name, layer, bidirectional, short):
    assert keras_h5.short_weight_path(weight_name, layer, bidirectional) == short


def test_tf_keras_2_style_full_model(tmp_path):
    """tf.keras 2 writes ``:0`` suffixes, numbered cells and a Sequential config."""
    path = tmp_path / "tf2.h5"
    config = {"class_name": "Sequential", "config": {"name": "sequential", "layers": [
        {"class_name": "InputLayer", "config": {"name": "input_1"}},
        {"class_name": "Bidirectional", "config": {"name": "bidirectional_1"}},
        {"class_name": "Dense", "config": {"name": "dense_1"}}]}}
    names = {"bidirectional_1": [f"bidirectional_1/{d}_lstm_1/lstm_cell_4/{w}:0"
                                 for d in ("forward", "backward")
                                 for w in ("kernel", "recurrent_kernel", "bias")],
             "dense_1": ["dense_1/kernel:0", "dense_1/bias:0"]}
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = b"2.15.0"
        f.attrs["backend"] = b"tensorflow"
        f.attrs["model_config"] = json.dumps(config).encode()
        mw = f.create_group("model_weights")
        mw.attrs["layer_names"] = np.array([b"input_1", b"bidirectional_1", b"dense_1"])
        mw.create_group("input_1").attrs["weight_names"] = np.zeros(0, "S1")
        for layer, weights in names.items():
            grp = mw.create_group(layer)
            grp.attrs["weight_names"] = np.array([w.encode() for w in weights])
            for i, w in enumerate(weights):
                grp[w] = np.full((2,), i, np.float32)
    with read(path) as ckpt:
        assert [(e["name"], e["class_name"]) for e in ckpt.meta["keras_layers"]] == [
            ("bidirectional_1", "Bidirectional"), ("dense_1", "Dense")]
        assert ckpt.meta["keras_layers"][0]["weights"] == EXPECTED["rnn.bi"][1]
        assert same(ckpt["bidirectional_1/backward/bias"].load(), np.full((2,), 5, np.float32))


def full_model(path: Path, config: dict | list, groups: dict[str, list[tuple[str, tuple]]],
               version: bytes = b"2.2.4", backend: bytes = b"tensorflow") -> Path:
    """A legacy full-model file with ``model_config`` (a Sequential of ``config`` if a list);
    dataset ``i`` holds ``i`` everywhere, in the order of the groups' weight names."""
    if isinstance(config, list):
        config = {"class_name": "Sequential", "config": {"name": "sequential_1", "layers": config}}
    with h5py.File(path, "w") as f:
        f.attrs.update(keras_version=version, backend=backend,
                       model_config=json.dumps(config).encode())
        mw = f.create_group("model_weights")
        mw.attrs["layer_names"] = np.array([n.encode() for n in groups])
        count = 0
        for layer, weights in groups.items():
            grp = mw.create_group(layer)
            grp.attrs["weight_names"] = np.array([w.encode() for w, _ in weights])
            for w, shape in weights:
                grp[w] = np.full(shape, count, np.float32)
                count += 1
    return path


def layer(cls: str, name: str, **config) -> dict:
    return {"class_name": cls, "config": {"name": name, **config}}


def read_layers(path: Path) -> list[tuple]:
    with read(path) as ckpt:
        return [(e["name"], e["class_name"], e["weights"],
                 [int(ckpt[f"{e['name']}/{w}"].load().flat[0]) for w in e["weights"]])
                for e in ckpt.meta["keras_layers"]]


def test_names_the_class_does_not_say_go_by_position(tmp_path):
    """Keras loads legacy files by position: weights whose names do not say what they are
    (``param_0`` from Keras 2's writer, ``kernel_1`` uniquified by a graph, a wrapper's
    ``dense/kernel``) take the class's weight order, minus what the config switches off."""
    path = full_model(tmp_path / "m.h5", [
        layer("Dense", "d", use_bias=True), layer("BatchNormalization", "bn", scale=False),
        layer("TimeDistributed", "td", layer=layer("Dense", "inner"))], {
        "d": [("param_0", (2, 3)), ("param_1", (3,))],
        "bn": [("bn/beta:0", (3,)), ("bn/moving_mean_1:0", (3,)), ("bn/var:0", (3,))],
        "td": [("td/inner/kernel", (3, 3)), ("td/inner/bias", (3,))]})
    assert read_layers(path) == [
        ("d", "Dense", ["kernel", "bias"], [0, 1]),
        ("bn", "BatchNormalization", ["beta", "moving_mean", "moving_variance"], [2, 3, 4]),
        ("td", "TimeDistributed", ["kernel", "bias"], [5, 6])]


def test_nested_models_read_layer_by_layer_from_their_group(tmp_path):
    """A nested model's group holds its layers' weights (trainable ones first): each goes to
    the layer its name names, uniquified scopes and model-name prefixes included; a layer
    named like a top-level one is prefixed with its models' names; one named like its model
    (``inner/deeper/inner/kernel``) is the last component of that name."""
    inner = layer("Model", "inner", layers=[
        layer("InputLayer", "in"), layer("Dense", "dense"), layer("BatchNormalization", "bn"),
        layer("Sequential", "deeper", layers=[layer("Custom", "inner")])])
    path = full_model(tmp_path / "m.h5", [layer("Dense", "dense"), inner], {
        "dense": [("dense/kernel:0", (2, 2)), ("dense/bias:0", (2,))],
        "inner": [("inner/dense_1/kernel:0", (2, 2)), ("bn_1/gamma:0", (2,)),
                  ("bn_1/beta:0", (2,)), ("inner/deeper/inner/kernel:0", (2, 2)),
                  ("inner/dense_1/bias:0", (2,)), ("inner/deeper/inner/bias:0", (2,)),
                  ("bn_1/moving_mean:0", (2,)), ("bn_1/moving_variance:0", (2,))]})
    assert read_layers(path) == [
        ("dense", "Dense", ["kernel", "bias"], [0, 1]),
        ("inner.dense", "Dense", ["kernel", "bias"], [2, 6]),
        ("bn", "BatchNormalization", ["gamma", "beta", "moving_mean", "moving_variance"],
         [3, 4, 8, 9]),
        ("inner", "Custom", ["kernel", "bias"], [5, 7])]     # the model is no layer now


def test_weights_of_a_nested_model_that_name_none_of_its_layers_stay_with_it(tmp_path):
    path = full_model(tmp_path / "m.h5", [
        layer("Sequential", "seq", layers=[layer("Dense", "d")])], {
        "seq": [("d/kernel:0", (2, 2)), ("seq/step:0", (1,))]})
    assert read_layers(path) == [("d", "Dense", ["kernel"], [0]),
                                 ("seq", "Sequential", ["step"], [1])]


def test_keras_1_files_are_refused(tmp_path):
    path = full_model(tmp_path / "m.h5", [layer("Dense", "dense_1")],
                      {"dense_1": [("dense_1_W:0", (2, 2)), ("dense_1_b:0", (2,))]}, b"1.2.2")
    with pytest.raises(UnsupportedError, match="written by Keras 1.2.2.*load it in Keras 2"):
        read(path)


def test_theano_convolution_kernels_are_refused(tmp_path):
    groups = {"conv": [("conv/kernel:0", (3, 3, 1, 2))], "dense": [("dense/kernel:0", (2, 2))]}
    config = [layer("Conv2D", "conv"), layer("Dense", "dense")]
    with pytest.raises(UnsupportedError, match="Theano backend.*flipped") as err:
        read(full_model(tmp_path / "conv.h5", config, groups, backend=b"theano"))
    assert err.value.tensor == "conv/kernel"
    dense_only = full_model(tmp_path / "dense.h5", config[1:], {"dense": groups["dense"]},
                            backend=b"theano")
    assert read_layers(dense_only) == [("dense", "Dense", ["kernel"], [0])]


@pytest.mark.parametrize("entry, expected", [
    ({"class_name": "Dense", "module": "keras.layers", "registered_name": None}, "Dense"),
    ({"class_name": "GetItem", "module": "keras.src.ops.numpy", "registered_name": "GetItem"},
     "GetItem"),
    ({"class_name": "Scaler", "module": None, "registered_name": "my_pkg>Scaler"}, "my_pkg>Scaler"),
    ({"class_name": "my_pkg>Scaler"}, "my_pkg>Scaler"),                       # tf.keras 2
    ({"class_name": "Scaler", "module": "__main__", "registered_name": "Scaler"}, "__main__.Scaler"),
    ({"class_name": "Backbone", "module": "keras_hub.src.models.backbone"},
     "keras_hub.src.models.backbone.Backbone"),
    ({"class_name": 3}, None), ({}, None),
])
def test_classes_from_configs(entry, expected):
    assert keras_config.class_of(entry) == expected
    assert keras_config.is_foreign(expected) == (expected not in (None, "Dense", "GetItem"))


@pytest.mark.parametrize("config", [
    None, [], {"config": 3}, {"config": {"layers": {"a": 1}}}, {"config": [1, "x", None]},
    {"config": {"layers": [{"config": {"name": 5}}, {"name": ["x"]}, {"class_name": "Model",
                                                                       "name": "m", "config": 7}]}},
])
def test_configs_of_any_shape_give_specs_or_nothing(config):
    specs = keras_config.layer_specs(config)
    assert all(isinstance(s.name, str) and isinstance(s.config, dict) for s in specs)


# -- hostile and broken files ------------------------------------------------------------------------

def legacy_with(path: Path, make_kernel) -> Path:
    """A legacy weights-only file whose one weight ``d/d/kernel`` is made by ``make_kernel``."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([b"d"])
        grp = f.create_group("d")
        grp.attrs["weight_names"] = np.array([b"d/kernel"])
        make_kernel(f, grp.create_group("d"))
    return path


def _external_file(path: Path) -> Path:
    with h5py.File(path, "w") as f:
        f["x"] = np.ones(4, np.float32)
    return path


def _virtual(f, grp, other):
    layout = h5py.VirtualLayout(shape=(4,), dtype="f4")
    layout[:] = h5py.VirtualSource(str(other), "x", shape=(4,))
    grp.create_virtual_dataset("kernel", layout)


HOSTILE = {
    "soft link": lambda f, g, o: (f.create_dataset("real", data=np.ones(2)),
                                  g.__setitem__("kernel", h5py.SoftLink("/real"))),
    "external link": lambda f, g, o: g.__setitem__("kernel", h5py.ExternalLink(str(o), "/x")),
    "virtual dataset": _virtual,
    "external storage": lambda f, g, o: g.create_dataset(
        "kernel", shape=(4,), dtype="f4", external=[(str(o), 0, 16)]),
    "shape bomb": lambda f, g, o: g.create_dataset("kernel", shape=(1 << 28,), dtype="f4"),
    "compressed bomb": lambda f, g, o: g.create_dataset(
        "kernel", shape=(1 << 30,), dtype="f4", chunks=(1 << 18,), compression="gzip"),
}


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_hdf5_is_refused(tmp_path, kind):
    other = _external_file(tmp_path / "other.h5")
    path = legacy_with(tmp_path / "evil.h5", lambda f, g: HOSTILE[kind](f, g, other))
    with pytest.raises(UnsafeFileError) as err:
        read(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_soft_link_in_a_weights_h5_tree_is_refused(tmp_path):
    path = tmp_path / "evil.weights.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("vars/real", data=np.ones((2, 2), np.float32))
        f.create_group("layers/dense/vars")["0"] = h5py.SoftLink("/vars/real")
    with pytest.raises(UnsafeFileError, match="SoftLink"):
        read(path)


@pytest.mark.parametrize("links", [1, 10])
def test_hard_link_cycles_and_fan_outs_are_refused(tmp_path, links):
    path = tmp_path / "cycle.weights.h5"
    with h5py.File(path, "w") as f:
        level = f.create_group("layers/a")
        for depth in range(20):   # 10 links per level: 10**20 paths if walked naively
            nxt = level.create_group(f"n{depth}")
            for i in range(links):
                level[f"x{i}"] = nxt if depth < 19 else level
            level = nxt
    with pytest.raises(UnsafeFileError, match="more than one hard link"):
        read(path)


def _write_good(tmp_path: Path) -> Path:
    keras_h5.write(mixed_ckpt(), tmp_path / "good.h5")
    return tmp_path / "good.h5"


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.9, 0.99])
def test_truncated_h5_raises_format_error(tmp_path, cut):
    data = _write_good(tmp_path).read_bytes()
    path = tmp_path / "cut.h5"
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(FormatError) as err:
        with read(path) as ckpt:
            for ref in ckpt:
                ref.load()
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("head", [b"", b"\x89HDF\r\n\x1a\n"])
def test_random_bytes_raise_format_error(tmp_path, head):
    path = tmp_path / "noise.h5"
    path.write_bytes(head + np.random.default_rng(0).bytes(4096))
    with pytest.raises(FormatError) as err:
        keras_h5.read(path, ReadOptions())
    assert str(path) in str(err.value)


def test_hdf5_that_is_not_keras_raises_format_error(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.ones(3)
    with pytest.raises(FormatError, match="not a Keras weights file"):
        read(path)


def test_missing_weight_dataset_names_the_file(tmp_path):
    path = legacy_with(tmp_path / "missing.h5", lambda f, g: None)
    with pytest.raises(FormatError, match="missing") as err:
        read(path)
    assert type(err.value) is FormatError


def test_closed_checkpoint_raises_format_error(tmp_path):
    ckpt = read(_write_good(tmp_path))
    ckpt.close()
    with pytest.raises(FormatError, match="a.fc/kernel"):
        ckpt["a.fc/kernel"].load()


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_keras_zip_path_traversal_is_refused(tmp_path):
    path = _zip(tmp_path / "evil.keras", {"config.json": b"{}", "../../evil.sh": b"x",
                                          "model.weights.h5": b""})
    with pytest.raises(UnsafeFileError, match="unsafe path"):
        read(path)


def test_keras_zip_size_bomb_is_refused(tmp_path):
    path = _zip(tmp_path / "bomb.keras", {"config.json": b"{}", "model.weights.h5": b"x" * 64})
    data = bytearray(path.read_bytes())
    entry = data.rfind(b"PK\x01\x02")
    while entry >= 0:   # uncompressed size field of each central directory entry
        struct.pack_into("<L", data, entry + 24, 0xFFFFFFF0)
        entry = data.rfind(b"PK\x01\x02", 0, entry)
    path.write_bytes(bytes(data))
    with pytest.raises(UnsafeFileError, match="zip bomb"):
        read(path)


def test_keras_zip_with_corrupt_stored_weights_fails_the_crc(tmp_path):
    path = _zip(tmp_path / "flip.keras", {"config.json": b"{}", "model.weights.h5": b"w" * 100})
    data = bytearray(path.read_bytes())
    data[data.find(b"w" * 100) + 50] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="CRC"):
        read(path)


def test_truncated_or_incomplete_keras_zip_raises_format_error(tmp_path):
    good = _zip(tmp_path / "good.keras", {"config.json": b"{}",
                                          "model.weights.h5": _write_good(tmp_path).read_bytes()})
    cut = tmp_path / "cut.keras"
    cut.write_bytes(good.read_bytes()[:-200])
    with pytest.raises(FormatError):
        read(cut)
    for members in ({"config.json": b"{}"}, {"model.weights.h5": b"x"},
                    {"config.json": b"{not json", "model.weights.h5": b"x"},
                    {"config.json": b"{}", "model.weights.h5": b"\x89HDF\r\n\x1a\n" + b"0" * 99}):
        with pytest.raises(FormatError):
            read(_zip(tmp_path / "broken.keras", members))
