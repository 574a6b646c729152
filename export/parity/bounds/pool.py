"""Rules for pooling (max, average, adaptive and global, ceil_mode and count_include_pad as torch means them):
the max of each window, and the mean of each window (a sum divided by its divisor).

Max pooling is exact: moving each element of a window by at most e moves its max by at most the
largest e of the window, so each tier of the output is the max of that tier over the window (a tie
decided either way is within it). Average pooling is an n-term sum (padding adds exact zeros) then a
division by the divisor torch uses: the window's size within the padded input, its elements inside
the input (``count_include_pad=False``) or ``divisor_override``. Global pooling is a mean or amax over axes.

Windows are torch's, whatever their shape: ``ceil_mode`` windows at the border (measured: onnxruntime
1.32's MaxPool and AveragePool give torch's output sizes and divisors at opsets 17 to 22) and the
unequal windows of adaptive pooling to a size that does not divide the input's (the dynamo exporter
writes them as gathers; the torchscript exporter refuses them).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from export.parity.bounds.core import (
    Bounded,
    BoundMode,
    Partial,
    aten,
    finished,
    rule,
)
from export.parity.bounds.reductions import divided

Window = Callable[[torch.Tensor], torch.Tensor]


@rule(aten.max_pool2d_with_indices, aten.max_pool3d_with_indices, aten.adaptive_max_pool2d, aten.adaptive_max_pool3d)
def _max_pool(mode: BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> list[Bounded | None]:
    """max_pool(x, kernel, stride, padding, dilation, ceil_mode) and adaptive_max_pool(x, size): (values, indices)."""
    return [_window_max(mode, args[0], lambda t: func(t, *args[1:], **kwargs)[0]), None]


@rule(aten.amax)
def _amax(mode: BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> Bounded:
    """amax(x, dims, keepdim): global max pooling."""
    return _window_max(mode, args[0], lambda t: func(t, *args[1:], **kwargs))


def _window_max(mode: BoundMode, x: torch.Tensor, window: Window) -> Bounded:
    """Each tier of the max of every window: the max of that tier over the window."""
    bound = mode.bounded(x)
    with mode.pause():
        return Bounded(window(bound.error), *(None if part is None else window(part)
                                              for part in (bound.spread, bound.allowance)),
                       local=None if bound.local is None else window(bound.local))


@rule(aten.avg_pool2d, aten.avg_pool3d)
def _avg_pool(mode: BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> Bounded:
    """avg_pool(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)."""
    x, kernel = args[0], args[1]
    spatial = 3 if func.overloadpacket is aten.avg_pool3d else 2
    with mode.pause():
        ones = torch.ones((1, *x.shape[-spatial:]), dtype=x.dtype)
        # the divisor from the mean of ones: the window's elements inside the input over the divisor
        inside = func(ones, *_with(args, kwargs, divisor_override=1))
        divisor = inside / func(ones, *args[1:], **kwargs)
    count = math.prod(kernel) if len(kernel) == spatial else kernel[0] ** spatial
    return _window_mean(mode, x, out, lambda t: func(t, *args[1:], **kwargs) * divisor, count, divisor)


@rule(aten._adaptive_avg_pool2d, aten._adaptive_avg_pool3d)
def _adaptive_avg_pool(mode: BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> Bounded:
    """adaptive_avg_pool(x, output_size): window j of an axis from floor(j L / l) to ceil((j + 1) L / l)."""
    x, size = args[0], args[1]
    with mode.pause():
        divisor = torch.ones((), dtype=x.dtype)
        for length, wanted in zip(x.shape[-len(size):], size):
            j = torch.arange(wanted, dtype=x.dtype)
            divisor = divisor[..., None] * (torch.ceil((j + 1) * length / wanted) - torch.floor(j * length / wanted))
    return _window_mean(mode, x, out, lambda t: func(t, *args[1:], **kwargs) * divisor,
                        int(divisor.max()), divisor)


def _window_mean(mode: BoundMode, x: torch.Tensor, out: torch.Tensor, sums: Window, count: int,
                 divisor: Any) -> Bounded:
    """Both tiers of sum(window) / divisor: a ``count``-term sum, then the division."""
    bound = mode.bounded(x)
    with mode.pause():
        partial = Partial(sums(x.abs() + bound.error), count, sums(bound.error), sums(x * x),
                          torch.zeros_like(out) if bound.spread is None else sums(bound.spread**2),
                          sums((x != 0).to(x.dtype)))
        total = finished(mode, partial, out * divisor, None if bound.allowance is None else sums(bound.allowance))
        return divided(mode, total, out, divisor)


def _with(args: tuple, kwargs: dict, divisor_override: int) -> tuple:
    """avg_pool's arguments after x with ``divisor_override`` set (the defaults of the ones before it filled in)."""
    defaults = ([], 0, False, True)  # stride (the kernel), padding, ceil_mode, count_include_pad
    names = ("stride", "padding", "ceil_mode", "count_include_pad")
    given = [args[i + 2] if i + 2 < len(args) else kwargs.get(name, default)
             for i, (name, default) in enumerate(zip(names, defaults))]
    return (args[1], *given, divisor_override)
