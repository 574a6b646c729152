"""The `zoo.onnx` contract: the op builder a formula writes against, the decorator, the installed set."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import onnx

import zoo
from zoo.errors import ZooError

_ENABLED = contextvars.ContextVar("zoo_lowerings_enabled", default=True)


class Ops:
    """The few things a formula needs from an exporter: nodes, typed constants, casts, halves.

    ``dtype`` is the float type the formula computes in; constants are made in it.
    """

    dtype = "float32"

    def __call__(self, op_type: str, *inputs: Any, **attributes: Any) -> Any:
        """Add one ONNX node and return its output."""
        raise NotImplementedError

    def const(self, value: float) -> Any:
        """A scalar constant in the compute dtype."""
        raise NotImplementedError

    def dtype_of(self, value: Any) -> str:
        """The numpy name of a formula input's element type."""
        raise NotImplementedError

    def halves(self, value: Any, axis: int) -> tuple[Any, Any]:
        """Split ``value`` into two equal halves along ``axis``."""
        raise NotImplementedError

    def reduce(self, op_type: str, value: Any, axis: int) -> Any:
        """ReduceMax / ReduceSum over one axis, keeping it (axes moved from attribute to input at 13 / 18)."""
        raise NotImplementedError

    def cast(self, value: Any, dtype: str) -> Any:
        """Cast to a numpy-named float dtype."""
        return self("Cast", value, to=onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))


@dataclasses.dataclass(frozen=True)
class Lowering:
    """One aten op's ONNX formula, what upstream emits instead, and the test that shows the difference.

    Called as ``lowering(ops, x, *torch's arguments)``, it returns torch's function of x.
    """

    op: str
    formula: Callable[..., Any]
    upstream: str = "no ONNX lowering"
    test: str = ""
    torchscript_args: tuple[str, ...] = ("v",)  # torch.onnx.symbolic_helper.parse_args codes
    torchscript: bool = True
    dynamo: bool = True
    dynamo_ops: tuple[str, ...] = ()  # aten overloads dynamo translates, when not just ``op.default``

    def __post_init__(self) -> None:
        # Registries and `zoo show` read the formula's docstring and signature from the lowering.
        object.__setattr__(self, "__doc__", self.formula.__doc__)
        object.__setattr__(self, "__signature__", inspect.signature(self.formula))

    def __call__(self, ops: Ops, x: Any, *args: Any, **kwargs: Any) -> Any:
        return self.formula(ops, x, *args, **kwargs)

    @property
    def overloads(self) -> tuple[str, ...]:
        """The aten overloads (``name.overload``) the dynamo translation table maps to the formula."""
        return self.dynamo_ops or (f"{self.op}.default",)

    @property
    def ours(self) -> str:
        """What we emit: the formula's docstring."""
        return (self.formula.__doc__ or "").strip()

    @property
    def exporters(self) -> str:
        """Which exporters use it: both, torchscript or dynamo."""
        return "both" if self.torchscript and self.dynamo else ("torchscript" if self.torchscript else "dynamo")


def lowering(op: str, **fields: Any) -> Callable[[Callable[..., Any]], Lowering]:
    """Decorator: make ``formula(ops, x, *args)`` the ONNX lowering of ``aten::op`` (fields as in Lowering)."""

    def decorate(formula: Callable[..., Any]) -> Lowering:
        return Lowering(op, formula, **fields)

    return decorate


class LoweringError(ZooError):
    """An installed lowering that cannot be used: broken, mis-declared, or claiming another's op."""


@dataclasses.dataclass(frozen=True)
class Installed:
    """Every usable lowering, and one line for each one left out."""

    lowerings: tuple[Lowering, ...]
    problems: dict[str, str]


def installed() -> Installed:
    """Load every `zoo.onnx` entry point (once; the registry caches) and keep the usable ones."""
    found: list[Lowering] = []
    problems: dict[str, str] = {}
    for name, sources in zoo.lowerings.sources():
        try:
            item = zoo.lowerings.get(name)
            _check(name, item, sources[0].describe())
        except ZooError as error:
            problems[name] = str(error)
            continue
        found.append(item)
    claims: dict[str, list[Lowering]] = {}
    for item in found:
        for overload in item.overloads:
            claims.setdefault(overload, []).append(item)
    clashing = {id(item) for items in claims.values() if len(items) > 1 for item in items}
    for item in found:
        if id(item) in clashing:
            problems[item.op] = f"lowering {item.op!r} claims an aten overload another lowering claims too"
    return Installed(tuple(item for item in found if id(item) not in clashing), problems)


def _check(name: str, item: Any, source: str) -> None:
    if not isinstance(item, Lowering):
        raise LoweringError(f"lowering plugin {source} is {type(item).__name__}, not an export.lowerings.Lowering")
    if item.op != name:
        raise LoweringError(f"lowering plugin {source} lowers aten::{item.op}; name its entry point {item.op!r}")


def active() -> tuple[Lowering, ...]:
    """The lowerings an export applies: every installed one, or none inside ``disabled()``."""
    return installed().lowerings if _ENABLED.get() else ()


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Export with upstream's lowering only (for regression tests and the matrix baseline)."""
    token = _ENABLED.set(False)
    try:
        yield
    finally:
        _ENABLED.reset(token)


def enabled() -> bool:
    """Whether to_onnx applies the lowerings (True unless inside ``disabled()``)."""
    return _ENABLED.get()
