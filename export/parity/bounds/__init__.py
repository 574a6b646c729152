"""The parity reference: the model in float64 with both tiers of each value's tolerance (``core``), from
one rule per family of ATen ops, each in its own module: ``views``, ``arithmetic``, ``linear`` (dot
products), ``elementwise``, ``reductions``. A family module registers its rules with ``core.rule``.
"""

from export.parity.bounds import (  # noqa: F401 - register rules
    arithmetic,
    attention,
    batchnorm,
    conv,
    elementwise,
    linear,
    norm,
    pool,
    reductions,
    views,
)
from export.parity.bounds.core import (
    RULES,
    UNIT,
    Bounded,
    BoundedRun,
    BoundError,
    ModuleValue,
    Partial,
    bounded_run,
    gamma,
    partial_squares,
    rule,
)

__all__ = [
    "RULES",
    "UNIT",
    "BoundError",
    "Bounded",
    "BoundedRun",
    "ModuleValue",
    "Partial",
    "bounded_run",
    "gamma",
    "partial_squares",
    "rule",
]
