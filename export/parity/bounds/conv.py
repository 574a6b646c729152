"""Rules for convolutions 1d to 3d (grouped, depthwise, strided, dilated, transposed) and their padding modes:
each output a dot product of the input's window with a kernel, as onnxruntime's
CPU provider computes it (im2col + GEMM, or direct and depthwise kernels, never Winograd or FFT:
onnxruntime issue 12834), so the componentwise bound of an n-term sum holds with n = Cin/groups * kernel
elements (+1 for the bias, which a runtime adds inside the same sum). Padding contributes exact zeros.
The result stays an unrounded sum (``Bounded.partial``), so a batch norm folded into the kernel and a
residual Add fused into the convolution (onnxruntime's FusedConv) join it.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from export.parity.bounds.core import Bounded, BoundMode, add_parts, aten, finished, joined, rule
from export.parity.bounds.linear import products


@rule(aten.convolution)
def _convolution(mode: BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> Bounded:
    """convolution(x, W, b, stride, padding, dilation, transposed, output_padding, groups), 1d, 2d or 3d."""
    x, weight, bias, *config = args
    transposed, groups = config[3], config[5]
    # each output sums over the input channels of its group and the kernel's elements (transposed: at most)
    channels = weight.shape[0] // groups if transposed else weight.shape[1]
    count = channels * math.prod(weight.shape[2:])

    def conv(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return func(a, b, None, *config)

    with mode.pause():
        dilation = config[2]
        if not transposed and any(d > 1 for d in dilation) and not bool((mode.error(weight) > 0).any()):
            # torch's float64 dilated convolution is a slow loop; the same sums with zeros between the taps are not
            weight = mode.weights.derived(weight, "dense", lambda w: _dense(w, dilation))
            config[2] = [1] * len(dilation)
        mask = mode.weights.derived(weight, "nonzero mask", lambda t: (t != 0).to(torch.float64))
        nonzero = conv((x != 0).to(torch.float64), mask)  # adding a zero term is exact: padding, ReLU zeros
    partial, allowance = products(mode, conv, x, weight, out, count, nonzero)
    if bias is not None:
        with mode.pause():
            shaped = per_channel(mode, bias, out.dim())
            partial = joined(mode, partial, shaped, 1.0)
            allowance = add_parts(allowance, mode.bounded(shaped).allowance)
    return finished(mode, partial, out, allowance)


def per_channel(mode: BoundMode, vector: torch.Tensor, dims: int) -> torch.Tensor:
    """A per-channel vector (C,) shaped (1, C, 1, ...) to broadcast over (N, C, *), its bound moved with it."""
    shape = (1, -1, *[1] * (dims - 2))
    shaped = vector.reshape(shape)
    bound = mode.bounded(vector)
    mode.remember(shaped, Bounded(
        bound.error.reshape(shape),
        None if bound.spread is None else bound.spread.reshape(shape),
        None if bound.allowance is None else bound.allowance.reshape(shape),
    ))
    return shaped


def _dense(weight: torch.Tensor, dilation: list[int]) -> torch.Tensor:
    """A dilated kernel as a plain one: its taps ``dilation`` apart, zeros between them."""
    size = [(k - 1) * d + 1 for k, d in zip(weight.shape[2:], dilation)]
    dense = weight.new_zeros((*weight.shape[:2], *size))
    dense[(..., *(slice(None, None, d) for d in dilation))] = weight
    return dense


@rule(aten.constant_pad_nd, aten.reflection_pad1d, aten.reflection_pad2d, aten.replication_pad1d,
      aten.replication_pad2d)
def _pad(mode: BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> Bounded:
    """The padding a convolution asks for (padding_mode reflect or replicate, padding='same' with an even
    kernel): each tier moves with its value; a constant pad is exact."""
    bound = mode.bounded(args[0])
    with mode.pause():
        return Bounded(*(None if part is None else func(part, args[1])
                         for part in (bound.error, bound.spread, bound.allowance)),
                       local=None if bound.local is None else func(bound.local, args[1]))
