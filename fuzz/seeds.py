"""Valid inputs of every format we read: what the fuzz mutators start from.

Built from the repository's fixtures and by hand (numpy, h5py, safetensors: no torch, no
Keras), so the campaign and the property tests run on a plain install too. A :class:`Case` is
the files of one input, the source among them, the output to write and extra arguments.
"""
from __future__ import annotations

import io
import json
import pickle
import struct
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import h5py
import numpy as np
from safetensors.numpy import save as save_safetensors

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
sys.path.insert(0, str(ROOT / "tests"))  # tests/hostile.py: the pickle builders

#: format name -> the target extension(s) its inputs are converted to
FORMATS = ("torch_zip", "legacy_pickle", "torchscript", "safetensors", "index", "legacy_h5",
           "weights_h5", "keras", "rules", "rules_keras")


@dataclass(frozen=True)
class Case:
    files: dict[str, bytes]       # file name -> content, written into an empty folder
    src: str                      # the file converted
    dst: str                      # the file written
    extra: tuple[str, ...] = field(default=())

    def with_file(self, name: str, data: bytes) -> "Case":
        return replace(self, files={**self.files, name: data})


def _tensors(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"conv.weight": rng.standard_normal((4, 2, 3, 3), dtype=np.float32),
            "conv.bias": rng.standard_normal(4, dtype=np.float32),
            "bn.weight": rng.standard_normal(4, dtype=np.float32),
            "bn.bias": rng.standard_normal(4, dtype=np.float32),
            "bn.running_mean": rng.standard_normal(4, dtype=np.float32),
            "bn.running_var": np.abs(rng.standard_normal(4, dtype=np.float32)),
            "bn.num_batches_tracked": np.array(3, np.int64),
            "fc.weight": rng.standard_normal((5, 4), dtype=np.float32).astype(np.float16),
            "fc.bias": rng.standard_normal(5, dtype=np.float32).astype(np.float16)}


def _safetensors(seed: int, metadata: dict | None = None) -> bytes:
    return save_safetensors(_tensors(seed), metadata=metadata)


