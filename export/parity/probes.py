"""Parity probe inputs that cover the whole float range, not only ``randn``.

Every probe is a ``(batch, in_features)`` array in the export dtype. Together they cover random
batches at several scales, a fine sweep over the training range [-10, 10], a dense sweep over
[-120, 120], a log sweep out to the dtype's largest finite value, every activation knee (the
common ones and the model's own float parameters: thresholds, slopes, lambdas) with a fine grid
and its float neighbours around it, and the special values (signed zeros, subnormals, exp
under/overflow points, huge values, infinities, NaN) in every feature column. Every batch size in
``BATCH_SIZES`` runs through the dynamic batch axis.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from export.options import DTYPES

BATCH_SIZES = (1, 2, 7, 64)
SCALES = (1e-3, 1e-1, 1.0, 10.0, 1e2, 1e3)
SWEEP_LIMIT = 120.0
SWEEP_STEP = 0.05
FINE_LIMIT = 10.0  # the training range of the synthetic datasets, and more
FINE_STEP = 0.005
LOG_POINTS = 1000
KNEE_GRID = np.linspace(-0.1, 0.1, 201)  # around each knee, beside its float neighbours
NEIGHBOURS = 3  # float neighbours on each side of a knee
# Module attributes that place a knee (torch.nn's names; a plugin that uses them is probed there too).
KNEE_PARAMETERS = frozenset({"threshold", "beta", "lambd", "alpha", "min_val", "max_val", "value",
                             "negative_slope", "lower", "upper", "b"})
# Where common activations switch branches: Softshrink/Hardshrink lambda, Hardtanh/ReLU6 and
# Hardswish/Hardsigmoid knees, Threshold's default, Softplus' default and beta=2/threshold=5 cut.
BOUNDARIES = (0.0, 0.1, 0.5, 1.0, 2.5, 3.0, 5.0, 6.0, 10.0, 20.0)


@dataclass(frozen=True)
class Probe:
    """One named input batch."""

    name: str
    data: np.ndarray

    @property
    def batch(self) -> int:
        """The batch size (first dimension)."""
        return int(self.data.shape[0])


def special_values(dtype: str) -> np.ndarray:
    """The values where float arithmetic breaks: zeros, subnormals, exp limits, huge, inf, NaN."""
    info = np.finfo(dtype)
    tiny_sub = info.smallest_subnormal
    # exp(x) overflows above log(max) and underflows to a subnormal, then to 0, below these.
    exp_over = float(np.log(info.max))
    exp_sub = float(np.log(info.smallest_normal))
    exp_zero = float(np.log(tiny_sub))
    exp_limits = [limit + step for limit in (exp_over, exp_sub, exp_zero) for step in (-1.0, 0.0, 1.0)]
    magnitudes = [
        tiny_sub,
        info.smallest_normal - tiny_sub,  # the largest subnormal
        info.smallest_normal,
        *exp_limits,
        1e4,
        float(info.max),
        np.inf,
    ]
    if dtype == "float32":
        magnitudes.append(3e38)
    values = np.array(magnitudes, dtype=dtype)
    neighbours = np.concatenate([np.nextafter(values, 0).astype(dtype), values])
    signed = np.concatenate([neighbours, -neighbours, np.array([0.0, -0.0, np.nan], dtype=dtype)])
    return np.unique(signed.view(_uint(dtype))).view(dtype)  # unique by bits keeps -0.0 and NaN


def boundary_values(dtype: str, knees: tuple[float, ...] = ()) -> np.ndarray:
    """Each knee (BOUNDARIES and ``knees``), a fine grid around it, its float neighbours, and their negatives."""
    points = np.unique(np.array([*BOUNDARIES, *knees], dtype=dtype))
    points = points[np.isfinite(points)]
    values = [points, (points[:, None] + KNEE_GRID.astype(dtype)).ravel()]
    up = down = points
    for _ in range(NEIGHBOURS):
        up = np.nextafter(up, np.array(np.inf, dtype=dtype))
        down = np.nextafter(down, np.array(-np.inf, dtype=dtype))
        values += [up, down]
    values = np.concatenate(values).astype(dtype)
    return np.unique(np.concatenate([values, -values]))


def sweep_values(dtype: str) -> np.ndarray:
    """A fine sweep over the training range, a dense one over [-120, 120], a log sweep out to the dtype's max."""
    fine = np.arange(-FINE_LIMIT, FINE_LIMIT + FINE_STEP / 2, FINE_STEP)
    linear = np.arange(-SWEEP_LIMIT, SWEEP_LIMIT + SWEEP_STEP / 2, SWEEP_STEP)
    info = np.finfo(dtype)
    top = np.log10(float(info.max))
    logs = np.logspace(np.log10(float(info.smallest_normal)), top, LOG_POINTS)
    with np.errstate(over="ignore"):
        values = np.concatenate([fine, linear, logs, -logs]).astype(dtype)
    return values[np.isfinite(values)]


def knees_of(model: object) -> tuple[float, ...]:
    """The float parameters of a model's modules (thresholds, lambdas, slopes, betas): where its pieces meet."""
    found: set[float] = set()
    for module in getattr(model, "modules", lambda: [model])():
        for name, value in vars(module).items():
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if name in KNEE_PARAMETERS and number and np.isfinite(value):
                found.add(float(value))
                beta = getattr(module, "beta", None)
                if name == "threshold" and isinstance(beta, (int, float)) and beta:
                    found.add(value / beta)  # softplus switches at beta * x = threshold
    return tuple(sorted(found))


def make_probes(in_features: int, *, dtype: str = "float32", seed: int = 0,
                knees: tuple[float, ...] = ()) -> list[Probe]:
    """All probes for a model taking ``(batch, in_features)`` inputs, deterministic in ``seed``;
    ``knees`` adds the model's own (``knees_of(model)``) to the boundaries."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    rng = np.random.default_rng(seed)
    probes = [
        Probe(f"random(scale={scale:g}, batch={batch})", _random(rng, batch, in_features, scale, dtype))
        for scale, batch in itertools.product(SCALES, BATCH_SIZES)
    ]
    probes.append(Probe("sweep", _as_rows(sweep_values(dtype), in_features)))
    probes.append(Probe("boundaries", _fill_columns(boundary_values(dtype, knees), in_features)))
    probes.append(Probe("special", _fill_columns(special_values(dtype), in_features)))
    return probes


def _random(rng: np.random.Generator, batch: int, features: int, scale: float, dtype: str) -> np.ndarray:
    return (rng.standard_normal((batch, features)) * scale).astype(dtype)


def _as_rows(values: np.ndarray, features: int) -> np.ndarray:
    """Lay values out row by row, rotated per column so every column sees every value."""
    columns = [np.roll(values, -col * (len(values) // features or 1)) for col in range(features)]
    return np.stack(columns, axis=1)


def _fill_columns(values: np.ndarray, features: int) -> np.ndarray:
    """One row per value filled with it, plus rows with it in one column among ordinary values."""
    full = np.repeat(values[:, None], features, axis=1)
    if features == 1:
        return full
    mixed = np.tile(np.linspace(-1.0, 1.0, features, dtype=values.dtype), (len(values), 1))
    mixed[np.arange(len(values)), np.arange(len(values)) % features] = values
    return np.concatenate([full, mixed])


def _uint(dtype: str) -> type:
    return {"float32": np.uint32, "float16": np.uint16}[dtype]
