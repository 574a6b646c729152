"""The ONNX lowering of torch.special.i0e, registered under `zoo.onnx` in this package's setup.cfg.

ONNX has no Bessel function, so the formula is two Chebyshev series evaluated with Clenshaw's
recurrence, as Cephes does: one of |x| on [0, 8], one of 8 / |x| beyond, times |x|^-1/2. The
coefficients are interpolated here from numpy's float64 ``i0`` (and the asymptotic series far
out), at import, so no table is copied from anywhere. In float32 it is within 4 ulps.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
from numpy.polynomial import chebyshev

from export.lowerings import Ops, lowering

KNEE = 8.0  # where the series of |x| hands over to the series of 8 / |x|
DEGREE = 20


def _i0e(a: np.ndarray) -> np.ndarray:
    """exp(-a) I0(a) in float64 for a >= 0: numpy's i0 up to 700, the asymptotic series beyond."""
    a = np.asarray(a, dtype=np.float64)
    near = np.minimum(a, 700.0)
    far = np.maximum(a, 700.0)
    term, total = np.ones_like(far), np.ones_like(far)
    for k in range(1, 12):
        term = term * (2 * k - 1) ** 2 / (8 * k * far)
        total = total + term
    return np.where(a <= 700.0, np.i0(near) * np.exp(-near), total / np.sqrt(2 * math.pi * far))


@functools.cache
def coefficients() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Chebyshev coefficients of i0e(a) on [0, KNEE] and of sqrt(a) i0e(a) in 2 KNEE / a - 1 beyond."""
    near = chebyshev.chebinterpolate(lambda t: _i0e((t + 1) * KNEE / 2), DEGREE)
    far = chebyshev.chebinterpolate(lambda s: np.sqrt(2 * KNEE / (s + 1)) * _i0e(2 * KNEE / (s + 1)), DEGREE)
    return tuple(map(float, near)), tuple(map(float, far))


def _clenshaw(ops: Ops, series: tuple[float, ...], t: Any) -> Any:
    """sum c_k T_k(t) by Clenshaw's recurrence: b_k = c_k + 2t b_(k+1) - b_(k+2)."""
    two_t = ops("Add", t, t)
    b1, b2 = ops.const(series[-1]), ops.const(0.0)
    for c in series[-2:0:-1]:
        b1, b2 = ops("Sub", ops("Add", ops.const(c), ops("Mul", two_t, b1)), b2), b1
    return ops("Sub", ops("Add", ops.const(series[0]), ops("Mul", t, b1)), b2)


@lowering(
    "special_i0e",
    upstream="neither exporter lowers aten::special_i0e (dynamo decomposes it to prims.bessel_i0e, then stops)",
)
def special_i0e(ops: Ops, x: Any) -> Any:
    """Two Chebyshev series (|x| <= 8, and 8 / |x| beyond) by Clenshaw's recurrence; 0 at +-inf, NaN stays NaN."""
    near, far = coefficients()
    a = ops("Abs", x)
    within = ops("LessOrEqual", a, ops.const(KNEE))
    inside = _clenshaw(ops, near, ops("Sub", ops("Mul", a, ops.const(2 / KNEE)), ops.const(1.0)))
    # The far series sees only |x| > KNEE (2 KNEE / a - 1 in [-1, 1)); a NaN goes through it unchanged.
    beyond = ops("Where", within, ops.const(KNEE), a)
    scaled = _clenshaw(ops, far, ops("Sub", ops("Div", ops.const(2 * KNEE), beyond), ops.const(1.0)))
    return ops("Where", within, inside, ops("Div", scaled, ops("Sqrt", beyond)))
