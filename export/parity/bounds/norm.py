"""Rules for normalisations over rows: layer norm (over any trailing axes) and group norm.

Each row of n values is normalised, y = (x - mean) / sqrt(var + eps) * w + b, and the rule admits
every honest way to compute it: two passes (mean, then the mean of squared deviations), one pass
(E[x^2] - mean^2, onnxruntime's CPU LayerNormalization source, with a relative error of about
n u (1 + mean^2 / var) in the variance), Welford, a decomposed graph (ReduceMean, Sub, Pow, ...),
division by the deviation or multiplication by its reciprocal, in any summation order.

**Tier 1.** The mean is off by at most mean(e) + gamma_{n+1} mean|x|; the variance by what the
input errors move the function var(x) (2 mean(|x - mean| e) + mean(e^2), exactly) plus
gamma_{n+4} 2 (mean(x^2) + mean|x|^2), which covers the one-pass cancellation and the two-pass
deviations alike; 1 / sqrt(var + eps) by its change over that interval (unbounded where the
interval reaches 0: the computed variance may be negative, and its root NaN); then the few
elementwise roundings of (x - mean) r w + b. However large the input's errors, a computed z is at most
about sqrt(n) (it is a deviation over the root mean square of them all) where eps exceeds what one pass
may cancel: deep float16 stacks, whose worst case would reach a zero variance, keep a finite bound. Sums of squares beyond the dtype's range are unbounded.

**Tier 2.** Input spreads pass through the Jacobian, r w_i (delta_ij - (1 + z_i z_j) / n) with
z = (x - mean) r, in quadrature. The mean's and the variance's own roundings are those of n-term
sums (``partial_squares``: sums of squares grow like j, since their terms do not cancel), for the
one-pass and the two-pass sums together; they are shared by the whole row and reach y_i through
r w_i and |z_i w_i| r^2 / 2, the same way at every value of the row, so the convolutions and pools after
the norm add them coherently: ``Drawn`` carries random draws of them, signed, through the rest of the
model. eps rounded to the dtype (float16 has it as a subnormal) is an allowance, as is each input's
allowance through |J|.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

# TorchDispatchMode: see core.py for why a module with an underscore.
from torch.utils._python_dispatch import TorchDispatchMode

from export.parity.bounds.core import (
    BASIC_ULPS,
    ROUNDING,
    SCALAR_ULPS,
    UNIT,
    Bounded,
    BoundMode,
    add_parts,
    aten,
    gamma,
    partial_squares,
    rule,
)

# A one-pass variance (E[x^2] - mean^2) cancels where |mean| >> std: runtimes that compute it do so in float32
# at least (onnxruntime's CPU kernels convert float16 to float32 first); two passes may run in the dtype.
ONE_PASS_UNIT = UNIT["float32"]
FLOAT64_TINY = float(np.finfo(np.float64).tiny)


@rule(aten.native_layer_norm, aten.native_group_norm)
def _norm(mode: BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> list[Bounded]:
    """native_layer_norm(x, normalized_shape, w, b, eps) and native_group_norm(x, w, b, N, C, HxW, groups, eps):
    (y, mean, rstd), normalised over rows of the trailing axes or of C / groups channels."""
    with mode.pause():
        x, w, b, eps = _rows(func, args)
    bound = _normalised(mode, x, mode.bounded(args[0]), w, b, eps, out[0].reshape(x.shape))
    _sample_statistics(mode)
    return [_reshaped(bound, out[0].shape), *_unused(out[1:])]


def _rows(func: Any, args: tuple) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, float]:
    """A layer or group norm's input as the rows it normalises, its weight and bias per element, and eps."""
    if func.overloadpacket is aten.native_layer_norm:
        x, shape, weight, bias, eps = args
        n = math.prod(shape)
        return (x.reshape(-1, n), None if weight is None else weight.reshape(1, n),
                None if bias is None else bias.reshape(1, n), float(eps))
    x, weight, bias, batch, channels, positions, groups, eps = args
    rows = (batch * groups, -1)

    def per_element(value: torch.Tensor | None) -> torch.Tensor | None:
        if value is None:
            return None
        return value.reshape(1, channels, 1).expand(batch, channels, positions).reshape(rows)

    return x.reshape(rows), per_element(weight), per_element(bias), float(eps)


def _moments(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, ...]:
    """Each row's mean, deviations from it, variance and 1 / sqrt(variance + eps), in float64."""
    mean = x.mean(1, keepdim=True)
    d = x - mean
    var = (d * d).mean(1, keepdim=True)
    return mean, d, var, (var + eps).rsqrt()


