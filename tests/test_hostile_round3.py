"""Hostile input and faults, round 3 (issue 22): hangs on FIFOs named by files, exit-3 paths,
debris after signals, same input same bytes, and the Python API's errors."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from hostile import one_error_line, run_bounded
from transcoder.bulk import BulkOptions, run_bulk
from transcoder.bulk.manifest import NAME as MANIFEST

posix = pytest.mark.skipif(os.name != "posix", reason="FIFOs, signals, permissions")


def small(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"fc.weight": rng.standard_normal((4, 3), dtype=np.float32),
               "fc.bias": rng.standard_normal(4, dtype=np.float32)}, str(path))
    return path


# ------------------------------------------------------------------ FIFOs named by files

@posix
@pytest.mark.parametrize("index, shard", [("model.safetensors.index.json", "shard.safetensors"),
                                          ("pytorch_model.bin.index.json", "shard.bin")])
def test_an_index_naming_a_fifo_as_a_shard_is_refused_without_blocking(tmp_path, index, shard):
    os.mkfifo(tmp_path / shard)
    (tmp_path / index).write_text(json.dumps({"weight_map": {"w": shard}}))
    run = run_bounded([tmp_path / index, tmp_path / "out.h5", "--no-check"], tmp_path, timeout=60)
    assert run.code == 2, run
    line = one_error_line(run.stderr)
    assert index in line and shard in line and "not a regular file" in line
    assert not (tmp_path / "out.h5").exists()


_RESUME = """
import sys
from transcoder.bulk import BulkOptions, run_bulk
report = run_bulk(sys.argv[1], sys.argv[2], BulkOptions(to="h5", jobs=1))
print(report.exit_code, sorted(r["source"] for r in report.results))
"""


@posix
@pytest.mark.parametrize("planted", ["fifo", "/dev/zero"])
def test_bulk_resume_never_reads_a_planted_output_whose_line_holds_a_hash(tmp_path, planted):
    import subprocess
    import sys

    src, dst = tmp_path / "src", tmp_path / "dst"
    small(src / "a.safetensors")
    assert run_bulk(src, dst, BulkOptions(to="h5", jobs=1, checksums=True)).exit_code == 0
    line = json.loads((dst / MANIFEST).read_text().splitlines()[0])
    assert line["output_sha256"]
    out = dst / "a.h5"
    out.unlink()
    if planted == "fifo":
        os.mkfifo(out)
    else:
        out.symlink_to(planted)
    stat = os.stat(out)
    line.update(output_size=stat.st_size, output_mtime_ns=stat.st_mtime_ns + 1)   # only the date differs
    (dst / MANIFEST).write_text(json.dumps(line) + "\n")
    done = subprocess.run([sys.executable, "-c", _RESUME, src, dst], capture_output=True,
                          text=True, timeout=60)
    assert done.stdout.split(None, 1) == ["0", "['a.safetensors']\n"], done
    assert out.is_file() and not out.is_symlink()   # redone: the output replaced the plant


# ------------------------------------------------------------------ the Python API

@pytest.mark.parametrize("src, dst", [("a\0b.safetensors", "out.h5"), ("a\ud800.safetensors", "out.h5"),
                                      ("{ok}", "o\0.h5"), ("{ok}", "o\ud800.h5")])
def test_the_api_raises_only_transcoder_errors_for_bad_names(tmp_path, src, dst):
    import transcoder

    ok = str(small(tmp_path / "ok.safetensors"))
    src, dst = src.format(ok=ok), str(tmp_path / dst)
    for call in (lambda: transcoder.convert(src, dst, check=False),
                 lambda: transcoder.check(src, dst), lambda: transcoder.inspect(src + dst)):
        with pytest.raises(transcoder.TranscoderError) as caught:
            call()
        assert caught.value.exit_code == 2
        assert "\n" not in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.safetensors"]


@pytest.mark.parametrize("given, shapes", [((2, 8, 20), ["2,8,20"]), ("2,8,20", ["2,8,20"]),
                                           ([(2, 8), (3, 4)], ["2,8", "3,4"]),
                                           (["2,8", (3, 4)], ["2,8", "3,4"]), ((), [])])
def test_the_api_takes_input_shape_as_a_tuple_a_list_of_tuples_or_strings(given, shapes):
    from transcoder.models.inputs import parse_input_specs
    from transcoder.options import InputOptions

    inputs = InputOptions(given)   # what api.convert/check build from input_shape
    assert inputs.input_shapes == shapes
    assert not shapes or [s.shape for s in parse_input_specs(inputs.input_shapes, [])] == \
        [tuple(map(int, s.split(","))) for s in shapes]


@pytest.mark.parametrize("given", [1.5, [1.5], [(2, "x")], {"a": 1}])
def test_a_shape_the_api_cannot_read_is_a_transcoder_error(given):
    import transcoder

    with pytest.raises(transcoder.TranscoderError):
        transcoder.check("a.pt", "b.h5", model="net.py:Net", input_shape=given)


# ------------------------------------------------------------------ exit 3 that were bad input

def _refuse_temporaries(monkeypatch):
    import tempfile

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")   # a read-only folder (root ignores modes)

    monkeypatch.setattr(tempfile, "mkstemp", refused)


def test_a_read_only_dst_folder_is_exit_2_in_one_line(cli, tmp_path, monkeypatch):
    src = small(tmp_path / "ok.safetensors")
    _refuse_temporaries(monkeypatch)
    code, _, err = cli(src, tmp_path / "out.h5", "--no-check")
    assert code == 2 and "Permission denied" in one_error_line(err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.safetensors"]


def test_bulk_into_a_read_only_dst_folder_is_exit_2_in_one_line(cli, tmp_path, monkeypatch):
    small(tmp_path / "src" / "a.safetensors")
    (tmp_path / "dst").mkdir()
    _refuse_temporaries(monkeypatch)
    code, _, err = cli("bulk", tmp_path / "src", tmp_path / "dst", "--to", "h5", "--jobs", "1")
    assert code == 2 and "manifest" in one_error_line(err), err


def test_a_stale_temporary_that_is_a_folder_does_not_stop_bulk(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    small(src / "a.safetensors")
    stale = dst / ".a.h5.k3j2.tmp"
    (stale / "inside").mkdir(parents=True)
    report = run_bulk(src, dst, BulkOptions(to="h5", jobs=1))
    assert report.exit_code == 0 and [r["status"] for r in report.results] == ["done"]
    assert (stale / "inside").is_dir()   # not ours to delete: left as it was


@pytest.mark.parametrize("shape", [(2**64, 0), (0, 2**64), (2**62, 0), (2**40, 2**40, 0)])
@pytest.mark.parametrize("target", ["out.h5", "out.safetensors", "out.pt"])
def test_absurd_dimensions_are_refused_for_every_target_even_in_an_empty_tensor(
        cli, tmp_path, shape, target):
    from hostile import Entry, state_dict_pickle, torch_zip

    entries = [Entry("fc.weight", "0", 0, shape, (0,) * len(shape)),
               Entry("fc.bias", "1", 4, (4,), (1,))]
    src = torch_zip(tmp_path / "huge.pt", state_dict_pickle(entries), {"0": b"", "1": bytes(16)})
    code, _, err = cli(src, tmp_path / target, "--no-check")
    line = one_error_line(err)
    assert code == 2 and "huge.pt" in line and "fc.weight" in line and "2^62" in line, err
    assert not (tmp_path / target).exists()


# ------------------------------------------------------------------ signals

_MANY_FAULTS = """
import os, sys, threading, time
from transcoder.formats._io import sigbus

