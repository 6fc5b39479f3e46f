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

from ..errors import CheckFailed, UsageError
from .compare import (DEFAULT_TOLERANCES, NOT_CHECKED, SKIPPED, SUCCESS,
                      Comparison, json_float, overall_status)

REPORT_VERSION = 1
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
            line = (f"check {'passed' if self.passed else 'FAILED'}: {len(self.failures)} of "
                    f"{self.compared} {what} differ beyond tolerance")
            if self.unverified:
                line += (f"; only {self.compared} of {len(self.entries)} {what} verified "
                         f"({self._unverified_counts(what)}")
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

    def raise_for_status(self) -> None:
        """Raise :class:`CheckFailed` (exit code 1) with :meth:`summary` unless the check passed."""
        if not self.passed:
            raise CheckFailed(self.summary())

    # ------------------------------------------------------------ JSON

    def to_dict(self) -> dict[str, Any]:
        return {
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
            "first_divergence": _json_safe(self.first_divergence),
            "artifact": self.artifact,
            "versions": dict(self.versions),
            "notes": list(self.notes),
            "entries": [e.to_dict() for e in self.entries],
            "trace": [e.to_dict() for e in self.trace],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def write_json(self, path: str | os.PathLike) -> Path:
        return _write_atomic(Path(path), self.to_json() + "\n")

    # ------------------------------------------------------------ JUnit

    def to_junit(self) -> ET.Element:
        """``<testsuites>`` with one ``<testsuite>``; a testcase per entry, then per trace entry."""
        cases = [(self.what, e) for e in self.entries]
        cases += [("trace", e) for e in self.trace]
        suite = ET.Element("testsuite", {
            "name": f"transcoder.check.{self.kind}", "tests": str(len(cases)),
            "failures": str(sum(1 for _, e in cases if e.diverged)), "errors": "0",
            "skipped": str(sum(1 for _, e in cases if not e.compared)), "time": "0"})
        props = ET.SubElement(suite, "properties")
        for name, value in [("status", self.status), ("seed", self.seed),
                            ("input_shapes", json.dumps(self.input_shapes)),
                            ("input_dtypes", json.dumps(self.input_dtypes)),
                            ("reference", self.reference)] + \
                [(f"artifact.{k}", v) for k, v in (self.artifact or {}).items()] + \
                [(f"version.{k}", v) for k, v in self.versions.items()]:
            ET.SubElement(props, "property", {"name": name, "value": str(value)})
        for group, entry in cases:
            case = ET.SubElement(suite, "testcase", {"classname": f"transcoder.check.{group}",
                                                     "name": entry.label, "time": "0"})
            if entry.diverged:
                failure = ET.SubElement(case, "failure", {"message": f"{entry.status}: "
                                                                     f"{entry.summary()}",
                                                          "type": entry.status})
                failure.text = json.dumps(entry.to_dict(), indent=1)
            elif not entry.compared:
                ET.SubElement(case, "skipped", {"message": f"{entry.status}: {entry.message}"})
            else:
                out = ET.SubElement(case, "system-out")
                out.text = entry.summary()
        root = ET.Element("testsuites", {"name": "transcoder", "tests": suite.get("tests"),
                                         "failures": suite.get("failures"), "errors": "0",
                                         "skipped": suite.get("skipped")})
        root.append(suite)
        return root

    def write_junit(self, path: str | os.PathLike) -> Path:
        root = self.to_junit()
        ET.indent(root)
        text = ET.tostring(root, encoding="unicode", xml_declaration=False)
        return _write_atomic(Path(path), '<?xml version="1.0" encoding="UTF-8"?>\n' + text + "\n")


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
