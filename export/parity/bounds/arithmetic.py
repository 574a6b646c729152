"""Rules for arithmetic on two operands: add (an operand that is an unrounded sum takes the other as one
more term), multiply and divide, each rounding once."""

from __future__ import annotations

import math
from typing import Any

import torch

from export.parity.bounds.core import (
    SCALAR_ULPS,
    Bounded,
    BoundError,
    BoundMode,
    Partial,
    add_parts,
    aten,
    finished,
    joined,
    magnitude,
    quadrature,
    rounding_spread,
    rule,
    scaled,
)


@rule(aten.add, aten.sub, aten.rsub)
def _add(mode: BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> Bounded:
    """a + alpha * b (sub: alpha negated); an operand that is an unrounded sum takes the other as one more term."""
    a, b = args[0], args[1]
    alpha = kwargs.get("alpha", args[2] if len(args) > 2 else 1)
    if func.overloadpacket is aten.rsub:
        a, b = b, a
    scale = abs(float(alpha))
    ba, bb = mode.bounded(a), mode.bounded(b)
    with mode.pause():
        allowance = add_parts(ba.allowance, scaled(bb.allowance, scale))
        for sum_, other, other_scale in ((ba, b, scale), (bb, a, 1.0)):
            if sum_.partial is not None and isinstance(other, torch.Tensor):
                partial = sum_.partial
                if sum_ is bb:  # the sum itself is scaled by alpha
                    partial = Partial(partial.terms * scale, partial.count, partial.carried * scale,
                                      partial.squares * scale**2, partial.variance * scale**2, partial.nonzero)
                return finished(mode, joined(mode, partial, other, other_scale), out, allowance)
        carried = ba.error + scale * bb.error
        spread = quadrature(ba.spread, scaled(bb.spread, scale), rounding_spread(mode, out.abs()))
        local = add_parts(ba.local, scaled(bb.local, scale**2))
    return Bounded(carried + mode.own(out.abs() + carried, SCALAR_ULPS), spread, allowance, local=local)


@rule(aten.mul)
def _mul(mode: BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> Bounded:
    a, b = args[0], args[1]
    ba, bb = mode.bounded(a), mode.bounded(b)
    with mode.pause():
        ma, mb = magnitude(a), magnitude(b)
        carried = ba.error * mb + ma * bb.error + ba.error * bb.error
        spread = quadrature(scaled(ba.spread, mb), scaled(bb.spread, ma), rounding_spread(mode, out.abs()))
        allowance = add_parts(scaled(ba.allowance, mb + mode.stray(bb)), scaled(bb.allowance, ma))
        local = add_parts(scaled(ba.local, mb * mb), scaled(bb.local, ma * ma))
        return Bounded(carried + mode.own(out.abs() + carried, SCALAR_ULPS), spread, allowance, local=local)


@rule(aten.div)
def _div(mode: BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> Bounded:
    a, b = args[0], args[1]
    if kwargs.get("rounding_mode") is not None:
        raise BoundError("no error rule for div with a rounding mode")
    ba, bb = mode.bounded(a), mode.bounded(b)
    with mode.pause():
        mb = magnitude(b)
        room = mb - bb.error
        carried = torch.where(room > 0, (ba.error + out.abs() * bb.error) / room, math.inf)
        spread = quadrature(scaled(ba.spread, 1 / mb), scaled(bb.spread, out.abs() / mb), rounding_spread(mode, out.abs()))
        reach = mode.reach(bb)  # where an honest divisor may reach 0, tier 2 has no bound either
        if reach is not None:
            spread = spread.masked_fill(reach >= mb, math.inf)
        inverse = torch.where(room > 0, 1 / room, math.inf)
        allowance = add_parts(scaled(ba.allowance, inverse), scaled(bb.allowance, out.abs() * inverse))
        local = add_parts(scaled(ba.local, 1 / mb**2), scaled(bb.local, (out / mb) ** 2))
        return Bounded(carried + mode.own(out.abs() + carried, SCALAR_ULPS), spread, allowance, local=local)

