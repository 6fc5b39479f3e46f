"""The check's report: one :class:`CheckReport`, written as JSON or JUnit (printed by
:mod:`.display`).

``report.passed`` is True only when every gating entry is SUCCESS (skipped and not-checked ones
aside) and at least one was compared; with ``strict`` also only when every entry was verified
(none SKIPPED or NOT CHECKED). ``report.exit_code`` is 0 then, else 1 (the CLI's "check
failed"). The summary line says when less than everything was verified.
Gating entries are ``entries``: the model outputs of a full-model check, the layers of a
per-layer check. ``trace`` holds the intermediate outputs compared to localise a divergence;
they explain, they do not gate.
"""
from __future__ import annotations

import json
import os
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from ..errors import INTERNAL_ERROR_EXIT, CheckFailed, TranscoderError, UsageError
from ..printing import print_json, with_schema
from .compare import (DEFAULT_TOLERANCES, NOT_CHECKED, SKIPPED, SUCCESS,
                      Comparison, json_float, overall_status)

REPORT_VERSION = 1
#: The kind of an entry naming a hyper-parameter the two sides disagree on (:mod:`.hyper`).
HYPER_PARAMETER = "hyper-parameter"
#: package -> distributions that may provide it (the first one installed is reported).
DISTRIBUTIONS = {"torch": ("torch",), "keras": ("keras",),
                 "tensorflow": ("tensorflow-cpu", "tensorflow", "tensorflow-intel", "tf-nightly"),
                 "numpy": ("numpy",), "transcoder": ("transcoder",)}


def library_versions() -> dict[str, str | None]:
    """Installed versions of torch, keras, tensorflow, numpy and transcoder (None if absent),
    read from package metadata: nothing is imported."""
    found: dict[str, str | None] = {}
    for package, dists in DISTRIBUTIONS.items():
        found[package] = None
        for dist in dists:
            try:
                found[package] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    if found["transcoder"] is None:
        from .._version import __version__
        found["transcoder"] = __version__
    return found


