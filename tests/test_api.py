"""The Python API (``transcoder.convert``, ``inspect``, ``check``): the CLI's options as keyword
arguments, the same rows and reports as --json / --report, the one error family, and
``import transcoder`` staying light."""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import transcoder
from conftest import FIXTURES, ROOT, assert_bit_exact


def test_import_transcoder_loads_no_framework_and_the_api_lazily():
    code = ("import sys, transcoder; api = 'transcoder.api' in sys.modules; "
            "transcoder.inspect; print(api, 'transcoder.api' in sys.modules, "
            "sorted(m for m in ('torch', 'tensorflow', 'keras', 'typer', 'rich') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         check=True).stdout
    assert out.strip() == "False True []"


def test_convert_returns_the_rows_the_dry_run_prints(cli, tmp_path):
    result = transcoder.convert(FIXTURES / "small_cnn.pt", tmp_path / "m.h5", check=False)
    assert result.written and result.report is None and (tmp_path / "m.h5").is_file()
    code, out, _ = cli(FIXTURES / "small_cnn.pt", tmp_path / "n.h5", "--dry-run")
    lines = [line.split("\t") for line in out.splitlines() if not line.startswith("#")]
    assert [r["source"] for r in result.rows] == [line[0] for line in lines]
    assert json.loads(json.dumps(result.to_dict()))["dst"] == str(tmp_path / "m.h5")
    back = transcoder.convert(tmp_path / "m.h5", tmp_path / "m.safetensors", check=False)
    assert back.plan.direction == "to_torch"
    report = transcoder.check(FIXTURES / "small_cnn.pt", tmp_path / "m.safetensors")
    assert report.kind == "tensors" and report.passed and report.failures == []


def test_dry_run_writes_nothing_and_inspect_matches_the_command(cli, tmp_path):
    result = transcoder.convert(FIXTURES / "encoder.pt", tmp_path / "x.h5", dry_run=True)
    assert not result.written and not (tmp_path / "x.h5").exists()
    found = transcoder.inspect(FIXTURES / "encoder.pt")
    code, out, _ = cli("inspect", FIXTURES / "encoder.pt", "--json")
    assert found.rows == json.loads(out)["rows"] and found.layout == "torch"


def test_bad_input_raises_the_one_error_family(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(transcoder.TranscoderError) as err:
        transcoder.convert(tmp_path / "bad.pt", tmp_path / "x.h5")
    assert err.value.exit_code == 2 and "bad.pt" in str(err.value)
    assert not (tmp_path / "x.h5").exists()
    transcoder.convert(FIXTURES / "small_cnn.pt", tmp_path / "x.h5", check=False)
    with pytest.raises(transcoder.TranscoderError, match="already exists"):
        transcoder.convert(FIXTURES / "small_cnn.pt", tmp_path / "x.h5", check=False)


def test_convert_and_check_return_reports_like_the_command(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("keras")
    result = transcoder.convert(FIXTURES / "encoder.pt", tmp_path / "enc.h5")
    assert result.report is not None and result.report.passed
    assert result.report.to_dict()["kind"] == "layers"
    report = transcoder.check(FIXTURES / "encoder.pt", tmp_path / "enc.h5",
                              model=f"{FIXTURES / 'models.py'}:Encoder", input_shape=["4,10,128"])
    assert report.kind == "model" and report.passed
    assert report.entries[0].max_abs_error <= 1e-5


def _rebuilt_keras(tmp_path, name: str, shape: tuple[int, ...]):
    """``name`` from fixtures/models.py saved as .pt and converted to .keras (rebuilt); returns
    the module and the API's result."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("keras")
    sys.path.insert(0, str(FIXTURES))
    import models

    torch.manual_seed(0)
    module = getattr(models, name)().eval()
    torch.save(module.state_dict(), tmp_path / "m.pt")
    result = transcoder.convert(tmp_path / "m.pt", tmp_path / "m.keras", check=False,
                                model=f"{FIXTURES / 'models.py'}:{name}",
                                input_shape=[",".join(map(str, shape))])
    return module, result


def _load_in_fresh_process(tmp_path, x: np.ndarray, imports: str, prelude: str = ""
                           ) -> tuple[np.ndarray, str]:
    """The output of m.keras on ``x``, loaded by keras.models.load_model in a new process that
    runs ``prelude`` then imports only ``imports``; and the transcoder modules it had loaded."""
    np.save(tmp_path / "x.npy", x)
    code = (f"import sys; {prelude}import numpy as np, {imports}; "
            "m = keras.models.load_model(sys.argv[1]); "
            "np.save(sys.argv[2], np.asarray(m(np.load(sys.argv[3])))); "
            "print(sorted(n for n, m in sys.modules.items() "
            "if m is not None and n.split('.')[0] == 'transcoder'))")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.keras"),
                           str(tmp_path / "y.npy"), str(tmp_path / "x.npy")], check=True,
                          capture_output=True, text=True, cwd=tmp_path)
    return np.load(tmp_path / "y.npy"), done.stdout.strip()


@pytest.mark.slow
def test_a_rebuilt_keras_file_loads_after_import_transcoder_alone(tmp_path):
    """In a fresh process with only `import transcoder` (never transcoder.models): the Encoder's
    batch-changing reshapes have no Keras built-in, so its .keras holds our TensorOp."""
    torch = pytest.importorskip("torch")
    module, result = _rebuilt_keras(tmp_path, "Encoder", (4, 10, 128))
    with zipfile.ZipFile(tmp_path / "m.keras") as archive:   # one of our layers is in it
        assert '"transcoder>TensorOp"' in archive.read("config.json").decode()
    assert [n for n in result.notes if "m.keras uses transcoder's own Keras layers "
            "(TensorOp reshape x2)" in n]
    x = np.random.default_rng(1).standard_normal((4, 10, 128)).astype(np.float32)
    got, _ = _load_in_fresh_process(tmp_path, x, "transcoder, keras")
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    assert np.max(np.abs(got - expected)) <= 1e-5 + 1e-4 * np.max(np.abs(expected))
    assert_bit_exact(np.load(tmp_path / "x.npy"), x)


@pytest.mark.slow
def test_a_rebuilt_keras_file_of_built_in_layers_loads_without_transcoder(tmp_path):
    """CNN1d (padded Conv1d, BatchNorm, ReLU, Conv1d, a mean over time) rebuilds from Keras
    built-in layers only: a process that never imports transcoder loads its .keras."""
    torch = pytest.importorskip("torch")
    module, result = _rebuilt_keras(tmp_path, "CNN1d", (3, 4, 9))
    with zipfile.ZipFile(tmp_path / "m.keras") as archive:
        config = archive.read("config.json").decode()
    assert "transcoder" not in config and "GlobalAveragePooling1D" in config
    assert [n for n in result.notes if "m.keras holds Keras built-in layers only" in n]
    x = np.random.default_rng(2).standard_normal((5, 4, 9)).astype(np.float32)  # another batch
    # transcoder cannot even be imported there: sys.modules["transcoder"] = None
    got, loaded = _load_in_fresh_process(tmp_path, x, "keras", "sys.modules['transcoder'] = None; ")
    assert loaded == "[]"
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    assert got.shape == expected.shape == (5, 8)
    assert np.max(np.abs(got - expected)) <= 1e-5 + 1e-4 * np.max(np.abs(expected))
