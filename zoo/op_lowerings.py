"""Which `zoo.onnx` lowerings a plugin exports with: the aten ops its forward calls, matched by name."""

from __future__ import annotations

from typing import Any

from zoo.models import example_shape, input_shape_of
from zoo.registry import Registry, Source

EXAMPLE_FEATURES = 4


def aten_ops(module: Any, *, in_features: int = EXAMPLE_FEATURES) -> set[str]:
    """The aten ops (``gelu``, ``special_i0e``) of ``module``'s forward on a small input, from torch.export."""
    import torch

    shape = input_shape_of(module) or [in_features]
    example = torch.randn(example_shape(shape), generator=torch.Generator().manual_seed(0))
    program = torch.export.export(module.eval(), (example,))
    return {
        node.target.name().split("::")[-1].split(".")[0]
        for node in program.graph.nodes
        if node.op == "call_function" and hasattr(node.target, "name")
    }


def lowerings_used(module: Any, lowerings: Registry) -> list[Source]:
    """The registered lowerings (their entry points) for the ops ``module`` calls; [] if it cannot be traced."""
    try:
        used = aten_ops(module)
    except Exception:  # noqa: BLE001 - a forward torch.export cannot trace says nothing about lowerings
        return []
    return [sources[0] for name, sources in lowerings.sources() if name in used]