@dataclass
class CheckReport:
    """What a check compared and found. ``kind``: ``"model"``, ``"layers"`` or ``"tensors"``
    (a copy compared bit for bit)."""

    kind: str
    entries: list[Comparison] = field(default_factory=list)
    trace: list[Comparison] = field(default_factory=list)
    seed: int | None = None
    input_shapes: list[list[int]] = field(default_factory=list)
    input_dtypes: list[str] = field(default_factory=list)
    atol: float | None = None          # as requested; None: per-dtype defaults
    rtol: float | None = None
    reference: str = "torch"           # the side whose outputs are "expected"
    keras_layout: str | None = None
    first_divergence: dict | None = None
    notes: list[str] = field(default_factory=list)
    strict: bool = False               # everything must be verified (no SKIPPED, NOT CHECKED)
    artifact: dict | None = None       # the exported artifact whose outputs were compared
    versions: dict[str, str | None] = field(default_factory=library_versions)

    # ------------------------------------------------------------ verdict

    @property
    def what(self) -> str:
        """What the entries are: model outputs, layers or tensors."""
        return {"model": "outputs", "layers": "layers"}.get(self.kind, self.kind)

    @property
    def status(self) -> str:
        """FAIL, INACCURATE, SUCCESS, or SKIPPED when nothing was compared."""
        return overall_status(self.entries)

    @property
    def passed(self) -> bool:
        return self.status == SUCCESS and not (self.strict and self.unverified)

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else CheckFailed.exit_code

    @property
    def skipped(self) -> int:
        return sum(1 for e in self.entries if e.status == SKIPPED)

    @property
    def not_checked(self) -> int:
        return sum(1 for e in self.entries if e.status == NOT_CHECKED)

    @property
    def unverified(self) -> int:
        """Entries nothing was compared for: SKIPPED and NOT CHECKED."""
        return len(self.entries) - self.compared

    @property
    def compared(self) -> int:
        return sum(1 for e in self.entries if e.compared)

    @property
    def failures(self) -> list[Comparison]:
        return [e for e in self.entries if e.diverged]

    def summary(self) -> str:
        """One line: the verdict, the counts and the first divergence."""
        what = self.what
        if self.artifact:
            what = f"{what} of {Path(self.artifact['path']).name}"
        if self.status == SKIPPED:
            line = f"check {SKIPPED}: nothing was compared ({self._unverified_counts(what)})"
        else:
            settings = [e for e in self.entries if e.kind == HYPER_PARAMETER]
            compared = self.compared - len(settings)
            line = (f"check {'passed' if self.passed else 'FAILED'}: "
                    f"{_settings_line(settings)}{len(self.failures) - len(settings)} of "
                    f"{compared} {what} differ beyond tolerance")
            if self.unverified:
                line += (f"; only {compared} of {len(self.entries) - len(settings)} {what} "
                         f"verified ({self._unverified_counts(what)}")
                line += ", and --strict asks for all)" if self.strict else ")"
        if self.seed is not None:
            line += f" (seed {self.seed})"
        if self.first_divergence and not self.passed:
            line += f"; {self.first_divergence['message']}"
        return line

    def _unverified_counts(self, what: str) -> str:
        counts = [f"{n} {label}" for n, label in ((self.skipped, "skipped"),
                                                  (self.not_checked, "not checked")) if n]
        return ", ".join(counts) or f"no {what}"

    def raise_for_status(self, shown: bool = False) -> None:
        """Raise :class:`CheckFailed` (exit code 1) with :meth:`summary` unless the check passed;
        ``shown``: the summary is printed already (the command prints it once)."""
        if not self.passed:
            failed = CheckFailed(self.summary())
            failed.shown = shown
            raise failed

    def gates(self, entry: Comparison) -> bool:
        """Whether ``entry`` fails the check: it differs, or under ``strict`` it was not
        verified (the exit code, the JSON and JUnit all say so)."""
        return entry.diverged or (self.strict and not entry.compared)

    # ------------------------------------------------------------ JSON

    def to_dict(self) -> dict[str, Any]:
        return with_schema({
            "report_version": REPORT_VERSION,
            "kind": self.kind,
            "status": self.status,
            "passed": self.passed,
            "exit_code": self.exit_code,
            "summary": self.summary(),
            "seed": self.seed,
            "input_shapes": [list(s) for s in self.input_shapes],
            "input_dtypes": list(self.input_dtypes),
            "atol": self.atol,
            "rtol": self.rtol,
            "default_tolerances": {k: {"atol": a, "rtol": r}
                                   for k, (a, r) in DEFAULT_TOLERANCES.items()},
            "reference": self.reference,
            "keras_layout": self.keras_layout,
            "compared": self.compared,
            "skipped": self.skipped,
            "not_checked": self.not_checked,
            "strict": self.strict,
            "failed": len(self.failures),
            "failing": sum(1 for e in self.entries if self.gates(e)),
            "first_divergence": _json_safe(self.first_divergence),
            "artifact": self.artifact,
            "versions": dict(self.versions),
            "notes": list(self.notes),
            "entries": [e.to_dict() for e in self.entries],
            "trace": [e.to_dict() for e in self.trace],
        })

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def write_json(self, path: str | os.PathLike) -> Path:
        return _write_atomic(Path(path), self.to_json() + "\n")

    # ------------------------------------------------------------ HTML

    def to_html(self, title: str = "transcoder check") -> str:
        """One self-contained page: a bar per entry, error against tolerance (:mod:`.html`)."""
        from .html import render
        return render(self.to_dict(), title)

    def write_html(self, path: str | os.PathLike) -> Path:
        return _write_atomic(Path(path), self.to_html())

    def _repr_html_(self) -> str:
        from .html import fragment
        return fragment(self.to_dict())

    def __repr__(self) -> str:
        return f"<CheckReport {self.kind}: {self.summary()}>"

    # ------------------------------------------------------------ JUnit

    def to_junit(self) -> ET.Element:
        """``<testsuites>`` with one ``<testsuite>``; a testcase per entry, then per trace entry.
        Its counts tell what the exit code tells: an entry that gates the verdict
        (:meth:`gates`: under ``--strict`` a SKIPPED or NOT CHECKED one too) is a failure,
        and a check that fails with no failing entry (nothing compared at all) gets a
        ``verdict`` testcase that fails with the summary."""
        cases = [(self.what, e, self.gates(e)) for e in self.entries]
        cases += [("trace", e, e.diverged) for e in self.trace]
        suite = _suite(f"transcoder.check.{self.kind}", self._properties())
        for group, entry, fails in cases:
            _entry_case(suite, group, entry, fails)
        if not self.passed and not any(fails for *_, fails in cases):
            case = _case(suite, "verdict", "check")
            ET.SubElement(case, "failure", {"message": self.summary(), "type": self.status})
        return _suites(suite)

    def _properties(self) -> list[tuple[str, Any]]:
        return [("status", self.status), ("passed", self.passed), ("exit_code", self.exit_code),
                ("strict", self.strict), ("seed", self.seed),
                ("input_shapes", json.dumps(self.input_shapes)),
                ("input_dtypes", json.dumps(self.input_dtypes)),
                ("reference", self.reference)] + \
            [(f"artifact.{k}", v) for k, v in (self.artifact or {}).items()] + \
            [(f"version.{k}", v) for k, v in self.versions.items()]

    def write_junit(self, path: str | os.PathLike) -> Path:
        return _write_junit(self.to_junit(), Path(path))


# ---------------------------------------------------------------- JUnit pieces

def _suite(name: str, properties: list[tuple[str, Any]]) -> ET.Element:
    suite = ET.Element("testsuite", {"name": name, "time": "0"})
    props = ET.SubElement(suite, "properties")
    for key, value in properties:
        ET.SubElement(props, "property", {"name": key, "value": str(value)})
    return suite


