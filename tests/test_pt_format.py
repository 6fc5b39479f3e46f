"""PyTorch file reading/writing without torch in the package (torch only makes the fixtures)."""
from __future__ import annotations

import collections
import dataclasses
import enum
import importlib
import os
import pickle
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
              pytest.mark.filterwarnings("ignore:.*quantize.*deprecated")]

from conftest import assert_imports_none_of  # noqa: E402
from transcoder.checkpoint import LAYOUT_KERAS, Checkpoint, TensorRef  # noqa: E402
from transcoder.errors import (AmbiguousError, FormatError, UnsafeFileError,  # noqa: E402
                               UnsupportedError, UsageError)
from transcoder.formats import ReadOptions, for_path, pt
from transcoder.formats._torch import torch_zip  # noqa: E402

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int8, torch.int16,
          torch.int32, torch.int64, torch.uint8, torch.bool, torch.complex64]


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def raw_bytes(t: "torch.Tensor") -> bytes:
    """The tensor's elements in row-major order, as bytes (exact, NaN payloads included)."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_same(array: np.ndarray, t: "torch.Tensor") -> None:
    assert tuple(array.shape) == tuple(t.shape)
    assert str(t.dtype).replace("torch.", "") == str(array.dtype).replace("bool", "bool")
    assert np.ascontiguousarray(array).reshape(-1).view(np.uint8).tobytes() == raw_bytes(t)


def assert_same_tensor(a: "torch.Tensor", b: "torch.Tensor") -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert raw_bytes(a) == raw_bytes(b)


def sample(dtype: "torch.dtype", shape=(3, 4)) -> "torch.Tensor":
    gen = torch.Generator().manual_seed(0)
    if dtype == torch.bool:
        return torch.rand(shape, generator=gen) > 0.5
    if dtype.is_floating_point or dtype.is_complex:
        t = (torch.randn(shape, generator=gen) * 100).to(dtype)
        flat = t.reshape(-1)
        if flat.numel() >= 4 and not dtype.is_complex:
            flat[0], flat[1], flat[2], flat[3] = float("nan"), float("inf"), -0.0, float("-inf")
        return t
    info = torch.iinfo(dtype)
    return torch.randint(info.min, info.max, shape, generator=gen, dtype=torch.int64).to(dtype)


def read(path: Path, key: str | None = None) -> Checkpoint:
    return pt.read(path, ReadOptions(key=key))


def load_all(ckpt: Checkpoint) -> dict[str, np.ndarray]:
    return {ref.name: ref.load() for ref in ckpt}


def tricky_state_dict() -> "collections.OrderedDict[str, torch.Tensor]":
    sd = collections.OrderedDict()
    for dtype in DTYPES:
        name = str(dtype).replace("torch.", "")
        base = sample(dtype, (4, 6))
        sd[f"{name}.plain"] = base
        sd[f"{name}.transposed"] = base.t()                   # non-contiguous, shares storage
        sd[f"{name}.strided"] = base[1:, ::2]                 # offset + step
        sd[f"{name}.row"] = base[2]                           # view with storage offset
        sd[f"{name}.scalar"] = base[1, 3].clone()             # 0-d
        sd[f"{name}.view0d"] = base[3, 5]                     # 0-d view at an offset
        sd[f"{name}.empty"] = torch.empty((0, 3), dtype=dtype)
    sd["param"] = torch.nn.Parameter(torch.randn(5))
    sd["expanded"] = torch.arange(3.0).expand(4, 3)           # stride 0
    return sd


@pytest.fixture
def module_dir(tmp_path):
    """A directory on sys.path for modules that are made un-importable after torch.save."""
    sys.path.insert(0, str(tmp_path))
    created: list[str] = []

    def make(name: str, source: str):
        (tmp_path / f"{name}.py").write_text(source)
        importlib.invalidate_caches()
        created.append(name)
        return importlib.import_module(name)

    yield make
    sys.path.remove(str(tmp_path))
    for name in created:
        sys.modules.pop(name, None)
        (tmp_path / f"{name}.py").unlink(missing_ok=True)


def forget(name: str, tmp_path: Path) -> None:
    sys.modules.pop(name, None)
    (tmp_path / f"{name}.py").unlink()
    importlib.invalidate_caches()


# ---------------------------------------------------------------------------------------------
# reading and writing torch.save files
# ---------------------------------------------------------------------------------------------

def test_round_trip_bit_exact_all_dtypes(tmp_path):
    sd = tricky_state_dict()
    src, dst = tmp_path / "model.pth", tmp_path / "out.pt"
    torch.save(sd, src)
    with read(src) as ckpt:
        assert ckpt.layout == "torch" and ckpt.format == "pt" and ckpt.source == str(src)
        assert ckpt.meta["state_dict_key"] is None
        assert list(ckpt.tensors) == list(sd)
        for name, t in sd.items():
            assert ckpt[name].shape == tuple(t.shape)
            assert_same(ckpt[name].load(), t)
        pt.write(ckpt, dst)
    back = torch.load(dst, weights_only=True)
    assert isinstance(back, collections.OrderedDict)
    assert list(back) == list(sd)
    for name, t in sd.items():
        assert_same_tensor(back[name], t)


def test_written_file_matches_torch_layout(tmp_path):
    sd = collections.OrderedDict(a=torch.ones(3), b=torch.zeros(0), c=torch.arange(7))
    torch.save(sd, tmp_path / "ref.pt")
    with read(tmp_path / "ref.pt") as ckpt:
        pt.write(ckpt, tmp_path / "ours.pt")
    with zipfile.ZipFile(tmp_path / "ours.pt") as ours, zipfile.ZipFile(tmp_path / "ref.pt") as ref:
        strip = [n.split("/", 1)[1] for n in ref.namelist()]
        assert [n.split("/", 1)[1] for n in ours.namelist()] == strip
        assert ours.namelist()[0] == "archive/data.pkl"
        for name in ("byteorder", "version", ".format_version", ".storage_alignment"):
            assert ours.read(f"archive/{name}") == ref.read(f"ref/{name}")
        raw = (tmp_path / "ours.pt").read_bytes()
        for info in ours.infolist():  # every record's data starts on a 64-byte boundary
            name_len, extra_len = np.frombuffer(raw[info.header_offset + 26:][:4], "<u2")
            assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0
        assert ours.testzip() is None  # CRCs are right


def test_written_file_loads_with_calculated_offsets(tmp_path, monkeypatch):
    """torch's mmap loader may compute storage offsets assuming miniz' layout; check ours."""
    sd = tricky_state_dict()
    torch.save(sd, tmp_path / "in.pt")
    with read(tmp_path / "in.pt") as ckpt:
        pt.write(ckpt, tmp_path / "out.pt")
    from torch.utils.serialization import config
    monkeypatch.setenv("TORCH_SERIALIZATION_DEBUG", "1")  # torch asserts each computed offset
    with config.patch({"load.calculate_storage_offsets": True}):
        back = torch.load(tmp_path / "out.pt", weights_only=True, mmap=True)
    for name, t in sd.items():
        assert_same_tensor(back[name], t)


def test_zip64_records_load_in_torch_and_here(tmp_path, monkeypatch):
    monkeypatch.setattr(torch_zip, "ZIP64_LIMIT", 100)  # force zip64 fields on small records
    sd = collections.OrderedDict(big=torch.randn(64), small=torch.ones(2, dtype=torch.int8))
    ckpt = Checkpoint({k: TensorRef.from_array(k, v.numpy()) for k, v in sd.items()}, "torch")
    pt.write(ckpt, tmp_path / "z64.pt")
    back = torch.load(tmp_path / "z64.pt", weights_only=True)
    for name, t in sd.items():
        assert_same_tensor(back[name], t)
    with read(tmp_path / "z64.pt") as again:
        for name, t in sd.items():
            assert_same(again[name].load(), t)


def test_write_streams_one_tensor_at_a_time(tmp_path):
    live, peak, order = [0], [0], []

    def make_ref(name: str, value: np.ndarray) -> TensorRef:
        def loader():
            order.append(name)
            live[0] += 1
            peak[0] = max(peak[0], live[0])
            return _Tracked(value, live)
        return TensorRef(name, value.shape, "float32", loader)

    values = {f"t{i}": np.full((16,), i, np.float32) for i in range(5)}
    ckpt = Checkpoint({k: make_ref(k, v) for k, v in values.items()}, "torch",
                      meta={"carried": ["t4"], "extra_state": {"x": 1}})
    pt.write(ckpt, tmp_path / "s.pt")
    assert order == list(values) and peak[0] == 1
    back = torch.load(tmp_path / "s.pt", weights_only=True)
    assert list(back) == list(values)  # carried names are ordinary entries


class _Tracked(np.ndarray):
    """An array that counts itself out of the live set when garbage-collected."""

    def __new__(cls, value, live):
        obj = np.asarray(value).view(cls)
        obj._live = live
        return obj

    def __array_finalize__(self, obj):
        self._live = getattr(obj, "_live", None)

    def __del__(self):
        if self._live is not None and type(self.base) is not _Tracked:
            self._live[0] -= 1


def test_write_refuses_keras_layout(tmp_path):
    ckpt = Checkpoint({"d/kernel": TensorRef.from_array("d/kernel", np.ones(2))}, LAYOUT_KERAS)
    with pytest.raises(UsageError):
        pt.write(ckpt, tmp_path / "x.pt")


def test_registry_reads_any_suffix(tmp_path):
    sd = {"w": torch.randn(2, 2)}
    for suffix in (".pt", ".pth", ".bin", ".ckpt"):
        path = tmp_path / f"m{suffix}"
        torch.save(sd, path)
        with for_path(path).read(path) as ckpt:
            assert_same(ckpt["w"].load(), sd["w"])


def test_reading_is_lazy_and_load_reads_one_tensor(tmp_path, monkeypatch):
    sd = {"a": torch.randn(1000), "b": torch.randn(10)}
    torch.save(sd, tmp_path / "lazy.pt")
    reads = []
    real = pt._read_at
    monkeypatch.setattr(pt, "_read_at", lambda fh, lock, off, n: reads.append(n) or real(fh, lock, off, n))
    with read(tmp_path / "lazy.pt") as ckpt:
        assert reads == []
        assert_same(ckpt["b"].load(), sd["b"])
        assert sum(reads) <= 40 + 30  # the tensor's 40 bytes plus its local zip header


def test_compressed_members_are_read(tmp_path):
    sd = {"w": torch.randn(3, 5), "v": torch.arange(10)[::3]}
    torch.save(sd, tmp_path / "plain.pt")
    with zipfile.ZipFile(tmp_path / "plain.pt") as src, \
            zipfile.ZipFile(tmp_path / "deflated.pt", "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    with read(tmp_path / "deflated.pt") as ckpt:
        for name, t in sd.items():
            assert_same(ckpt[name].load(), t)


def test_big_endian_archive_is_swapped(tmp_path):
    sd = {"f": sample(torch.float32), "h": sample(torch.bfloat16), "c": sample(torch.complex64),
          "i": sample(torch.int16)}
    torch.save(sd, tmp_path / "le.pt")
    with zipfile.ZipFile(tmp_path / "le.pt") as src, \
            zipfile.ZipFile(tmp_path / "be.pt", "w") as dst:
        sizes = {"0": 4, "1": 2, "2": 4, "3": 2}
        for info in src.infolist():
            data = src.read(info)
            leaf = info.filename.split("/", 1)[1]
            if leaf == "byteorder":
                data = b"big"
            elif leaf.startswith("data/") and leaf != "data.pkl":
                width = sizes[leaf.split("/")[1]]
                data = np.frombuffer(data, f"<u{width}").byteswap().tobytes()
            dst.writestr(info.filename, data)
    with read(tmp_path / "be.pt") as ckpt:
        for name, t in sd.items():
            assert_same(ckpt[name].load(), t)


# ---------------------------------------------------------------------------------------------
# legacy and TorchScript
# ---------------------------------------------------------------------------------------------

def test_legacy_format(tmp_path):
    sd = tricky_state_dict()
    path = tmp_path / "legacy.pt"
    torch.save(sd, path, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(path)
    with read(path) as ckpt:
        assert ckpt.meta["container"] == "legacy"
        assert list(ckpt.tensors) == list(sd)
        for name, t in sd.items():
            assert_same(ckpt[name].load(), t)


def test_legacy_training_checkpoint(tmp_path):
    sd = {"module.w": torch.randn(2, 3), "module.b": torch.randn(3)}
    torch.save({"model": sd, "epoch": 1}, tmp_path / "l.ckpt", _use_new_zipfile_serialization=False)
    with read(tmp_path / "l.ckpt") as ckpt:
        assert list(ckpt.tensors) == ["w", "b"] and ckpt.meta["state_dict_key"] == "model"
        assert_same(ckpt["w"].load(), sd["module.w"])


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("pos", torch.arange(5))
        self.conv = torch.nn.Conv1d(3, 4, 3, bias=False)
        self.bn = torch.nn.BatchNorm1d(4)
        self.scale = torch.nn.Parameter(torch.full((1,), 2.0))
        self.register_buffer("hidden", torch.zeros(2), persistent=False)
        self.extra = torch.zeros(2)  # a plain tensor attribute: not in the state dict

    def forward(self, x):
        return self.bn(self.conv(x)) * self.scale + self.extra.sum() + self.hidden.sum()


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = _Block()
        self.seq = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(),
                                       torch.nn.Linear(4, 2))
        self.heads = torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(2)])
        self.rnn = torch.nn.GRU(2, 3, num_layers=2)

    def forward(self, x):
        y = self.seq(self.enc(x).mean(-1))
        for head in self.heads:
            y = head(y)
        return self.rnn(y.unsqueeze(0))[0]


@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_matches_jit_load_state_dict(tmp_path, how):
    net = _Net()
    net.train()
    net(torch.randn(2, 3, 7))  # BatchNorm running stats and num_batches_tracked move
    net.eval()
    example = torch.randn(2, 3, 7)
    module = torch.jit.script(net) if how == "script" else torch.jit.trace(net, example)
    path = tmp_path / f"{how}.pt"
    module.save(str(path))
    expected = torch.jit.load(str(path)).state_dict()
    with read(path) as ckpt:
        assert ckpt.meta["container"] == "torchscript"
        assert list(ckpt.tensors) == list(expected)
        assert "enc.bn.num_batches_tracked" in ckpt.tensors and "enc.extra" not in ckpt.tensors
        for name, t in expected.items():
            assert_same(ckpt[name].load(), t)
        kinds = ckpt.meta["module_kinds"]
    assert kinds["enc.conv"] == "Conv1d" and kinds["enc.bn"] == "BatchNorm1d"
    assert kinds["seq.0"] == "Linear" and kinds["seq"] == "Sequential"
    assert kinds["heads"] == "ModuleList" and kinds["rnn"] == "GRU"
    assert "enc" not in kinds  # a user class, not torch.nn


def test_torchscript_refuses_key(tmp_path):
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(tmp_path / "s.pt"))
    with pytest.raises(UsageError):
        read(tmp_path / "s.pt", key="state_dict")
    with read(tmp_path / "s.pt") as ckpt:
        assert list(ckpt.tensors) == ["weight", "bias"] and ckpt.meta["module_kinds"] == {"": "Linear"}


# ---------------------------------------------------------------------------------------------
# training checkpoints
# ---------------------------------------------------------------------------------------------

HPARAMS_SOURCE = """
class HParams:
    def __init__(self):
        self.lr = 0.1
        self.layers = [4, 2]
        self.note = {"a": (1, 2.5, None)}
