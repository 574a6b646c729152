"""Parity probe inputs that cover the whole float range at every kind of input position, within a budget.

A probe set is built for one sample shape: ``(features,)``, an image ``(channels, height, width)``, a
sequence ``(length, features)``, any shape. Its rows come from five groups:

- ``random``: N(0, 1) samples at scales from 1e-3 to 1e3 and at extreme scales (whole inputs
  subnormal, tiny, large, huge);
- ``special``: the values where float arithmetic breaks (signed zeros, subnormals, exp under/overflow
  points, huge values, infinities, NaN), each filling a whole sample when the budget allows;
- ``special at positions``: NaN, the infinities, the largest values, the smallest subnormals and
  -0.0, one at a time among ordinary values, at every kind of position: the first, middle and last
  index along each axis (an image's corners, edges and interior; a sequence's first and last token);
- ``boundaries``: every activation knee (the common ones and the model's own float parameters) with
  a fine grid and its float neighbours around it;
- ``sweep``: a fine sweep over the training range [-10, 10], a dense one over [-120, 120] and a log
  sweep out to the dtype's largest value.

**The budget** is in input elements (``PROBE_ELEMENTS``): every group first gets the fewest rows
that still hold each of its values somewhere, then the budget left is shared equally among the
groups, each up to its full size (every value at every position: what a model with few inputs
gets). So a 1-feature model keeps the full sweeps, and a 784-feature MLP, a 1x32x32 image and a
(length, 10) sequence each get about ``PROBE_ELEMENTS`` elements; the check's time is linear in them.

The rows run through the dynamic batch axis in batches of ``BATCH_SIZES`` rows first, then one batch
per group; each axis that takes any size (a sequence length) is also probed at every size in
``LENGTHS`` with a batch of random samples.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from export.options import DTYPES

PROBE_ELEMENTS = 2**17  # the default budget: input elements over every probe batch
BATCH_SIZES = (1, 2, 7, 64)
LENGTHS = (1, 2, 5, 17)  # sizes at which an axis that takes any size is probed, besides the export example's
SCALES = (1e-3, 1e-1, 1.0, 10.0, 1e2, 1e3)
RANDOM_ROWS = 74  # rows per scale of the full random group: as many as one batch of each BATCH_SIZES
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
    """One input batch: its name, its rows, and where each row comes from (``labels``, for reports)."""

    name: str
    data: np.ndarray
    labels: tuple[str, ...] = ()

    @property
    def batch(self) -> int:
        """The batch size (first dimension)."""
        return int(self.data.shape[0])

    def label(self, row: int) -> str:
        """Where one row comes from: its group and its index there."""
        return self.labels[row] if self.labels else f"{self.name} row {row}"


@dataclass(frozen=True)
class _Group:
    """The rows of one probe group, and its size range in rows."""

    name: str
    fewest: int
    most: int
    build: Callable[[int], tuple[np.ndarray, tuple[str, ...]]]  # rows -> (samples, labels)


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


def special_kinds(dtype: str) -> np.ndarray:
    """The special values probed one at a time at every kind of position: NaN, +-inf, +-max, +-tiniest, -0.0."""
    info = np.finfo(dtype)
    values = [np.nan, np.inf, -np.inf, info.max, -info.max, info.smallest_subnormal, -info.smallest_subnormal, -0.0]
    return np.array(values, dtype=dtype)


def extreme_scales(dtype: str) -> tuple[float, ...]:
    """Scales at which a whole N(0, 1) sample is subnormal, tiny, large and huge in ``dtype``."""
    info = np.finfo(dtype)
    return (float(info.smallest_normal) / 16, float(info.smallest_normal) * 16, math.sqrt(float(info.max)),
            float(info.max) / 64)


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


def positions(shape: Sequence[int]) -> np.ndarray:
    """Flat indices of every kind of position in a sample: first, middle and last along each axis."""
    ends = [sorted({0, size // 2, size - 1}) for size in shape]
    return np.unique([np.ravel_multi_index(index, tuple(shape)) for index in itertools.product(*ends)])


def make_probes(shape: int | Sequence[int], *, dtype: str = "float32", seed: int = 0, knees: tuple[float, ...] = (),
                budget: int = PROBE_ELEMENTS, dynamic: Sequence[int] = ()) -> list[Probe]:
    """Every probe batch for samples of ``shape`` (an int: that many features), deterministic in ``seed``.

    ``knees`` adds the model's own (``knees_of(model)``) to the boundaries; ``budget`` is the number
    of input elements to aim at (the module docstring says how it is shared); ``dynamic`` lists the
    sample axes that take any size, probed at ``LENGTHS`` too.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    shape = (shape,) if isinstance(shape, int) else tuple(int(size) for size in shape)
    if not shape or min(shape) < 1:
        raise ValueError(f"a probe sample needs a shape of positive sizes, got {shape}")
    rng = np.random.default_rng(seed)
    others = [other for other in dict.fromkeys(_resized(shape, dynamic, length) for length in LENGTHS) if other != shape]
    scales = (*SCALES, *extreme_scales(dtype))
    extra = [Probe(f"random at shape {other}", *_random(rng, other, scales, len(scales), dtype)) for other in others]
    left = budget - sum(p.data.size for p in extra)
    groups = _groups(shape, dtype, knees, rng, scales)
    sizes = _allocate([g.fewest for g in groups], [g.most for g in groups], max(0, left) // math.prod(shape))
    built = [(g.name, *g.build(rows)) for g, rows in zip(groups, sizes) if rows]
    return _batches(built) + extra


def _groups(shape: tuple[int, ...], dtype: str, knees: tuple[float, ...], rng: np.random.Generator,
            scales: tuple[float, ...]) -> list[_Group]:
    """The five groups of the module docstring for samples of ``shape``, in the order their rows are batched."""
    size = math.prod(shape)
    kinds, where = special_kinds(dtype), positions(shape)
    background = np.linspace(-1.0, 1.0, size, dtype=dtype)
    specials, bounds, sweep = special_values(dtype), boundary_values(dtype, knees), sweep_values(dtype)
    return [
        _Group("random", len(scales), RANDOM_ROWS * len(scales), lambda rows: _random(rng, shape, scales, rows, dtype)),
        _Group("special at positions", len(kinds), len(kinds) * len(where),
               lambda rows: _positioned(kinds, where, background, rows, shape)),
        _Group("special", _fewest(specials, size), len(specials),
               lambda rows: _labelled("special", _interleaved(specials, rows, size).reshape(rows, *shape))),
        _Group("boundaries", _fewest(bounds, size), len(bounds),
               lambda rows: _labelled("boundaries", _rotated(bounds, rows, size).reshape(rows, *shape))),
        _Group("sweep", _fewest(sweep, size), len(sweep),
               lambda rows: _labelled("sweep", _rotated(sweep, rows, size).reshape(rows, *shape))),
    ]


def _allocate(fewest: list[int], most: list[int], rows: int) -> list[int]:
    """Rows per group: each its fewest, then what ``rows`` leaves shared equally, each up to its most."""
    sizes = list(fewest)
    left = rows - sum(sizes)
    open_ = [i for i in range(len(sizes)) if sizes[i] < most[i]]
    while left > 0 and open_:
        share = max(1, left // len(open_))
        for i in list(open_):
            grant = min(share, most[i] - sizes[i], left)
            sizes[i] += grant
            left -= grant
            if sizes[i] == most[i]:
                open_.remove(i)
    return sizes


def _batches(groups: list[tuple[str, np.ndarray, tuple[str, ...]]]) -> list[Probe]:
    """The rows of every group: batches of BATCH_SIZES rows first, then the rest of each group as one batch."""
    data = np.concatenate([rows for _, rows, _ in groups])
    labels = tuple(label for _, _, group_labels in groups for label in group_labels)
    probes, start = [], 0
    for size in BATCH_SIZES:
        if start + size > len(data):
            break
        probes.append(Probe(f"batch of {size}", data[start:start + size], labels[start:start + size]))
        start += size
    end = 0
    for name, rows, group_labels in groups:
        begin, end = max(start, end), end + len(rows)
        if begin < end:
            probes.append(Probe(name, data[begin:end], labels[begin:end]))
    return probes


def _resized(shape: tuple[int, ...], dynamic: Sequence[int], length: int) -> tuple[int, ...]:
    """``shape`` with each axis of any size at ``length``."""
    return tuple(length if axis in dynamic else size for axis, size in enumerate(shape))


def _fewest(values: np.ndarray, size: int) -> int:
    """The fewest rows of ``size`` elements that hold every value."""
    return -(-len(values) // size)


def _labelled(name: str, rows: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    return rows, tuple(f"{name} row {i}" for i in range(len(rows)))


def _random(rng: np.random.Generator, shape: tuple[int, ...], scales: tuple[float, ...], rows: int,
            dtype: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """N(0, 1) samples, row i at scale ``scales[i % len(scales)]``."""
    scale = np.array([scales[i % len(scales)] for i in range(rows)])
    with np.errstate(over="ignore", under="ignore"):
        data = (rng.standard_normal((rows, *shape)) * scale.reshape(-1, *[1] * len(shape))).astype(dtype)
    return data, tuple(f"random(scale={s:g}) row {i}" for i, s in enumerate(scale))


def _positioned(kinds: np.ndarray, where: np.ndarray, background: np.ndarray, rows: int,
                shape: tuple[int, ...]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Each special kind among ordinary values at every kind of position: one position a row when the
    rows allow, else the positions split into as many groups as each kind has rows."""
    parts = np.array_split(where, max(1, rows // len(kinds)))
    data = np.tile(background, (len(kinds) * len(parts), 1))
    labels = []
    for row, (kind, part) in enumerate(itertools.product(kinds, parts)):
        data[row, part] = kind
        labels.append(f"special {float(kind):g} at {len(part)} position(s) row {row}")
    return data.reshape(-1, *shape), tuple(labels)


def _rotated(values: np.ndarray, rows: int, size: int) -> np.ndarray:
    """Element (r, c) is ``values[(r + c * step) % n]``: every value somewhere once rows * size >= n, and every
    column a rotation of the whole list when rows == n."""
    step = -(-len(values) // size)
    index = (np.arange(rows)[:, None] + np.arange(size)[None, :] * step) % len(values)
    return values[index]


def _interleaved(values: np.ndarray, rows: int, size: int) -> np.ndarray:
    """Row r holds ``values[r + rows * k]`` for every k, interleaved: one value filling the row when rows == n."""
    per_row = -(-len(values) // rows)
    index = (np.arange(rows)[:, None] + rows * (np.arange(size)[None, :] % per_row)) % len(values)
    return values[index]


def _uint(dtype: str) -> type:
    return {"float32": np.uint32, "float16": np.uint16}[dtype]
