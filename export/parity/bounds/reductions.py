"""Rules for reductions over axes: sums and means (n-term sums), softmax and log-softmax."""

from __future__ import annotations

import math
from typing import Any

import torch

from export.parity.bounds.core import (
    KERNEL_SPREAD,
    KERNEL_ULPS,
    ROUNDING,
    Bounded,
    BoundMode,
    Partial,
    add_parts,
    aten,
    finished,
    gamma,
    nan_to_inf,
    quadrature,
    rounding_spread,
    rule,
    scaled,
)


@rule(aten._softmax, aten._log_softmax)
def _softmax(mode: BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> Bounded:
    """softmax: each p_i moves by p_i (e_i - sum_j p_j e_j), and never out of [0, 1]; exp, the n-term sum and the
    division round."""
    x, dim = args[0], args[1]
    bound = mode.bounded(x)
    soft = func.overloadpacket is aten._softmax
    with mode.pause():
        e = bound.error
        p = out if soft else out.exp()
        weighted = e + (p * e).sum(dim, keepdim=True)
        n = x.shape[dim]
        shifted = nan_to_inf((x - x.amax(dim, keepdim=True)).abs())  # its rounding moves exp(x - max) by u |x - max|
        shifted = shifted.masked_fill(torch.isneginf(x) & (e == 0), 0.0)  # an exact -inf (a mask) weighs exactly 0
        # tier 2: e_i - sum_j p_j e_j with independent e: variances sigma_i^2 + sum_j p_j^2 sigma_j^2
        spread = None if bound.spread is None else \
            (bound.spread**2 + ((p * bound.spread) ** 2).sum(dim, keepdim=True)).sqrt()
        allowance = None if bound.allowance is None else bound.allowance + (p * bound.allowance).sum(dim, keepdim=True)
        # the shift x - max, exp, the n-term sum and the division (log: the log of the sum) each round
        own = mode.unit * (KERNEL_SPREAD**2 + ROUNDING * (shifted**2 + n + 2)).sqrt()  # relative
        if soft:
            ulps = KERNEL_ULPS + gamma(n, mode.unit) / mode.unit + 2 + shifted
            rounding = out * own + mode.tiny
            # whatever its input's errors, a computed weight lies in [0, 1] but for the sum's and division's roundings
            ceiling = torch.maximum(out, 1 - out) + mode.own(torch.ones_like(out), gamma(n, mode.unit) / mode.unit + 2)
            if bound.spread is not None:  # but a row with a score that may overflow may be NaN (inf - inf)
                ceiling = ceiling.masked_fill(torch.isinf(bound.spread).any(dim, keepdim=True), math.inf)
            error = torch.minimum(out * weighted + mode.own(out * ulps), ceiling)
            return Bounded(error, quadrature(scaled(spread, out), rounding),
                           scaled(allowance, out), local=scaled(bound.local, out * out))
        log_sum = (out - x + x.amax(dim, keepdim=True)).abs()  # |log sum exp(x - max)|
        size = shifted + KERNEL_ULPS * log_sum + (n + KERNEL_ULPS) + out.abs()
        rounding = quadrature(own * (1 + log_sum), rounding_spread(mode, out.abs()))
        return Bounded(weighted + mode.own(size), quadrature(spread, rounding), allowance, local=bound.local)


@rule(aten.sum, aten.mean)
def _reduce(mode: BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> Bounded:
    """sum / mean over some dims: an n-term sum (mean then divides by n, one more rounding)."""
    x = args[0]
    bound = mode.bounded(x)
    with mode.pause():
        count = max(1, x.numel() // max(1, out.numel()))
        mean = func.overloadpacket is aten.mean
        total = out * count if mean else out
        summed = (lambda t: func(t, *args[1:], **kwargs) * (count if mean else 1))
        partial = Partial(summed(x.abs() + bound.error), count, summed(bound.error), summed(x * x),
                          torch.zeros_like(out) if bound.spread is None else summed(bound.spread**2))
        allowance = None if bound.allowance is None else summed(bound.allowance)
        result = finished(mode, partial, total, allowance)
        return divided(mode, result, out, count) if mean else result


def divided(mode: BoundMode, total: Bounded, out: torch.Tensor, divisor: Any) -> Bounded:
    """Both tiers of ``out`` = a sum (``total``, with its partial) / ``divisor``: the division rounds (at random); a
    runtime that multiplies by 1 / divisor rounded it once (the same everywhere). The sum may overflow on the way.
    Call it inside ``mode.pause()``."""
    size, terms = out.abs(), total.partial.terms
    error = (total.error / divisor + mode.own(size, 2.0)).masked_fill(terms > mode.max, math.inf)
    overflow = terms - total.partial.carried > mode.max  # the sum itself may overflow: no tier bounds it
    spread = quadrature(total.spread / divisor, rounding_spread(mode, size)).masked_fill(overflow, math.inf)
    return Bounded(error, spread, add_parts(scaled(total.allowance, 1 / divisor), mode.unit * size),
                   local=total.local / divisor**2)

