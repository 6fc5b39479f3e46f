"""The check's report as a picture (--report-html, _repr_html_): one bar per entry whose length is
its error over its tolerance on a log scale, statuses in their own colours, the first divergence
marked; rendered in a real headless Chromium where one is installed."""
from __future__ import annotations

import shutil
import subprocess
from html import escape
from html.parser import HTMLParser

import numpy as np
import pytest

from transcoder.checks.compare import Comparison, compare
from transcoder.checks.html import COLOURS, bar_fraction, render
from transcoder.checks.report import CheckReport

RNG = np.random.default_rng(0)


def _report() -> CheckReport:
    """Six layers: three exact or near, one 1e-3 off (FAIL), one NOT CHECKED, one SKIPPED."""
    x = RNG.standard_normal((4, 8)).astype(np.float32)
    entries = [compare("enc.conv", x, x, kind="layer", torch_kind="Conv1d", keras_kind="Conv1D"),
               compare("enc.bn", x + np.float32(2e-6), x, kind="layer"),
               compare("enc.fc", x + np.float32(1e-3), x, kind="layer", torch_kind="Linear",
                       keras_kind="Dense"),
               Comparison.not_checked("enc.norm", "LayerNorm or GroupNorm: pass --model"),
               Comparison.skipped("enc.head", "no Keras layer of that name", kind="layer"),
               compare("enc.out", x * np.float32(1 + 1e-7), x, kind="layer")]
    report = CheckReport("layers", entries=entries, seed=0, input_shapes=[[4, 8]],
                         input_dtypes=["float32"])
    report.first_divergence = {"name": "enc.fc", "status": "FAIL", "message": "first: enc.fc"}
    return report


class _Bars(HTMLParser):
    def __init__(self):
        super().__init__()
        self.bars, self.scripts, self.links, self.first = [], 0, [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script":
            self.scripts += 1
        for key in ("src", "href"):
            if a.get(key):
                self.links.append(a[key])
        if "data-entry" in a:
            self.bars.append((a["data-entry"], a["data-status"], a["data-ratio"]))
            if "first" in a.get("class", ""):
                self.first.append(a["data-entry"])


def _parse(page: str) -> _Bars:
    parser = _Bars()
    parser.feed(page)
    return parser


def test_one_bar_per_entry_with_its_status_and_ratio():
    report = _report()
    bars = _parse(report.to_html())
    expected = [(e.name, e.status, str(e.worst_ratio)) for e in report.entries]
    assert bars.bars == expected
    assert [s for _, s, _ in bars.bars] == ["SUCCESS", "SUCCESS", "FAIL", "NOT CHECKED", "SKIPPED",
                                            "SUCCESS"]
    assert bars.first == ["enc.fc"]
    assert bars.scripts == 0 and bars.links == []          # self-contained: nothing loaded


def test_bar_length_is_the_log_of_error_over_tolerance():
    assert bar_fraction(1.0) == pytest.approx(6 / 9)       # the tolerance line
    assert bar_fraction(1e-6) == 0.0 and bar_fraction(1e3) == 1.0
    assert bar_fraction(10.0) - bar_fraction(1.0) == pytest.approx(1 / 9)
    assert bar_fraction(0.0) == 0.0 and bar_fraction(float("inf")) == 1.0
    fail = _report().entries[2]
    assert fail.worst_ratio > 10                            # 1e-3 against 1e-5 + 1e-4 |x|
    assert bar_fraction(fail.worst_ratio) > bar_fraction(1.0)


def test_reasons_and_verdict_are_on_the_page():
    page = _report().to_html()
    assert "LayerNorm or GroupNorm: pass --model" in page
    assert "no Keras layer of that name" in page
    assert 'data-verdict="FAILED"' in page and "first divergence" in page


def test_an_error_record_renders_its_message():
    page = render({"status": "error", "message": "x.pt: unknown file type"})
    assert 'data-verdict="ERROR"' in page and "x.pt: unknown file type" in page


def test_notebook_view_and_repr():
    report = _report()
    assert repr(report).count("\n") == 0 and repr(report).startswith("<CheckReport layers: check FAILED")
    fragment = report._repr_html_()
    assert fragment.startswith("<div>") and "<html" not in fragment
    assert len(_parse(fragment).bars) == len(report.entries)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                           "--disable-dev-shm-usage", "--no-first-run", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed "
                                              "(apt-get install chromium; .ci/run does)")