def _case(suite: ET.Element, name: str, group: str) -> ET.Element:
    return ET.SubElement(suite, "testcase", {"classname": f"transcoder.check.{group}",
                                             "name": name, "time": "0"})


def _entry_case(suite: ET.Element, group: str, entry: Comparison, fails: bool) -> None:
    case = _case(suite, entry.label, group)
    if fails:
        failure = ET.SubElement(case, "failure", {"message": f"{entry.status}: {entry.summary()}",
                                                  "type": entry.status})
        failure.text = json.dumps(entry.to_dict(), indent=1)
    elif not entry.compared:
        ET.SubElement(case, "skipped", {"message": f"{entry.status}: {entry.message}"})
    else:
        ET.SubElement(case, "system-out").text = entry.summary()


def _suites(suite: ET.Element) -> ET.Element:
    """Count the suite's testcases into its attributes and wrap it in ``<testsuites>``."""
    cases = suite.findall("testcase")
    counts = {"tests": len(cases),
              "failures": sum(1 for c in cases if c.find("failure") is not None),
              "errors": sum(1 for c in cases if c.find("error") is not None),
              "skipped": sum(1 for c in cases if c.find("skipped") is not None)}
    suite.attrib.update({k: str(v) for k, v in counts.items()})
    root = ET.Element("testsuites", {"name": "transcoder", **{k: str(v) for k, v in counts.items()}})
    root.append(suite)
    return root


def _write_junit(root: ET.Element, path: Path) -> Path:
    ET.indent(root)
    text = ET.tostring(root, encoding="unicode", xml_declaration=False)
    return _write_atomic(path, '<?xml version="1.0" encoding="UTF-8"?>\n' + text + "\n")


# ---------------------------------------------------------------- when no check could run

def error_document(exc: BaseException) -> dict[str, Any]:
    """What ``--report`` and ``--json`` hold when the command stopped on an error (exit 2,
    or 3 for a bug): ``status: "error"`` and the one-line message."""
    code = exc.exit_code if isinstance(exc, TranscoderError) else INTERNAL_ERROR_EXIT
    message = str(exc) if isinstance(exc, TranscoderError) else f"internal error: " \
        f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    return with_schema({"report_version": REPORT_VERSION, "status": "error", "passed": False,
                        "exit_code": code, "summary": message, "message": message,
                        "error_type": type(exc).__name__, "versions": library_versions(),
                        "entries": [], "trace": []})


def write_error_json(exc: BaseException, path: str | os.PathLike) -> Path:
    text = json.dumps(error_document(exc), indent=2, allow_nan=False)
    return _write_atomic(Path(path), text + "\n")


def write_error_html(exc: BaseException, path: str | os.PathLike) -> Path:
    """The ``--report-html`` page of a command stopped by ``exc``: ERROR and the message."""
    from .html import render

    return _write_atomic(Path(path), render(error_document(exc)))


def write_error_outputs(exc: BaseException, report: str | os.PathLike | None,
                        junit: str | os.PathLike | None, as_json: bool,
                        html: str | os.PathLike | None = None) -> None:
    """``--report``, ``--junit``, ``--report-html`` and ``--json`` of a command stopped by
    ``exc``; a file that cannot be written is left out (the error itself is what the command
    reports)."""
    for path, write in ((report, write_error_json), (junit, write_error_junit),
                        (html, write_error_html)):
        if path is not None:
            try:
                write(exc, path)
            except OSError:
                pass
    if as_json:
        print_json(error_document(exc))


def write_error_junit(exc: BaseException, path: str | os.PathLike) -> Path:
    """One testcase with an ``<error>``: CI shows the run as broken, not as green."""
    document = error_document(exc)
    suite = _suite("transcoder.check", [("status", "error"),
                                        ("exit_code", document["exit_code"])])
    case = _case(suite, "check", "check")
    ET.SubElement(case, "error", {"message": document["message"],
                                  "type": document["error_type"]})
    return _write_junit(_suites(suite), Path(path))


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return json_float(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _write_atomic(path: Path, text: str) -> Path:
    """Write beside the target under a temporary name, then rename into place; UsageError
    if the folder refuses (read-only, full)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise UsageError(f"cannot write the report: {exc.strerror or exc}", path=path) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _settings_line(settings: list[Comparison]) -> str:
    """``1 hyper-parameter differs (bn: Keras epsilon=0.001, ...); `` for the summary."""
    if not settings:
        return ""
    first = f"{settings[0].name}: {settings[0].message}"
    more = f", and {len(settings) - 1} more" if len(settings) > 1 else ""
    counted = "1 hyper-parameter differs" if len(settings) == 1 else \
        f"{len(settings)} hyper-parameters differ"
    return f"{counted} ({first}{more}); "
