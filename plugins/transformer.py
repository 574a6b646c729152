"""Built-in transformer encoder for sequences of one-hot tokens, test-sized by default.

zoo resolves the registry names given for `norm`, `activation` and `layer` and passes factories. The
attention is written out in explicit matmuls and a softmax (no fused kernel, no
nn.MultiheadAttention fast path), so both exporters lower it op by op and the sequence axis stays
dynamic. The norms see each token as one row (N * L, C), so any registered norm applies token-wise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from plugins.models import Factory, is_size, width_after


def transformer(
    input_shape: Sequence[int | None] = (None, 10),
    classes: int = 10,
    width: int = 32,
    depth: int = 2,
    heads: int = 4,
    mlp_ratio: int = 2,
    max_length: int = 32,
    norm: Factory | str | None = "layer_norm",
    activation: Factory | str = "gelu",
    layer: Factory | str = "linear",
) -> nn.Module:
    """A small transformer encoder for (length, vocabulary) one-hot tokens: token and position embeddings,
    pre-norm blocks of multi-head self-attention and an MLP, logits for every position.

    It also takes token ids (N, L) of an integer dtype, one-hot encoded first; the ONNX export takes the
    one-hot floats. A sequence may be at most ``max_length`` long."""
    return Transformer(input_shape, classes, width, depth, heads, mlp_ratio, max_length, norm, activation, layer)


class Transformer(nn.Module):
    """The encoder `transformer` builds: (N, L, vocabulary) to (N, L, classes)."""

    def __init__(self, input_shape: Sequence[int | None], classes: int, width: int, depth: int, heads: int,
                 mlp_ratio: int, max_length: int, norm: Factory | None, activation: Factory,
                 layer: Factory) -> None:
        for label, value in (("classes", classes), ("width", width), ("depth", depth), ("heads", heads),
                             ("mlp_ratio", mlp_ratio), ("max_length", max_length)):
            if not is_size(value):
                raise ValueError(f"{label} must be a positive integer, got {value!r}")
        length, vocabulary = _check_shape(input_shape, max_length)
        super().__init__()
        self.vocabulary = vocabulary
        self.embed = layer(vocabulary, width, True)  # a linear layer on one-hot tokens is an embedding table
        self.position = nn.Embedding(max_length, width)
        nn.init.normal_(self.position.weight, std=0.02)
        self.blocks = nn.Sequential(*(Block(width, heads, mlp_ratio, norm, activation, layer) for _ in range(depth)))
        self.norm = TokenNorm(norm, width)
        self.head = layer(width, classes, True)
        self.zoo_meta = {"task": "sequence_classification", "input_shape": [length, vocabulary],
                         "classes": classes, "dataset": "sort"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():  # token ids (N, L): the one-hot rows the embedding reads
            x = F.one_hot(x, self.vocabulary).to(self.position.weight.dtype)
        positions = torch.arange(x.shape[1], device=x.device)
        return self.head(self.norm(self.blocks(self.embed(x) + self.position(positions))))


class Block(nn.Module):
    """Pre-norm encoder block: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: int, norm: Factory | None, activation: Factory,
                 layer: Factory) -> None:
        super().__init__()
        self.norm1 = TokenNorm(norm, width)
        self.attention = SelfAttention(width, heads, layer)
        self.norm2 = TokenNorm(norm, width)
        hidden = width * mlp_ratio
        act = activation()
        self.mlp = nn.Sequential(layer(width, hidden, True), act, layer(width_after(act, hidden), width, True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SelfAttention(nn.Module):
    """Multi-head self-attention in explicit ops: softmax(q k^T / sqrt(d)) v per head, heads joined by a linear layer."""

    def __init__(self, width: int, heads: int, layer: Factory) -> None:
        if width % heads:
            raise ValueError(f"width {width} must be a multiple of heads {heads}")
        super().__init__()
        self.heads, self.head_width = heads, width // heads
        self.qkv = layer(width, 3 * width, True)
        self.out = layer(width, width, True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (t.unflatten(-1, (self.heads, self.head_width)).transpose(1, 2)
                   for t in self.qkv(x).chunk(3, dim=-1))  # each (N, heads, L, head_width)
        scores = (q * (1 / math.sqrt(self.head_width))) @ k.transpose(-2, -1)
        y = scores.softmax(dim=-1) @ v
        return self.out(y.transpose(1, 2).flatten(2))


class TokenNorm(nn.Module):
    """A registered norm applied to each token of (N, L, C) as a row of (N * L, C); none when ``norm`` is None."""

    def __init__(self, norm: Factory | None, width: int) -> None:
        super().__init__()
        self.norm = None if norm is None else norm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.norm is None else self.norm(x.flatten(0, 1)).view_as(x)


def _check_shape(input_shape: Sequence[int | None], max_length: int) -> tuple[int | None, int]:
    """(length or None, vocabulary) of a valid ``input_shape``; ValueError otherwise."""
    valid = (isinstance(input_shape, Sequence) and not isinstance(input_shape, str) and len(input_shape) == 2
             and (input_shape[0] is None or is_size(input_shape[0])) and is_size(input_shape[1]))
    if not valid:
        raise ValueError(f"input_shape must be (length or None, vocabulary), e.g. [null, 10], got {input_shape!r}")
    if input_shape[0] is not None and input_shape[0] > max_length:
        raise ValueError(f"input_shape's length {input_shape[0]} is more than max_length {max_length}")
    return input_shape[0], input_shape[1]
