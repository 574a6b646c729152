"""Export fixes: ONNX formulations that compute torch's function where upstream's lowering does not.

Each ``Fix`` is one formula, written once against a tiny op builder, and emitted by both
exporters: as a torchscript symbolic (registered for the duration of one export) and as a dynamo
``custom_translation_table`` entry (onnxscript). In float16 every formula computes in float32
and rounds once, as torch's CPU kernels do (their "opmath" type). ``round_float16`` then makes
float16 rounding explicit after every other node, because onnxruntime's CPU provider computes
float16 chains in float32 without rounding in between, which is neither ONNX's nor torch's
arithmetic. ``compute_in_float64`` computes a float32 graph in float64 and rounds once at its
outputs. ``to_onnx`` applies all of it; ``disabled()`` exports upstream's lowering instead.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch

_ENABLED = contextvars.ContextVar("zoo_export_fixes_enabled", default=True)


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


# ---------------------------------------------------------------------------- the formulas
# Each takes (ops, x, *torch's arguments) and returns torch's function of x, in x's dtype.


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


def softplus(ops: Ops, x: Any, beta: float = 1.0, threshold: float = 20.0) -> Any:
    """torch: x where beta*x > threshold, else log1p(exp(beta*x)) / beta."""
    scaled = ops("Mul", x, ops.const(beta))
    smooth = ops("Div", _softplus(ops, scaled), ops.const(beta))
    return ops("Where", ops("Greater", scaled, ops.const(threshold)), x, smooth)


def log_sigmoid(ops: Ops, x: Any) -> Any:
    """-softplus(-x): no underflow of sigmoid to 0 and no log(0) = -inf for very negative x."""
    return ops("Neg", _softplus(ops, ops("Neg", x)))


def sigmoid(ops: Ops, x: Any) -> Any:
    """exp(-|x|) / (1 + exp(-|x|)) below 0, 1 / (1 + exp(-|x|)) above: accurate in both tails."""
    return _logistic(ops, x)


def elu(ops: Ops, x: Any, alpha: float = 1.0, scale: float = 1.0, input_scale: float = 1.0) -> Any:
    """torch: scale * (x where x > 0, else alpha * expm1(x * input_scale))."""
    negative = ops("Mul", ops.const(alpha), _expm1(ops, ops("Mul", x, ops.const(input_scale))))
    return ops("Mul", ops.const(scale), ops("Where", ops("Greater", x, ops.const(0.0)), x, negative))


def hardsigmoid(ops: Ops, x: Any) -> Any:
    """torch: clip(x + 3, 0, 6) / 6."""
    return ops("Div", ops("Clip", ops("Add", x, ops.const(3.0)), ops.const(0.0), ops.const(6.0)), ops.const(6.0))


def silu(ops: Ops, x: Any) -> Any:
    """x * sigmoid(x) with the accurate sigmoid: no overflow of exp(-x) below -88, and 0 at -inf."""
    return _times(ops, x, _logistic(ops, x))


def glu(ops: Ops, x: Any, dim: int = -1) -> Any:
    """a * sigmoid(b) for the two halves (a, b) of ``dim``, with the accurate sigmoid."""
    first, second = ops.halves(x, dim)
    return _times(ops, first, _logistic(ops, second))


def mish(ops: Ops, x: Any) -> Any:
    """x * tanh(softplus(x)), rounded once in float16, and 0 at -inf."""
    return _times(ops, x, ops("Tanh", _softplus(ops, x)))


def softmax(ops: Ops, x: Any, dim: int = -1, dtype: Any = None) -> Any:
    """exp(x - max) / sum exp(x - max), with the limits at +-inf (uniform over the infinite maxima)."""
    e = ops("Exp", _shifted(ops, x, dim))
    return ops("Div", e, ops.reduce("ReduceSum", e, dim))


def log_softmax(ops: Ops, x: Any, dim: int = -1, dtype: Any = None) -> Any:
    """(x - max) - log sum exp(x - max), with the limits at +-inf."""
    shifted = _shifted(ops, x, dim)
    return ops("Sub", shifted, ops("Log", ops.reduce("ReduceSum", ops("Exp", shifted), dim)))


def selu(ops: Ops, x: Any) -> Any:
    """torch: scale * (x where x > 0, else alpha * expm1(x)), with the accurate expm1."""
    return elu(ops, x, 1.6732632423543772848170429916717, 1.0507009873554804934193349852946)


def gelu(ops: Ops, x: Any, approximate: str = "none") -> Any:
    """(x / 2) * (1 + erf(x / sqrt 2)), or the tanh form: halving first cannot overflow, and 0 at -inf."""
    if approximate == "tanh":
        cube = ops("Mul", ops("Mul", x, x), x)
        inner = ops("Add", x, ops("Mul", ops.const(0.044715), cube))
        curve = ops("Tanh", ops("Mul", ops.const(math.sqrt(2.0 / math.pi)), inner))
    else:
        curve = ops("Erf", ops("Mul", x, ops.const(math.sqrt(0.5))))
    return _times(ops, ops("Mul", x, ops.const(0.5)), ops("Add", ops.const(1.0), curve))


def hardswish(ops: Ops, x: Any) -> Any:
    """x * (clip(x + 3, 0, 6) / 6): the knee at -3 without torch's overflow above max/6, and 0 at -inf."""
    ramp = ops("Clip", ops("Add", x, ops.const(3.0)), ops.const(0.0), ops.const(6.0))
    return _times(ops, x, ops("Div", ramp, ops.const(6.0)))


