"""Plain torch models with norms and attention, as a user would write them (none from the registry), for
tests/test_parity_attention.py: small widths, short sequences."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LENGTH, WIDTH, HEADS = 4, 8, 2


def seeded(build):
    """``build()`` with torch's global generator at seed 0: the same weights on every run."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return build()


def layer_norm_mlp() -> nn.Module:
    """Linear - LayerNorm - GELU - Linear."""
    return nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.GELU(), nn.Linear(32, 4))


def dropout_mlp() -> nn.Module:
    """An MLP with LayerNorm and Dropout after each hidden layer."""
    return nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.ReLU(), nn.Dropout(0.1),
                         nn.Linear(32, 32), nn.LayerNorm(32), nn.GELU(), nn.Dropout(0.1), nn.Linear(32, 4))


class GroupNormNet(nn.Module):
    """Linear, reshaped to (N, 8 channels, 4 positions), GroupNorm in 2 groups, ReLU, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(16, 32)
        self.norm = nn.GroupNorm(2, 8)
        self.out = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.norm(self.lin(x).reshape(-1, 8, 4))).flatten(1))


class TrailingAxesNorm(nn.Module):
    """A LayerNorm over the last two axes of a (N, LENGTH, WIDTH) sequence."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(WIDTH, WIDTH)
        self.norm = nn.LayerNorm([LENGTH, WIDTH])
        self.out = nn.Linear(LENGTH * WIDTH, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(self.lin(x)).flatten(1))


def _heads(x: torch.Tensor) -> torch.Tensor:
    """(N, L, WIDTH) as (N, HEADS, L, WIDTH / HEADS)."""
    return x.unflatten(-1, (HEADS, WIDTH // HEADS)).transpose(1, 2)


class Attention(nn.Module):
    """F.scaled_dot_product_attention over (N, LENGTH, WIDTH) in HEADS heads, no mask."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(WIDTH, 3 * WIDTH)
        self.out = nn.Linear(WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (_heads(t) for t in self.qkv(x).chunk(3, -1))
        return self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))


class MaskedAttention(nn.Module):
    """The same attention three times, causal, with a boolean and with an additive mask, outputs side by side."""

    def __init__(self, keep: torch.Tensor | None = None) -> None:
        super().__init__()
        self.qkv = nn.Linear(WIDTH, 3 * WIDTH)
        self.out = nn.Linear(3 * WIDTH, WIDTH)
        keep = (torch.arange(LENGTH)[:, None] - torch.arange(LENGTH)[None, :]).abs() <= 1 if keep is None else keep
        self.register_buffer("keep", keep)  # a band
        self.register_buffer("additive", torch.where(keep, torch.randn(LENGTH, LENGTH), -torch.inf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (_heads(t) for t in self.qkv(x).chunk(3, -1))
        ys = [F.scaled_dot_product_attention(q, k, v, is_causal=True),
              F.scaled_dot_product_attention(q, k, v, attn_mask=self.keep),
              F.scaled_dot_product_attention(q, k, v, attn_mask=self.additive)]
        return self.out(torch.cat([y.transpose(1, 2).flatten(2) for y in ys], -1))


class MultiheadAttention(nn.Module):
    """nn.MultiheadAttention as self-attention twice: as torch runs it for need_weights=False (one fused op) and
    for need_weights=True (op by op, the weights averaged over heads), outputs added."""

    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(WIDTH, HEADS, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = self.attention(x, x, x, need_weights=False)[0]
        y, weights = self.attention(x, x, x)
        return fused + y + weights.sum(-1, keepdim=True)


def encoder_layer() -> nn.Module:
    """nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), as a user builds it."""
    return nn.TransformerEncoderLayer(WIDTH, HEADS, 16, batch_first=True)


def encoder_stack() -> nn.Module:
    """Two of those in an nn.TransformerEncoder."""
    return nn.TransformerEncoder(encoder_layer(), 2, enable_nested_tensor=False)


class TinyViT(nn.Module):
    """A vision transformer for (N, 1, 8, 8) images: 4x4 patches by reshape and Linear, one encoder layer,
    mean pooling over the patches, a LayerNorm and a linear head."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.embed = nn.Linear(16, width)
        self.position = nn.Parameter(0.02 * torch.randn(1, 4, width))
        self.encoder = nn.TransformerEncoderLayer(width, HEADS, 2 * width, batch_first=True, norm_first=True)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = x.reshape(-1, 2, 4, 2, 4).permute(0, 1, 3, 2, 4).reshape(-1, 4, 16)
        tokens = self.encoder(self.embed(patches) + self.position)
        return self.head(self.norm(tokens.mean(1)))


class TokenModel(nn.Module):
    """Tokens of 6 features at any length up to 32: a linear token embedding plus an nn.Embedding lookup of each
    position (the ids from arange: probes are floats), one encoder layer, logits per token."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, WIDTH)
        self.position = nn.Embedding(32, WIDTH)
        self.encoder = encoder_layer()
        self.head = nn.Linear(WIDTH, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(x.shape[1], device=x.device)
        return self.head(self.encoder(self.embed(x) + self.position(positions)))
