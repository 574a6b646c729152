"""Built-in pooling for channels-first signals (N, C, L) and images (N, C, H, W), whatever the rank.

``max_pool`` and ``avg_pool`` downsample each spatial axis by ``kernel_size`` (square windows, stride
the kernel size by default, no ceil mode: it mismatches ONNX at borders). The global pools reduce every
spatial axis, giving (N, C) for a linear head whatever the input size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _Pool(nn.Module):
    def __init__(self, kernel_size: int = 2, stride: int | None = None) -> None:
        for label, value in (("kernel_size", kernel_size), ("stride", kernel_size if stride is None else stride)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{label} must be a positive integer, got {value!r}")
        super().__init__()
        self.kernel_size, self.stride = kernel_size, kernel_size if stride is None else stride

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


def _spatial_rank(x: torch.Tensor, name: str) -> int:
    if x.dim() not in (3, 4):
        raise ValueError(f"{name} expects (N, C, L) or (N, C, H, W) input, got {x.dim()} dimensions")
    return x.dim() - 2


class MaxPool(_Pool):
    """Max over each kernel_size window (stride: the kernel size by default)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        function = F.max_pool1d if _spatial_rank(x, "max_pool") == 1 else F.max_pool2d
        return function(x, self.kernel_size, self.stride)


class AvgPool(_Pool):
    """Mean over each kernel_size window (stride: the kernel size by default)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        function = F.avg_pool1d if _spatial_rank(x, "avg_pool") == 1 else F.avg_pool2d
        return function(x, self.kernel_size, self.stride)


class GlobalAvgPool(nn.Module):
    """Mean over every spatial axis: (N, C, *) to (N, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=tuple(range(2, 2 + _spatial_rank(x, "global_avg_pool"))))


class GlobalMaxPool(nn.Module):
    """Max over every spatial axis: (N, C, *) to (N, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=tuple(range(2, 2 + _spatial_rank(x, "global_max_pool"))))