def hardshrink(ops: Ops, x: Any, lambd: float = 0.5) -> Any:
    """torch: 0 where -lambd <= x <= lambd, else x (NaN stays NaN)."""
    inside = ops("LessOrEqual", ops("Abs", x), ops.const(lambd))
    return ops("Where", inside, ops.const(0.0), x)


def softshrink(ops: Ops, x: Any, lambd: float = 0.5) -> Any:
    """torch: x - lambd above lambd, x + lambd below -lambd, else x * 0 (NaN stays NaN)."""
    lam = ops.const(lambd)
    below = ops("Where", ops("Less", x, ops("Neg", lam)), ops("Add", x, lam), ops("Mul", x, ops.const(0.0)))
    return ops("Where", ops("Greater", x, lam), ops("Sub", x, lam), below)


def threshold(ops: Ops, x: Any, threshold: float, value: float) -> Any:
    """torch: value where x <= threshold, else x (NaN stays NaN)."""
    return ops("Where", ops("LessOrEqual", x, ops.const(threshold)), ops.const(value), x)


def celu(ops: Ops, x: Any, alpha: float = 1.0) -> Any:
    """torch: x where x > 0, else alpha * expm1(x / alpha), without ONNX Celu (float32 only)."""
    return elu(ops, x, alpha, 1.0, 1.0 / alpha)


def rrelu_eval(ops: Ops, x: Any, lower: float = 1.0 / 8, upper: float = 1.0 / 3, training: bool = False,
               generator: Any = None) -> Any:
    """RReLU in eval mode: leaky ReLU with slope (lower + upper) / 2."""
    if training:
        raise ValueError("RReLU exports in eval mode only")
    return ops("LeakyRelu", x, alpha=(lower + upper) / 2)


@dataclass(frozen=True)
class Fix:
    """One fix: the aten op, what upstream emits, the formula we emit, and its regression test."""

    op: str
    formula: Callable[..., Any]
    upstream: str
    test: str
    torchscript_args: tuple[str, ...] = ("v",)  # torch.onnx.symbolic_helper.parse_args codes
    torchscript: bool = True
    dynamo: bool = True
    dynamo_ops: tuple[str, ...] = ()  # aten overloads dynamo translates, when not just ``op.default``

    @property
    def overloads(self) -> tuple[str, ...]:
        """The aten overloads (``name.overload``) the dynamo translation table maps to the formula."""
        return self.dynamo_ops or (f"{self.op}.default",)

    @property
    def ours(self) -> str:
        """What we emit: the formula's docstring."""
        return (self.formula.__doc__ or "").strip()


