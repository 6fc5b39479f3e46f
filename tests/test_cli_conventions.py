"""What users expect of a command line: --version, -h, shell completion, --verbose, the help and
exit code 2 when nothing is asked, and a mistyped --model refused before any framework loads,
with the closest names offered; and of a Python package: the API in dir() and one-line reprs."""
from __future__ import annotations

import subprocess
import sys

import pytest

import transcoder
from conftest import FIXTURES, ROOT, assert_imports_none_of
from transcoder import __version__


def test_no_arguments_prints_the_help_and_exits_2(cli):
    code, out, err = cli()
    assert code == 2
    assert "Usage: transcode" in out and "convert" in out


def test_version_and_short_help(cli):
    assert cli("--version") == (0, f"{__version__}\n", "")
    assert cli("-V")[1] == f"{__version__}\n"
    for args in (("-h",), ("check", "-h"), ("bulk", "-h"), ("rules", "-h")):
        code, out, _ = cli(*args)
        assert code == 0 and "Usage: transcode" in out, args


def test_shell_completion_is_typers_own():
    """Run from bash, as a user would: typer finds the shell among the process's ancestors
    (a suite started in the background has none above it; ``; exit`` keeps bash from
    replacing itself with the command)."""
    command = f'"{sys.executable}" -m transcoder --show-completion; exit $?'
    proc = subprocess.run(["/bin/bash", "-c", command],
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={"SHELL": "/bin/bash", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "_transcode_completion" in proc.stdout and "complete" in proc.stdout


def test_verbose_says_what_was_read_and_decided(cli, tmp_path):
    out = tmp_path / "e.safetensors"
    code, _, err = cli("--verbose", FIXTURES / "encoder.pt", out)
    assert code == 0, err
    assert f"transcode: converting {FIXTURES / 'encoder.pt'} to {out}" in err
    assert "read" in err and "planned" in err
    code, _, quiet = cli(FIXTURES / "encoder.pt", tmp_path / "f.safetensors")
    assert code == 0 and "planned" not in quiet


@pytest.mark.parametrize("spec, words", [
    ("fixtures/models.py:Encodr", "defines no 'Encodr' at its top level (did you mean Encoder?)"),
    ("fixtures/model.py:Encoder", "file not found (did you mean models.py"),
    ("fixtures/models.py", "is not of the form"),
])
def test_a_mistyped_model_is_refused_before_any_framework_loads(spec, words):
    code = ("import sys\nfrom transcoder.cli import main\n"
            "code = main(sys.argv[1:])\nassert code == 2, code\n")
    assert_imports_none_of(code, ("torch", "tensorflow", "keras"), "fixtures/encoder.pt",
                           "/tmp/never-written.h5", "--model", spec)
    proc = subprocess.run([sys.executable, "-m", "transcoder", "fixtures/encoder.pt",
                           "/tmp/never-written.h5", "--model", spec], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert words in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_the_api_is_in_dir_and_results_print_in_one_line():
    for name in ("convert", "check", "inspect", "TranscoderError", "Conversion", "Inspection"):
        assert name in dir(transcoder), name
    result = transcoder.convert(FIXTURES / "encoder.pt", "/tmp/_api_repr.safetensors",
                                force=True, check=False)
    assert "\n" not in repr(result) and repr(result).startswith("<Conversion ")
    assert "encoder.pt" in repr(result)
