"""The built-in lowerings: ONNX formulas that compute torch's function where upstream's does not.

Each is registered in zoo's setup.cfg under the `zoo.onnx` entry-point group, exactly as a
third-party lowering is (see export/lowerings.py), and emitted by both exporters. A formula takes
(ops, x, *torch's arguments) and returns torch's function of x in x's dtype; in float16 it runs in
float32 and rounds once, as torch's CPU kernels do. export/lowerings/FIXES.md lists them.
"""

from __future__ import annotations

import math
from typing import Any

from export.lowerings import Ops, lowering


def _log1p(ops: Ops, u: Any) -> Any:
    """log(1 + u) to full precision for small u, from Log alone (Goldberg: log(w) * u / (w - 1))."""
    one = ops.const(1.0)
    w = ops("Add", one, u)
    ratio = ops("Div", ops("Mul", ops("Log", w), u), ops("Sub", w, one))
    return ops("Where", ops("Equal", w, one), u, ratio)


def _expm1(ops: Ops, x: Any) -> Any:
    """exp(x) - 1 to full precision near 0, from Exp and Log alone (Kahan: (u - 1) * x / log(u))."""
    one = ops.const(1.0)
    u = ops("Exp", x)
    um1 = ops("Sub", u, one)
    ratio = ops("Div", ops("Mul", um1, x), ops("Log", u))
    return ops("Where", ops("Equal", u, one), x, ops("Where", ops("Equal", um1, ops.const(-1.0)), um1, ratio))


def _times(ops: Ops, x: Any, factor: Any) -> Any:
    """x * factor, and 0 where the factor vanishes at an infinite x: the limit (GELU, SiLU at -inf), not inf * 0."""
    vanishing = ops("And", ops("Equal", factor, ops.const(0.0)), ops("Not", ops("IsNaN", x)))
    return ops("Where", vanishing, ops.const(0.0), ops("Mul", x, factor))


def _logistic(ops: Ops, x: Any) -> Any:
    """sigmoid(x) from exp(-|x|), which never overflows: exact in both tails, down to subnormals."""
    e = ops("Exp", ops("Neg", ops("Abs", x)))
    one_plus = ops("Add", ops.const(1.0), e)
    return ops("Where", ops("Less", x, ops.const(0.0)), ops("Div", e, one_plus), ops("Reciprocal", one_plus))


def _shifted(ops: Ops, x: Any, dim: int) -> Any:
    """x - max(x) along ``dim``, and 0 where x is the (possibly infinite) max: softmax's limits at +-inf."""
    top = ops.reduce("ReduceMax", x, dim)
    return ops("Where", ops("Equal", x, top), ops.const(0.0), ops("Sub", x, top))


def _softplus(ops: Ops, x: Any) -> Any:
    """log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)): no overflow, no lost tail."""
    tail = _log1p(ops, ops("Exp", ops("Neg", ops("Abs", x))))
    return ops("Add", ops("Max", x, ops.const(0.0)), tail)


@lowering(
    "softplus",
    upstream="ONNX Softplus(beta*x)/beta: no threshold, so x > threshold/beta is "
    "log1p(exp) instead of x (torchscript)",
    test="test_softplus_threshold",
    torchscript_args=("v", "f", "f"),
    dynamo=False,
)
def softplus(ops: Ops, x: Any, beta: float = 1.0, threshold: float = 20.0) -> Any:
    """torch: x where beta*x > threshold, else log1p(exp(beta*x)) / beta."""
    scaled = ops("Mul", x, ops.const(beta))
    smooth = ops("Div", _softplus(ops, scaled), ops.const(beta))
    return ops("Where", ops("Greater", scaled, ops.const(threshold)), x, smooth)


@lowering(
    "log_sigmoid",
    upstream="Log(Sigmoid(x)): sigmoid underflows to 0 below about -88 (-inf, "
    "and onnxruntime's Sigmoid is inexact below -15)",
    test="test_log_sigmoid_underflow",
)
def log_sigmoid(ops: Ops, x: Any) -> Any:
    """-softplus(-x): no underflow of sigmoid to 0 and no log(0) = -inf for very negative x."""
    return ops("Neg", _softplus(ops, ops("Neg", x)))


@lowering(
    "sigmoid",
    upstream="Sigmoid: onnxruntime's float32 kernel is a few ulps off (460% below -15), "
    "which a trained layer after it amplifies beyond tolerance",
    test="test_trained_mlp_parity",
)
def sigmoid(ops: Ops, x: Any) -> Any:
    """exp(-|x|) / (1 + exp(-|x|)) below 0, 1 / (1 + exp(-|x|)) above: accurate in both tails."""
    return _logistic(ops, x)