FIXES: tuple[Fix, ...] = (
    Fix("softplus", softplus, "ONNX Softplus(beta*x)/beta: no threshold, so x > threshold/beta is "
        "log1p(exp) instead of x (torchscript)", "test_softplus_threshold",
        ("v", "f", "f"), dynamo=False),
    Fix("log_sigmoid", log_sigmoid, "Log(Sigmoid(x)): sigmoid underflows to 0 below about -88 (-inf, "
        "and onnxruntime's Sigmoid is inexact below -15)", "test_log_sigmoid_underflow"),
    Fix("silu", silu, "x * Sigmoid(x): onnxruntime's Sigmoid has up to 460% relative error below -15, and "
        "-inf * 0 = NaN at -inf (torch's x / (1 + exp(-x)) also loses everything below -88)",
        "test_silu_negative_tail"),
    Fix("glu", glu, "a * Sigmoid(b): the same inexact Sigmoid, scaled by a large a", "test_glu_negative_tail",
        ("v", "i")),
    Fix("softmax", softmax, "Softmax: x - max is inf - inf = NaN when a row holds +inf (the limit puts all "
        "the weight on the infinite entries)", "test_limits_at_infinity", ("v", "i", "none"),
        dynamo_ops=("softmax.int", "_softmax.default")),
    Fix("log_softmax", log_softmax, "LogSoftmax: NaN for a row holding +inf, like Softmax",
        "test_limits_at_infinity", ("v", "i", "none"), dynamo_ops=("log_softmax.int", "_log_softmax.default")),
    Fix("selu", selu, "Selu: scale * alpha * (exp(x) - 1) loses every digit of expm1 near 0 (0 for |x| < 1e-8)",
        "test_selu_near_zero"),
    Fix("sigmoid", sigmoid, "Sigmoid: onnxruntime's float32 kernel is a few ulps off (460% below -15), "
        "which a trained layer after it amplifies beyond tolerance", "test_trained_mlp_parity"),
    Fix("elu", elu, "Elu: alpha * (exp(x) - 1) loses the digits torch's expm1 keeps near 0, amplified by "
        "the next layer", "test_trained_mlp_parity", ("v", "f", "f", "f")),
    Fix("hardsigmoid", hardsigmoid, "HardSigmoid computes x/6 + 1/2, not torch's clip(x + 3, 0, 6) / 6",
        "test_trained_mlp_parity"),
    Fix("gelu", gelu, "torchscript writes the tanh form as 0.5 * (x * (1 + tanh(..))), which overflows to "
        "inf above max/2; both forms give -inf * 0 = NaN at -inf, where the limit is 0; in float16 both "
        "round after every step",
        "test_gelu_tanh_overflow", ("v", "s")),
    Fix("hardswish", hardswish, "ONNX HardSwish computes x/6 + 1/2, losing the exact x + 3 near the "
        "knee at -3 (errors grow through the next layer); -inf * 0 = NaN at -inf", "test_hardswish_knee"),
    Fix("hardshrink", hardshrink, "Where(x > l or x < -l, x, 0): NaN becomes 0 (torchscript)",
        "test_shrink_nan", ("v", "f"), dynamo=False),
    Fix("softshrink", softshrink, "Where chains that map NaN to 0 (torchscript)", "test_shrink_nan",
        ("v", "f"), dynamo=False),
    Fix("threshold", threshold, "torchscript refuses a non-zero threshold", "test_threshold_exports",
        ("v", "f", "f"), dynamo=False),
    Fix("mish", mish, "-inf * 0 = NaN at -inf, where the limit is 0; in float16 Softplus, Tanh and Mul each "
        "round to float16",
        "test_float16_rounds_once_inside_an_op"),
    Fix("celu", celu, "float16: ONNX Celu has no float16 schema, the model is invalid; float32: exp(x) - 1 "
        "instead of expm1 near 0", "test_celu_float16", ("v", "f")),
    Fix("rrelu", rrelu_eval, "dynamo cannot translate rrelu_with_noise (eval mode is a fixed leaky ReLU)",
        "test_rrelu_dynamo", torchscript=False),
)


