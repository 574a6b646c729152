"""Lowerings: ONNX formulas for torch ops, registered through the `zoo.onnx` entry-point group.

A lowering is one formula, written once against a tiny op builder (``Ops``) and emitted by both
exporters. A distribution declares it in its setup.cfg, under the name of the aten op it lowers::

    [options.entry_points]
    zoo.onnx =
        special_i0e = my_package.lowering:i0e

where ``i0e`` is a function decorated with ``@lowering("special_i0e")``. The built-in lowerings
(``formulas``) are registered the same way, by zoo's own setup.cfg. ``installed()`` loads
them all; a broken one, or two claiming one op, is reported and left out, never fatal to others.

Beside the contract: ``formulas`` (the built-in lowerings), ``adapters`` (torchscript symbolics and
dynamo translations from one formula), ``passes`` (graph passes: float16 rounding, float64 compute,
NaN kept by max pooling) and ``fix_table`` (FIXES.md, the table of them).
"""

from export.lowerings.contract import (
    Installed,
    Lowering,
    LoweringError,
    Ops,
    active,
    disabled,
    enabled,
    installed,
    lowering,
)

__all__ = ["Installed", "Lowering", "LoweringError", "Ops", "active", "disabled", "enabled", "installed", "lowering"]