def test_the_page_renders_in_a_real_browser(tmp_path):
    report = _report()
    page = report.write_html(tmp_path / "report.html")
    dom = _chromium("--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    bars = _parse(dom.stdout)
    assert [(n, s) for n, s, _ in bars.bars] == [(e.name, e.status) for e in report.entries]

    png = tmp_path / "shot.png"
    shot = _chromium(f"--screenshot={png}", "--window-size=1000,700", "--hide-scrollbars",
                     page.as_uri())
    assert png.exists(), shot.stderr[-2000:]
    image = pytest.importorskip("PIL.Image").open(png).convert("RGB")
    colours = {c for _, c in image.getcolors(maxcolors=1 << 20)}
    assert len(colours) > 20                                # not blank
    for status in ("SUCCESS", "FAIL", "NOT CHECKED"):      # each status's bar is drawn
        hexcode = COLOURS[status].lstrip("#")
        rgb = tuple(int(hexcode[i:i + 2], 16) for i in (0, 2, 4))
        assert rgb in colours, status


# ---------------------------------------------------------------- the command's --report-html

def _bars_and_entries(tmp_path, name: str):
    """The page's bars and the --report JSON's entries, as (name, status, worst_ratio)."""
    import json

    bars = _parse((tmp_path / f"{name}.html").read_text())
    report = json.loads((tmp_path / f"{name}.json").read_text())
    entries = [(e["name"], e["status"], e["worst_ratio"]) for e in report["entries"]]
    shown = [(n, s, None if r == "None" else float(r)) for n, s, r in bars.bars]
    return shown, entries, report, bars


def test_report_html_from_the_command_matches_its_report(cli, tmp_path):
    """--report-html beside --report: one bar per entry of the JSON, same status and ratio, on
    a passing check, on a failing one (one kernel value off by 0.5: exit 1) and on convert."""
    h5py = pytest.importorskip("h5py")
    pytest.importorskip("torch")
    from conftest import FIXTURES

    src, h5 = FIXTURES / "small_cnn.pt", tmp_path / "cnn.h5"
    code, _, err = cli(src, h5, "--report-html", tmp_path / "conv.html",
                       "--report", tmp_path / "conv.json")
    assert code == 0, err
    shown, entries, report, bars = _bars_and_entries(tmp_path, "conv")
    assert shown == entries and len(entries) == 9 and report["passed"]
    assert {s for _, s, _ in shown} == {"SUCCESS"} and max(r for *_, r in shown) <= 1.0

    code, _, err = cli("check", src, h5, "--report-html", tmp_path / "ok.html",
                       "--report", tmp_path / "ok.json")
    assert code == 0, err
    shown, entries, _, _ = _bars_and_entries(tmp_path, "ok")
    assert shown == entries and len(shown) == 9
    assert 'data-verdict="PASSED"' in (tmp_path / "ok.html").read_text()

    with h5py.File(h5, "r+") as f:
        data = f["conv2/conv2/kernel"][...]
        data.flat[0] += 0.5
        f["conv2/conv2/kernel"][...] = data
    code, out, _ = cli("check", src, h5, "--report-html", tmp_path / "bad.html",
                       "--report", tmp_path / "bad.json")
    assert code == 1
    shown, entries, report, bars = _bars_and_entries(tmp_path, "bad")
    assert shown == entries and len(shown) == 9
    failing = [(n, r) for n, s, r in shown if s == "FAIL"]
    assert [n for n, _ in failing] == ["conv2"] and failing[0][1] > 1000   # 0.5 / ~1e-4
    assert all(r <= 1.0 for n, s, r in shown if s == "SUCCESS")
    assert 'data-verdict="FAILED"' in (tmp_path / "bad.html").read_text()
    assert bars.first == [report["first_divergence"]["name"]] == ["conv2"]


@pytest.mark.parametrize("command", ["check", "convert"])
def test_report_html_on_exit_2_is_an_error_page(cli, tmp_path, command):
    bad, dst = tmp_path / "bad.pt", tmp_path / "out.h5"
    bad.write_bytes(b"PK\x03\x04 not a zip")
    if command == "check":
        # without torch and Keras, check stops earlier (exit 2 too) at the missing frameworks
        pytest.importorskip("torch")
        dst.write_bytes(b"")
    code, _, err = cli(command, bad, dst, "--report-html", tmp_path / "e.html")
    assert code == 2
    message = err.strip().splitlines()[-1].removeprefix("transcode: error: ")
    page = (tmp_path / "e.html").read_text()
    assert 'data-verdict="ERROR"' in page and escape(message) in page and "bad.pt" in message
    assert _parse(page).bars == []
