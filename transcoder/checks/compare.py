"""Comparing one output: tolerances, error metrics and a status (numpy only).

An element passes when ``|actual - expected| <= atol + rtol * |expected|`` (absolute, never a
signed difference). The status of a whole array:

- ``SUCCESS``: every element passes.
- ``INACCURATE``: every element is within 10x its bound. Shown apart from FAIL because it
  usually means numerics (accumulation order, lower precision) rather than a wrong rule, but
  it still fails the check: a CI step must fail loudly, and loosening ``atol``/``rtol`` is an
  explicit choice the user makes.
- ``FAIL``: an element beyond 10x its bound, a shape mismatch, or a non-finite mismatch (a NaN
  or an Inf where the reference has none, or the other way round, or Infs of opposite sign).
- ``SKIPPED``: the check tried, and could not compare this (a layer the per-layer builder
  cannot make, a pair whose outputs cannot be matched); the reason is in ``message``.
- ``NOT CHECKED``: nothing here can be verified without knowing more: a layer whose kind the
  names leave open (a LayerNorm, GroupNorm or InstanceNorm), or weights carried verbatim
  because no rule maps them. The reason says what would let the check verify it.
SKIPPED and NOT CHECKED are never counted as passed.

``max_abs_error`` and ``max_rel_error`` (``|a - e| / max(|e|, tiny)``, tiny the smallest normal
of the reference's float type) are taken over the elements finite on both sides, in float64.

Tolerances scale with the output (``scaled=True``, what every check uses): the default atol of
the reference's dtype is multiplied by ``s = max(1, max |expected|)`` over its finite elements,

    |actual - expected| <= atol * s + rtol * |expected|

because float rounding in a sum of n products is relative to the sum's terms, not to the one
element it is compared at: an element near 0 in an output whose others reach s carries
rounding of order eps * s * sqrt(n). An atol the user gives stays absolute. Measured on this
machine (full-model check, torch 2.13 vs Keras 3.15 on TensorFlow, float32, seeded inputs):

| model | max abs error | s | error / bound (worst) |
|---|---|---|---|
| 2 x Linear(4096, 4096), normal(0, 1) weights | 7.8e-3 | 1.7e4 | 0.034 |
| 2 x Linear(4096, 4096), PyTorch init | 6.6e-7 | 1.37 | 0.032 |
| Linear(11008, 4096) + Linear(4096, 4096), normal(0, 1) | 1.3e-2 | 2.9e4 | 0.039 |
| 2 x Conv2d(512, 512, 3x3), normal(0, 1) | 5.0e-2 | 1.7e4 | 0.12 |
| 2 x Conv2d(512, 512, 3x3), PyTorch init | 4.2e-6 | 1.47 | 0.11 |

Unscaled, the normal(0, 1) rows fail by 100-5000x; scaled, every row keeps an 8x margin or
more, while a wrong rule errs by a fraction of s itself. The per-layer check computes in
float64 and compares with float64's tolerances, scaled the same way (``checks/layers.py``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..options import Tolerance

SUCCESS, INACCURATE, FAIL, SKIPPED = "SUCCESS", "INACCURATE", "FAIL", "SKIPPED"
NOT_CHECKED = "NOT CHECKED"
STATUSES = (SUCCESS, INACCURATE, FAIL, SKIPPED, NOT_CHECKED)
#: An array whose worst element is within this many tolerances is INACCURATE, beyond it FAIL.
INACCURATE_FACTOR = 10.0

#: Default ``(atol, rtol)`` per dtype of the reference output, measured on this machine (torch
#: 2.13 CPU vs Keras 3.15 / TF 2.21, seeded N(0, 1) inputs, PyTorch-default initialisation,
#: both sides in the dtype named):
#:   float32: Linear 512 and 4096, Conv2d 64 and 256 (3x3), LSTM/GRU 128 and 512 over 50 steps,
#:     MultiheadAttention 512/8 and a 12-block conv/BatchNorm/ReLU stack err by at most 4.2e-6
#:     absolute (Conv2d 256, outputs up to 2.6); with rtol 1e-4 the largest atol any of them
#:     needs is 1.1e-6, so atol 1e-5 / rtol 1e-4 leave a 9x margin, while a wrong rule (gate
#:     order, permutation, epsilon) errs by 1e-2 or more.
#:   float16: Linear/Conv2d err 2e-3, an LSTM over 30 steps needs atol 2e-4 at rtol 1e-2.
#:   bfloat16: Linear/Conv2d err up to 1.6e-2, needing atol 1.2e-4 at rtol 5e-2.
#:   float64: errors of 4e-15; 1e-10 / 1e-8 is still tight next to any wrong rule.
#: Integer and bool outputs must be equal.
DEFAULT_TOLERANCES: dict[str, tuple[float, float]] = {
    "float64": (1e-10, 1e-8),
    "float32": (1e-5, 1e-4),
    "float16": (1e-3, 1e-2),
    "bfloat16": (1e-2, 5e-2),
    "complex128": (1e-10, 1e-8),
    "complex64": (1e-5, 1e-4),
}
EXACT = (0.0, 0.0)


def dtype_key(dtype: Any) -> str:
    """``"float32"``, ``"bfloat16"`` ... for a numpy dtype (ml_dtypes' bfloat16 included) or
    its name."""
    if isinstance(dtype, str) and dtype in DEFAULT_TOLERANCES:
        return dtype
    dt = np.dtype(dtype)
    return "bfloat16" if dt.name == "bfloat16" else dt.name


def default_tolerance(dtype: Any) -> tuple[float, float]:
    """``(atol, rtol)`` for outputs of ``dtype``: :data:`DEFAULT_TOLERANCES`, exact for integers."""
    return DEFAULT_TOLERANCES.get(dtype_key(dtype), EXACT)


def coarsest(dtypes) -> str:
    """The dtype among ``dtypes`` (names or dtypes) with the loosest default tolerance."""
    names = [dtype_key(d) if not isinstance(d, str) else d for d in dtypes]
    return max(names, key=lambda n: DEFAULT_TOLERANCES.get(n, EXACT), default="float32")


def resolve_tolerance(dtype: Any, atol: float | None = None, rtol: float | None = None
                      ) -> tuple[float, float]:
    """The user's ``atol``/``rtol`` where given, the dtype's default for the rest."""
    d_atol, d_rtol = default_tolerance(dtype)
    return (d_atol if atol is None else float(atol)), (d_rtol if rtol is None else float(rtol))


@dataclass
class Comparison:
    """One compared output or layer. ``kind``: ``output`` (a model output), ``layer`` (a
    per-layer check) or ``trace`` (an intermediate output used to localise a divergence)."""

    name: str
    status: str
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    atol: float | None = None
    rtol: float | None = None
    shape: list[int] | None = None            # the reference's shape
    actual_shape: list[int] | None = None
    dtype: str | None = None
    kind: str = "output"
    torch_kind: str | None = None             # PyTorch module class or rule family
    keras_kind: str | None = None             # Keras layer class
    keras_name: str | None = None             # Keras layer name when it differs from ``name``
    mismatched: int = 0                       # elements beyond atol + rtol * |expected|
    size: int = 0
    worst_ratio: float | None = None          # max of error / bound (1 = at the tolerance)
    message: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def compared(self) -> bool:
        return self.status not in (SKIPPED, NOT_CHECKED)

    @property
    def diverged(self) -> bool:
        return self.status in (INACCURATE, FAIL)

    @property
    def label(self) -> str:
        """``bn1 (BatchNorm1d -> BatchNormalization)``."""
        kinds = " -> ".join(k for k in (self.torch_kind, self.keras_kind) if k)
        return f"{self.name} ({kinds})" if kinds else self.name

    def summary(self) -> str:
        """One line: status, errors and tolerance, or the reason."""
        if self.max_abs_error is None:
            return f"{self.status}: {self.message}" if self.message else self.status
        line = (f"max abs error {self.max_abs_error:.2g}, max rel error {self.max_rel_error:.2g} "
                f"(atol {self.atol:g}, rtol {self.rtol:g}")
        line += f"; {self.mismatched} of {self.size} elements beyond)" if self.mismatched else ")"
        return f"{line}; {self.message}" if self.message else line

    def to_dict(self) -> dict:
        out = asdict(self)
        for key in ("max_abs_error", "max_rel_error", "worst_ratio"):
            out[key] = json_float(out[key])
        return out

    @classmethod
    def skipped(cls, name: str, reason: str, kind: str = "output", **labels) -> "Comparison":
        return cls(name, SKIPPED, kind=kind, message=reason, **labels)

    @classmethod
    def not_checked(cls, name: str, reason: str, kind: str = "layer", **labels) -> "Comparison":
        return cls(name, NOT_CHECKED, kind=kind, message=reason, **labels)


def json_float(value: float | None) -> float | str | None:
    """Finite floats as they are; ``inf``/``nan`` as the strings ``"inf"``/``"nan"`` (JSON has none)."""
    if value is None or math.isfinite(value):
        return value
    return str(value)


def _as_float64(x: np.ndarray) -> np.ndarray:
    if np.iscomplexobj(x):
        return x.astype(np.complex128)
    return x.astype(np.float64)


def magnitude(expected: Any) -> float:
    """The scale an output's default ``atol`` is multiplied by: ``max(1, max |expected|)`` over
    its finite elements (1 for integers and empty arrays)."""
    e = np.asarray(expected)
    if e.size == 0 or (e.dtype.kind not in "fc" and dtype_key(e.dtype) != "bfloat16"):
        return 1.0
    finite = np.abs(_as_float64(e))
    finite = finite[np.isfinite(finite)]
    return max(1.0, float(finite.max())) if finite.size else 1.0


def compare(name: str, actual: Any, expected: Any, atol: float | None = None,
            rtol: float | None = None, *, scaled: bool = False, defaults: Any = None,
            default_atol: float | None = None, **labels) -> Comparison:
    """Compare ``actual`` with the reference ``expected``; tolerances default by the reference's
    dtype (:func:`resolve_tolerance`), or by the dtype ``defaults`` names; ``default_atol``
    replaces the dtype's default ``atol`` (a quantized artifact's). With ``scaled``, a
    default ``atol`` is multiplied by :func:`magnitude` (a user's ``atol`` stays absolute).
    ``labels`` fill the other :class:`Comparison` fields."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    user_atol = atol
    atol, rtol = resolve_tolerance(expected.dtype if defaults is None else defaults,
                                   default_atol if atol is None else atol, rtol)
    if atol < 0 or rtol < 0:
        raise ValueError(f"tolerances must not be negative (atol {atol}, rtol {rtol})")
    scale = magnitude(expected) if scaled and user_atol is None else 1.0
    atol *= scale
    result = Comparison(name, SUCCESS, atol=atol, rtol=rtol, shape=list(expected.shape),
                        actual_shape=list(actual.shape), dtype=dtype_key(expected.dtype),
                        size=int(expected.size), **labels)
    if scale != 1.0:
        result.extra["atol_scale"] = scale
    if actual.shape != expected.shape:
        result.status = FAIL
        result.message = _join(result.message, f"shape {list(actual.shape)} where the reference "
                                               f"has {list(expected.shape)}")
        return result
    a, e = _as_float64(actual), _as_float64(expected)
    finite_a, finite_e = np.isfinite(a), np.isfinite(e)
    both = finite_a & finite_e
    diff = np.subtract(a, e, where=both, out=np.zeros(a.shape, a.dtype))
    err = np.abs(diff).astype(np.float64)
    mag = np.abs(e, where=both, out=np.zeros(a.shape, np.float64))
    bound = atol + rtol * mag
    tiny = _tiny(expected.dtype)
    rel = err / np.maximum(mag, tiny)
    beyond = err > bound
    # non-finite elements must agree exactly: NaN with NaN, +Inf with +Inf
    same_nan = np.isnan(a) & np.isnan(e)
    same_inf = np.isinf(a) & np.isinf(e) & (a == e)
    nonfinite_bad = ~both & ~same_nan & ~same_inf
    result.max_abs_error = float(err.max()) if err.size else 0.0
    result.max_rel_error = float(rel.max()) if rel.size else 0.0
    result.mismatched = int(beyond.sum() + nonfinite_bad.sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(err == 0, 0.0, err / bound)
    result.worst_ratio = float(ratio.max()) if ratio.size else 0.0
    bad = int(nonfinite_bad.sum())
    if bad:
        result.status = FAIL
        new_nan = int((np.isnan(a) & ~np.isnan(e)).sum())
        what = f"{new_nan} NaN where the reference has none" if new_nan else ""
        other = bad - new_nan
        what = _join(what, f"{other} non-finite value(s) differ" if other else "")
        result.message = _join(result.message, what)
    elif result.worst_ratio <= 1.0:
        result.status = SUCCESS
    elif result.worst_ratio <= INACCURATE_FACTOR:
        result.status = INACCURATE
        result.message = _join(result.message, f"within {INACCURATE_FACTOR:g}x the tolerance: "
                                               f"likely numerics, not a wrong rule; loosen "
                                               f"atol/rtol if acceptable")
    else:
        result.status = FAIL
    return result


def _tiny(dtype: np.dtype) -> float:
    """Smallest normal number of a float dtype (bfloat16 included); 1 for integers and bools."""
    if dtype_key(dtype) == "bfloat16":
        import ml_dtypes
        return float(ml_dtypes.finfo(dtype).tiny)
    return float(np.finfo(dtype).tiny) if dtype.kind in "fc" else 1.0


def _join(a: str, b: str) -> str:
    return "; ".join(s for s in (a, b) if s)


def overall_status(results: list[Comparison]) -> str:
    """FAIL if any failed, else INACCURATE if any, else SUCCESS; SKIPPED if nothing compared."""
    statuses = {r.status for r in results}
    for status in (FAIL, INACCURATE):
        if status in statuses:
            return status
    return SUCCESS if any(r.compared for r in results) else SKIPPED


@dataclass(frozen=True)
class CompareSettings:
    """What every comparison of one check shares: the tolerance asked for (None: per dtype),
    the side whose values are expected (``"torch"`` or ``"keras"``), and the layout the Keras
    side takes and gives (``"torch"`` or ``"channels_last"``)."""

    tolerance: Tolerance = Tolerance()
    reference: str = "torch"
    keras_layout: str = "torch"
    scaled: bool = True                 # default atol scaled by the output's magnitude
    defaults: str | None = None         # the dtype whose default tolerances apply (None: the output's)

    def compare(self, name: str, torch_value: Any, keras_value: Any, **labels) -> Comparison:
        """Compare the two sides, the reference side expected."""
        actual, expected = ((keras_value, torch_value) if self.reference == "torch"
                            else (torch_value, keras_value))
        return compare(name, actual, expected, self.tolerance.atol, self.tolerance.rtol,
                       scaled=self.scaled, defaults=self.defaults,
                       default_atol=self.tolerance.default_atol, **labels)