FLOAT64_COMPUTE = (
    "every float32 node (`compute=\"float64\"`)",
    "(an option, never the default) float32 arithmetic is only as close to exact as its error bound",
    (
        "on request only: the graph computes in float64 and rounds once at each output (compute_in_float64), "
        "weights stored as exact float64 copies; tract refuses it and OpenVINO runs it in float32"
    ),
    "test_float64_graph_rounds_once",
)

FLOAT16_ROUNDING = (
    "every float16 node (`compute=\"float16\"`)",
    (
        "onnxruntime's CPU provider runs float16 nodes in float32 and drops the casts between them: "
        "hidden values skip torch's float16 rounding and can pass 65504 without becoming inf"
    ),
    (
        "the graph computes in float32 with an explicit Cast to float16 and back after every node "
        "(round_float16); float16 inputs, outputs and stored weights"
    ),
    "test_float16_rounds_like_torch",
)


def markdown() -> str:
    """The table of fixes pasted into the README (export/FIXES.md)."""
    rows = [(f"`{f.op}`", _exporters(f), f.upstream, f.ours, f"`{f.test}`") for f in FIXES]
    for op, upstream, ours, test in (FLOAT64_COMPUTE, FLOAT16_ROUNDING):
        rows.append((op, "both", upstream, ours, f"`{test}`"))
    lines = [
        "# Export fixes",
        "",
        "Applied automatically by `export.to_onnx` (both exporters, every supported opset); each has a",
        "regression test in tests/test_fixes.py that fails on upstream's export and passes on ours.",
        "This file is generated by `export.fixes.markdown()`.",
        "",
        "| op | exporter | upstream behaviour | what we emit | regression test |",
        "| --- | --- | --- | --- | --- |",
        *(" | ".join(("", *row, "")).strip() for row in rows),
        "",
    ]
    return "\n".join(lines)


def _exporters(fix: Fix) -> str:
    return "both" if fix.torchscript and fix.dynamo else ("torchscript" if fix.torchscript else "dynamo")


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Export with upstream's lowering only (for regression tests and the matrix baseline)."""
    token = _ENABLED.set(False)
    try:
        yield
    finally:
        _ENABLED.reset(token)


def enabled() -> bool:
    """Whether to_onnx applies the fixes (True unless inside ``disabled()``)."""
    return _ENABLED.get()


# ---------------------------------------------------------------------------- in float32, round once


