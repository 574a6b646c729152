"""Built-in convolutions: the course notes' three ways, for convolutions as plugins/layers.py has them
for linear layers.

All three take (in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, dims=2),
where ``dims`` is 1 for signals (N, C, L) or 2 for images (N, C, H, W) and kernels are square. They
start from nn.Conv2d's initialisation (kaiming_uniform(a=sqrt(5)) weights, bias uniform in
+-1/sqrt(fan_in)), so one seed gives the same weights, and compute the same function; they differ
only in the torch operation that does the work.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _check(in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int, dims: int) -> None:
    for label, value, least in (("in_channels", in_channels, 1), ("out_channels", out_channels, 1),
                                ("kernel_size", kernel_size, 1), ("stride", stride, 1), ("padding", padding, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            kind = "a positive" if least else "a non-negative"
            raise ValueError(f"{label} must be {kind} integer, got {value!r}")
    if dims not in (1, 2):
        raise ValueError(f"dims must be 1 (signals: N, C, L) or 2 (images: N, C, H, W), got {dims!r}")


def conv(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
    bias: bool = True, dims: int = 2,
) -> nn.Conv1d | nn.Conv2d:
    """torch.nn.Conv1d or Conv2d itself (the notes' method 3), with its sizes checked."""
    _check(in_channels, out_channels, kernel_size, stride, padding, dims)
    cls = nn.Conv1d if dims == 1 else nn.Conv2d
    return cls(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)


class _RawConv(nn.Module):
    """Shared parameters and initialisation of the hand-written convolutions."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
        bias: bool = True, dims: int = 2,
    ) -> None:
        _check(in_channels, out_channels, kernel_size, stride, padding, dims)
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride, self.padding, self.dims = stride, padding, dims
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *[kernel_size] * dims))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Conv2d's initialisation: kaiming_uniform(a=sqrt(5)), bias in +-1/sqrt(fan_in)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.weight[0].numel())
            nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, bias={self.bias is not None}, dims={self.dims}")


class ParamConv(_RawConv):
    """Hand-written nn.Module with nn.Parameter calling F.conv1d / F.conv2d (the notes' method 2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        function = F.conv1d if self.dims == 1 else F.conv2d
        return function(x, self.weight, self.bias, stride=self.stride, padding=self.padding)


class Im2colConv(_RawConv):
    """Convolution as im2col written out: F.unfold gathers each patch into a column, then one matmul
    with the flattened kernels (the notes' method 1); a signal is an image of height 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        signal = self.dims == 1
        image = x.unsqueeze(2) if signal else x
        weight = self.weight.unsqueeze(2) if signal else self.weight
        kernel = weight.shape[2:]
        padding = (0, self.padding) if signal else self.padding
        stride = (1, self.stride) if signal else self.stride
        columns = F.unfold(image, kernel, padding=padding, stride=stride)  # (N, C * kh * kw, H' * W')
        y = weight.flatten(1) @ columns
        if self.bias is not None:
            y = y + self.bias.unsqueeze(-1)
        height, width = (_out_size(image.shape[axis], k, p, s)
                         for axis, k, p, s in zip((2, 3), kernel, _pair(padding), _pair(stride)))
        y = y.unflatten(-1, (height, width))
        return y.squeeze(2) if signal else y


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return value if isinstance(value, tuple) else (value, value)


def _out_size(size: int, kernel: int, padding: int, stride: int) -> int:
    """The length of one output axis of a convolution."""
    return (size + 2 * padding - kernel) // stride + 1
