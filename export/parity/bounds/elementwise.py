"""Rules for elementwise functions: an input's error carried through f itself (the largest change of f
over its error interval), the op's own rounding, comparisons that may go either way and the
``where`` that follows them; GLU and log-sigmoid, which torch computes as one op."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from export.parity.bounds.core import (
    BASIC_ULPS,
    KERNEL_ULPS,
    POINTWISE,
    Bounded,
    BoundMode,
    add_parts,
    aten,
    full,
    kernel_spread,
    nan_to_inf,
    quadrature,
    rounding_spread,
    rule,
)


# Elementwise ops whose formula cancels: the size of its terms, for the op's own rounding.
def _gelu_terms(x: torch.Tensor, out: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    if approximate == "tanh":
        curve = torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))
    else:
        curve = torch.erf(x * math.sqrt(0.5))
    return 0.5 * x.abs() * (1 + curve.abs())


TERMS: dict[Any, Callable[..., torch.Tensor]] = {aten.gelu: _gelu_terms}


# Ops that only select, compare or move their input: exact, so no rounding of their own.
EXACT = frozenset({
    aten.relu, aten.hardtanh, aten.threshold, aten.hardshrink, aten.neg, aten.abs, aten.clamp, aten.clamp_min,
    aten.clamp_max, aten.maximum, aten.minimum, aten.sign,
})


BASIC = frozenset({aten.leaky_relu, aten._prelu_kernel, aten.rrelu_with_noise, aten.sqrt, aten.reciprocal,
                   aten.softshrink, aten.hardsigmoid, aten.hardswish, aten.pow, aten.square})


@rule(POINTWISE, aten.hardswish, aten.rrelu_with_noise, aten._prelu_kernel)
def _elementwise(mode: BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> Bounded:
    """f(x, ...): the change of f over each input's error interval, plus the op's own rounding."""
    if not isinstance(out, torch.Tensor) or not out.is_floating_point():
        return decision(mode, func, args, kwargs, out)
    packet = func.overloadpacket
    with mode.pause():
        constants = _rounded_constants(mode, func, args, kwargs, out)
        carried = torch.zeros_like(out) if constants is None else constants
        spreads: list[torch.Tensor] = []
        locals_: list[torch.Tensor] = []
        allowance = constants
        for index, value in enumerate(args):
            if not (isinstance(value, torch.Tensor) and value.is_floating_point()):
                continue
            bound = mode.bounded(value)
            if bool((bound.error > 0).any()):
                carried = carried + _change(func, args, kwargs, out, index, bound.error)
            reach = mode.reach(bound)
            if reach is not None and bool((reach > 0).any()):
                # the change over SPREADS spreads plus the allowance (and never past the worst case),
                # shared between the two parts of tier 2 in proportion
                reach = torch.minimum(reach, bound.error)
                change = _change(func, args, kwargs, out, index, reach)
                share = torch.where(reach > 0, change / reach, 0.0)
                if bound.spread is not None:
                    spreads.append(share * bound.spread)
                if bound.local is not None:
                    locals_.append(share**2 * bound.local)
                if bound.allowance is not None:
                    allowance = add_parts(allowance, share * bound.allowance)
        local = add_parts(*locals_)
        if packet in EXACT:
            return Bounded(carried, quadrature(*spreads), allowance, local=local)
        size = TERMS[packet](args[0], out, **kwargs) if packet in TERMS else out.abs()
        basic = packet in BASIC
        ulps = BASIC_ULPS if basic else KERNEL_ULPS
        # at an infinite input (or output) the op's value is its limit: no rounding of its own
        limit = ~(size < math.inf) & (carried == 0)  # size is |f| or more: infinite or NaN where out is
        own = torch.where(limit, 0.0, mode.own(size + carried, ulps))
        rounding = torch.where(limit, 0.0, rounding_spread(mode, size, BASIC_ULPS) if basic else kernel_spread(mode, size))
    return Bounded(carried + own, quadrature(*spreads, rounding), allowance, local=local)


def _change(func: Any, args: tuple, kwargs: dict, out: torch.Tensor, index: int, step: torch.Tensor) -> torch.Tensor:
    """The largest change of f when argument ``index`` moves by up to ``step`` either way (where step > 0)."""
    value = args[index]
    moved = []
    for sign in (1.0, -1.0):
        shifted = list(args)
        shifted[index] = value + sign * step
        moved.append((func(*shifted, **kwargs) - out).abs())
    return torch.where(step > 0, nan_to_inf(torch.maximum(*moved)), 0.0)


def _rounded_constants(mode: BoundMode, func: Any, args: tuple, kwargs: dict, out: torch.Tensor) -> torch.Tensor | None:
    """How far f moves when each of its float constants (a threshold, a slope) is rounded to the dtype."""
    change = None
    for index, value in enumerate(args):
        if isinstance(value, float) and math.isfinite(value):
            rounded = float(np.array(value, dtype=mode.narrow))
            if rounded != value:
                shifted = list(args)
                shifted[index] = rounded
                change = add_parts(change, nan_to_inf((func(*shifted, **kwargs) - out).abs()))
    return change


@rule(
    aten.gt, aten.lt, aten.ge, aten.le, aten.eq, aten.ne, aten.logical_not, aten.logical_and, aten.logical_or,
    aten.bitwise_not, aten.bitwise_and, aten.bitwise_or, aten.isnan, aten.isinf, aten.isfinite, aten.signbit,
)
def decision(mode: BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> Bounded:
    """A comparison or logical op: 1 where the answer could go either way (tier 1: error; tier 2: allowance)."""
    packet = func.overloadpacket
    with mode.pause():
        if packet in (aten.logical_not, aten.bitwise_not):
            bound = mode.bounded(args[0])
            return Bounded(bound.error.clone(), None, bound.allowance)
        if packet in (aten.logical_and, aten.logical_or, aten.bitwise_and, aten.bitwise_or):
            first, second = mode.bounded(args[0]), mode.bounded(args[1])
            flags = [f for f in (first.allowance, second.allowance) if f is not None]
            return Bounded(torch.maximum(first.error, second.error), None,
                           torch.maximum(*flags) if len(flags) == 2 else (flags[0] if flags else None))
        if packet in (aten.isnan, aten.isinf, aten.isfinite, aten.signbit):
            return Bounded(torch.zeros_like(out, dtype=torch.float64))
        a, b = args[0], args[1]
        gap = (a - b).abs() if isinstance(b, torch.Tensor) else (a - float(b)).abs()
        first, second = mode.bounded(a), mode.bounded(b) if isinstance(b, torch.Tensor) else Bounded(torch.tensor(0.0))
        margin = first.error + second.error
        reach = add_parts(mode.reach(first), mode.reach(second))
        near = None if reach is None else ((gap <= reach) & (reach > 0)).to(torch.float64)
        return Bounded(((gap <= margin) & (margin > 0)).to(torch.float64), None, near)


@rule(aten.where)
def _where(mode: BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> Bounded:
    """where(c, a, b): the chosen branch's error, and where c is uncertain the jump between branches."""
    cond, a, b = args[0], args[1], args[2]
    bc, ba, bb = mode.bounded(cond), mode.bounded(a), mode.bounded(b)
    with mode.pause():
        ea, eb = ba.error, bb.error
        chosen = torch.where(cond, ea, eb)
        jump = (torch.as_tensor(a, dtype=torch.float64) - b).abs()
        error = torch.where(bc.error > 0, torch.maximum(chosen, jump + ea + eb), chosen)
        spread, local = _picked(cond, ba.spread, bb.spread, out), _picked(cond, ba.local, bb.local, out)
        allowance = _picked(cond, ba.allowance, bb.allowance, out)
        if bc.allowance is not None and bool((bc.allowance > 0).any()):
            # where the decision may flip, either branch, and the jump between them, is honest
            near = bc.allowance > 0
            spread = torch.where(near, torch.maximum(full(ba.spread, out), full(bb.spread, out)), full(spread, out))
            local = torch.where(near, torch.maximum(full(ba.local, out), full(bb.local, out)), full(local, out))
            flip = jump + full(ba.allowance, out) + full(bb.allowance, out)
            allowance = torch.where(near, torch.maximum(full(allowance, out), flip), full(allowance, out))
    return Bounded(error, spread, allowance, local=local)


