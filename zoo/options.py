"""What a command needs to say what to train, and to print JSON: shared by `zoo train`, `zoo export`, `zoo run`.

`model_training_options` adds the options (model parts, dataset, recipe and its overrides) to any
click command, a plugin's included; `train_from_options` is the library function that trains from
their values. Importing this module loads no torch.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

import zoo
from zoo.errors import BadArgumentsError, ZooError
from zoo.models import parse_part

if TYPE_CHECKING:
    from torch import nn

    from zoo.training import TrainResult

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


class PartSpec(click.ParamType):
    """`name` or `name:key=value,...` -> the name, or {"name": name, key: value}; values read as JSON scalars."""

    name = "name[:key=value,...]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            name, kwargs = parse_part(value)
        except ZooError as exc:
            self.fail(str(exc), param, ctx)
        return {"name": name, **kwargs} if kwargs else name


class Widths(click.ParamType):
    """`64,64` -> [64, 64]: hidden layer widths (an empty string means none)."""

    name = "N,N,..."

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        if not value.strip():
            return []
        try:
            widths = [int(part) for part in value.split(",")]
        except ValueError:
            widths = []
        if not widths or any(width < 1 for width in widths):
            self.fail(f"{value!r} is not a comma-separated list of positive integers, e.g. 64,64", param, ctx)
        return widths


class DeviceSpec(click.ParamType):
    """auto, cpu, cuda or cuda:N; whether that device exists is checked when training starts."""

    name = "auto|cpu|cuda|cuda:N"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        text = value.strip().lower()
        kind, _, index = text.partition(":")
        if text in ("auto", "cpu", "cuda") or (kind == "cuda" and index.isdigit()):
            return text
        self.fail(f"{value!r} is not a device: use auto, cpu, cuda or cuda:N (the CPU takes no index)", param, ctx)


def model_training_options(command: Any) -> Any:
    """Add the options of `train_from_options` (model parts, dataset, recipe and its overrides) to a command."""
    options = [
        click.option("--layer", type=PartSpec(), help="Linear layer plugin: linear, einsum_linear, param_linear..."),
        click.option("--activation", type=PartSpec(),
                     help="Activation of an mlp: a name or name:key=value,... e.g. softplus:beta=2,threshold=5."),
        click.option("--hidden", type=Widths(), help="Hidden layer widths of an mlp, e.g. 64,64."),
        click.option("--dataset", type=PartSpec(),
                     help="Dataset plugin, optionally name:key=value,..., e.g. shapes:n=2000 [default: the model's, "
                          "as `zoo show MODEL` names it: linear for linear_regression, nonlinear for mlp...]"),
        click.option("--recipe",
                     help="Training recipe: default (full-batch L-BFGS, reaches least squares), notes (the course "
                          "notes' Adam lr 0.1, weight decay 0.1, batch 100, 5 epochs) or classify (AdamW, batch 64, "
                          "10 epochs, cosine schedule) [default: classify for classification datasets, else default]."),
        click.option("--epochs", type=int, help="Passes over the data [default: the recipe's]."),
        click.option("--batch-size", type=int, help="Rows per optimiser step [default: the recipe's]."),
        click.option("--lr", type=float, help="Learning rate [default: the recipe's, or the optimizer's own]."),
        click.option("--weight-decay", type=float, help="L2 weight decay [default: the recipe's]."),
        click.option("--optimizer", help="adam, adamw, sgd (momentum 0.9) or lbfgs [default: the recipe's]."),
        click.option("--device", type=DeviceSpec(), default="auto", show_default=True,
                     help="auto (CUDA when available), cpu, cuda, cuda:N."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Seeds the dataset, the initial weights and the batch order."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def train_from_options(
    model_name: str,
    *,
    layer: str | dict[str, Any] | None = None,
    activation: str | dict[str, Any] | None = None,
    hidden: Sequence[int] | None = None,
    dataset: str | dict[str, Any] | None = None,
    device: str = "auto",
    seed: int = 0,
    **training: Any,
) -> tuple[nn.Module, TrainResult]:
    """Build MODEL and its dataset on the device from `model_training_options` values, and train it.

    The parts (layer, activation, hidden) build the model; the rest (recipe, epochs, batch_size, lr,
    weight_decay, optimizer, progress, threads) are `zoo.train`'s keywords, passed on as given.
    """
    from zoo.training import resolve_device  # torch loads here, not for `zoo --help`

    target = resolve_device(device)
    canonical, _ = zoo.models.resolve(model_name)
    data = _training_data(canonical, dataset, seed=seed, device=str(target))
    parts = {"layer": layer, "activation": activation, "hidden": hidden}
    kwargs = {key: value for key, value in parts.items() if value is not None}
    accepted = inspect.signature(zoo.models.get(canonical)).parameters
    kwargs.update({key: size for key, size in _sizes(data).items() if key in accepted})
    model = zoo.create_model(model_name, seed=seed, **kwargs)
    result = zoo.train(model, data, device=target, seed=seed, **training)
    return model, result


def _sizes(data: Any) -> dict[str, int]:
    """Builder arguments the dataset fixes: features or channels in, outputs (one per class) out."""
    sizes = {}
    if data.x.is_floating_point():
        sizes["in_features" if data.x.dim() == 2 else "in_channels"] = data.x.shape[1]
    if data.y.is_floating_point():
        sizes["out_features"] = data.y.shape[1]
    elif isinstance(data.params.get("classes"), int):
        sizes["out_features"] = sizes["classes"] = data.params["classes"]
    return sizes


def _training_data(model: str, spec: str | dict[str, Any] | None, *, seed: int, device: str) -> Any:
    spec = spec or zoo.create_model(model, seed=0).zoo_meta["dataset"]  # the model's own; seeded: RNG untouched
    if spec is None:
        raise BadArgumentsError(
            f"model {model!r} has no default dataset: pass --dataset ({', '.join(zoo.datasets.names())})"
        )
    name, kwargs = (spec, {}) if isinstance(spec, str) else (spec["name"], {k: v for k, v in spec.items() if k != "name"})
    return zoo.datasets.create(name, seed=seed, device=device, **kwargs)


def emit_json(data: Any) -> None:
    """Print a JSON document on stdout (for --json)."""
    click.echo(json.dumps(data, indent=2, sort_keys=False))
