"""Built-in convolutional models: a small CNN (images and signals) and a small ResNet, test-sized by default.

zoo resolves the registry names given for `conv`, `norm`, `activation`, `pool`, `global_pool` and
`layer` and passes factories: `conv(i, o, kernel, stride, padding, bias, dims)`, `norm(channels)`,
`activation()`, `pool()`, `global_pool()`, `layer(i, o, bias)`. `norm`, `pool` or `global_pool`
None leaves that layer out (no global pool: the features are flattened, so the input size is fixed).
A convolution followed by a norm has no bias (the norm's shift takes its place).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from plugins.models import Factory, check_widths, is_size

KERNEL = 3
AXES = {1: "(channels, length)", 2: "(channels, height, width)"}  # input_shape of a model, by spatial axes


def cnn(
    input_shape: Sequence[int] = (1, 32, 32),
    classes: int = 4,
    widths: Sequence[int] = (16, 32, 64),
    conv: Factory | str = "conv",
    norm: Factory | str | None = "batch_norm",
    activation: Factory | str = "relu",
    pool: Factory | str | None = "max_pool",
    global_pool: Factory | str | None = "global_avg_pool",
    layer: Factory | str = "linear",
) -> nn.Sequential:
    """A small CNN for images (C, H, W): conv-norm-activation blocks each followed by a pool, global pooling, a linear head."""
    return _cnn(input_shape, classes, widths, conv, norm, activation, pool, global_pool, layer, 2, "shapes")


def cnn1d(
    input_shape: Sequence[int] = (1, 40),
    classes: int = 10,
    widths: Sequence[int] = (16, 32, 64),
    conv: Factory | str = "conv",
    norm: Factory | str | None = "batch_norm",
    activation: Factory | str = "relu",
    pool: Factory | str | None = "max_pool",
    global_pool: Factory | str | None = "global_avg_pool",
    layer: Factory | str = "linear",
) -> nn.Sequential:
    """A small 1-D CNN for signals (C, L): the same blocks as cnn, with one-dimensional convolutions."""
    return _cnn(input_shape, classes, widths, conv, norm, activation, pool, global_pool, layer, 1, "signals")


def resnet(
    input_shape: Sequence[int] = (1, 32, 32),
    classes: int = 4,
    widths: Sequence[int] = (16, 32),
    conv: Factory | str = "conv",
    norm: Factory | str | None = "batch_norm",
    activation: Factory | str = "relu",
    global_pool: Factory | str | None = "global_avg_pool",
    layer: Factory | str = "linear",
) -> nn.Sequential:
    """A small ResNet for images (C, H, W): a strided conv stem, one basic residual block per width (each
    after the first halves the size again), global pooling, a linear head."""
    dims = _check_shape(input_shape, 2)
    check_widths("widths", widths, "[16, 32]")
    if not widths:
        raise ValueError("widths must hold at least one width (the stem's)")
    stem = _conv_block(conv, norm, activation, input_shape[0], widths[0], dims, stride=2)
    parts: list[tuple[str, nn.Module]] = [("stem", stem)]
    width = widths[0]
    for i, size in enumerate(widths):
        parts.append((f"block{i}", BasicBlock(conv, norm, activation, width, size, 1 if i == 0 else 2, dims)))
        width = size
    return _with_head(parts, input_shape, classes, global_pool, layer, "shapes")


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with norms, added to the input (through a strided 1x1 convolution when the
    shape changes), then the activation: ResNet's basic block."""

    def __init__(self, conv: Factory, norm: Factory | None, activation: Factory, in_channels: int,
                 out_channels: int, stride: int, dims: int) -> None:
        super().__init__()
        bias = norm is None
        self.conv1 = conv(in_channels, out_channels, KERNEL, stride, KERNEL // 2, bias, dims)
        self.norm1 = _optional(norm, out_channels)
        self.act1 = _shape_keeping(activation(), out_channels, dims)
        self.conv2 = conv(out_channels, out_channels, KERNEL, 1, KERNEL // 2, bias, dims)
        self.norm2 = _optional(norm, out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(conv(in_channels, out_channels, 1, stride, 0, bias, dims),
                                          _optional(norm, out_channels))
        self.act2 = activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))
        return self.act2(y + self.shortcut(x))


def _cnn(input_shape: Sequence[int], classes: int, widths: Sequence[int], conv: Factory, norm: Factory | None,
         activation: Factory, pool: Factory | None, global_pool: Factory | None, layer: Factory,
         dims: int, dataset: str) -> nn.Sequential:
    _check_shape(input_shape, dims)
    check_widths("widths", widths, "[16, 32]")
    parts: list[tuple[str, nn.Module]] = []
    width = input_shape[0]
    for i, size in enumerate(widths):
        block = _conv_block(conv, norm, activation, width, size, dims)
        if pool is not None:
            block.append(pool())
        parts.append((f"block{i}", block))
        width = size
    return _with_head(parts, input_shape, classes, global_pool, layer, dataset)


def _conv_block(conv: Factory, norm: Factory | None, activation: Factory, in_channels: int, out_channels: int,
                dims: int, stride: int = 1) -> nn.Sequential:
    """conv (3x3, padding 1) - norm - activation."""
    parts = [conv(in_channels, out_channels, KERNEL, stride, KERNEL // 2, norm is None, dims)]
    if norm is not None:
        parts.append(norm(out_channels))
    parts.append(_shape_keeping(activation(), out_channels, dims))
    return nn.Sequential(*parts)


def _with_head(parts: list[tuple[str, nn.Module]], input_shape: Sequence[int], classes: int,
               global_pool: Factory | None, layer: Factory, dataset: str) -> nn.Sequential:
    """The body, then the global pool (or a flatten) and a linear head to ``classes`` logits."""
    if not is_size(classes) or classes < 2:
        raise ValueError(f"classes must be an integer >= 2, got {classes!r}")
    parts.append(("pool", global_pool() if global_pool is not None else nn.Flatten()))
    body = nn.Sequential(OrderedDict(parts))
    body.add_module("head", layer(_features(body, input_shape), classes, True))
    body.zoo_meta = {"task": "classification", "input_shape": list(input_shape), "classes": classes,
                     "dataset": dataset}
    return body


def _check_shape(input_shape: Sequence[int], dims: int) -> int:
    """``dims``, the number of spatial axes, once ``input_shape`` is known to have them; ValueError otherwise."""
    if (not isinstance(input_shape, Sequence) or isinstance(input_shape, str) or len(input_shape) != dims + 1
            or not all(map(is_size, input_shape))):
        raise ValueError(f"input_shape must be {dims + 1} positive sizes {AXES[dims]}, got {input_shape!r}")
    return dims


def _optional(norm: Factory | None, channels: int) -> nn.Module:
    return nn.Identity() if norm is None else norm(channels)


def _shape_keeping(act: nn.Module, channels: int, dims: int) -> nn.Module:
    """``act``, refused when it changes the shape of channels-first features (GLU halves the last axis)."""
    probe = torch.zeros(2, channels, *[4] * dims)
    with torch.no_grad():
        shape = act.eval()(probe).shape
    act.train()
    if shape != probe.shape:
        raise ValueError(f"{type(act).__name__} changes the shape of (N, C, *) features; "
                         "a convolutional model needs an activation that keeps it")
    return act


def _features(body: nn.Module, input_shape: Sequence[int]) -> int:
    """The number of features ``body`` gives one input of ``input_shape`` (found with a forward in eval mode)."""
    try:
        with torch.no_grad():
            out = body.eval()(torch.zeros(2, *input_shape))
    except RuntimeError as exc:
        raise ValueError(f"input_shape {list(input_shape)} is too small for these layers: {exc}") from exc
    finally:
        body.train()
    if out.dim() != 2:
        raise ValueError(f"the global pool gives shape {tuple(out.shape)}, expected (N, C)")
    return out.shape[1]