def _picked(cond: torch.Tensor, a: torch.Tensor | None, b: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor | None:
    if a is None and b is None:
        return None
    return torch.where(cond, full(a, out), full(b, out))


@rule(aten.glu)
def _glu(mode: BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> Bounded:
    """a * sigmoid(b) over the two halves of ``dim``: elementwise in (a, b), with sigmoid's underflow."""
    x, dim = args[0], args[1] if len(args) > 1 else kwargs.get("dim", -1)
    bound = mode.bounded(x)
    with mode.pause():
        (a, b), (ea, eb) = x.chunk(2, dim), bound.error.chunk(2, dim)
        s = torch.sigmoid(b)
        moved = torch.maximum((torch.sigmoid(b + eb) - s).abs(), (torch.sigmoid(b - eb) - s).abs())
        # sigmoid(b) may underflow to a subnormal (or to 0) before a scales it up
        carried = nan_to_inf(s * ea + (a.abs() + ea) * (moved + mode.tiny))
        slope = s * (1 - s)
        spread = allowance = local = None
        if bound.spread is not None:
            sa, sb = bound.spread.chunk(2, dim)
            spread = quadrature(s * sa, a.abs() * slope * sb)
        if bound.allowance is not None:
            aa, ab = bound.allowance.chunk(2, dim)
            allowance = s * aa + (a.abs() + mode.stray(bound).chunk(2, dim)[0]) * slope * ab
        if bound.local is not None:
            la, lb = bound.local.chunk(2, dim)
            local = s * s * la + (a * slope) ** 2 * lb
        # sigmoid(b) may underflow before a scales it up: |a| times what underflow may lose
        rounding = quadrature(kernel_spread(mode, out.abs()), rounding_spread(mode, out.abs()), a.abs() * mode.tiny)
        return Bounded(carried + mode.own(out.abs() + carried, KERNEL_ULPS + 1), quadrature(spread, rounding),
                       allowance, local=local)


# Elementwise ops without a rule of their own.
ELEMENTWISE_EXTRA = frozenset({aten.hardswish, aten.rrelu_with_noise, aten._prelu_kernel})


@rule(aten.log_sigmoid_forward)
def _log_sigmoid(mode: BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> Any:
    """log_sigmoid_forward returns (output, buffer): the buffer is internal."""
    with mode.pause():
        value = aten.log_sigmoid_forward.default(*args)[0]
    bound = _elementwise(mode, _LogSigmoid(), args, kwargs, value)
    return [bound, None]


class _LogSigmoid:
    """log_sigmoid_forward seen as the elementwise function it computes (first output only)."""

    overloadpacket = aten.log_sigmoid_forward
    tags = (torch.Tag.pointwise,)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return aten.log_sigmoid_forward.default(x)[0]

