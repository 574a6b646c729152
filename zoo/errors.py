"""Exception types: every error zoo raises on purpose is a ZooError a caller can catch."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ZooError(Exception):
    """Base class of every error zoo raises on purpose; its message is one actionable line."""


# Where the names of each registry kind are listed; any other kind of name lists its choices in the message.
LISTED = {"activation": "zoo list activations", "layer": "zoo list layers", "conv": "zoo list convs",
          "norm": "zoo list norms", "pool": "zoo list pools", "model": "zoo list models",
          "dataset": "zoo list datasets", "plugin": "zoo list"}


class UnknownNameError(ZooError, KeyError):
    """A registry has no entry under that name; the message suggests the closest names.

    It points to `zoo list KIND` (which shows names and aliases) for a registry kind, and lists
    the `known` names for any other kind (optimizers, recipes).
    """

    def __init__(self, kind: str, name: str, known: Iterable[str]) -> None:
        self.kind, self.name = kind, name
        self.known = sorted(set(known))  # one name may be known to several registries (softplus)
        self.suggestions = difflib.get_close_matches(str(name), self.known, n=3, cutoff=0.5)
        super().__init__(kind, name)

    def __str__(self) -> str:
        hint = f"; did you mean {', '.join(map(repr, self.suggestions))}?" if self.suggestions else ""
        where = f"see `{LISTED[self.kind]}`" if self.kind in LISTED else f"choose from {', '.join(self.known)}"
        return f"unknown {self.kind} {self.name!r}{hint} ({where})"


class DuplicateNameError(ZooError):
    """Two different plugins claim one name; neither is chosen silently."""


class PluginLoadError(ZooError):
    """A plugin could not be imported or built; names its distribution and entry point."""


class BadArgumentsError(ZooError, TypeError):
    """A plugin was called with arguments it does not accept, or with invalid values."""


class TrainingError(ZooError):
    """Training cannot go on: the model and the dataset do not fit together, or settings are unusable."""


class DivergenceError(TrainingError):
    """The loss became NaN or infinite; `step` is the first optimiser step (1-based) where it did."""

    def __init__(self, message: str, *, step: int) -> None:
        super().__init__(message)
        self.step = step


class DeviceError(ZooError):
    """The device asked for does not exist or is not available (e.g. cuda without a GPU)."""


class OutputError(ZooError):
    """An output path cannot be written: a parent is a file or read-only, or its suffix names another format."""


class CheckpointError(ZooError):
    """A checkpoint cannot be written (model without zoo_config) or read (missing, truncated, foreign)."""


class DistributedError(ZooError):
    """Data-parallel training cannot go on: the rendezvous is unreachable, or another rank died or stopped."""
