"""Models built from registry names, each carrying the JSON config that rebuilds it."""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
from collections.abc import Callable, Iterator
from typing import Any

from zoo.errors import BadArgumentsError
from zoo.registry import Registry
from zoo.text import article

# Builder parameters whose values are registry names, resolved to factories before the call.
NAMED_PARTS = {"activation": "activations", "output_activation": "activations", "layer": "layers",
               "conv": "convs", "norm": "norms", "pool": "pools", "global_pool": "pools"}


def parse_part(text: str) -> tuple[str, dict[str, Any]]:
    """Split `name` or `name:key=value,...` into (name, kwargs); values read as JSON scalars, else as words."""
    name, _, options = text.partition(":")
    if not name.strip():
        raise BadArgumentsError(f"{text!r} has no name before ':'")
    kwargs: dict[str, Any] = {}
    for item in filter(None, options.split(",")):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise BadArgumentsError(f"{text!r}: write name:key=value[,key=value]")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw.strip()  # a bare word such as approximate=tanh is a string
        if isinstance(value, (list, dict)):
            raise BadArgumentsError(f"{text!r}: values must be numbers, true/false/null or words")
        kwargs[key.strip()] = value
    return name.strip(), kwargs


def part_spec(registry: Registry, spec: Any) -> str | dict[str, Any]:
    """Canonical form of a part given as a name or {"name": ..., **kwargs}: aliases resolved."""
    if isinstance(spec, str):
        name, kwargs = registry.resolve(spec)
    elif isinstance(spec, dict) and isinstance(spec.get("name"), str):
        name, kwargs = registry.resolve(spec["name"])
        kwargs.update({k: v for k, v in spec.items() if k != "name"})
    else:
        raise BadArgumentsError(
            f"{article(registry.singular)} is given as a name or a dict with a 'name' key, got {spec!r}"
        )
    return {"name": name, **kwargs} if kwargs else name


def part_factory(registry: Registry, spec: str | dict[str, Any]) -> Callable[..., Any]:
    """A callable building the part `spec` names, with its keyword arguments bound."""
    if isinstance(spec, str):
        return functools.partial(registry.create, spec)
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    return lambda *args: registry.create(spec["name"], *args, **kwargs)


def model_builder(registries: dict[str, Registry]) -> Callable[[str, Callable[..., Any], tuple, dict], Any]:
    """The models registry's build step: resolve part names, call the builder, attach the config."""

    def build(name: str, builder: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        if args:
            raise BadArgumentsError(f"model {name!r} takes keyword arguments only")
        bound = inspect.signature(builder).bind(**kwargs)
        bound.apply_defaults()
        config: dict[str, Any] = {"name": name}
        call: dict[str, Any] = {}
        for param, value in bound.arguments.items():
            if param in NAMED_PARTS and value is not None:
                value = part_spec(registries[NAMED_PARTS[param]], value)
                call[param] = part_factory(registries[NAMED_PARTS[param]], value)
            else:
                call[param] = value
            config[param] = list(value) if isinstance(value, tuple) else value
        _check_json(name, config)
        model = builder(**call)
        model.zoo_config = config
        model.zoo_meta = model_meta(name, model)
        return model

    return build


# What a model says about itself (``model.zoo_meta``), read by training, export and the CLI instead of
# special cases: the task it is for, the shape of one sample (batch axis excluded; None marks an axis
# of any length, such as a sequence), the number of classes, and the dataset it is trained on by default.
META_KEYS = {"task": (str, type(None)), "input_shape": (list,), "classes": (int, type(None)),
             "dataset": (str, type(None))}


# The length an example input gives an axis of any length (None in input_shape): at least 2 (the dynamo
# exporter specialises a size of 1 to a constant) and unlike the example batch of 2, so no two axes share a size.
EXAMPLE_LENGTH = 3


def input_shape_of(model: Any) -> list[int | None] | None:
    """The shape of one input of ``model``: ``zoo_meta['input_shape']``, else ``[zoo_config['in_features']]``
    (a module built outside the registry may say only that), else None."""
    shape = (getattr(model, "zoo_meta", None) or {}).get("input_shape")
    if shape:
        return list(shape)
    features = (getattr(model, "zoo_config", None) or {}).get("in_features")
    return [features] if isinstance(features, int) else None


def example_shape(input_shape: list[int | None], batch: int = 2, length: int = EXAMPLE_LENGTH) -> list[int]:
    """The shape of an example batch: ``batch`` samples of ``input_shape``, any-length (None) axes ``length`` long."""
    return [batch, *(length if size is None else size for size in input_shape)]


def model_meta(name: str, model: Any) -> dict[str, Any]:
    """The builder's ``model.zoo_meta`` checked and completed (absent keys are None; the input shape
    defaults to ``[in_features]``); BadArgumentsError names a malformed entry."""
    given = getattr(model, "zoo_meta", None)
    given = {} if given is None else given
    if not isinstance(given, dict) or set(given) - set(META_KEYS):
        raise BadArgumentsError(f"model {name!r} sets zoo_meta {given!r}; its keys are {sorted(META_KEYS)}")
    meta = {key: given.get(key) for key in META_KEYS}
    if meta["input_shape"] is None:
        features = model.zoo_config.get("in_features")
        meta["input_shape"] = [features] if isinstance(features, int) else []
    meta["input_shape"] = list(meta["input_shape"])
    for key, types in META_KEYS.items():
        if not isinstance(meta[key], types) or isinstance(meta[key], bool):
            raise BadArgumentsError(f"model {name!r}: zoo_meta[{key!r}] is {meta[key]!r}")
    if not all(d is None or (isinstance(d, int) and not isinstance(d, bool) and d > 0) for d in meta["input_shape"]):
        raise BadArgumentsError(f"model {name!r}: zoo_meta['input_shape'] must hold positive sizes or None")
    _check_json(name, meta)
    return meta


def listed_input_shape(defaults: dict[str, Any]) -> list[int | None] | None:
    """The input shape a builder gives with its defaults, for `zoo list` without building: its ``input_shape``
    default, else ``[in_features]``, the rule model_meta follows (a builder states its input shape so)."""
    shape = defaults.get("input_shape")
    if isinstance(shape, (list, tuple)):
        return list(shape)
    features = defaults.get("in_features")
    return [features] if isinstance(features, int) else None


def _check_json(name: str, config: dict[str, Any]) -> None:
    try:
        json.dumps(config, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise BadArgumentsError(f"model {name!r}: arguments must be JSON values ({exc})") from exc


@contextlib.contextmanager
def seeded(seed: int | None, device: Any = "cpu") -> Iterator[None]:
    """Run a block with torch's global RNGs seeded (and CUDA's, for a CUDA device), leaving the
    caller's RNG state untouched."""
    if seed is None:
        yield
        return
    import torch

    device = torch.device(device)
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield
