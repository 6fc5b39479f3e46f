"""Start-up: what the plain paths import. `transcode bulk --no-check` leaves the check's modules
alone, and its forked workers find the format modules and h5py already imported by the run
(each worker imported them again before: about 0.06 s of CPU per worker for h5py alone).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import FRAMEWORKS, ROOT, assert_imports_none_of
from transcoder.bulk import engines


def _tree(root):
    for i, name in enumerate(["encoder.pt", "encoder.safetensors", "small_cnn.pt"]):
        (root / f"d{i}").mkdir(parents=True)
        shutil.copyfile(ROOT / "fixtures" / name, root / f"d{i}" / name)
    return root


def test_bulk_without_the_check_imports_none_of_its_modules(tmp_path):
    src, dst = _tree(tmp_path / "src"), tmp_path / "dst"
    assert_imports_none_of("import sys; from transcoder.cli import main; "
                           "assert main(['bulk', *sys.argv[1:]]) == 0",
                           ("transcoder.checks", "transcoder.checks.verify", *FRAMEWORKS),
                           src, dst, "--to", "h5", "-j", "1", "-q", "--no-check")
    assert len(list(dst.rglob("*.h5"))) == 3


@pytest.mark.skipif(engines.START_METHOD != "fork", reason="workers are forked on Linux only")
def test_forked_workers_do_not_import_h5py_again(tmp_path):
    src, dst = _tree(tmp_path / "src"), tmp_path / "dst"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "transcoder", "bulk", src,
                           dst, "--to", "h5", "--jobs", "2", "--quiet", "--no-check"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list(dst.rglob("*.h5"))) == 3
    # -X importtime prints one line per module each process imports: one process imported
    # h5py and the format modules (the run), not each of the two workers
    for module in ("h5py.version", "h5py._hl.files", "transcoder.formats.pt",
                   "transcoder.formats.keras_h5", "transcoder.formats._hdf5.h5heap"):
        lines = re.findall(rf"\|\s*{re.escape(module)}$", done.stderr, re.MULTILINE)
        assert len(lines) == 1, (module, len(lines))