@lowering(
    "elu",
    upstream="Elu: alpha * (exp(x) - 1) loses the digits torch's expm1 keeps near 0, amplified by "
    "the next layer",
    test="test_trained_mlp_parity",
    torchscript_args=("v", "f", "f", "f"),
)
def elu(ops: Ops, x: Any, alpha: float = 1.0, scale: float = 1.0, input_scale: float = 1.0) -> Any:
    """torch: scale * (x where x > 0, else alpha * expm1(x * input_scale))."""
    negative = ops("Mul", ops.const(alpha), _expm1(ops, ops("Mul", x, ops.const(input_scale))))
    return ops("Mul", ops.const(scale), ops("Where", ops("Greater", x, ops.const(0.0)), x, negative))


@lowering(
    "hardsigmoid",
    upstream="HardSigmoid computes x/6 + 1/2, not torch's clip(x + 3, 0, 6) / 6",
    test="test_trained_mlp_parity",
)
def hardsigmoid(ops: Ops, x: Any) -> Any:
    """torch: clip(x + 3, 0, 6) / 6."""
    return ops(
        "Div", ops("Clip", ops("Add", x, ops.const(3.0)), ops.const(0.0), ops.const(6.0)), ops.const(6.0)
    )


@lowering(
    "silu",
    upstream="x * Sigmoid(x): onnxruntime's Sigmoid has up to 460% relative error below -15, and "
    "-inf * 0 = NaN at -inf (torch's x / (1 + exp(-x)) also loses everything below -88)",
    test="test_silu_negative_tail",
)
def silu(ops: Ops, x: Any) -> Any:
    """x * sigmoid(x) with the accurate sigmoid: no overflow of exp(-x) below -88, and 0 at -inf."""
    return _times(ops, x, _logistic(ops, x))


@lowering(
    "glu",
    upstream="a * Sigmoid(b): the same inexact Sigmoid, scaled by a large a",
    test="test_glu_negative_tail",
    torchscript_args=("v", "i"),
)
def glu(ops: Ops, x: Any, dim: int = -1) -> Any:
    """a * sigmoid(b) for the two halves (a, b) of ``dim``, with the accurate sigmoid."""
    first, second = ops.halves(x, dim)
    return _times(ops, first, _logistic(ops, second))


@lowering(
    "mish",
    upstream="-inf * 0 = NaN at -inf, where the limit is 0; in float16 Softplus, Tanh and Mul each "
    "round to float16",
    test="test_float16_rounds_once_inside_an_op",
)
def mish(ops: Ops, x: Any) -> Any:
    """x * tanh(softplus(x)), rounded once in float16, and 0 at -inf."""
    return _times(ops, x, ops("Tanh", _softplus(ops, x)))


@lowering(
    "softmax",
    upstream="Softmax: x - max is inf - inf = NaN when a row holds +inf (the limit puts all "
    "the weight on the infinite entries)",
    test="test_limits_at_infinity",
    torchscript_args=("v", "i", "none"),
    dynamo_ops=("softmax.int", "_softmax.default"),
)
def softmax(ops: Ops, x: Any, dim: int = -1, dtype: Any = None) -> Any:
    """exp(x - max) / sum exp(x - max), with the limits at +-inf (uniform over the infinite maxima)."""
    e = ops("Exp", _shifted(ops, x, dim))
    return ops("Div", e, ops.reduce("ReduceSum", e, dim))


@lowering(
    "log_softmax",
    upstream="LogSoftmax: NaN for a row holding +inf, like Softmax",
    test="test_limits_at_infinity",
    torchscript_args=("v", "i", "none"),
    dynamo_ops=("log_softmax.int", "_log_softmax.default"),
)
def log_softmax(ops: Ops, x: Any, dim: int = -1, dtype: Any = None) -> Any:
    """(x - max) - log sum exp(x - max), with the limits at +-inf."""
    shifted = _shifted(ops, x, dim)
    return ops("Sub", shifted, ops("Log", ops.reduce("ReduceSum", ops("Exp", shifted), dim)))


@lowering(
    "selu",
    upstream="Selu: scale * alpha * (exp(x) - 1) loses every digit of expm1 near 0 (0 for |x| < 1e-8)",
    test="test_selu_near_zero",
)
def selu(ops: Ops, x: Any) -> Any:
    """torch: scale * (x where x > 0, else alpha * expm1(x)), with the accurate expm1."""
    return elu(ops, x, 1.6732632423543772848170429916717, 1.0507009873554804934193349852946)


