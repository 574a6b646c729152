"""Built-in linear layers: the course notes' three ways to write y = x W^T + b.

All three take (in_features, out_features, bias=True), start from nn.Linear's initialisation
(kaiming_uniform(a=sqrt(5)) weights, bias uniform in +-1/sqrt(fan_in)) and compute the same
function; they differ only in the torch operation that does the work.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _check_sizes(in_features: int, out_features: int) -> None:
    for label, value in (("in_features", in_features), ("out_features", out_features)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{label} must be a positive integer, got {value!r}")


class _RawLinear(nn.Module):
    """Shared parameters and initialisation of the hand-written layers."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        _check_sizes(in_features, out_features)
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Linear's initialisation: kaiming_uniform(a=sqrt(5)), bias in +-1/sqrt(fan_in)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class EinsumLinear(_RawLinear):
    """Fully connected layer written with raw tensors and torch.einsum (the notes' method 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.einsum("...i,oi->...o", x, self.weight)
        return y if self.bias is None else y + self.bias


class ParamLinear(_RawLinear):
    """Hand-written nn.Module with nn.Parameter and matmul (the notes' method 2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.weight.T
        return y if self.bias is None else y + self.bias


def linear(in_features: int, out_features: int, bias: bool = True) -> nn.Linear:
    """torch.nn.Linear itself (the notes' method 3), with its sizes checked."""
    _check_sizes(in_features, out_features)
    return nn.Linear(in_features, out_features, bias=bias)