def _in_opmath(fix: Fix, ops: Ops, x: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a fix's formula on float16 in float32 and round once, as torch's kernels do."""
    ops.dtype = ops.dtype_of(x)
    if ops.dtype != "float16":
        return fix.formula(ops, x, *args, **kwargs)
    ops.dtype = "float32"
    return ops.cast(fix.formula(ops, ops.cast(x, "float32"), *args, **kwargs), "float16")


# ---------------------------------------------------------------------------- torchscript


_ATTRIBUTE_SUFFIX = {float: "f", int: "i", str: "s"}  # torchscript's g.op(name_f=...) convention


class _TorchScriptOps(Ops):
    def __init__(self, graph: Any) -> None:
        self.graph = graph

    def __call__(self, op_type: str, *inputs: Any, **attributes: Any) -> Any:
        named = {f"{k}_{_ATTRIBUTE_SUFFIX[type(v)]}": v for k, v in attributes.items()}
        return self.graph.op(op_type, *inputs, **named)

    def const(self, value: float) -> Any:
        return self.graph.op("Constant", value_t=torch.tensor(value, dtype=getattr(torch, self.dtype)))

    def dtype_of(self, value: Any) -> str:
        return str(self._torch_dtype(value)).removeprefix("torch.")

    def halves(self, value: Any, axis: int) -> tuple[Any, Any]:
        if self.graph.opset >= 18:
            return self.graph.op("Split", value, axis_i=axis, num_outputs_i=2, outputs=2)
        return self.graph.op("Split", value, axis_i=axis, outputs=2)

    def reduce(self, op_type: str, value: Any, axis: int) -> Any:
        if op_type == "ReduceSum" or self.graph.opset >= 18:
            axes = self.graph.op("Constant", value_t=torch.tensor([axis], dtype=torch.int64))
            return self.graph.op(op_type, value, axes, keepdims_i=1)
        return self.graph.op(op_type, value, axes_i=[axis], keepdims_i=1)

    @staticmethod
    def _torch_dtype(value: Any) -> torch.dtype:
        from torch.onnx import JitScalarType

        return JitScalarType.from_value(value, JitScalarType.FLOAT).dtype()


def _torchscript_symbolic(fix: Fix) -> Callable[..., Any]:
    from torch.onnx import symbolic_helper

    def symbolic(graph: Any, x: Any, *args: Any) -> Any:
        return _in_opmath(fix, _TorchScriptOps(graph), x, *args)

    # parse_args pairs its codes with the parameter names it reads from the signature.
    formula_params = list(inspect.signature(fix.formula).parameters.values())
    graph_param = inspect.Parameter("graph", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    symbolic.__signature__ = inspect.Signature([graph_param, *formula_params[1:]])  # type: ignore[attr-defined]
    return symbolic_helper.parse_args(*fix.torchscript_args)(symbolic)


@contextlib.contextmanager
def torchscript_symbolics(opset: int) -> Iterator[None]:
    """Register our torchscript symbolics for ``opset`` for the duration of one export."""
    chosen = [f for f in FIXES if f.torchscript] if enabled() else []
    for fix in chosen:
        torch.onnx.register_custom_op_symbolic(f"aten::{fix.op}", _torchscript_symbolic(fix), opset)
    try:
        yield
    finally:
        for fix in chosen:
            torch.onnx.unregister_custom_op_symbolic(f"aten::{fix.op}", opset)


# ---------------------------------------------------------------------------- dynamo


class _DynamoOps(Ops):
    def __call__(self, op_type: str, *inputs: Any, **attributes: Any) -> Any:
        from onnxscript import opset18

        return getattr(opset18, op_type)(*inputs, **attributes)

    def const(self, value: float) -> Any:
        import onnx_ir

        return self("Constant", value=onnx_ir.tensor(np.array(value, dtype=self.dtype)))

    def dtype_of(self, value: Any) -> str:
        return str(value.dtype.numpy())

    def halves(self, value: Any, axis: int) -> tuple[Any, Any]:
        return tuple(self("Split", value, axis=axis, num_outputs=2))

    def reduce(self, op_type: str, value: Any, axis: int) -> Any:
        import onnx_ir

        axes = self("Constant", value=onnx_ir.tensor(np.array([axis], dtype=np.int64)))
        return self(op_type, value, axes, keepdims=1)


def dynamo_translations() -> dict[Callable, Callable]:
    """The dynamo ``custom_translation_table`` (opset 18 onnxscript; empty inside ``disabled()``)."""
    if not enabled():
        return {}
    table: dict[Callable, Callable] = {}
    for fix in FIXES:
        if fix.dynamo:
            for overload in fix.overloads:
                packet, name = overload.split(".")
                table[getattr(getattr(torch.ops.aten, packet), name)] = functools.partial(_dynamo_translation, fix)
    return table


def _dynamo_translation(fix: Fix, x: Any, *args: Any, **kwargs: Any) -> Any:
    return _in_opmath(fix, _DynamoOps(), x, *args, **kwargs)


# ---------------------------------------------------------------------------- float16 rounding

_F16, _F32, _F64 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE
_NARROW = (_F16, _F32)
_FLOATS = (_F16, _F32, _F64)
# Ops whose float16 result is one of their (already float16) inputs, so rounding changes nothing.
_EXACT_OPS = frozenset({
    "Abs", "Clip", "Concat", "Constant", "ConstantOfShape", "Expand", "Flatten", "Gather", "Identity",
    "Max", "Min", "Neg", "Relu", "Reshape", "Slice", "Split", "Squeeze", "Transpose", "Unsqueeze", "Where",
})
_TYPED_OPS = frozenset({"EyeLike", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                        "Bernoulli", "Multinomial", "If", "Loop", "Scan"})


def compute_in_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """Compute a float32 or float16 graph in float64 and round once, at each output.

    Where a trained layer's terms nearly cancel, every float32 evaluation of it (torch's or
    onnxruntime's, each with its own summation order and kernels) is off by more than the
    tolerance, and the two are off differently; in float16 every node's rounding is that large.
    Computed in float64, the exported graph gives the correctly rounded value of torch's function,
    never farther from it than torch's own arithmetic. Weights are stored as float64 copies of the
    model's (exact); a node that onnxruntime has no float64 kernel for runs in float32 between casts.
    """
    if model.functions:
        model = onnx.inliner.inline_local_functions(model)
    inferred = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.input, *inferred.value_info, *inferred.output]}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    opset = next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
    graph = model.graph
    outputs = {v.name: v.type.tensor_type.elem_type for v in graph.output if v.type.tensor_type.elem_type in _NARROW}
    alias: dict[str, str] = {}  # original name -> the name its float64 value is read by
    nodes: list[onnx.NodeProto] = []
    for value in graph.input:
        if value.type.tensor_type.elem_type in _NARROW:
            alias[value.name] = _cast(nodes, value.name, f"{value.name}__f64", _F64)
    for tensor in graph.initializer:
        if tensor.data_type in _NARROW:
            tensor.CopyFrom(_float64_tensor(tensor))
    for node in graph.node:
        original = list(node.input)
        node.input[:] = [alias.get(name, name) for name in original]
        if node.op_type == "Cast" and _cast_target(node) in _FLOATS and types.get(original[0]) in _FLOATS:
            alias[node.output[0]] = node.input[0]  # a rounding inside the float64 region: dropped
            continue
        for index, name in enumerate(node.output):
            if name in outputs:
                node.output[index] = alias[name] = f"{name}__f64"
        if _has_float64_kernel(node, original, types, opset):
            _float64_attributes(node)
            nodes.append(node)
        else:
            _in_float32(node, original, types, nodes)
    for name, elem_type in sorted(outputs.items()):
        _cast(nodes, alias[name], name, elem_type)
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    return model


def _cast(nodes: list[onnx.NodeProto], source: str, target: str, to: int) -> str:
    nodes.append(onnx.helper.make_node("Cast", [source], [target], to=to))
    return target


def _float64_tensor(tensor: onnx.TensorProto) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensor).astype(np.float64), tensor.name)


def _float64_attributes(node: onnx.NodeProto) -> None:
    """Tensors inside Constant / ConstantOfShape become float64, and so do Casts to a narrower float."""
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type in _NARROW:
            attribute.t.CopyFrom(_float64_tensor(attribute.t))
        elif node.op_type == "Cast" and attribute.name == "to" and attribute.i in _NARROW:
            attribute.i = _F64


def _in_float32(node: onnx.NodeProto, original: list[str], types: dict[str, int], nodes: list[onnx.NodeProto]) -> None:
    """Run ``node`` on float32 casts of its float inputs and widen its float outputs back to float64."""
    node.input[:] = [
        _cast(nodes, name, f"{name}__f32", _F32) if types.get(source) in _NARROW else name
        for name, source in zip(node.input, original)
    ]
    _to_float32_attributes(node)
    widen = [(k, name) for k, name in enumerate(node.output) if types.get(name.removesuffix("__f64")) in _NARROW]
    for index, name in widen:
        node.output[index] = f"{name}__f32"
    nodes.append(node)
    for _, name in widen:
        _cast(nodes, f"{name}__f32", name, _F64)


def _has_float64_kernel(node: onnx.NodeProto, original: list[str], types: dict[str, int], opset: int) -> bool:
    """Whether onnxruntime's CPU provider runs ``node`` with its float32 tensors made float64."""
    if node.domain not in ("", "ai.onnx") or not any(types.get(name) in _NARROW for name in [*original, *node.output]):
        return True
    signature = tuple(types.get(name, 0) for name in original)
    outputs = tuple(types.get(name.removesuffix("__f64"), 0) for name in node.output)
    attributes = tuple(a.SerializeToString() for a in node.attribute)
    return _loads_in_float64(node.op_type, opset, signature, outputs, attributes)


@functools.cache
def _loads_in_float64(
    op_type: str, opset: int, inputs: tuple[int, ...], outputs: tuple[int, ...], attributes: tuple[bytes, ...]
) -> bool:
    import onnxruntime

    def wide(elem_type: int) -> int:
        return _F64 if elem_type in _NARROW else elem_type

    node = onnx.helper.make_node(op_type, [f"i{k}" if t else "" for k, t in enumerate(inputs)],
                                 [f"o{k}" for k in range(len(outputs))])
    node.attribute.extend(onnx.AttributeProto.FromString(a) for a in attributes)
    _float64_attributes(node)
    graph = onnx.helper.make_graph(
        [node], "probe",
        [onnx.helper.make_tensor_value_info(f"i{k}", wide(t), None) for k, t in enumerate(inputs) if t],
        [onnx.helper.make_tensor_value_info(f"o{k}", wide(t), None) for k, t in enumerate(outputs)],
    )
    probe = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)], ir_version=8)
    try:
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        onnxruntime.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - only a missing kernel means "no"; anything else is not ours to judge
        return "NOT_IMPLEMENTED" not in str(error)
    return True


