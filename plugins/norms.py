"""Built-in normalisation layers, each built as ``norm(num_channels)`` for channels-first input
(N, C, *): feature rows (N, C), signals (N, C, L) and images (N, C, H, W) alike.

One class per norm, whatever the rank, lets a model take any of them by name: torch's BatchNorm1d
and BatchNorm2d differ only in the rank they accept, and torch's LayerNorm normalises the last axes,
so layer_norm here is timm's LayerNorm2d pattern (over the channels at every position).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BatchNorm(nn.BatchNorm1d):
    """Batch normalisation over the channels of (N, C, *): batch statistics while training, running ones in eval."""

    def __init__(self, num_channels: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True) -> None:
        super().__init__(num_channels, eps=eps, momentum=momentum, affine=affine)

    def _check_input_dim(self, input: torch.Tensor) -> None:
        # torch's hook through which BatchNorm1d/2d/3d accept only their rank: this one takes any (N, C, *).
        if input.dim() < 2:
            raise ValueError(f"batch_norm expects (N, C, *) input, got {input.dim()} dimension(s)")


class LayerNorm(nn.LayerNorm):
    """Layer normalisation over the channels of (N, C, *), separately at each position (timm's LayerNorm2d)."""

    def __init__(self, num_channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__(num_channels, eps=eps, elementwise_affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = x.dim() - 1
        # Positive axes: the torchscript exporter writes movedim(-1, 1) as an invalid Transpose.
        channels_last = x.permute(0, *range(2, x.dim()), 1)
        y = F.layer_norm(channels_last, self.normalized_shape, self.weight, self.bias, self.eps)
        return y.permute(0, last, *range(1, last))


class GroupNorm(nn.GroupNorm):
    """Group normalisation of (N, C, *): channels split into ``num_groups`` groups, each normalised per sample."""

    def __init__(self, num_channels: int, num_groups: int = 4, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__(num_groups, num_channels, eps=eps, affine=affine)
