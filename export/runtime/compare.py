"""The parity rule, in numpy alone: a runtime's output against the float64 reference and its tolerance.

The tolerance of each output element has two tiers (from ``export.parity.bounds``):

- the **worst-case bound** ``b``: what any correct evaluation in the export dtype may be off by,
  with no assumption (every rounding error of the largest size and the same sign);
- the **statistical bound** ``SPREADS * s + a``: ``s`` is the spread (standard deviation) of the
  error of an honest evaluation, whose roundings are independent and mean-zero, and ``a`` the
  deterministic allowance for what is not random (constants rounded once, a decision that may
  flip at a knee).

A finite element passes where ``|actual - reference|`` is within both. Each element falls in one
class, by its reference value ``r`` and worst-case bound ``b``:

- ``finite``: r finite, and b or the statistical bound finite. Passes when within both tiers, or when
  r + b reaches past the dtype's largest value and actual is the infinity of r's sign (a correct
  evaluation may overflow). Where b alone is infinite (the worst case of a deep float16 stack may
  cancel a variance to 0), the statistical bound judges it.
- ``nan``: r is NaN (the function is undefined there, e.g. NaN in): actual must be NaN.
- ``inf``: r is +-inf with a finite bound (an activation's limit at an infinite input): actual must be r.
- ``unconstrained``: both tiers infinite: a value or the terms of a sum on the way exceed the dtype's
  range, so float arithmetic may give anything there. Counted, never judged.

Why ``SPREADS = 8``: an honest error is a sum of many small independent roundings, each bounded,
so its tail is sub-Gaussian: with Bernstein's inequality, when no single rounding dominates, the
chance that it exceeds k standard deviations is about ``2 exp(-k^2 / 2)``, 1.3e-14 at k = 8: a
check of 10^8 elements (far more than any probe set) flags an honest evaluation with probability
about 1e-6. Where one rounding dominates, the error is within that rounding's own bound, far inside.
One part has a heavier tail: the own rounding of a sum seen at one element (its partial sums, and
so its variance, vary from element to element, as the energy of a random walk tied at both ends
does: an exponential tail). Measured on sequential float32 sums of 64 to 1024 terms, 10^6 samples
each, its tail falls by about a decade every 1.4 of its spreads, from 2e-5 at 7; the bounds pass
counts that part 5 times in the variance (``export.parity.bounds.core.TAIL``), so 8 spreads are 17.9
of its own, where its tail is about 1e-13. The spread is an upper estimate
(each rounding uniform on half an ulp; partial sums of a random order, which blocked and pairwise
sums undercut), so honest errors sit at about 0.2 to 0.6 of the statistical bound (measured over
widths 64 to 1024 and 2 to 12 layers: bench/power.py), while a systematic error (a weight, a bias,
a scale, a constant) shows at every element it touches and fails it.

``check_parity`` (at export, next to torch) and ``verify_bundle`` (anywhere, runtime alone) both
judge with ``compare_output``, on every probe stacked into one array per output; reports speak in
units of each tier.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

CLASSES = ("finite", "nan", "inf", "unconstrained")
TIERS = ("worst-case", "statistical")
# How many spreads of honest rounding an element may be off by (see the module docstring).
SPREADS = 8.0


@dataclasses.dataclass
class Tolerance:
    """Per element of one output: the worst-case bound, the spread of honest rounding, the allowance."""

    bound: np.ndarray
    spread: np.ndarray
    allowance: np.ndarray

    def statistical(self) -> np.ndarray:
        """The tier-2 bound: SPREADS spreads plus the deterministic allowance."""
        with np.errstate(over="ignore", invalid="ignore"):
            return SPREADS * self.spread + self.allowance

    def rows(self, index: Any) -> Tolerance:
        """The tolerance of some rows (any numpy index of the first axis)."""
        return Tolerance(self.bound[index], self.spread[index], self.allowance[index])

    @staticmethod
    def concatenate(parts: list[Tolerance] | tuple[Tolerance, ...]) -> Tolerance:
        """Tolerances of consecutive row blocks, stacked."""
        return Tolerance(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("bound", "spread", "allowance")))

    @staticmethod
    def stack(parts: Sequence[Tolerance]) -> Tolerance:
        """Tolerances of several batches of one output as one, the way ``stack_batches`` stacks their values."""
        return Tolerance(*(stack_batches([getattr(p, f) for p in parts]) for f in ("bound", "spread", "allowance")))

    @staticmethod
    def worst_case(bound: np.ndarray) -> Tolerance:
        """A tolerance with the worst-case tier alone (the statistical tier then allows anything)."""
        return Tolerance(bound, np.full(bound.shape, np.inf), np.zeros(bound.shape))


@dataclasses.dataclass
class Worst:
    """The element furthest outside its tolerance (or the first non-finite mismatch)."""

    index: list[int]
    element_class: str
    reference: float
    actual: float
    bound: float  # the worst-case bound
    ratio: float  # |actual - reference| / bound; inf for a NaN/inf mismatch
    statistical: float = math.nan  # the statistical bound, SPREADS spreads plus the allowance
    spreads: float = math.nan  # |actual - reference| beyond the allowance, in spreads

    @property
    def statistical_ratio(self) -> float:
        """|actual - reference| in units of the statistical bound."""
        error = abs(self.actual - self.reference)
        return 0.0 if error == 0 else error / self.statistical if self.statistical > 0 else math.inf


@dataclasses.dataclass
class OutputVerdict:
    """One output compared over every probe: counts and failures per class and tier, the worst element."""

    name: str
    elements: int
    counts: dict[str, int]
    failures: dict[str, int]
    worst_ratio: float  # over finite elements: the largest |actual - reference| / worst-case bound
    max_abs_error: float  # over finite elements, for reference only: the tolerance is the rule
    worst: Worst | None = None
    problem: str | None = None  # a name, dtype or shape that does not match: nothing else was compared
    worst_statistical: float = 0.0  # over finite elements: the largest error / statistical bound
    tier_failures: dict[str, int] = dataclasses.field(default_factory=lambda: {t: 0 for t in TIERS})

    @property
    def ok(self) -> bool:
        """No problem and no failing element in any class."""
        return self.problem is None and not any(self.failures.values())

    @property
    def finite_ok(self) -> bool:
        """Every finite reference value is met within its tolerance (NaN/inf semantics aside)."""
        return self.problem is None and self.failures.get("finite", 0) == 0

    def failed_tier(self) -> str | None:
        """Which tier the finite failures break: 'worst-case' (then both), 'statistical', or None."""
        if self.tier_failures.get("worst-case"):
            return "worst-case"
        return "statistical" if self.tier_failures.get("statistical") else None

    def describe(self) -> str:
        """One line: the verdict in units of each tier, and the failing classes."""
        if self.problem:
            return f"output {self.name!r}: {self.problem}"
        line = (f"output {self.name!r}: worst element at {self.worst_ratio:.3g} of its worst-case bound and "
                f"{self.worst_statistical:.3g} of its statistical bound over {self.counts['finite']} finite values")
        if self.counts["unconstrained"]:
            line += f" ({self.counts['unconstrained']} beyond the dtype's range, unconstrained)"
        failing = ", ".join(f"{n} {c}" for c, n in self.failures.items() if n)
        if failing:
            tiers = ", ".join(f"{n} outside the {t} bound" for t, n in self.tier_failures.items() if n)
            line += f"; failing: {failing}" + (f" ({tiers})" if tiers else "")
        return line

    def explain_worst(self) -> str | None:
        """The worst finite failure in the units of the tier it breaks, e.g.
        'within the worst-case bound at 0.003; 14 spreads out (the rule allows 8)'."""
        w = self.worst
        if w is None or w.element_class != "finite" or self.ok:
            return None
        if w.ratio > 1:
            return f"{w.ratio:.3g} times its worst-case bound"
        return (f"within the worst-case bound at {w.ratio:.2g}; {w.spreads:.3g} spreads out "
                f"(the rule allows {SPREADS:g} beyond the allowance)")


def stack_batches(parts: Sequence[np.ndarray]) -> np.ndarray:
    """One output of several batches as one array: stacked on the batch axis where their other axes agree,
    else each flattened (a sequence model's outputs at several lengths), so one verdict covers them all."""
    if _by_rows([part.shape for part in parts]):
        return np.concatenate(parts)
    return np.concatenate([part.reshape(-1) for part in parts])


def batch_slices(shapes: Sequence[tuple[int, ...]]) -> list[slice]:
    """Where each batch (of these shapes) lies along the first axis of ``stack_batches`` of them."""
    by_rows = _by_rows(shapes)
    sizes = [shape[0] if by_rows else math.prod(shape) for shape in shapes]
    ends = np.cumsum(sizes, dtype=np.int64)
    return [slice(int(end) - size, int(end)) for size, end in zip(sizes, ends)]


def locate_batch(shapes: Sequence[tuple[int, ...]], index: Sequence[int]) -> tuple[int, int]:
    """(batch, row in that batch) of the element at ``index`` of ``stack_batches`` of batches of these shapes."""
    by_rows = _by_rows(shapes)
    for batch, (where, shape) in enumerate(zip(batch_slices(shapes), shapes)):
        if where.start <= index[0] < where.stop:
            offset = index[0] - where.start
            return batch, offset if by_rows else offset // (math.prod(shape[1:]) or 1)
    raise IndexError(f"element {list(index)} lies in no batch")


def _by_rows(shapes: Sequence[tuple[int, ...]]) -> bool:
    """Whether batches of these shapes stack on their batch axis (their other axes agree)."""
    return len({tuple(shape[1:]) for shape in shapes}) <= 1


def bound_ratio(actual: np.ndarray, reference: np.ndarray, bound: np.ndarray) -> np.ndarray:
    """|actual - reference| / bound per element (0 where equal, inf where outside a zero bound)."""
    with np.errstate(all="ignore"):
        error = np.abs(actual - reference)
        ratio = np.where(error == 0, 0.0, error / bound)
    return np.where(np.isnan(ratio), np.inf, ratio)


def classify(reference: np.ndarray, bound: np.ndarray, statistical: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The element classes of the module docstring, as boolean masks (``statistical``: the tier-2 bound)."""
    nan = np.isnan(reference)
    unconstrained = ~nan & ~np.isfinite(bound)
    if statistical is not None:
        unconstrained &= ~np.isfinite(statistical)
    inf = np.isinf(reference) & ~unconstrained
    return {"finite": ~nan & ~unconstrained & ~inf, "nan": nan, "inf": inf, "unconstrained": unconstrained}


def compare_output(name: str, actual: np.ndarray, reference: np.ndarray, tolerance: Tolerance, *, dtype: str,
                   expected_name: str | None = None) -> OutputVerdict:
    """Judge one output (any shape) against its float64 reference and both tiers; see the module docstring."""
    empty = {c: 0 for c in CLASSES}
    problem = _signature_problem(name, actual, reference, dtype, expected_name)
    if problem:
        return OutputVerdict(name, int(reference.size), empty, dict(empty), math.inf, math.inf, problem=problem)
    a = actual.astype(np.float64)
    classes = classify(reference, tolerance.bound, tolerance.statistical())
    ratio = bound_ratio(a, reference, tolerance.bound)
    statistical = bound_ratio(a, reference, tolerance.statistical())
    largest = float(np.finfo(dtype).max)
    reach = np.where(np.isfinite(tolerance.bound), tolerance.bound, tolerance.statistical())
    with np.errstate(all="ignore"):
        may_overflow = (np.abs(reference) + reach >= largest) & (a == np.sign(reference) * np.inf)
    judged = classes["finite"] & ~may_overflow
    outside = {"worst-case": judged & (ratio > 1), "statistical": judged & (statistical > 1)}
    bad = {
        "finite": outside["worst-case"] | outside["statistical"],
        "nan": classes["nan"] & ~np.isnan(a),
        "inf": classes["inf"] & (a != reference),
        "unconstrained": np.zeros(reference.shape, bool),
    }
    finite_ratio = np.where(judged, ratio, 0.0)
    finite_statistical = np.where(judged, statistical, 0.0)
    with np.errstate(invalid="ignore"):
        abs_error = np.abs(a - reference)[classes["finite"] & np.isfinite(a)]
    verdict = OutputVerdict(
        name=name,
        elements=int(reference.size),
        counts={c: int(m.sum()) for c, m in classes.items()},
        failures={c: int(m.sum()) for c, m in bad.items()},
        worst_ratio=float(finite_ratio.max(initial=0.0)),
        max_abs_error=float(abs_error.max(initial=0.0)),
        worst_statistical=float(finite_statistical.max(initial=0.0)),
        tier_failures={t: int(m.sum()) for t, m in outside.items()},
    )
    verdict.worst = _worst(a, reference, tolerance, ratio, classes, bad,
                           np.maximum(finite_ratio, finite_statistical))
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


def _worst(a: np.ndarray, reference: np.ndarray, tolerance: Tolerance, ratio: np.ndarray,
           classes: dict[str, np.ndarray], bad: dict[str, np.ndarray], score: np.ndarray) -> Worst | None:
    """A failing non-finite element first (they say most), else the finite element furthest outside either tier."""
    for kind in ("nan", "inf", "finite"):
        if bad[kind].any():
            flat = int(np.argmax(np.where(bad[kind], score if kind == "finite" else 1.0, -1.0)))
            break
    else:
        if not classes["finite"].any():
            return None
        flat = int(np.argmax(score))
        kind = "finite"
    at = np.unravel_index(flat, reference.shape)
    spread, allowance = float(tolerance.spread[at]), float(tolerance.allowance[at])
    error = abs(float(a[at]) - float(reference[at]))
    with np.errstate(all="ignore"):
        spreads = max(error - allowance, 0.0) / spread if spread > 0 else (math.inf if error > allowance else 0.0)
    return Worst([int(i) for i in at], kind, float(reference[at]), float(a[at]), float(tolerance.bound[at]),
                 float(ratio[at]) if kind == "finite" else math.inf,
                 float(tolerance.statistical()[at]), float(spreads))


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
