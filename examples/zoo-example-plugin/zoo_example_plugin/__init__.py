"""An example zoo plugin package: one activation, registered through its setup.cfg only."""

from __future__ import annotations

import torch
from torch import nn


class Squareplus(nn.Module):
    """Squareplus (So, 2021): (x + sqrt(x^2 + b)) / 2, a softplus-like curve without exp or log."""

    def __init__(self, b: float = 4.0) -> None:
        super().__init__()
        if b < 0:
            raise ValueError(f"b must be >= 0, got {b!r}")
        self.b = b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + torch.sqrt(x * x + self.b)) / 2

    def extra_repr(self) -> str:
        return f"b={self.b}"


class BesselBump(nn.Module):
    """The exponentially scaled Bessel function I0e(x) = exp(-|x|) I0(x): a smooth bump, 1 at 0, tails like |x|^-1/2.

    Neither ONNX exporter of torch lowers ``torch.special.i0e``; this package's lowering
    (zoo_example_plugin.lowering) does, through its ``zoo.onnx`` entry point.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.i0e(x)
