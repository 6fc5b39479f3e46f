"""CI tells the same story as the exit code: JUnit and --report agree with it (under --strict
a NOT CHECKED layer is a failure), a --report is written on exit 2 too, the verdict line is
printed once, --json on convert and check, and every JSON the tool writes has a schema."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from conftest import FIXTURES

torch = pytest.importorskip("torch", reason="needs torch: pip install '.[check]'")
keras = pytest.importorskip("keras")
from torch import nn  # noqa: E402

from models import BeatStack  # noqa: E402  (fixtures/, on sys.path through conftest)

MODELS, TWINS = FIXTURES / "models.py", FIXTURES / "keras_twins.py"


def junit_counts(path) -> dict[str, int]:
    root = ET.parse(path).getroot()
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    counted = {k: sum(1 for c in cases if c.find(k) is not None)
               for k in ("failure", "error", "skipped")}
    # the attributes say what the testcases hold, at both levels
    for element in (root, suite):
        assert int(element.get("tests")) == len(cases)
        assert int(element.get("failures")) == counted["failure"]
        assert int(element.get("errors")) == counted["error"]
        assert int(element.get("skipped")) == counted["skipped"]
    return {"tests": len(cases), **counted}


def stack(tmp_path):
    """A checkpoint whose second layer the names leave open (GroupNorm or LayerNorm): it is
    NOT CHECKED by the per-layer check."""
    torch.manual_seed(3)
    module = BeatStack()
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(-1, 1)
    torch.save(module.state_dict(), tmp_path / "m.pt")
    return tmp_path / "m.pt"


def test_strict_junit_and_report_fail_with_the_exit_code(cli, tmp_path):
    src = stack(tmp_path)
    assert cli(src, tmp_path / "m.h5", "--no-check")[0] == 0
    code, out, err = cli("check", src, tmp_path / "m.h5", "--strict",
                         "--junit", tmp_path / "s.xml", "--report", tmp_path / "s.json")
    assert code == 1
    assert junit_counts(tmp_path / "s.xml") == {"tests": 3, "failure": 1, "error": 0,
                                                "skipped": 0}
    failing = [c for c in ET.parse(tmp_path / "s.xml").iter("testcase")
               if c.find("failure") is not None]
    assert [c.find("failure").get("type") for c in failing] == ["NOT CHECKED"]
    assert failing[0].get("name").startswith("input_stack.1")
    report = json.loads((tmp_path / "s.json").read_text())
    assert report["schema"] == 1
    assert (report["passed"], report["exit_code"], report["failing"], report["failed"],
            report["not_checked"]) == (False, 1, 1, 0, 1)

    # without --strict the same layer is skipped, and everything says exit 0
    code, out, err = cli("check", src, tmp_path / "m.h5",
                         "--junit", tmp_path / "l.xml", "--report", tmp_path / "l.json")
    assert code == 0, err
    assert junit_counts(tmp_path / "l.xml") == {"tests": 3, "failure": 0, "error": 0,
                                                "skipped": 1}
    report = json.loads((tmp_path / "l.json").read_text())
    assert (report["passed"], report["exit_code"], report["failing"]) == (True, 0, 0)


def test_a_check_that_compared_nothing_fails_in_junit_too():
    from transcoder.checks import NOT_CHECKED, CheckReport, Comparison

    report = CheckReport("layers", [Comparison("film", NOT_CHECKED, kind="layer",
                                               message="carried verbatim")])
    assert report.exit_code == 1
    root = report.to_junit()
    assert root.get("failures") == "1" and root.get("skipped") == "1"
    verdict = [c for c in root.iter("testcase") if c.get("name") == "verdict"]
    assert verdict[0].find("failure").get("message") == report.summary()


@pytest.mark.parametrize("command", ["check", "convert"])
def test_exit_2_still_writes_the_report_and_junit(cli, tmp_path, command):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 not a zip")
    dst = tmp_path / "out.h5"
    if command == "check":
        dst.write_bytes(b"")
    code, out, err = cli(command, bad, dst, "--report", tmp_path / "r.json",
                         "--junit", tmp_path / "j.xml")
    assert code == 2
    message = err.strip().splitlines()[-1].removeprefix("transcode: error: ")
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["schema"] == 1
    assert (report["status"], report["passed"], report["exit_code"]) == ("error", False, 2)
    assert report["message"] == message and "bad.pt" in message
    assert junit_counts(tmp_path / "j.xml") == {"tests": 1, "failure": 0, "error": 1,
                                                "skipped": 0}
    error = next(ET.parse(tmp_path / "j.xml").iter("error"))
    assert error.get("message") == message


def test_the_verdict_line_is_printed_once(cli, tmp_path):
    cli(FIXTURES / "encoder.pt", tmp_path / "enc.h5", "--no-check")
    args = ("check", FIXTURES / "encoder.pt", tmp_path / "enc.h5", "--model", f"{MODELS}:Encoder",
            "--input-shape", "4,10,128")
    code, out, err = cli(*args, "--keras-model", f"{TWINS}:encoder_answer_no_relu")
    assert code == 1
    verdicts = [line for line in (out + err).splitlines() if "check FAILED" in line]
    assert len(verdicts) == 1 and verdicts[0] == out.splitlines()[-1]
    code, out, err = cli(*args, "-q", "--keras-model", f"{TWINS}:encoder_answer_no_relu")
    assert code == 1 and out.count("check FAILED") == 1 and err == ""
    code, out, err = cli(*args, "--keras-model", f"{TWINS}:encoder_answer")
    assert code == 0
    assert [line for line in (out + err).splitlines() if "check passed" in line] == \
        [out.splitlines()[-1]]


def test_check_json_is_the_report_with_its_schema(cli, tmp_path):
    cli(FIXTURES / "small_cnn.pt", tmp_path / "m.h5", "--no-check")
    code, out, err = cli("check", FIXTURES / "small_cnn.pt", tmp_path / "m.h5", "--json",
                         "--report", tmp_path / "r.json")
    assert code == 0, err
    printed = json.loads(out)
    assert printed["schema"] == 1 and printed["passed"] and printed["kind"] == "layers"
    written = json.loads((tmp_path / "r.json").read_text())
    assert {k: v for k, v in printed.items() if k != "versions"} == \
        {k: v for k, v in written.items() if k != "versions"}
    assert len(printed["entries"]) == 9
    assert all(e["max_abs_error"] <= e["atol"] + e["rtol"] for e in printed["entries"])


def test_convert_json_says_what_was_written_and_the_check(cli, tmp_path):
    code, out, err = cli(FIXTURES / "small_cnn.pt", tmp_path / "m.h5", "--json")
    assert code == 0, err
    doc = json.loads(out)   # stdout is the one JSON document, nothing else
    assert doc["schema"] == 1 and doc["command"] == "convert"
    assert doc["files"] == [str(tmp_path / "m.h5")] and (tmp_path / "m.h5").is_file()
    assert doc["tensors"] == {"copied": 0, "mapped": 18, "carried": 1}
    assert doc["report"]["schema"] == 1 and doc["report"]["passed"]
    code, out, err = cli(FIXTURES / "small_cnn.pt", tmp_path / "n.h5", "--json", "--no-check")
    assert code == 0 and json.loads(out)["report"] is None
    code, out, err = cli(FIXTURES / "small_cnn.pt", tmp_path / "d.h5", "--json", "--dry-run")
    doc = json.loads(out)
    assert code == 0 and doc["dry_run"] and len(doc["rows"]) == 19
    assert not (tmp_path / "d.h5").exists()


def test_convert_json_on_exit_2_is_an_error_document(cli, tmp_path):
    code, out, err = cli(tmp_path / "missing.pt", tmp_path / "m.h5", "--json")
    assert code == 2
    doc = json.loads(out)
    assert (doc["schema"], doc["status"], doc["exit_code"]) == (1, "error", 2)
    assert err.strip() == f"transcode: error: {doc['message']}"


def test_inspect_rules_and_manifest_json_carry_the_schema(cli, tmp_path):
    code, out, _ = cli("inspect", FIXTURES / "small_cnn.pt", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["schema"] == 1 and len(doc["rows"]) == 19
    code, out, _ = cli("rules", "--json")
    assert code == 0 and json.loads(out)["schema"] == 1
    src = tmp_path / "src"
    src.mkdir()
    torch.save(nn.Linear(3, 2).state_dict(), src / "a.pt")
    code, _, err = cli("bulk", src, tmp_path / "dst", "--to", "safetensors", "--no-check", "-q")
    assert code == 0, err
    lines = (tmp_path / "dst" / "transcode-manifest.jsonl").read_text().splitlines()
    assert [json.loads(line)["schema"] for line in lines] == [1]


# ---------------------------------------------------------------- the "wrote" line

def test_an_export_says_what_it_wrote(cli, tmp_path):
    """Not "0 tensors mapped": the artifact, the Keras model it holds and its weights."""
    import re

    tf = pytest.importorskip("tensorflow")
    code, out, err = cli(FIXTURES / "encoder.pt", tmp_path / "m.savedmodel", "--model",
                         f"{MODELS}:Encoder", "--input-shape", "4,10,128", "--no-check")
    assert code == 0, err
    found = re.fullmatch(rf"wrote {re.escape(str(tmp_path / 'm.savedmodel'))}: SavedModel of the "
                         r"rebuilt Keras model \((\d+) weights?\) \([\d.]+ s\)", out.splitlines()[0])
    assert found, out
    assert int(found[1]) == len(tf.saved_model.load(str(tmp_path / "m.savedmodel")).variables)
