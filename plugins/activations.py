"""Built-in activations: torch.nn's elementwise activations, registered under snake_case names.

Each keeps torch's parameters and defaults, except where torch has no usable default:
Softmax, LogSoftmax and Softmin normalise over the last dimension (torch: an implicit,
deprecated choice), Threshold defaults to torch's documented example (0.1, 20.0), and Softsign
gives its limits +-1 at +-inf where torch's computes inf / inf.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import (
    CELU,
    ELU,
    GELU,
    GLU,
    SELU,
    Hardshrink,
    Hardsigmoid,
    Hardswish,
    Hardtanh,
    LeakyReLU,
    LogSigmoid,
    Mish,
    PReLU,
    ReLU,
    ReLU6,
    RReLU,
    Sigmoid,
    SiLU,
    Softplus,
    Softshrink,
    Tanh,
    Tanhshrink,
)

__all__ = [
    "CELU",
    "ELU",
    "GELU",
    "GLU",
    "SELU",
    "Hardshrink",
    "Hardsigmoid",
    "Hardswish",
    "Hardtanh",
    "LeakyReLU",
    "LogSigmoid",
    "LogSoftmax",
    "Mish",
    "PReLU",
    "RReLU",
    "ReLU",
    "ReLU6",
    "SiLU",
    "Sigmoid",
    "Softmax",
    "Softmin",
    "Softplus",
    "Softshrink",
    "Softsign",
    "Tanh",
    "Tanhshrink",
    "Threshold",
]


class Softmax(nn.Softmax):
    """Softmax over the last dimension by default: exp(x_i) / sum_j exp(x_j)."""

    def __init__(self, dim: int = -1) -> None:
        super().__init__(dim=dim)


class LogSoftmax(nn.LogSoftmax):
    """Log of the softmax over the last dimension by default: x_i - log(sum_j exp(x_j))."""

    def __init__(self, dim: int = -1) -> None:
        super().__init__(dim=dim)


class Softmin(nn.Softmin):
    """Softmin over the last dimension by default: exp(-x_i) / sum_j exp(-x_j)."""

    def __init__(self, dim: int = -1) -> None:
        super().__init__(dim=dim)


class Softsign(nn.Softsign):
    """x / (1 + |x|), and its limits +-1 at +-inf (torch.nn.Softsign gives inf / inf = NaN there)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x.abs() == math.inf, x.sign(), super().forward(x))


class Threshold(nn.Threshold):
    """Thresholds each element: x if x > threshold, else value (defaults: torch's example 0.1, 20)."""

    def __init__(self, threshold: float = 0.1, value: float = 20.0, inplace: bool = False) -> None:
        super().__init__(threshold, value, inplace)
