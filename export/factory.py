"""A model a user brings, named as ``package.module:factory``: imported and built for `zoo export`."""

from __future__ import annotations

import importlib
import os
import re
import sys
from typing import Any

import torch

from export.onnx_export import ExportError

FACTORY = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def is_factory(source: str) -> bool:
    """Whether ``source`` names a factory (``package.module:function``) rather than a model name or a file."""
    return bool(FACTORY.fullmatch(source)) and not os.path.exists(source)


def build(spec: str, kwargs: dict[str, Any], *, seed: int = 0) -> torch.nn.Module:
    """Import ``package.module`` (from the working directory too, as ``python -m`` would), call its ``function``
    with ``kwargs`` under ``torch.manual_seed(seed)`` (the same weights each time) and return the nn.Module
    it builds; ExportError in one line otherwise."""
    module_name, _, attribute = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as error:  # whatever the import raises, the user reads one line
        raise ExportError(f"cannot import {module_name!r} for {spec}: {_first_line(error)}") from error
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ExportError(f"{module_name!r} has no {attribute!r}: check the name after ':' in {spec}")
        target = getattr(target, part)
    if not callable(target):
        raise ExportError(f"{spec} is a {type(target).__name__}, not a function or class that builds a model")
    try:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = target(**kwargs)
    except Exception as error:  # a factory may raise anything; the user reads one line
        called = ", ".join(f"{key}={value!r}" for key, value in kwargs.items())
        raise ExportError(f"{spec}({called}) raised {_first_line(error)}") from error
    if not isinstance(model, torch.nn.Module):
        raise ExportError(f"{spec} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__
