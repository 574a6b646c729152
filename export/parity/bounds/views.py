"""Rules for ops that move values without computing: views, copies, reshapes, concatenation, the windows of
im2col (F.unfold: padding adds exact zeros), new constants."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from export.parity.bounds.core import Bounded, BoundMode, Partial, aten, flat, rule


@rule(
    aten.view, aten._unsafe_view, aten.reshape, aten.t, aten.permute, aten.transpose, aten.unsqueeze, aten.squeeze,
    aten.expand, aten.clone, aten.alias, aten.detach, aten.slice, aten.select, aten.narrow, aten.split,
    aten.split_with_sizes, aten.chunk, aten.unbind, aten.cat, aten.stack, aten.flatten, aten._to_copy, aten.contiguous,
    aten.lift_fresh, aten.repeat, aten.im2col, aten.embedding,
)
def _moves(mode: BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> Any:
    """Views, copies, reshapes and lookups (embedding): both tiers (and an unrounded sum's parts) move with the values."""
    source = next((a for a in flat(args[0]) if isinstance(a, torch.Tensor)), None)
    single = isinstance(args[0], torch.Tensor)
    sources = [mode.bounded(v) for v in (flat(args[0]) if not single else [args[0]]) if isinstance(v, torch.Tensor)]

    def move(part: Callable[[Bounded], torch.Tensor | None]) -> Any:
        if any(part(b) is None for b in sources):
            if all(part(b) is None for b in sources):
                return None
            part = _zero_for_none(part)

        def lift(value: Any) -> Any:
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                return part(mode.bounded(value))
            if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
                return [part(mode.bounded(v)) for v in value]
            return value

        return func(*[lift(a) for a in args], **kwargs)

    with mode.pause():
        moved = [move(lambda b: b.error), move(lambda b: b.spread), move(lambda b: b.allowance),
                 move(lambda b: b.local)]
    if isinstance(moved[0], (list, tuple)):
        return [Bounded(e, s, a, local=v) for e, s, a, v in
                zip(moved[0], *(m if m is not None else [None] * len(moved[0]) for m in moved[1:]))]
    bound = Bounded(*moved[:3], local=moved[3])
    partial = mode.bounded(source).partial if single else None
    if partial is not None:
        with mode.pause():
            nonzero = None if partial.nonzero is None else \
                move(lambda b: b.partial.nonzero.expand_as(b.partial.terms).to(torch.float64))
            bound.partial = Partial(move(lambda b: b.partial.terms), partial.count, move(lambda b: b.partial.carried),
                                    move(lambda b: b.partial.squares), move(lambda b: b.partial.variance), nonzero)
    return bound


def _zero_for_none(part: Callable[[Bounded], torch.Tensor | None]) -> Callable[[Bounded], torch.Tensor]:
    def read(bound: Bounded) -> torch.Tensor:
        value = part(bound)
        return torch.zeros_like(bound.error) if value is None else value
    return read


@rule(
    aten.empty_like, aten.zeros_like, aten.ones_like, aten.full_like, aten.scalar_tensor, aten.zeros, aten.ones,
    aten.full, aten.empty, aten.new_empty, aten.new_zeros, aten.new_ones, aten.new_full, aten.arange,
    aten._local_scalar_dense, aten.lift_fresh_copy,
)
def _constant(mode: BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> Any:
    return None  # a new tensor of exact values: no error

