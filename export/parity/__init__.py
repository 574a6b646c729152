"""The parity check: the exported model against the function's float64 value, within what float arithmetic
allows an honest evaluation (``bounds``: both tiers of every value's tolerance), on probes that cover the
whole float range at every kind of input position within a budget of elements (``probes``); a failure
located by its node (``localize``); the ops it covers (``coverage``); its error (``errors``).

Names load on first use, so `import export.parity.probes` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from export.parity.check import (
        ParityError,
        ParityReport,
        ProbeSet,
        check_parity,
        judge,
        parity_run,
        reference_probes,
    )

__all__ = ["ParityError", "ParityReport", "ProbeSet", "check_parity", "judge", "parity_run", "reference_probes"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("export.parity.check"), name)
    raise AttributeError(f"module 'export.parity' has no attribute {name!r}")