def _normalised(mode: BoundMode, x: torch.Tensor, given: Bounded, w: torch.Tensor | None,
                b: torch.Tensor | None, eps: float, y: torch.Tensor) -> Bounded:
    """Both tiers of y = (x - mean) / sqrt(var + eps) * w + b over each row of ``x`` (rows, n)."""
    n, unit, tiny = x.shape[1], mode.unit, mode.tiny
    with mode.pause():
        e = given.error.reshape(x.shape)
        mean, d, var, r = _moments(x, eps)
        z = d * r
        scale = torch.ones_like(x) if w is None else w.abs().expand_as(x)
        # tier 1: the statistics, then 1 / sqrt(var + eps), then the elementwise steps
        size = x.abs() + e
        first, second = size.mean(1, keepdim=True), (size * size).mean(1, keepdim=True)
        # underflow loses at most tiny of each term, and never more than the term itself
        mean_rounding = gamma(n + 1, unit) * first + size.clamp(max=tiny).mean(1, keepdim=True)
        deviation = d.abs() + e + mean_rounding  # |x - mean| as computed, at most
        spread_out = (deviation * deviation).mean(1, keepdim=True)
        two_pass = gamma(n + 4, unit) * spread_out + mean_rounding**2 + deviation.square().clamp(max=tiny).mean(1, True)
        one_pass = 2 * gamma(n + 4, ONE_PASS_UNIT) * (second + first * first)
        moved = 2 * (d.abs() * e).mean(1, keepdim=True) + (e * e).mean(1, keepdim=True)  # var(x) by the errors
        # the lowest variance computed: the values' own is never negative, and neither is a sum of squared
        # deviations; only one pass, subtracting mean^2, can take it below 0
        given_low = (var - moved).clamp(min=0)
        computed_low = torch.minimum((given_low - two_pass).clamp(min=0), given_low - one_pass)
        low = (computed_low + eps - _rounded(eps, mode)) * (1 - unit)
        r_error = torch.where(low > 0, low.clamp(min=FLOAT64_TINY).rsqrt() - r, math.inf)
        r_error = r_error + mode.own(r + r_error, BASIC_ULPS)
        d_error = e + e.mean(1, keepdim=True) + mean_rounding + unit * deviation
        z_error = d_error * r + (d.abs() + d_error) * r_error
        z_error = z_error + mode.own(z.abs() + z_error)
        z_error = torch.minimum(z_error, z.abs() + _ceiling(n, unit, tiny, eps - _rounded(eps, mode) - one_pass))
        error = scale * z_error + mode.own(scale * (z.abs() + z_error) + y.abs(), SCALAR_ULPS)
        # a sum may overflow: of the values or the squared deviations in the dtype, of squares in float32; in the
        # worst case of the input's errors (tier 1), or of the values themselves (both tiers)
        error = error.masked_fill(_overflows(mode, n, first, spread_out, second), math.inf)
        honest = _overflows(mode, n, x.abs().mean(1, True), var, (x * x).mean(1, True))
        parts = _statistical(mode, x, given, scale, (mean, d, var, r, z), y, eps)
        spread, local, allowance = (p.masked_fill(honest, math.inf) for p in parts)
    return Bounded(error, spread, allowance, local=local)


def _overflows(mode: BoundMode, n: int, first: torch.Tensor, deviations: torch.Tensor,
               second: torch.Tensor) -> torch.Tensor:
    """Where a row's sums may overflow: of |x| or of squared deviations in the dtype, of squares in float32."""
    return (n * torch.maximum(first, deviations) > mode.max) | (n * second > np.finfo(np.float32).max)


def _ceiling(n: int, unit: float, tiny: float, low_eps: torch.Tensor) -> torch.Tensor:
    """The largest |z| any evaluation computes, whatever its input's errors, where ``low_eps`` (eps as held, less
    what one pass may cancel) stays above what the squares' underflow may take; infinite elsewhere.

    Two passes divide the computed deviations d by the root of their own mean square D, less gamma_{n+4} of it
    and what underflow loses (at most min(D, tiny)), plus eps: z^2 <= n D / ((1 - gamma) D - min(D, tiny) + eps),
    at most n max(1 / (1 - gamma), tiny / (eps - gamma tiny)). One pass subtracts its cancellation from eps.
    The root and the division round a few times.
    """
    g = gamma(n + 4, unit)
    margin = low_eps - g * tiny
    square = n * torch.maximum(torch.tensor(1 / (1 - g)), tiny / margin.clamp(min=FLOAT64_TINY))
    return torch.where(margin > 0, square.sqrt() * (1 + BASIC_ULPS * unit), math.inf)