class SlowOs:   # os.write releases the GIL: make the window before os._exit wide
    def __getattr__(self, name):
        return getattr(os, name)
    def write(self, fd, data):
        done = os.write(fd, data)
        time.sleep(0.3)
        return done

sigbus.os = SlowOs()
barrier = threading.Barrier(4)
def fault():
    barrier.wait()
    sigbus._on_fault(0)
threads = [threading.Thread(target=fault) for _ in range(4)]
for t in threads:
    t.start()
time.sleep(30)
"""


def test_one_sigbus_line_however_many_threads_fault():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _MANY_FAULTS], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1 and "(SIGBUS)" in done.stderr, done.stderr


@posix
@pytest.mark.parametrize("signum", ["SIGTERM", "SIGHUP", "SIGINT"])
def test_a_terminated_conversion_leaves_no_temporary_file(tmp_path, signum):
    import signal
    import subprocess
    import sys
    import time

    layers = {}
    for i in range(24):                                                     # 384 MiB
        layers[f"layer{i}.weight"] = np.full((1024, 4096), i, np.float32)
        layers[f"layer{i}.bias"] = np.zeros(1024, np.float32)
    save_file(layers, str(tmp_path / "big.safetensors"))
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "transcoder", tmp_path / "big.safetensors",
                             out / "big.h5", "--no-check"], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TRANSCODER_DEBUG": ""})
    deadline = time.monotonic() + 120
    while not list(out.iterdir()) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "finished before it could be interrupted"
    proc.send_signal(getattr(signal, signum))
    _, err = proc.communicate(timeout=120)
    left = sorted(p.name for p in out.iterdir())
    assert not [name for name in left if name.endswith(".tmp")], left    # no .big.h5.XXXX.tmp
    if proc.returncode == 0:    # the signal came as the finished output was being renamed
        assert left == ["big.h5"]
    else:
        assert proc.returncode == 128 + getattr(signal, signum), err
        assert left == []


# ------------------------------------------------------------------ mappings onto one name

def _keras_h5(path: Path) -> Path:
    from hostile import legacy_h5

    rng = np.random.default_rng(0)
    return legacy_h5(path, {"dense": {"kernel:0": rng.standard_normal((3, 4), dtype=np.float32),
                                      "bias:0": rng.standard_normal(4, dtype=np.float32)}})


@pytest.mark.parametrize("rules, target", [
    ('[[tensor]]\nkeras = "dense/*"\ntorch = "x"\n', "out.pt"),            # two onto one name
    ('[[tensor]]\nkeras = "dense/*"\ntorch = ""\n', "out.pt"),             # an empty name
    ('[[tensor]]\nkeras = "dense/kernel*"\ntorch = "x"\n\n'
     '[[tensor]]\nkeras = "dense/bias*"\ntorch = "x"\n', "out.safetensors"),
])
def test_rules_mapping_keras_tensors_onto_one_or_an_empty_name_are_refused(cli, tmp_path, rules,
                                                                         target):
    src = _keras_h5(tmp_path / "k.h5")
    (tmp_path / "rules.toml").write_text(rules)
    code, _, err = cli(src, tmp_path / target, "--no-check", "--rules", tmp_path / "rules.toml")
    line = one_error_line(err)
    assert code == 2, err
    assert "dense/" in line and ("two tensors" in line or "empty name" in line), line
    if "two tensors" in line:
        assert "kernel" in line and "bias" in line, line     # both sources named
    assert not (tmp_path / target).exists()


def test_rules_mapping_torch_tensors_onto_one_name_are_refused(cli, tmp_path):
    src = small(tmp_path / "t.safetensors")
    (tmp_path / "rules.toml").write_text(
        '[[tensor]]\ntorch = "fc.weight"\nkeras = "dense/kernel"\npermute = [1, 0]\n\n'
        '[[tensor]]\ntorch = "fc.bias"\nkeras = "dense/kernel"\n')
    code, _, err = cli(src, tmp_path / "out.h5", "--no-check", "--rules", tmp_path / "rules.toml")
    line = one_error_line(err)
    assert code == 2 and "two tensors" in line and "fc.weight" in line and "fc.bias" in line, err
    assert not (tmp_path / "out.h5").exists()


# ------------------------------------------------------------------ same input, same bytes

NET = "import torch\nclass Net(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n" \
      "        self.fc = torch.nn.Linear(3, 4)\n    def forward(self, x):\n        return self.fc(x)\n"


@pytest.mark.parametrize("target", ["h5", "safetensors", "pt", "weights.h5", "keras"])
def test_two_conversions_of_one_file_give_the_same_bytes(tmp_path, target):
    import time

    import transcoder

    pytest.importorskip("torch")
    pytest.importorskip("keras")
    src = small(tmp_path / "src.safetensors")
    (tmp_path / "net.py").write_text(NET)
    arch = {"model": f"{tmp_path / 'net.py'}:Net", "input_shape": (2, 3)} \
        if target in ("weights.h5", "keras") else {}
    outputs = []
    for run in (1, 2):
        out = tmp_path / f"out{run}.{target}"
        transcoder.convert(src, out, check=False, **arch)
        outputs.append(out.read_bytes())
        time.sleep(1.1)   # HDF5 and zip times have a resolution of 1 s and 2 s
    assert outputs[0] == outputs[1]
