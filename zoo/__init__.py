"""zoo: small PyTorch models built from named plugins, trained, and exported to ONNX.

Listing plugins reads package metadata only; torch is imported when something is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zoo.errors import (
    BadArgumentsError,
    CheckpointError,
    DeviceError,
    DivergenceError,
    DuplicateNameError,
    OutputError,
    PluginLoadError,
    TrainingError,
    UnknownNameError,
    ZooError,
)
from zoo.models import model_builder, seeded
from zoo.registry import PluginInfo, Registry, exact, normalize
from zoo.text import article as _article

if TYPE_CHECKING:
    from torch import nn

__version__ = "0.1.0"
DISTRIBUTION = "zoo-onnx"  # what pip calls it (`zoo` on PyPI is another project); imported as zoo

__all__ = [
    "BadArgumentsError",
    "CheckpointError",
    "DeviceError",
    "DivergenceError",
    "DuplicateNameError",
    "OutputError",
    "PluginInfo",
    "PluginLoadError",
    "Registry",
    "TrainResult",
    "TrainingError",
    "UnknownNameError",
    "ZooError",
    "activations",
    "cache_clear",
    "convs",
    "create_model",
    "datasets",
    "layers",
    "list_models",
    "load_checkpoint",
    "lowerings",
    "models",
    "normalize",
    "norms",
    "pools",
    "registries",
    "save_checkpoint",
    "train",
]


def _module_check(built: Any) -> str | None:
    from torch import nn

    return None if isinstance(built, nn.Module) else f"{_article(type(built).__name__)}, not a torch.nn.Module"


def _dataset_check(built: Any) -> str | None:
    missing = [a for a in DATASET_ATTRIBUTES if not hasattr(built, a)]
    return (f"{_article(type(built).__name__)} without {', '.join(missing)} ({DATASET_CONTRACT})"
            if missing else None)


DATASET_ATTRIBUTES = ("x", "y", "task", "name", "params")
DATASET_CONTRACT = "a dataset has x, y, task, name and params: see 'Writing a plugin' in zoo's README"

activations = Registry(
    "activations",
    group="zoo.activations",
    aliases={
        "swish": "silu",
        "gelu_tanh": ("gelu", {"approximate": "tanh"}),
        "lrelu": "leaky_relu",
        "logistic": "sigmoid",
    },
    check=_module_check,
)
layers = Registry(
    "layers",
    group="zoo.layers",
    aliases={"dense": "linear", "fc": "linear", "matmul_linear": "param_linear"},
    check=_module_check,
)
convs = Registry(
    "convs", group="zoo.convs", aliases={"conv2d": "conv", "unfold_conv": "im2col_conv"}, check=_module_check
)
norms = Registry(
    "norms", group="zoo.norms", aliases={"bn": "batch_norm", "gn": "group_norm", "ln": "layer_norm"},
    check=_module_check,
)
pools = Registry(
    "pools", group="zoo.pools", aliases={"gap": "global_avg_pool", "gmp": "global_max_pool"}, check=_module_check
)
datasets = Registry("datasets", group="zoo.datasets", aliases={"regression": "linear"}, check=_dataset_check)
models = Registry(
    "models",
    group="zoo.models",
    aliases={"linreg": "linear_regression", "logreg": "logistic_regression"},
    check=_module_check,
    build=model_builder({r.kind: r for r in (activations, layers, convs, norms, pools)}),
)
# ONNX lowerings of torch ops (export/lowerings/): keyed by the aten op they lower.
lowerings = Registry("lowerings", group="zoo.onnx", key=exact)
registries = {r.kind: r for r in (activations, layers, convs, norms, pools, models, datasets, lowerings)}


def create_model(name: str, *, seed: int | None = None, **kwargs: Any) -> nn.Module:
    """Build a registered model; `seed` fixes its initial weights and is recorded in `model.zoo_config`.

    `zoo.create_model(**model.zoo_config)` rebuilds the same model, with the same initial weights
    when a seed was given. Raises UnknownNameError or BadArgumentsError for bad names or arguments.
    """
    with seeded(seed):
        model = models.create(name, **kwargs)
    if seed is not None:
        model.zoo_config = {**model.zoo_config, "seed": seed}
    return model


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    return models.names()


def cache_clear() -> None:
    """Forget scanned entry points and loaded plugins in every registry."""
    for registry in registries.values():
        registry.cache_clear()


_LAZY = {
    "train": "zoo.training",
    "TrainResult": "zoo.training",
    "load_checkpoint": "zoo.checkpoint",
    "save_checkpoint": "zoo.checkpoint",
}


def __getattr__(name: str) -> Any:
    # Training and checkpoints import torch; keep `import zoo` light for listing.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")