@lowering(
    "gelu",
    upstream="torchscript writes the tanh form as 0.5 * (x * (1 + tanh(..))), which overflows to "
    "inf above max/2; both forms give -inf * 0 = NaN at -inf, where the limit is 0; in float16 both "
    "round after every step",
    test="test_gelu_tanh_overflow",
    torchscript_args=("v", "s"),
)
def gelu(ops: Ops, x: Any, approximate: str = "none") -> Any:
    """(x / 2) * (1 + erf(x / sqrt 2)), or the tanh form: halving first cannot overflow, and 0 at -inf."""
    if approximate == "tanh":
        cube = ops("Mul", ops("Mul", x, x), x)
        inner = ops("Add", x, ops("Mul", ops.const(0.044715), cube))
        curve = ops("Tanh", ops("Mul", ops.const(math.sqrt(2.0 / math.pi)), inner))
    else:
        curve = ops("Erf", ops("Mul", x, ops.const(math.sqrt(0.5))))
    return _times(ops, ops("Mul", x, ops.const(0.5)), ops("Add", ops.const(1.0), curve))


@lowering(
    "hardswish",
    upstream="ONNX HardSwish computes x/6 + 1/2, losing the exact x + 3 near the "
    "knee at -3 (errors grow through the next layer); -inf * 0 = NaN at -inf",
    test="test_hardswish_knee",
)
def hardswish(ops: Ops, x: Any) -> Any:
    """x * (clip(x + 3, 0, 6) / 6): the knee at -3 without torch's overflow above max/6, and 0 at -inf."""
    ramp = ops("Clip", ops("Add", x, ops.const(3.0)), ops.const(0.0), ops.const(6.0))
    return _times(ops, x, ops("Div", ramp, ops.const(6.0)))


@lowering(
    "hardshrink",
    upstream="Where(x > l or x < -l, x, 0): NaN becomes 0 (torchscript)",
    test="test_shrink_nan",
    torchscript_args=("v", "f"),
    dynamo=False,
)
def hardshrink(ops: Ops, x: Any, lambd: float = 0.5) -> Any:
    """torch: 0 where -lambd <= x <= lambd, else x (NaN stays NaN)."""
    inside = ops("LessOrEqual", ops("Abs", x), ops.const(lambd))
    return ops("Where", inside, ops.const(0.0), x)


@lowering(
    "softshrink",
    upstream="Where chains that map NaN to 0 (torchscript)",
    test="test_shrink_nan",
    torchscript_args=("v", "f"),
    dynamo=False,
)
def softshrink(ops: Ops, x: Any, lambd: float = 0.5) -> Any:
    """torch: x - lambd above lambd, x + lambd below -lambd, else x * 0 (NaN stays NaN)."""
    lam = ops.const(lambd)
    below = ops("Where", ops("Less", x, ops("Neg", lam)), ops("Add", x, lam), ops("Mul", x, ops.const(0.0)))
    return ops("Where", ops("Greater", x, lam), ops("Sub", x, lam), below)


@lowering(
    "threshold",
    upstream="torchscript refuses a non-zero threshold",
    test="test_threshold_exports",
    torchscript_args=("v", "f", "f"),
    dynamo=False,
)
def threshold(ops: Ops, x: Any, threshold: float, value: float) -> Any:
    """torch: value where x <= threshold, else x (NaN stays NaN)."""
    return ops("Where", ops("LessOrEqual", x, ops.const(threshold)), ops.const(value), x)


@lowering(
    "celu",
    upstream="float16: ONNX Celu has no float16 schema, the model is invalid; float32: exp(x) - 1 "
    "instead of expm1 near 0",
    test="test_celu_float16",
    torchscript_args=("v", "f"),
)
def celu(ops: Ops, x: Any, alpha: float = 1.0) -> Any:
    """torch: x where x > 0, else alpha * expm1(x / alpha), without ONNX Celu (float32 only)."""
    return elu(ops, x, alpha, 1.0, 1.0 / alpha)


@lowering(
    "rrelu",
    upstream="dynamo cannot translate rrelu_with_noise (eval mode is a fixed leaky ReLU)",
    test="test_rrelu_dynamo",
    torchscript=False,
)
def rrelu_eval(
    ops: Ops,
    x: Any,
    lower: float = 1.0 / 8,
    upper: float = 1.0 / 3,
    training: bool = False,
    generator: Any = None,
) -> Any:
    """RReLU in eval mode: leaky ReLU with slope (lower + upper) / 2."""
    if training:
        raise ValueError("RReLU exports in eval mode only")
    return ops("LeakyRelu", x, alpha=(lower + upper) / 2)
