"""Rules for dot products: matrix products, and a bias that a runtime may fuse into the same sum (Gemm)."""

from __future__ import annotations

from typing import Any

import torch

from export.parity.bounds.core import (
    Bounded,
    BoundError,
    BoundMode,
    Partial,
    add_parts,
    aten,
    finished,
    joined,
    rule,
)


@rule(aten.mm, aten.bmm)
def _matmul(mode: BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> Bounded:
    """mm / bmm: a dot product of the inner dimension's terms."""
    return _dot(mode, func, args[0], args[1], out)


def _dot(mode: BoundMode, func: Any, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor,
         bias: torch.Tensor | None = None) -> Bounded:
    """The terms a_ij b_jk summed over j; an operand with no error costs no extra product."""
    with mode.pause():
        # adding a zero term is exact: rounding happens at the nonzero terms only (ReLU zeros, padding)
        columns = mode.weights.derived(b, "nonzero", lambda t: (t != 0).sum(-2, keepdim=True).to(torch.float64))
        nonzero = torch.minimum((a != 0).sum(-1, keepdim=True).to(torch.float64), columns)
    partial, allowance = products(mode, func, a, b, out, a.shape[-1], nonzero)
    if bias is not None:
        with mode.pause():
            partial = joined(mode, partial, bias, 1.0)
            allowance = add_parts(allowance, mode.bounded(bias).allowance)
    return finished(mode, partial, out, allowance)


def products(mode: BoundMode, func: Any, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, count: int,
             nonzero: torch.Tensor | None) -> tuple[Partial, torch.Tensor | None]:
    """The unrounded sum ``func(a, b)`` of ``count`` products (``func`` bilinear: a matrix product, a
    convolution) with both tiers of its inputs carried through it, and its allowance."""
    ba, bb = mode.bounded(a), mode.bounded(b)
    with mode.pause():
        ea, eb = ba.error, bb.error
        b_exact = not bool((eb > 0).any())
        a_exact = not bool((ea > 0).any())
        size_a, size_b = a.abs(), mode.weights.derived(b, "abs", torch.abs)
        square_a, square_b = a * a, mode.weights.derived(b, "square", torch.square)
        if b_exact:
            carried = torch.zeros_like(out) if a_exact else func(ea, size_b)
            terms = func(size_a, size_b) + carried
        else:
            carried = func(ea, size_b) + func(size_a, eb) + func(ea, eb)
            terms = func(size_a + ea, size_b + eb)
        squares = func(square_a, square_b)
        variance = add_parts(
            None if ba.spread is None else func(ba.spread ** 2, square_b),
            None if bb.spread is None else func(square_a, bb.spread ** 2),
            None if ba.spread is None or bb.spread is None else func(ba.spread ** 2, bb.spread ** 2),
        )
        allowance = add_parts(
            None if ba.allowance is None else func(ba.allowance, size_b + mode.stray(bb)),
            None if bb.allowance is None else func(size_a, bb.allowance),
        )
    return Partial(terms, count, carried, squares, torch.zeros_like(out) if variance is None else variance,
                   nonzero), allowance


@rule(aten.addmm)
def _addmm(mode: BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> Bounded:
    bias, a, b = args[:3]
    if kwargs.get("beta", 1) != 1 or kwargs.get("alpha", 1) != 1:
        raise BoundError("no error rule for addmm with beta or alpha other than 1")
    return _dot(mode, aten.mm.default, a, b, out, bias)

