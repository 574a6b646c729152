"""Built-in models, assembled from registry parts.

zoo resolves the registry names given for `activation`, `output_activation` and `layer` and
passes these builders factories: `activation()` makes an activation module, `layer(i, o, bias)`
a linear layer. The string defaults are registry names.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import nn

Factory = Callable[..., nn.Module]


def linear_regression(in_features: int = 1, out_features: int = 1, layer: Factory | str = "linear") -> nn.Module:
    """A single linear layer, y = x W^T + b, trained with mean squared error."""
    model = layer(in_features, out_features, True)
    model.zoo_meta = {"task": "regression", "dataset": "linear"}
    return model


def logistic_regression(in_features: int = 2, layer: Factory | str = "linear") -> nn.Module:
    """A single linear layer giving one logit per row; sigmoid(logit) is P(class 1)."""
    model = layer(in_features, 1, True)
    model.zoo_meta = {"task": "binary_classification", "classes": 2, "dataset": "blobs"}
    return model


def mlp(
    in_features: int = 1,
    out_features: int = 1,
    hidden: Sequence[int] = (64, 64),
    activation: Factory | str = "relu",
    layer: Factory | str = "linear",
    output_activation: Factory | str | None = None,
) -> nn.Sequential:
    """Multi-layer perceptron: linear layers with an activation after each hidden one."""
    check_widths("hidden", hidden, "[64, 64]")
    parts: list[tuple[str, nn.Module]] = []
    width = in_features
    for i, size in enumerate(hidden):
        parts.append((f"fc{i}", layer(width, size, True)))
        act = activation()
        parts.append((f"act{i}", act))
        width = width_after(act, size)
    parts.append(("out", layer(width, out_features, True)))
    if output_activation is not None:
        parts.append(("out_act", output_activation()))
    model = nn.Sequential(OrderedDict(parts))
    model.zoo_meta = {"dataset": "nonlinear"}  # any task whose targets fit its outputs
    return model


def width_after(act: nn.Module, width: int) -> int:
    """Features an activation emits for `width` inputs (GLU halves them)."""
    training = act.training
    try:
        with torch.no_grad():
            return act.eval()(torch.zeros(2, width)).shape[-1]
    except RuntimeError as exc:
        raise ValueError(f"{type(act).__name__} cannot follow a layer of width {width}: {exc}") from exc
    finally:
        act.train(training)


def is_size(value: object) -> bool:
    """Whether ``value`` is a positive integer (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_widths(label: str, widths: object, example: str) -> None:
    """Refuse anything but a list of positive widths."""
    if not isinstance(widths, Sequence) or isinstance(widths, str) or not all(map(is_size, widths)):
        raise ValueError(f"{label} must be a list of positive layer widths, e.g. {example}, got {widths!r}")