def _statistical(mode: BoundMode, x: torch.Tensor, given: Bounded, scale: torch.Tensor,
                 steps: tuple[torch.Tensor, ...], y: torch.Tensor, eps: float) -> tuple[torch.Tensor, ...]:
    """Tier 2 of a normalised row: (spread, local, allowance); ``steps`` are (mean, x - mean, var, r, z)."""
    (mean, d, var, r, z), n = steps, x.shape[1]
    variance = mode.unit**2 * ROUNDING
    slope_mean, slope_var = r * scale, (z * scale).abs() * r * r / 2  # |dy/dmean|, |dy/dvar|
    mean_var, var_var = _statistics_rounding(mode.unit, x, mean, d, var, eps)
    shared = slope_mean**2 * mean_var + slope_var**2 * var_var
    # x - mean, its product with r (or quotient by the deviation), r's root and division, * w, + b
    own = variance * (6 * (z * scale) ** 2 + y * y)
    through = z * z / n  # the part of the Jacobian's diagonal the statistics take away
    bend = _bend(mode, given, d, var, r, eps)
    carried = local = None
    if given.spread is not None:
        s2 = given.spread.reshape(x.shape) ** 2
        mixed = (s2.sum(1, keepdim=True) + 2 * z * (z * s2).sum(1, keepdim=True)
                 + z * z * (z * z * s2).sum(1, keepdim=True)) / n**2
        carried = (bend * r * scale) ** 2 * (s2 * (1 - 2 * (1 / n + through)) + mixed).clamp(min=0)
    if given.local is not None:
        local = (bend * r * scale * (1 - 1 / n - through)) ** 2 * given.local.reshape(x.shape)
    spread = (add_parts(carried, shared, own)).sqrt() + mode.tiny
    allowance = slope_var * _rounded(eps, mode) + _repeated_rows(mode, x, d, slope_mean, slope_var)
    if given.allowance is not None:
        a = given.allowance.reshape(x.shape)
        allowance = allowance + bend * slope_mean * (a + a.mean(1, keepdim=True)
                                                     + z.abs() * (z.abs() * a).mean(1, keepdim=True))
    return spread, add_parts(local, shared), allowance