def round_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Compute a float16 graph in float32 with an explicit float16 rounding after every node.

    The result is the ONNX float16 semantics (every node's output is a float16 value), written
    so that onnxruntime's CPU provider cannot skip the roundings: it runs float16 nodes in float32
    and drops the casts between consecutive ones, which lets hidden values exceed 65504 and
    accumulate differently from torch. Inputs, outputs and stored weights stay float16.
    """
    graph = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.value_info, *graph.output]}
    refused = sorted({n.op_type for n in graph.node} & _TYPED_OPS)
    if refused:
        raise ValueError(f"cannot make float16 rounding explicit around {refused}")
    outputs = {v.name for v in graph.output if v.type.tensor_type.elem_type == _F16}
    rename: dict[str, str] = {}
    nodes: list[onnx.NodeProto] = []
    for value in graph.input:
        if value.type.tensor_type.elem_type == _F16:
            rename[value.name] = _widen(nodes, value.name)
    for tensor in model.graph.initializer:
        if tensor.data_type == _F16:
            rename[tensor.name] = _widen(nodes, tensor.name)
    for node in model.graph.node:
        node.input[:] = [rename.get(name, name) for name in node.input]
        _to_float32_attributes(node)
        nodes.append(node)
        for index, name in enumerate(node.output):
            if types.get(name) == _F16 or (node.op_type == "Cast" and _cast_target(node) == _F16):
                rename[name] = _round(nodes, node, index, exact=node.op_type in _EXACT_OPS)
    # Graph outputs become the final casts' outputs; their old producers write `name__out`.
    inner = {name: f"{name}__out" for name in outputs}
    for node in nodes:
        node.input[:] = [inner.get(n, n) for n in node.input]
        node.output[:] = [inner.get(n, n) for n in node.output]
    for name in outputs:
        source = rename.get(name, name)
        nodes.append(onnx.helper.make_node("Cast", [inner.get(source, source)], [name], to=_F16))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.value_info[:]
    return model


def _widen(nodes: list[onnx.NodeProto], name: str) -> str:
    wide = f"{name}__f32"
    nodes.append(onnx.helper.make_node("Cast", [name], [wide], to=_F32))
    return wide


def _round(nodes: list[onnx.NodeProto], node: onnx.NodeProto, index: int, exact: bool) -> str:
    """Round output ``index`` of ``node`` to float16 and back; return the name to read it by."""
    name = node.output[index]
    if node.op_type == "Cast":  # already rounds: only widen its result again
        return _widen(nodes, name)
    if exact:
        return name
    narrow = f"{name}__f16"
    nodes.append(onnx.helper.make_node("Cast", [name], [narrow], to=_F16))
    return _widen(nodes, narrow)


def _cast_target(node: onnx.NodeProto) -> int:
    return next(a.i for a in node.attribute if a.name == "to")


def _to_float32_attributes(node: onnx.NodeProto) -> None:
    """float16 tensors inside Constant / ConstantOfShape become (exactly equal) float32 ones."""
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == _F16:
            values = onnx.numpy_helper.to_array(attribute.t).astype(np.float32)
            attribute.t.CopyFrom(onnx.numpy_helper.from_array(values, attribute.t.name))