"""


def test_lightning_like_checkpoint_with_unimportable_class(tmp_path, module_dir):
    import argparse
    import pathlib
    hp = module_dir("hp_module_for_test", HPARAMS_SOURCE)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    sd = model.state_dict()
    ckpt = {"epoch": 3, "global_step": 10, "state_dict": sd,
            "optimizer_states": [opt.state_dict()], "lr_schedulers": [],
            "hyper_parameters": hp.HParams(),
            "hparams_extra": {"path": pathlib.PurePosixPath("/data"),
                              "args": argparse.Namespace(x=1)}}
    path = tmp_path / "lightning.ckpt"
    torch.save(ckpt, path)
    forget("hp_module_for_test", tmp_path)
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)  # torch itself refuses the foreign class
    with read(path) as loaded:
        assert loaded.meta["state_dict_key"] == "state_dict"
        assert list(loaded.tensors) == list(sd)
        for name, t in sd.items():
            assert_same(loaded[name].load(), t)


def test_two_state_dicts_are_ambiguous_unless_key_given(tmp_path):
    sd = {"w": torch.randn(2), "b": torch.randn(2)}
    ema = {"w": torch.randn(2), "b": torch.randn(2)}
    path = tmp_path / "two.pt"
    torch.save({"model": sd, "ema": ema, "optimizer": {"state": {}}}, path)
    with pytest.raises(AmbiguousError) as err:
        read(path)
    message = str(err.value)
    assert "model" in message and "ema" in message and "--key" in message
    assert str(path) in message and "\n" not in message
    with read(path, key="ema") as ckpt:
        assert ckpt.meta["state_dict_key"] == "ema"
        assert_same(ckpt["w"].load(), ema["w"])


def test_key_walks_dotted_paths_and_lists_keys_when_wrong(tmp_path):
    sd = {"w": torch.randn(2)}
    path = tmp_path / "nested.pt"
    torch.save({"ema": {"module": sd, "decay": 0.9}, "model": {"w": torch.ones(2)}}, path)
    with read(path, key="ema.module") as ckpt:
        assert_same(ckpt["w"].load(), sd["w"])
    with pytest.raises(UsageError) as err:
        read(path, key="ema.modle")
    assert "module" in str(err.value) and "decay" in str(err.value)
    with pytest.raises(UsageError):
        read(path, key="ema.decay")


def test_single_unconventional_mapping_is_found(tmp_path):
    sd = {"w": torch.randn(2)}
    torch.save({"weights_for_export": sd, "step": 5}, tmp_path / "u.pt")
    with read(tmp_path / "u.pt") as ckpt:
        assert ckpt.meta["state_dict_key"] == "weights_for_export"


def test_no_state_dict_is_a_format_error(tmp_path):
    torch.save({"epoch": 3, "name": "x"}, tmp_path / "none.pt")
    with pytest.raises(FormatError, match="no state dict"):
        read(tmp_path / "none.pt")


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_wrapper_prefixes_are_stripped(tmp_path, prefix):
    inner = torch.nn.Linear(2, 3)
    sd = {prefix + k: v for k, v in inner.state_dict().items()}
    torch.save({"model": sd}, tmp_path / "p.pt")
    with read(tmp_path / "p.pt") as ckpt:
        assert list(ckpt.tensors) == ["weight", "bias"]
        assert ckpt.meta["stripped_prefixes"] == [p + "." for p in prefix.split(".") if p]


def test_model_prefix_is_kept(tmp_path):
    torch.save({"state_dict": {"model.w": torch.ones(1), "model.b": torch.ones(1)}},
               tmp_path / "m.pt")
    with read(tmp_path / "m.pt") as ckpt:
        assert list(ckpt.tensors) == ["model.w", "model.b"]


NET_SOURCE = """
import torch
class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 3, 1)
        self.bn = torch.nn.BatchNorm2d(3)
        self.register_buffer("skip", torch.ones(1), persistent=False)