def _statistics_rounding(unit: float, x: torch.Tensor, mean: torch.Tensor, d: torch.Tensor, var: torch.Tensor,
                         eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The variances of each row's mean and variance as computed (their own roundings), rows of ``x`` (rows, n)."""
    n = x.shape[1]
    variance, one_pass_variance = unit**2 * ROUNDING, ONE_PASS_UNIT**2 * ROUNDING
    # the mean's own rounding: an n-term sum and a division
    square = x * x
    sums = x.sum(1, keepdim=True), square.sum(1, keepdim=True)
    mean_rounding = (sums[1] + partial_squares(sums[0], sums[1], n)) / n**2 + mean * mean
    # the variance's own rounding: two passes (n squared deviations, each rounded as it is formed, and their
    # sum) or one pass in float32 (n squares, their sum, the mean squared, less the mean's error through it)
    deviation = d * d
    deviation_fourth = (deviation * deviation).sum(1, keepdim=True)
    two_pass = variance * ((5 * deviation_fourth + partial_squares(deviation.sum(1, True), deviation_fourth, n)) / n**2)
    fourth = (square * square).sum(1, keepdim=True)
    one_pass = one_pass_variance * ((fourth + partial_squares(sums[1], fourth, n)) / n**2 + mean**4
                                    + 4 * mean * mean * mean_rounding)
    var_var = torch.maximum(one_pass, two_pass) + variance * (var * var + (var + eps) ** 2)  # / n and + eps
    return variance * mean_rounding, var_var


@dataclass(frozen=True)
class Drawn:
    """One draw of the norms' statistics as a runtime may round them: every row's mean and variance off by one
    spread of their own rounding, with a random sign per row and statistic (seeded by ``draw``, the same on any
    machine). The rounding is shared by the whole row, so the convolutions and pools after a norm add its
    effect coherently, where they average independent roundings: the mean square of the draws' effects is
    its variance at every later value (Hutchinson's estimator, exact at the norm itself). It joins the spread
    beside the pass's own account of the same rounding as independent, which the pass keeps for what it
    decides on the way (how far a value may stray): that counts it at most twice, never too little."""

    draw: int
    unit: float

    def dispatch(self) -> TorchDispatchMode:
        """The plain float64 forward with the norms' statistics rounded as this draw says."""
        return _Drawing(self)


class _Drawing(TorchDispatchMode):
    def __init__(self, way: Drawn) -> None:
        super().__init__()
        self.way, self.calls = way, 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket not in (aten.native_layer_norm, aten.native_group_norm):
            return out
        self.calls += 1
        x, w, _, eps = _rows(func, args)
        mean, d, var, r = _moments(x, eps)
        mean_var, var_var = _statistics_rounding(self.way.unit, x, mean, d, var, eps)
        generator = torch.Generator().manual_seed(SAMPLES * self.calls + self.way.draw)
        signs = torch.randint(0, 2, (len(x), 2), generator=generator, dtype=x.dtype) * 2 - 1
        # dy/dmean = -r w, dy/dvar = -(x - mean) w r^3 / 2
        moved = -(signs[:, :1] * mean_var.sqrt() * r + signs[:, 1:] * var_var.sqrt() * d * r**3 / 2)
        moved = moved if w is None else moved * w
        return (out[0] + moved.reshape(out[0].shape), *out[1:])


# Draws of the norms' statistics per pass. Where the effects of several rows reach a value, the spread estimated
# from 16 draws is within 0.7 to 1.3 of the true one nine times in ten (chi-squared with 16 degrees of freedom;
# random signs do no worse than normal variables); where one row's does, it is exact.
SAMPLES = 16


def _sample_statistics(mode: BoundMode) -> None:
    """Have the pass estimate, at every value, the variance of the norms' statistics rounding (once per pass)."""
    ways = tuple(Drawn(k, mode.unit) for k in range(SAMPLES))
    if ways not in mode.sampled:
        mode.sampled.append(ways)


def _repeated_rows(mode: BoundMode, x: torch.Tensor, d: torch.Tensor, slope_mean: torch.Tensor,
                   slope_var: torch.Tensor) -> torch.Tensor:
    """The statistics' own rounding where a row repeats its values: their worst case, as an allowance.

    Independent roundings need varied terms. Where most terms of a row repeat (a constant or periodic image
    after a convolution), a runtime's partial sums add the same terms in the same pattern (onnxruntime's
    InstanceNormalization, per SIMD lane), so their roundings align and add up like the worst case; the
    normalisation (1 / sqrt(var + eps), large where such a row hardly varies) then carries that to y.
    """
    n, unit = x.shape[1], mode.unit
    ordered = x.sort(1).values
    distinct = (ordered[:, 1:] != ordered[:, :-1]).sum(1, keepdim=True) + 1
    size = x.abs().mean(1, keepdim=True)
    mean_worst = gamma(n + 1, unit) * size
    var_worst = torch.maximum(gamma(n + 4, unit) * (d * d).mean(1, keepdim=True) + mean_worst**2,
                              2 * gamma(n + 4, ONE_PASS_UNIT) * ((x * x).mean(1, keepdim=True) + size * size))
    return torch.where(2 * distinct <= n, slope_mean * mean_worst + slope_var * var_worst, 0.0)


def _bend(mode: BoundMode, given: Bounded, d: torch.Tensor, var: torch.Tensor, r: torch.Tensor,
          eps: float) -> torch.Tensor | float:
    """How much further 1 / sqrt(var + eps) moves over the input's reach (SPREADS spreads and the allowance)
    than its slope says, at least 1: the Jacobian holds where errors are small beside the row's deviation."""
    reach = mode.reach(given)
    if reach is None:
        return 1.0
    reach = reach.reshape(d.shape)
    moved = 2 * (d.abs() * reach).mean(1, keepdim=True) + (reach * reach).mean(1, keepdim=True)
    change = ((var - moved).clamp(min=0) + eps).rsqrt() - r
    slope = r**3 / 2 * moved
    # below 1e-9 of var + eps the change is first order, and its float64 difference mostly cancellation
    return torch.where(moved > 1e-9 * (var + eps), change / slope, 1.0).clamp(min=1.0)


def _rounded(eps: float, mode: BoundMode) -> float:
    """How far eps moves when a runtime holds it in float32 or in the export dtype (a subnormal in float16)."""
    return max(abs(float(np.float32(eps)) - eps), abs(float(np.array(eps, dtype=mode.narrow)) - eps))


def _reshaped(bound: Bounded, shape: torch.Size) -> Bounded:
    parts = [None if p is None else p.reshape(shape) for p in (bound.error, bound.spread, bound.allowance, bound.local)]
    return Bounded(parts[0], parts[1], parts[2], local=parts[3])


def _unused(outputs: tuple) -> list[Bounded]:
    """The saved mean and 1/std, which no forward in eval reads: unbounded, so a use of them is never judged."""
    return [Bounded(torch.full(o.shape, math.inf, dtype=torch.float64)) for o in outputs]
