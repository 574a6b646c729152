"""Small plain-torch networks, one per op family the parity rules cover beyond activations and linear
layers: the matrix's network rows (``export.parity.matrix``), exported and judged like its MLPs.

Each builder gives a seeded model in eval and its example input (batch of 2). Norm layers get seeded
running statistics and affine parameters, so that folding them into a convolution (onnxruntime, the
torchscript exporter) has something to fold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

SEED = 0
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass(frozen=True)
class Network:
    """How to build one network row: the builder, the sample shape after the batch axis, the input axes that
    take any size (a sequence's length)."""

    build: Callable[[], nn.Module]
    shape: tuple[int, ...]
    dynamic_axes: tuple[int, ...] = ()


class SelfAttention(nn.Module):
    """nn.MultiheadAttention over one sequence (query = key = value), its output only."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(x, x, x, need_weights=False)[0]


class Residual(nn.Module):
    """y = activation(block(x) + x): ResNet's basic block without the shape change."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                                   nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(channels))
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.block(x) + x)


class Causal(nn.Module):
    """scaled_dot_product_attention over heads with a causal mask, queries, keys and values from one linear
    layer, as GPT-style blocks write it."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = (t.reshape(batch, length, self.heads, -1).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return y.transpose(1, 2).reshape(batch, length, width)


def _conv2d() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def _depthwise() -> nn.Module:
    return nn.Sequential(nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 8, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def _conv1d() -> nn.Module:
    return nn.Sequential(nn.Conv1d(2, 4, 3, padding=2, dilation=2), nn.GroupNorm(2, 4), nn.ReLU(),
                         nn.Conv1d(4, 2, 3, stride=2))


def _batch_norm() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3))


def _batch_norm1d() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))


def _pooling() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
                         nn.AvgPool2d(3, stride=1, padding=1), nn.Flatten(), nn.Linear(4 * 3 * 3, 2))


def _layer_norm() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.GELU(), nn.Dropout(0.1), nn.Linear(16, 3))


def _encoder() -> nn.Module:
    return nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, batch_first=True), 2,
                                 enable_nested_tensor=False)


SEQUENCE = (1,)  # (batch, length, width): the length takes any size
NETWORKS: dict[str, Network] = {
    "conv2d": Network(_conv2d, (2, 6, 6)),
    "depthwise_separable": Network(_depthwise, (4, 7, 7)),
    "conv1d_group_norm": Network(_conv1d, (2, 12)),
    "batch_norm2d": Network(_batch_norm, (2, 6, 6)),
    "batch_norm1d_dropout": Network(_batch_norm1d, (6,)),
    "max_avg_pool": Network(_pooling, (2, 6, 6)),
    "residual_block": Network(lambda: nn.Sequential(nn.Conv2d(2, 4, 1), Residual(4)), (2, 5, 5)),
    "layer_norm": Network(_layer_norm, (6,)),
    "multihead_attention": Network(lambda: SelfAttention(8, 2), (5, 8), SEQUENCE),
    "causal_sdpa": Network(lambda: Causal(8, 2), (5, 8), SEQUENCE),
    "transformer_encoder": Network(_encoder, (5, 8), SEQUENCE),
}


def build_network(name: str) -> tuple[nn.Module, torch.Tensor]:
    """The seeded network ``name`` in eval, with seeded norm statistics, and its example input (2 samples)."""
    network = NETWORKS[name]
    torch.manual_seed(SEED)
    model = network.build()
    generator = torch.Generator().manual_seed(SEED)
    for module in model.modules():
        if isinstance(module, BATCH_NORMS):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.5)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
        if isinstance(module, (*BATCH_NORMS, nn.GroupNorm, nn.LayerNorm)) and module.weight is not None:
            with torch.no_grad():
                module.weight.copy_(1 + 0.2 * torch.randn(module.weight.shape, generator=generator))
                module.bias.copy_(0.2 * torch.randn(module.bias.shape, generator=generator))
    return model.eval(), torch.randn(2, *network.shape, generator=generator)