def _legacy_pickle() -> bytes:
    """What ``torch.save(..., _use_new_zipfile_serialization=False)`` writes (by hand)."""
    from hostile import Entry, state_dict_pickle

    tensors = {k: v for k, v in _tensors(1).items() if v.dtype == np.float32}
    entries = [Entry(name, str(i), v.size, v.shape, tuple(s // 4 for s in v.strides))
               for i, (name, v) in enumerate(tensors.items())]
    out = b"".join(pickle.dumps(x, protocol=2) for x in (
        0x1950A86A20F9469CFC6C, 1001,
        {"protocol_version": 1001, "little_endian": True,
         "type_sizes": {"short": 2, "int": 4, "long": 4}}))
    out += state_dict_pickle(entries) + pickle.dumps([e.storage_key for e in entries], protocol=2)
    for v in tensors.values():
        out += struct.pack("<q", v.size) + v.tobytes()
    return out


def _legacy_h5(transcoder_meta: bool) -> bytes:
    """A weights-only legacy .h5 like ours (with the ``transcoder`` attribute and carried
    tensors), or a tf.keras-2-style full model (``model_config``, ``:0`` names)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.h5"
        rng = np.random.default_rng(2)
        with h5py.File(path, "w") as f:
            root = f
            if not transcoder_meta:
                config = {"class_name": "Sequential", "config": {"name": "seq", "layers": [
                    {"class_name": "Conv2D", "config": {"name": "conv"}},
                    {"class_name": "Dense", "config": {"name": "fc"}}]}}
                f.attrs["model_config"] = json.dumps(config).encode()
                f.attrs["keras_version"] = b"2.15.0"
                root = f.create_group("model_weights")
            root.attrs["layer_names"] = np.array([b"conv", b"fc"])
            suffix = "" if transcoder_meta else ":0"
            for layer, shapes in (("conv", {"kernel": (3, 3, 2, 4), "bias": (4,)}),
                                  ("fc", {"kernel": (4, 5), "bias": (5,)})):
                grp = root.create_group(layer)
                names = [f"{layer}/{w}{suffix}" for w in shapes]
                grp.attrs["weight_names"] = np.array([n.encode() for n in names])
                for name, shape in zip(names, shapes.values()):
                    grp[name] = rng.standard_normal(shape, dtype=np.float32)
            if transcoder_meta:
                carried = f.create_group("transcoder_carried")
                carried["0"] = np.array(3, np.int64)
                carried["0"].attrs["name"] = "bn.num_batches_tracked"
                f.attrs["transcoder"] = json.dumps({
                    "version": 1, "steps": [
                        {"torch": ["fc.weight"], "keras": ["fc/kernel"],
                         "op": {"op": "permute", "axes": [1, 0]}, "rule": "Linear", "layer": "fc"},
                        {"torch": ["fc.bias"], "keras": ["fc/bias"], "op": {"op": "identity"},
                         "rule": "Linear", "layer": "fc"}],
                    "torch_order": ["fc.weight", "fc.bias"], "carried": ["bn.num_batches_tracked"],
                    "source_format": "pt", "state_dict_key": None})
        return path.read_bytes()


def _weights_h5(names: tuple[str, str, str] = ("conv2d", "dense", "lstm")) -> bytes:
    """A Keras 3 ``.weights.h5`` (saving_lib layout) of a Conv2D, a Dense and an LSTM, whose
    ``vars`` groups carry the layer ``names``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.weights.h5"
        rng = np.random.default_rng(3)
        with h5py.File(path, "w") as f:
            for layer, name, shapes in (("conv2d", names[0], [(3, 3, 2, 4), (4,)]),
                                        ("dense", names[1], [(4, 5), (5,)]),
                                        ("lstm/cell", names[2], [(5, 16), (4, 16), (16,)])):
                grp = f.create_group(f"layers/{layer}/vars")
                grp.attrs["name"] = name
                for i, shape in enumerate(shapes):
                    grp[str(i)] = rng.standard_normal(shape, dtype=np.float32)
            f.create_group("optimizer/vars")
        return path.read_bytes()


def _keras_archive() -> bytes:
    config = {"class_name": "Sequential", "config": {"name": "seq", "layers": [
        {"class_name": "Conv2D", "config": {"name": "conv", "use_bias": True}},
        {"class_name": "Dense", "config": {"name": "fc"}},
        {"class_name": "LSTM", "config": {"name": "rnn"}}]}}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("config.json", json.dumps(config))
        zf.writestr("metadata.json", json.dumps({"keras_version": "3.15.0"}))
        zf.writestr("model.weights.h5", _weights_h5(("conv", "fc", "rnn")))
    return buf.getvalue()


RULES = (
    b'[[layer]]\nmatch = "fc"\nkind = "Linear"\n',
    b'[[layer]]\nmatch = "conv*"\nkind = "Conv2d"\ngroups = 1\n\n[[tensor]]\n'
    b'torch = "bn.running_mean"\nkeras = "extra/mean"\n',
    b'[[layer]]\nmatch = "bn"\nkind = "carry"\n\n[[tensor]]\ntorch = "fc.weight"\n'
    b'keras = "fc/kernel"\npermute = [1, 0]\n',
)


#: --rules on a Keras source (issue 22: a glob onto one PyTorch name lost tensors silently)
RULES_KERAS = (
    b'[[tensor]]\nkeras = "fc/kernel*"\ntorch = "fc.weight"\npermute = [1, 0]\n',
    b'[[layer]]\nmatch = "conv"\nkind = "Conv2d"\n\n[[tensor]]\nkeras = "fc/bias*"\n'
    b'torch = "head.bias"\n',
    b'[[layer]]\nmatch = "fc"\nkind = "Linear"\n',
)


def _index_case(seed: int) -> Case:
    tensors = _tensors(seed)
    names = list(tensors)
    half = len(names) // 2
    shards = {"m-1.safetensors": {n: tensors[n] for n in names[:half]},
              "m-2.safetensors": {n: tensors[n] for n in names[half:]}}
    index = {"metadata": {"total_size": 0},
             "weight_map": {n: s for s, part in shards.items() for n in part}}
    files = {name: save_safetensors(part) for name, part in shards.items()}
    files["m.safetensors.index.json"] = json.dumps(index).encode()
    return Case(files, "m.safetensors.index.json", "out.pt")


def seeds() -> dict[str, list[Case]]:
    """Valid inputs per format (each converts with exit code 0)."""
    pt = lambda name: (FIXTURES / name).read_bytes()  # noqa: E731
    rules_src = _safetensors(4)
    return {
        "torch_zip": [Case({"m.pt": pt("small_cnn.pt")}, "m.pt", "out.safetensors"),
                      Case({"m.ckpt": pt("small_cnn_training.ckpt")}, "m.ckpt", "out.h5"),
                      Case({"m.pt": pt("encoder.pt")}, "m.pt", "out.h5")],
        "legacy_pickle": [Case({"m.pt": _legacy_pickle()}, "m.pt", "out.safetensors")],
        "torchscript": [Case({"m.pt": pt("small_cnn_scripted.pt")}, "m.pt", "out.safetensors"),
                        Case({"m.pt": pt("small_cnn_scripted.pt")}, "m.pt", "out.h5")],
        "safetensors": [Case({"m.safetensors": _safetensors(5, {"format": "pt"})},
                             "m.safetensors", "out.pt"),
                        Case({"m.safetensors": pt("encoder.safetensors")}, "m.safetensors",
                             "out.h5")],
        "index": [_index_case(6)],
        "legacy_h5": [Case({"m.h5": _legacy_h5(True)}, "m.h5", "out.pt"),
                      Case({"m.h5": _legacy_h5(False)}, "m.h5", "out.safetensors")],
        "weights_h5": [Case({"m.weights.h5": _weights_h5()}, "m.weights.h5", "out.pt")],
        "keras": [Case({"m.keras": _keras_archive()}, "m.keras", "out.pt")],
        "rules": [Case({"m.safetensors": rules_src, "rules.toml": text}, "m.safetensors",
                       "out.h5", ("--rules", "rules.toml")) for text in RULES],
        "rules_keras": [Case({"m.h5": _legacy_h5(False), "rules.toml": text}, "m.h5", out,
                             ("--rules", "rules.toml"))
                        for text in RULES_KERAS for out in ("out.pt", "out.safetensors")],
    }