"""


def test_whole_pickled_module(tmp_path, module_dir):
    mod = module_dir("tiny_net_for_test", NET_SOURCE)
    net = mod.Tiny()
    torch.save(net, tmp_path / "whole.pt")
    forget("tiny_net_for_test", tmp_path)
    with read(tmp_path / "whole.pt") as ckpt:
        assert list(ckpt.tensors) == list(net.state_dict())
        for name, t in net.state_dict().items():
            assert_same(ckpt[name].load(), t)
        assert ckpt.meta["module_kinds"] == {"conv": "Conv2d", "bn": "BatchNorm2d"}


def _shared_pairs(levels: int) -> "torch.nn.Module":
    """Sequential(x, x) nested ``levels`` deep: the leaf Linear is named 2**levels times."""
    module = torch.nn.Linear(2, 2)
    for _ in range(levels):
        module = torch.nn.Sequential(module, module)
    return module


def test_shared_submodules_read_as_state_dict_names_them(tmp_path):
    """A module named in several places reads as ``state_dict()`` gives it, every path."""
    net = _shared_pairs(5)
    torch.save(net, tmp_path / "shared.pt")
    with read(tmp_path / "shared.pt") as ckpt:
        assert list(ckpt.tensors) == list(net.state_dict()) and len(ckpt.tensors) == 64
        for name, t in net.state_dict().items():
            assert_same(ckpt[name].load(), t)


@pytest.mark.parametrize("bound,refused", [(20_000, False), (3_000, True)])
def test_the_walk_bound_is_counted_before_walking(tmp_path, monkeypatch, bound, refused):
    """The count before the walk is the walk's own: 8 levels of shared pairs read 10 732
    entries pickled whole, 3 067 as TorchScript; both under 20 000 and over 3 000. Refused,
    not one module is visited."""
    from transcoder.formats._torch import unwrap

    net = _shared_pairs(8)
    torch.save(net, tmp_path / "whole.pt")
    torch.jit.script(net).save(str(tmp_path / "script.pt"))
    monkeypatch.setattr(unwrap, "MAX_WALK_ENTRIES", bound)
    visited = []
    real = unwrap._Visits.count
    monkeypatch.setattr(unwrap._Visits, "count", lambda self, n: (visited.append(n), real(self, n)))
    for name in ("whole.pt", "script.pt"):
        visited.clear()
        if refused:
            with pytest.raises(FormatError, match="names shared submodules so often"):
                read(tmp_path / name).__enter__()
            assert visited == [], name
        else:
            with read(tmp_path / name) as ckpt:
                assert len(ckpt.tensors) == 2 * 2 ** 8 and len(visited) == 2 ** 9 - 1   # every path


def test_unsupported_tensors_are_named(tmp_path):
    q = torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8)
    for value, word in ((q, "quantized"), (torch.eye(2).to_sparse(), "sparse"),
                        (torch.ones(2, dtype=torch.uint16), "uint16")):
        torch.save({"ok": torch.ones(1), "bad": value}, tmp_path / "u.pt")
        with pytest.raises(UnsupportedError, match=word) as err:
            read(tmp_path / "u.pt")
        assert "bad" in str(err.value) and str(tmp_path / "u.pt") in str(err.value)


# ---------------------------------------------------------------------------------------------
# hostile and broken files
# ---------------------------------------------------------------------------------------------

class _System:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Exec:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


class _TorchCall:
    def __reduce__(self):
        return (torch.serialization.load, ("/nonexistent",))


@pytest.mark.parametrize("evil", [_System, _Exec])
def test_hostile_pickles_never_run(tmp_path, evil):
    marker = tmp_path / "pwned"
    # inside a torch.save zip
    torch.save({"w": torch.ones(1), "x": evil(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeFileError) as err:
        read(tmp_path / "evil.pt")
    assert "system" in str(err.value) or "exec" in str(err.value)
    # as a bare pickle (the legacy path)
    (tmp_path / "evil.pkl.pt").write_bytes(pickle.dumps(evil(marker), protocol=2))
    with pytest.raises(UnsafeFileError):
        read(tmp_path / "evil.pkl.pt")
    # nested in a legacy torch file after the magic number
    torch.save({"w": torch.ones(1), "cfg": [evil(marker)]}, tmp_path / "evil_legacy.pt",
               _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeFileError):
        read(tmp_path / "evil_legacy.pt")
    assert not marker.exists()


def test_torch_functions_outside_allow_list_are_refused(tmp_path):
    torch.save({"w": torch.ones(1), "x": _TorchCall()}, tmp_path / "t.pt")
    with pytest.raises(UnsafeFileError, match="torch.serialization.load"):
        read(tmp_path / "t.pt")


@pytest.mark.parametrize("global_", [b"builtins\ngetattr", b"subprocess\nPopen",
                                     b"__builtin__\neval", b"importlib\nimport_module",
                                     b"functools\npartial"])
def test_code_running_globals_are_refused(tmp_path, global_):
    (tmp_path / "g.pt").write_bytes(b"\x80\x02c" + global_ + b"\n)R.")
    with pytest.raises(UnsafeFileError):
        read(tmp_path / "g.pt")


def test_truncated_files(tmp_path):
    torch.save({"w": torch.randn(64, 64)}, tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    for cut in (len(data) // 4, len(data) // 2, len(data) - 30, len(data) - 1):
        path = tmp_path / f"cut{cut}.pt"
        path.write_bytes(data[:cut])
        with pytest.raises(FormatError) as err:
            with read(path) as ckpt:
                ckpt["w"].load()
        assert str(path) in str(err.value)
    torch.save({"w": torch.randn(64, 64)}, tmp_path / "full_legacy.pt",
               _use_new_zipfile_serialization=False)
    data = (tmp_path / "full_legacy.pt").read_bytes()
    for cut in (10, 200, len(data) - 8):
        path = tmp_path / f"legacy_cut{cut}.pt"
        path.write_bytes(data[:cut])
        with pytest.raises(FormatError):
            read(path)


@pytest.mark.parametrize("content", [b"", b"\x00" * 100, os.urandom(4096), b"\x80" + os.urandom(500),
                                     b"\x80\x02K\x05.", b"PK\x03\x04" + os.urandom(200)])
def test_garbage_files(tmp_path, content):
    path = tmp_path / "garbage.pt"
    path.write_bytes(content)
    with pytest.raises(FormatError) as err:
        read(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def _rewrite_zip(src: Path, dst: Path, change) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = change(info.filename, zin.read(info))
            if data is not None:
                zout.writestr(info.filename, data)


def test_zip_without_data_pkl(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pt")
    _rewrite_zip(tmp_path / "ok.pt", tmp_path / "nopkl.pt",
                 lambda name, data: None if name.endswith("data.pkl") else data)
    with pytest.raises(FormatError, match="data.pkl"):
        read(tmp_path / "nopkl.pt")


def test_missing_storage_record_names_the_tensor(tmp_path):
    torch.save({"w": torch.ones(2), "v": torch.ones(3)}, tmp_path / "ok.pt")
    _rewrite_zip(tmp_path / "ok.pt", tmp_path / "missing.pt",
                 lambda name, data: None if name.endswith("data/1") else data)
    with pytest.raises(FormatError) as err:
        read(tmp_path / "missing.pt")
    assert "v" in str(err.value) and "data/1" in str(err.value)


def test_shape_bomb_is_refused_before_allocating(tmp_path):
    torch.save({"w": torch.ones(4)}, tmp_path / "ok.pt")
    ckpt = Checkpoint({"w": TensorRef.from_array("w", np.ones(4, np.float32))}, "torch")
    # our own writer with a lying shape: the record holds 16 bytes, the pickle claims 10^12 floats
    from transcoder.formats._torch import torch_pickle
    pkl = torch_pickle.dump_state_dict([torch_pickle.StateDictEntry("w", (10**6, 10**6), "float32", "0")])
    _rewrite_zip(tmp_path / "ok.pt", tmp_path / "bomb.pt",
                 lambda name, data: pkl if name.endswith("data.pkl") else data)
    with pytest.raises(FormatError, match="shape bomb|storage declares") as err:
        read(tmp_path / "bomb.pt")
    assert "w" in str(err.value)
    del ckpt


def test_storage_shorter_than_declared(tmp_path):
    torch.save({"w": torch.ones(8)}, tmp_path / "ok.pt")
    _rewrite_zip(tmp_path / "ok.pt", tmp_path / "short.pt",
                 lambda name, data: data[:8] if name.endswith("data/0") else data)
    with pytest.raises(FormatError, match="holds 8 bytes"):
        read(tmp_path / "short.pt")


def test_optimizer_state_under_any_key_is_ignored(tmp_path):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    torch.save({"weights_blob": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "o.pt")
    with read(tmp_path / "o.pt") as ckpt:
        assert ckpt.meta["state_dict_key"] == "weights_blob"


def test_empty_checkpoint_round_trips(tmp_path):
    pt.write(Checkpoint({}, "torch"), tmp_path / "empty.pt")
    assert torch.load(tmp_path / "empty.pt", weights_only=True) == collections.OrderedDict()


def test_reader_never_imports_torch(tmp_path):
    torch.save({"w": torch.ones(3)}, tmp_path / "w.pt")
    assert_imports_none_of("import sys; from pathlib import Path; "
                           "from transcoder.formats import pt, ReadOptions\n"
                           "c = pt.read(Path(sys.argv[1]), ReadOptions()); c['w'].load()\n"
                           "pt.write(c, Path(sys.argv[2]))", ["torch"],
                           tmp_path / "w.pt", tmp_path / "o.pt")
    assert torch.equal(torch.load(tmp_path / "o.pt", weights_only=True)["w"], torch.ones(3))


class _Color(enum.Enum):
    RED = 1


_Pair = collections.namedtuple("_Pair", "a b")


@dataclasses.dataclass
class _Cfg:
    x: int = 1
    note: str = "hi"


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_assorted_python_objects_beside_the_weights(tmp_path, protocol):
    import argparse
    import pathlib

    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.LayerNorm(3))
    extra = {"bytes": b"\x00\xff", "set": {1, 2}, "frozen": frozenset({3}), "complex": 1 + 2j,
             "slice": slice(1, 2), "array": np.arange(3), "enum": _Color.RED,
             "bytearray": bytearray(b"xy"), "range": range(5), "ns": argparse.Namespace(a=1),
             "path": pathlib.PurePosixPath("/x"), "dd": collections.defaultdict(list, {"k": [1]}),
             "counter": collections.Counter("aab"), "np_scalar": np.float32(1.5),
             "named": _Pair(1, 2), "size": torch.Size([2, 3]),
             "dtype": torch.float16, "device": torch.device("cpu")}
    torch.save({"model": net.state_dict(), "extra": extra, "cfg": _Cfg()},
               tmp_path / "a.pt", pickle_protocol=protocol)
    with read(tmp_path / "a.pt") as ckpt:
        assert list(ckpt.tensors) == list(net.state_dict())


def test_whole_data_parallel_module(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    torch.save(torch.nn.DataParallel(net), tmp_path / "dp.pt")
    with read(tmp_path / "dp.pt") as ckpt:
        assert list(ckpt.tensors) == list(net.state_dict())
        assert ckpt.meta["stripped_prefixes"] == ["module."]
        assert ckpt.meta["module_kinds"] == {"": "Sequential", "0": "Conv2d", "1": "BatchNorm2d"}


def test_allocation_bombs_in_the_pickle_stay_inert(tmp_path):
    # bytes(10**13) and set(range(10**15)) would exhaust memory if they were really called
    (tmp_path / "b.pt").write_bytes(
        b"\x80\x02cbuiltins\nbytes\n\x8a\x06\x00\xa0\x72\x4e\x18\x09\x85R"
        b"cbuiltins\nset\ncbuiltins\nrange\n\x8a\x07\x00\x80\xc6\xa4\x7e\x8d\x03\x85R\x85R\x86.")
    with pytest.raises(FormatError):
        read(tmp_path / "b.pt")
