"""The parity rule, in numpy alone: a runtime's output against the float64 reference and its error bound.

Each output element falls in one class, by its reference value ``r`` and bound ``b`` (the error any
correct evaluation in the export dtype may have, from ``export.bounds``):

- ``finite``: r finite, b finite. Passes when |actual - r| <= b, or when r + b reaches past the
  dtype's largest value and actual is the infinity of r's sign (a correct evaluation may overflow).
- ``nan``: r is NaN (the function is undefined there, e.g. NaN in): actual must be NaN.
- ``inf``: r is +-inf with a finite bound (an activation's limit at an infinite input): actual must be r.
- ``unconstrained``: b is infinite: a value or the terms of a sum on the way exceed the dtype's
  range, so float arithmetic may give anything there. Counted, never judged.

``check_parity`` (at export, next to torch) and ``verify_bundle`` (anywhere, runtime alone) both
judge with ``compare_output``, on every probe stacked into one array per output; reports speak in
units of the bound.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

CLASSES = ("finite", "nan", "inf", "unconstrained")


@dataclasses.dataclass
class Worst:
    """The element furthest outside its bound (or the first non-finite mismatch)."""

    index: list[int]
    element_class: str
    reference: float
    actual: float
    bound: float
    ratio: float  # |actual - reference| / bound; inf for a NaN/inf mismatch


@dataclasses.dataclass
class OutputVerdict:
    """One output compared over every probe: counts and failures per class, the worst element."""

    name: str
    elements: int
    counts: dict[str, int]
    failures: dict[str, int]
    worst_ratio: float  # over finite elements: the largest |actual - reference| / bound
    max_abs_error: float  # over finite elements, for reference only: the bound is the rule
    worst: Worst | None = None
    problem: str | None = None  # a name, dtype or shape that does not match: nothing else was compared

    @property
    def ok(self) -> bool:
        """No problem and no failing element in any class."""
        return self.problem is None and not any(self.failures.values())

    @property
    def finite_ok(self) -> bool:
        """Every finite reference value is met within its bound (NaN/inf semantics aside)."""
        return self.problem is None and self.failures.get("finite", 0) == 0

    def describe(self) -> str:
        """One line: the verdict in units of the bound, and the failing classes."""
        if self.problem:
            return f"output {self.name!r}: {self.problem}"
        failing = ", ".join(f"{n} {c}" for c, n in self.failures.items() if n)
        line = (f"output {self.name!r}: worst element at {self.worst_ratio:.3g} of its bound over "
                f"{self.counts['finite']} finite values")
        if self.counts["unconstrained"]:
            line += f" ({self.counts['unconstrained']} beyond the dtype's range, unconstrained)"
        if failing:
            line += f"; failing: {failing}"
        return line


def bound_ratio(actual: np.ndarray, reference: np.ndarray, bound: np.ndarray) -> np.ndarray:
    """|actual - reference| / bound per element (0 where equal, inf where outside a zero bound)."""
    with np.errstate(all="ignore"):
        error = np.abs(actual - reference)
        ratio = np.where(error == 0, 0.0, error / bound)
    return np.where(np.isnan(ratio), np.inf, ratio)


def classify(reference: np.ndarray, bound: np.ndarray) -> dict[str, np.ndarray]:
    """The element classes of the module docstring, as boolean masks."""
    nan = np.isnan(reference)
    unconstrained = ~nan & ~np.isfinite(bound)
    inf = np.isinf(reference) & ~unconstrained
    return {"finite": ~nan & ~unconstrained & ~inf, "nan": nan, "inf": inf, "unconstrained": unconstrained}


def compare_output(name: str, actual: np.ndarray, reference: np.ndarray, bound: np.ndarray, *, dtype: str,
                   expected_name: str | None = None) -> OutputVerdict:
    """Judge one output (any shape) against its float64 reference and bound; see the module docstring."""
    empty = {c: 0 for c in CLASSES}
    problem = _signature_problem(name, actual, reference, dtype, expected_name)
    if problem:
        return OutputVerdict(name, int(reference.size), empty, dict(empty), math.inf, math.inf, problem=problem)
    a = actual.astype(np.float64)
    classes = classify(reference, bound)
    ratio = bound_ratio(a, reference, bound)
    largest = float(np.finfo(dtype).max)
    with np.errstate(all="ignore"):
        may_overflow = (np.abs(reference) + bound >= largest) & (a == np.sign(reference) * np.inf)
    bad = {
        "finite": classes["finite"] & (ratio > 1) & ~may_overflow,
        "nan": classes["nan"] & ~np.isnan(a),
        "inf": classes["inf"] & (a != reference),
        "unconstrained": np.zeros(reference.shape, bool),
    }
    finite_ratio = np.where(classes["finite"] & ~may_overflow, ratio, 0.0)
    with np.errstate(invalid="ignore"):
        abs_error = np.abs(a - reference)[classes["finite"] & np.isfinite(a)]
    verdict = OutputVerdict(
        name=name,
        elements=int(reference.size),
        counts={c: int(m.sum()) for c, m in classes.items()},
        failures={c: int(m.sum()) for c, m in bad.items()},
        worst_ratio=float(finite_ratio.max(initial=0.0)),
        max_abs_error=float(abs_error.max(initial=0.0)),
    )
    verdict.worst = _worst(a, reference, bound, ratio, classes, bad, finite_ratio)
    return verdict


def _signature_problem(name: str, actual: np.ndarray, reference: np.ndarray, dtype: str,
                       expected_name: str | None) -> str | None:
    if expected_name is not None and name != expected_name:
        return f"is named {name!r}, expected {expected_name!r}"
    if actual.dtype != np.dtype(dtype):
        return f"has dtype {actual.dtype}, expected {dtype}"
    if actual.shape != reference.shape:
        return f"has shape {actual.shape}, expected {reference.shape}"
    return None


def _worst(a: np.ndarray, reference: np.ndarray, bound: np.ndarray, ratio: np.ndarray,
           classes: dict[str, np.ndarray], bad: dict[str, np.ndarray], finite_ratio: np.ndarray) -> Worst | None:
    """A failing non-finite element first (they say most), else the largest finite ratio."""
    for kind in ("nan", "inf", "finite"):
        if bad[kind].any():
            flat = int(np.argmax(np.where(bad[kind], ratio if kind == "finite" else 1.0, -1.0)))
            break
    else:
        if not classes["finite"].any():
            return None
        flat = int(np.argmax(finite_ratio))
        kind = "finite"
    at = np.unravel_index(flat, reference.shape)
    return Worst([int(i) for i in at], kind, float(reference[at]), float(a[at]), float(bound[at]),
                 float(ratio[at]) if kind == "finite" else math.inf)


def jsonable(value: Any) -> Any:
    """``value`` (dataclasses included) with numpy scalars as Python numbers and non-finite floats as 'nan', 'inf', '-inf'."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
