"""One conversion reads its source once and flows down: each path is identified once, SRC is
read and planned once, the check reads DST back (what was written) and never SRC again.
Formats are one protocol: a plugin's ``Format`` is recognised by its content like ours."""
from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES, assert_bit_exact
from transcoder import formats, pipeline
from transcoder.checkpoint import LAYOUT_TORCH, Checkpoint, TensorRef
from transcoder.formats import Format
from transcoder.pipeline import read

ENCODER = FIXTURES / "encoder.pt"
OPENS: dict[str, Counter] = {}   # path -> opens, while a test records
HOOKED: list[bool] = []


def _audit(event: str, args: tuple) -> None:
    if event != "open" or not OPENS or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    try:
        path = str(Path(os.fsdecode(args[0])).resolve())
    except (OSError, ValueError):
        return
    for counter in OPENS.values():
        counter[path] += 1


def _record_opens() -> Counter:
    """A counter of opens by resolved path, filled until it is removed from OPENS. (Audit
    hooks cannot be removed: the one hook, added on first use, counts only while one is set.)"""
    if not HOOKED:
        sys.addaudithook(_audit)
        HOOKED.append(True)
    OPENS["run"] = Counter()
    return OPENS["run"]


def test_one_default_conversion_reads_src_once_and_plans_once(cli, tmp_path, monkeypatch):
    """``transcode encoder.pt x.h5 --force`` with its default check (per layer): SRC opened at
    most 4 times (identify 1, the reader 3), planned once; DST at most twice (identify, read).
    Before this change: SRC 22 opens and 2 plans, DST 5 opens."""
    pytest.importorskip("torch")
    pytest.importorskip("keras")
    dst = tmp_path / "x.h5"
    dst.write_bytes(b"old")   # --force: replaced
    plans = []
    real_plan = pipeline.make_plan
    monkeypatch.setattr(pipeline, "make_plan", lambda *a, **k: plans.append(a) or real_plan(*a, **k))
    opens = _record_opens()
    try:
        code, out, err = cli(ENCODER, dst, "--force")
    finally:
        del OPENS["run"]
    assert code == 0, err
    assert "check passed: 0 of 1 layers differ" in out
    assert opens[str(ENCODER.resolve())] <= 4, opens
    assert opens[str(dst.resolve())] <= 2, opens
    assert len(plans) == 1
    with read(ENCODER) as src, read(dst) as written:   # and what was written is the kernel
        kernel = src["conv1d_U.weight"].load()
        assert_bit_exact(written["conv1d_U/kernel"].load(), np.transpose(kernel, (2, 1, 0)),
                         "conv1d_U/kernel")


def test_transcode_check_identifies_each_file_once_and_plans_once(cli, tmp_path, monkeypatch):
    """``transcode check SRC DST`` prepares SRC once and runs the conversion's check."""
    pytest.importorskip("torch")
    pytest.importorskip("keras")
    dst = tmp_path / "x.h5"
    assert cli(ENCODER, dst, "--no-check")[0] == 0
    calls = Counter()
    real_identify, real_plan = formats.identify, pipeline.make_plan

    def identify(path, name=None):
        calls[Path(path).name] += 1
        return real_identify(path, name)

    monkeypatch.setattr(formats, "identify", identify)
    monkeypatch.setattr(pipeline, "make_plan", lambda *a, **k: calls.update(["plan"]) or real_plan(*a, **k))
    code, out, err = cli("check", ENCODER, dst)
    assert code == 0, err
    assert "check passed: 0 of 1 layers differ" in out
    assert calls == Counter({"encoder.pt": 1, "x.h5": 1, "plan": 1})


def test_the_conversion_stays_open_until_the_block_ends(tmp_path):
    """``pipeline.conversion`` yields the source still readable; ``transcode`` closes it."""
    with pipeline.conversion(ENCODER, tmp_path / "e.safetensors") as done:
        assert done.copy and done.dst == tmp_path / "e.safetensors"
        before = done.source["conv1d_U.weight"].load()
    with read(tmp_path / "e.safetensors") as copy:
        assert_bit_exact(copy["conv1d_U.weight"].load(), before, "conv1d_U.weight")
    done = pipeline.transcode(ENCODER, tmp_path / "e.h5", force=True)
    assert not done.copy and done.written == [tmp_path / "e.h5"]


# ---------------------------------------------------------------- a plugin format, by content

MAGIC = b"NPYPLUG\x00"


def _plugin_read(path: Path, options) -> Checkpoint:
    """A toy format: the magic, then one float32 matrix of 2x3 values."""
    values = np.frombuffer(Path(path).read_bytes()[len(MAGIC):], np.float32).reshape(2, 3)
    return Checkpoint({"layer.weight": TensorRef.from_array("layer.weight", values.copy())},
                      LAYOUT_TORCH, str(path), "npyplug")


PLUGIN = Format("npyplug", (".npyplug",), LAYOUT_TORCH, description="toy plugin format",
                sniff=lambda head, path: head.data.startswith(MAGIC), reader=_plugin_read)


@pytest.fixture
def plugin(monkeypatch):
    import importlib.metadata

    class EntryPoint:
        def load(self):
            return lambda: PLUGIN

    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group: [EntryPoint()] if group == formats.ENTRY_POINT_GROUP else [])
    return PLUGIN


def test_a_plugin_format_is_recognised_by_its_content(cli, tmp_path, plugin):
    values = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
    src = tmp_path / "weights.bin"   # the name says PyTorch; the content is the plugin's
    src.write_bytes(MAGIC + values.tobytes())
    found = formats.identify(src)
    assert found.format is plugin
    assert found.note == (f"{src}: read as toy plugin format, by its content (its name says "
                          "PyTorch checkpoint (torch.save zip, legacy pickle, TorchScript))")
    code, _, err = cli(src, tmp_path / "out.safetensors", "--no-check")
    assert code == 0, err
    assert "read as toy plugin format, by its content" in err
    with read(tmp_path / "out.safetensors") as out:
        assert_bit_exact(out["layer.weight"].load(), values, "layer.weight")


def test_builtin_formats_are_asked_before_plugins(tmp_path, plugin):
    """A file a built-in takes never reaches a plugin's sniff."""
    assert formats.identify(ENCODER).format.name == "pt"
    assert formats.identify(FIXTURES / "encoder.safetensors").format.name == "safetensors"


def test_each_format_module_declares_its_record():
    from transcoder.formats import exported, keras_h5, keras_zip, pt, safetensors_format

    records = {f.name: f for f in formats.builtin_formats()}
    assert records["pt"] is pt.FORMAT and records["pt"].reader is pt.read
    assert records["safetensors"] is safetensors_format.FORMAT
    assert records["keras_h5"] is keras_h5.FORMAT and records["keras_zip"] is keras_zip.FORMAT
    assert records["tflite"] is exported.TFLITE and not records["tflite"].can_read
    assert [f.name for f in formats.builtin_formats() if f.stores_classes] == ["keras_zip"]
    assert all(callable(f.sniff) for f in formats.builtin_formats())
