"""Error bounds of float32 (float16) arithmetic: the model run in float64, carrying per value the error
that any correct evaluation in the export dtype may have (a running error analysis).

Every ATen op the model dispatches is computed in float64 from the weights as exported, and its
bound is built from the bounds of its inputs:

- a sum or dot product of n terms, in any order, with or without FMA, may be off by
  ``gamma(n) * sum |terms|`` (Higham, ch. 3), plus the error its inputs carry through it; a bias
  Add after a MatMul joins the same sum, since a runtime may fuse the two (Gemm);
- an elementwise op passes on its input's error through the function itself (the largest change of
  f over ``[x - e, x + e]``) and adds its own rounding: ``ulps * u`` times the size of the terms of
  its formula (``|f(x)|``, except where the formula itself cancels, as GELU's ``1 + erf`` does);
- a value (or the terms of a sum) beyond the dtype's range has no bound: float arithmetic may
  overflow there in any order, so it is "unconstrained" downstream;
- an activation that torch evaluates to NaN at +-inf where the function has a limit (GELU and SiLU
  at -inf, Softsign, Softmax of infinities) takes that limit: it is the function's true value.

The bound is a property of the function and the dtype, never of one machine's kernels: torch eager
in float32 is judged by it like any runtime (see ``check_parity``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

# Why a module with an underscore: TorchDispatchMode is the mechanism PyTorch documents for seeing
# every ATen op as it runs ("Extending torch with a __torch_dispatch__ mode" in the extending notes);
# it has no public alias. torch.export would give the same ops but costs 0.3 s a model and refuses
# data-dependent forwards, which third-party activations may have.
from torch.utils._python_dispatch import TorchDispatchMode

UNIT = {"float32": 2.0**-24, "float16": 2.0**-11}
# A transcendental kernel (exp, erf, tanh, ...) and the few roundings of a fused activation's
# formula. Measured on every probe: torch's kernels (vectorised and scalar) within 4 ulps of the
# float64 value, onnxruntime's lowerings (a few nodes each, MLAS kernels) within 7 (Mish).
KERNEL_ULPS = 8.0
# An arithmetic op rounds once, and a constant operand may have rounded once when it became the dtype.
SCALAR_ULPS = 2.0
# A piecewise-rational activation (hardsigmoid, leaky ReLU, ...): a constant and two or three roundings.
BASIC_ULPS = 3.0
# Where the limit of an activation at +-inf is read: f(+-LARGE) in float64, infinite above HUGE.
LARGE, HUGE = 1e300, 1e290

aten = torch.ops.aten


class BoundError(ValueError):
    """The model uses an op for which no error rule is known, so no float32 bound can be given."""


@dataclass
class Bounded:
    """What the pass knows of one value: its error bound and, for an unrounded sum, its terms."""

    error: torch.Tensor
    terms: torch.Tensor | None = None  # sum |terms| of the dot product that made this value
    count: int = 0  # how many terms
    carried: torch.Tensor | None = None  # the part of ``error`` carried from the inputs


@dataclass
class ModuleValue:
    """A leaf module's output in float64 with its bound, in call order (for explaining failures)."""

    name: str
    kind: str
    value: np.ndarray
    bound: np.ndarray


@dataclass
class BoundedRun:
    """The float64 outputs of a model, the bound of each, and every leaf module's output."""

    outputs: list[np.ndarray]
    bounds: list[np.ndarray]
    modules: list[ModuleValue] = field(default_factory=list)


def gamma(n: int, unit: float) -> float:
    """Higham's gamma_n = n u / (1 - n u): the relative error bound of an n-term sum."""
    return math.inf if n * unit >= 1 else n * unit / (1 - n * unit)


def bounded_run(model: torch.nn.Module, x: np.ndarray, *, dtype: str, modules: bool = False) -> BoundedRun:
    """Run ``model`` (already in eval mode) in float64 on ``x`` with the error bounds of ``dtype`` arithmetic."""
    wide = _float64_copy(model)
    mode = _BoundMode(dtype)
    inputs = torch.from_numpy(np.asarray(x, dtype=np.float64))
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        for name, module in wide.named_modules():
            if not list(module.children()):
                stack.enter_context(_hooked(module, name, mode, modules))
        stack.enter_context(mode)
        result = wide(inputs)
    outputs = list(result) if isinstance(result, (tuple, list)) else [result]
    return BoundedRun(
        outputs=[o.numpy() for o in outputs],
        bounds=[mode.error(o).numpy() for o in outputs],
        modules=mode.recorded,
    )


def _float64_copy(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model).to(torch.float64).eval()


@contextlib.contextmanager
def _hooked(module: torch.nn.Module, name: str, mode: _BoundMode, record: bool) -> Iterator[None]:
    """Give an activation its limits at +-inf, and record the module's output when asked."""
    elementwise = all(p.dim() < 2 for p in module.parameters())

    def hook(mod: torch.nn.Module, inputs: tuple[Any, ...], output: Any) -> Any:
        if not isinstance(output, torch.Tensor) or not inputs or not isinstance(inputs[0], torch.Tensor):
            return None
        if elementwise:
            output = mode.take_limits(mod, inputs[0], output)
        if record:
            mode.recorded.append(ModuleValue(name, type(mod).__name__, output.numpy().copy(),
                                             mode.error(output).numpy().copy()))
        return output

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class _BoundMode(TorchDispatchMode):
    def __init__(self, dtype: str) -> None:
        super().__init__()
        self.unit = UNIT[dtype]
        self.tiny = float(np.finfo(dtype).tiny)  # what underflow may lose in one op
        self.max = float(np.finfo(dtype).max)
        self.narrow = np.dtype(dtype)
        self.known: dict[int, tuple[torch.Tensor, Bounded]] = {}
        self.recorded: list[ModuleValue] = []
        self.paused = False

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.paused:
            return out
        rule = _rule(func)
        if rule is None:
            raise BoundError(
                f"no float32 error rule for {func} (used by the model), so its parity cannot be judged; "
                "write the activation with ops that have one (export.bounds.RULES lists them)"
            )
        bounded = rule(self, func, args, kwargs, out)
        if bounded is not None:
            for tensor, bound in zip(_flat(out), _flat(bounded)):
                if isinstance(tensor, torch.Tensor) and bound is not None:
                    self.remember(tensor, bound)
        return out

    # -- bookkeeping
    def remember(self, tensor: torch.Tensor, bound: Bounded) -> None:
        error = _nan_to_inf(bound.error)
        if tensor.is_floating_point():  # beyond the dtype's range any evaluation may overflow
            error = torch.where(torch.isfinite(tensor) & (tensor.abs() > self.max), math.inf, error)
            if bound.terms is not None:  # a partial sum may overflow in some order
                error = torch.where(bound.terms > self.max, math.inf, error)
        bound.error = error
        self.known[id(tensor)] = (tensor, bound)

    def bounded(self, value: Any) -> Bounded:
        if isinstance(value, torch.Tensor) and id(value) in self.known:
            return self.known[id(value)][1]
        zero = torch.zeros_like(value, dtype=torch.float64) if isinstance(value, torch.Tensor) else torch.tensor(0.0)
        return Bounded(zero)

    def error(self, value: Any) -> torch.Tensor:
        return self.bounded(value).error

    def own(self, out: torch.Tensor, size: torch.Tensor, ulps: float = 1.0) -> torch.Tensor:
        """The rounding an op adds: ``ulps`` units of ``size`` (its terms), plus what underflow may lose."""
        return ulps * self.unit * size + self.tiny

    @contextlib.contextmanager
    def pause(self) -> Iterator[None]:
        self.paused = True
        try:
            yield
        finally:
            self.paused = False

    def take_limits(self, module: torch.nn.Module, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Where an activation gives NaN at an infinite input but has a limit there, take the limit."""
        with self.pause():
            if out.shape[:1] != x.shape[:1]:
                return out
            rows = torch.isinf(x).reshape(len(x), -1).any(1) & torch.isnan(out).reshape(len(out), -1).any(1)
            if not rows.any():
                return out
            at = x[rows]
            limit = module.forward(torch.where(torch.isinf(at), torch.sign(at) * LARGE, at))
            limit = torch.where(limit.abs() > HUGE, torch.sign(limit) * math.inf, limit)
            taken = torch.isnan(out[rows]) & ~torch.isnan(limit)
            # the limit rounds like a kernel where the whole input row is exact, and is unknown otherwise
            exact = (self.error(x)[rows].reshape(len(at), -1) == 0).all(1).reshape(-1, *[1] * (out.dim() - 1))
            rounding = torch.where(torch.isinf(limit), 0.0, self.own(limit, limit.abs(), KERNEL_ULPS))
            fixed, error = out.clone(), self.error(out).clone()
            fixed[rows] = torch.where(taken, limit, out[rows])
            error[rows] = torch.where(taken, torch.where(exact, rounding, math.inf), error[rows])
            self.remember(fixed, Bounded(error))
        return fixed


def _flat(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


Rule = Callable[[_BoundMode, Any, tuple, dict, Any], Any]


# ---------------------------------------------------------------------------- rules


def _moves(mode: _BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> Any:
    """Views, copies and reshapes: the error (and an unrounded sum's terms) move with the values."""
    source = next((a for a in _flat(args[0]) if isinstance(a, torch.Tensor)), None)
    single = isinstance(args[0], torch.Tensor)
    sum_ = mode.bounded(source) if single else Bounded(torch.tensor(0.0))

    def move(part: Callable[[Bounded], torch.Tensor | None]) -> Any:
        def lift(value: Any) -> Any:
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                return part(mode.bounded(value))
            if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
                return [part(mode.bounded(v)) for v in value]
            return value

        return func(*[lift(a) for a in args], **kwargs)

    moved = move(lambda b: b.error)
    if isinstance(moved, (list, tuple)):
        return [Bounded(m) for m in moved]
    if single and sum_.terms is not None:
        return Bounded(moved, move(lambda b: b.terms), sum_.count, move(lambda b: b.carried))
    return Bounded(moved)


def _constant(mode: _BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> Any:
    return None  # a new tensor of exact values: no error


def _matmul(mode: _BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> Bounded:
    """mm / bmm: a dot product of the inner dimension's terms."""
    a, b = args[0], args[1]
    return _dot(mode, func, a, b, mode.error(a), mode.error(b), out)


def _dot(mode: _BoundMode, func: Any, a: torch.Tensor, b: torch.Tensor, ea: torch.Tensor, eb: torch.Tensor,
         out: torch.Tensor, extra: torch.Tensor | None = None, extra_error: torch.Tensor | None = None) -> Bounded:
    with mode.pause():
        carried = func(ea, b.abs()) + func(a.abs(), eb) + func(ea, eb)
        terms = func(a.abs() + ea, b.abs() + eb)
        count = a.shape[-1]
        if extra is not None:
            terms, count = terms + extra.abs() + extra_error, count + 1
            carried = carried + extra_error
        error = carried + gamma(count, mode.unit) * terms + mode.tiny
    return Bounded(error, terms, count, carried)


def _addmm(mode: _BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> Bounded:
    bias, a, b = args[:3]
    if kwargs.get("beta", 1) != 1 or kwargs.get("alpha", 1) != 1:
        raise BoundError("addmm with beta or alpha other than 1 has no error rule")
    return _dot(mode, aten.mm.default, a, b, mode.error(a), mode.error(b), out, bias, mode.error(bias))


def _add(mode: _BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> Bounded:
    """a + alpha * b (sub: alpha negated); an operand that is an unrounded sum takes the other as one more term."""
    a, b = args[0], args[1]
    alpha = kwargs.get("alpha", args[2] if len(args) > 2 else 1)
    if func.overloadpacket is aten.rsub:
        a, b = b, a
    scale = abs(float(alpha))
    ba, bb = mode.bounded(a), mode.bounded(b)
    with mode.pause():
        for sum_, other, other_scale in ((ba, b, scale), (bb, a, 1.0)):
            if sum_.terms is not None and isinstance(other, torch.Tensor):
                extra = other_scale * (other.abs() + mode.error(other))
                terms, count = sum_.terms + extra, sum_.count + 1
                carried = sum_.carried + other_scale * mode.error(other)
                return Bounded(carried + gamma(count, mode.unit) * terms + mode.tiny, terms, count, carried)
        carried = ba.error + scale * bb.error
    return Bounded(carried + mode.own(out, out.abs() + carried, SCALAR_ULPS))


def _mul(mode: _BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> Bounded:
    a, b = args[0], args[1]
    ea, eb = mode.error(a), mode.error(b)
    with mode.pause():
        carried = ea * _magnitude(b) + _magnitude(a) * eb + ea * eb
        return Bounded(carried + mode.own(out, out.abs() + carried, SCALAR_ULPS))


def _div(mode: _BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> Bounded:
    a, b = args[0], args[1]
    if kwargs.get("rounding_mode") is not None:
        raise BoundError("div with a rounding mode has no error rule")
    ea, eb = mode.error(a), mode.error(b)
    with mode.pause():
        room = _magnitude(b) - eb
        carried = torch.where(room > 0, (ea + out.abs() * eb) / room, math.inf)
        return Bounded(carried + mode.own(out, out.abs() + carried, SCALAR_ULPS))


def _magnitude(value: Any) -> Any:
    return value.abs() if isinstance(value, torch.Tensor) else abs(float(value))


# Elementwise ops whose formula cancels: the size of its terms, for the op's own rounding.
def _gelu_terms(x: torch.Tensor, out: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    if approximate == "tanh":
        curve = torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))
    else:
        curve = torch.erf(x * math.sqrt(0.5))
    return 0.5 * x.abs() * (1 + curve.abs())


TERMS: dict[Any, Callable[..., torch.Tensor]] = {aten.gelu: _gelu_terms}
# Ops that only select, compare or move their input: exact, so no rounding of their own.
EXACT = frozenset({
    aten.relu, aten.hardtanh, aten.threshold, aten.hardshrink, aten.neg, aten.abs, aten.clamp, aten.clamp_min,
    aten.clamp_max, aten.maximum, aten.minimum, aten.sign,
})
BASIC = frozenset({aten.leaky_relu, aten._prelu_kernel, aten.rrelu_with_noise, aten.sqrt, aten.reciprocal,
                   aten.softshrink, aten.hardsigmoid, aten.hardswish, aten.pow, aten.square})


def _elementwise(mode: _BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> Bounded:
    """f(x, ...): the change of f over each input's error interval, plus the op's own rounding."""
    if not isinstance(out, torch.Tensor) or not out.is_floating_point():
        return _decision(mode, func, args, kwargs, out)
    packet = func.overloadpacket
    with mode.pause():
        carried = torch.zeros_like(out)
        for index, value in enumerate(args):
            error = mode.error(value) if isinstance(value, torch.Tensor) and value.is_floating_point() else None
            if error is None or not bool((error > 0).any()):
                continue
            moved = []
            for step in (error, -error):
                shifted = list(args)
                shifted[index] = value + step
                moved.append((func(*shifted, **kwargs) - out).abs())
            change = _nan_to_inf(torch.maximum(*moved))
            carried = carried + torch.where(error > 0, change, 0.0)
        carried = carried + _rounded_constants(mode, func, args, kwargs, out)
        if packet in EXACT:
            own = torch.zeros_like(out)
        else:
            size = TERMS[packet](args[0], out, **kwargs) if packet in TERMS else out.abs()
            ulps = BASIC_ULPS if packet in BASIC else KERNEL_ULPS
            # at an infinite input (or output) the op's value is its limit: no rounding of its own
            limit = (torch.isinf(out) | ~torch.isfinite(size)) & (carried == 0)
            own = torch.where(limit, 0.0, mode.own(out, size + carried, ulps))
    return Bounded(carried + own)


def _rounded_constants(mode: _BoundMode, func: Any, args: tuple, kwargs: dict, out: torch.Tensor) -> torch.Tensor:
    """How far f moves when each of its float constants (a threshold, a slope) is rounded to the dtype."""
    change = torch.zeros_like(out)
    for index, value in enumerate(args):
        if isinstance(value, float) and math.isfinite(value):
            rounded = float(np.array(value, dtype=mode.narrow))
            if rounded != value:
                shifted = list(args)
                shifted[index] = rounded
                change = change + _nan_to_inf((func(*shifted, **kwargs) - out).abs())
    return change


def _decision(mode: _BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> Bounded:
    """A comparison or logical op: its 'error' marks where the answer could go either way."""
    packet = func.overloadpacket
    with mode.pause():
        if packet in (aten.logical_not, aten.bitwise_not):
            return Bounded(mode.error(args[0]).clone())
        if packet in (aten.logical_and, aten.logical_or, aten.bitwise_and, aten.bitwise_or):
            return Bounded(torch.maximum(mode.error(args[0]), mode.error(args[1])))
        if packet in (aten.isnan, aten.isinf, aten.isfinite, aten.signbit):
            return Bounded(torch.zeros_like(out, dtype=torch.float64))
        a, b = args[0], args[1]
        gap = (a - b).abs() if isinstance(b, torch.Tensor) else (a - float(b)).abs()
        margin = mode.error(a) + (mode.error(b) if isinstance(b, torch.Tensor) else 0.0)
        return Bounded(((gap <= margin) & (margin > 0)).to(torch.float64))


def _where(mode: _BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> Bounded:
    """where(c, a, b): the chosen branch's error, and where c is uncertain the jump between branches."""
    cond, a, b = args[0], args[1], args[2]
    with mode.pause():
        ea, eb = mode.error(a), mode.error(b)
        chosen = torch.where(cond, ea, eb)
        jump = (torch.as_tensor(a, dtype=torch.float64) - b).abs() + ea + eb
        uncertain = mode.error(cond) > 0
        return Bounded(torch.where(uncertain, torch.maximum(chosen, jump), chosen))


def _softmax(mode: _BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> Bounded:
    """softmax: each p_i moves by p_i (e_i + sum_j p_j e_j); exp, the n-term sum and the division round."""
    x, dim = args[0], args[1]
    with mode.pause():
        e = mode.error(x)
        p = out if func.overloadpacket is aten._softmax else out.exp()
        spread = e + (p * e).sum(dim, keepdim=True)
        n = x.shape[dim]
        shifted = (x - x.amax(dim, keepdim=True)).abs()  # its rounding moves exp(x - max) by u |x - max|
        if func.overloadpacket is aten._softmax:
            ulps = KERNEL_ULPS + gamma(n, mode.unit) / mode.unit + 2 + _nan_to_inf(shifted)
            return Bounded(out * spread + mode.own(out, out * ulps))
        log_sum = (out - x + x.amax(dim, keepdim=True)).abs()  # |log sum exp(x - max)|
        size = shifted + KERNEL_ULPS * log_sum + (n + KERNEL_ULPS) + out.abs()
        return Bounded(spread + mode.own(out, size))


def _reduce(mode: _BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> Bounded:
    """sum / mean over some dims: an n-term sum (mean then divides by n, one more rounding)."""
    x = args[0]
    with mode.pause():
        error, size = func(mode.error(x), *args[1:], **kwargs), func(x.abs() + mode.error(x), *args[1:], **kwargs)
        count = max(1, x.numel() // max(1, out.numel()))
        ulps = 1.0 if func.overloadpacket is aten.mean else 0.0
        return Bounded(error + gamma(count, mode.unit) * size + mode.own(out, out.abs(), ulps))


def _glu(mode: _BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> Bounded:
    x, dim = args[0], args[1] if len(args) > 1 else kwargs.get("dim", -1)
    with mode.pause():
        a, b = x.chunk(2, dim)
        ea, eb = mode.error(x).chunk(2, dim)
        s = torch.sigmoid(b)
        moved = torch.maximum((torch.sigmoid(b + eb) - s).abs(), (torch.sigmoid(b - eb) - s).abs())
        # sigmoid(b) may underflow to a subnormal (or to 0) before a scales it up
        carried = _nan_to_inf(s * ea + (a.abs() + ea) * (moved + mode.tiny))
        return Bounded(carried + mode.own(out, out.abs() + carried, KERNEL_ULPS + 1))


RULES: dict[Any, Rule] = {
    **{op: _moves for op in (
        aten.view, aten._unsafe_view, aten.reshape, aten.t, aten.permute, aten.transpose, aten.unsqueeze,
        aten.squeeze, aten.expand, aten.clone, aten.alias, aten.detach, aten.slice, aten.select, aten.narrow,
        aten.split, aten.split_with_sizes, aten.chunk, aten.unbind, aten.cat, aten.stack, aten.flatten,
        aten._to_copy, aten.contiguous, aten.lift_fresh, aten.repeat,
    )},
    **{op: _constant for op in (
        aten.empty_like, aten.zeros_like, aten.ones_like, aten.full_like, aten.scalar_tensor, aten.zeros,
        aten.ones, aten.full, aten.empty, aten.new_empty, aten.new_zeros, aten.new_ones, aten.new_full,
        aten.arange, aten._local_scalar_dense, aten.lift_fresh_copy,
    )},
    aten.mm: _matmul,
    aten.bmm: _matmul,
    aten.addmm: _addmm,
    aten.add: _add,
    aten.sub: _add,
    aten.rsub: _add,
    aten.mul: _mul,
    aten.div: _div,
    aten.where: _where,
    aten._softmax: _softmax,
    aten._log_softmax: _softmax,
    aten.glu: _glu,
    aten.sum: _reduce,
    aten.mean: _reduce,
    **{op: _decision for op in (
        aten.gt, aten.lt, aten.ge, aten.le, aten.eq, aten.ne, aten.logical_not, aten.logical_and,
        aten.logical_or, aten.bitwise_not, aten.bitwise_and, aten.bitwise_or, aten.isnan, aten.isinf,
        aten.isfinite, aten.signbit,
    )},
}
# Elementwise ops without a rule of their own.
ELEMENTWISE_EXTRA = frozenset({aten.hardswish, aten.rrelu_with_noise, aten._prelu_kernel})


def _rule(func: Any) -> Rule | None:
    packet = func.overloadpacket
    if packet in RULES:
        return RULES[packet]
    if packet is aten.log_sigmoid_forward:
        return _log_sigmoid
    if torch.Tag.pointwise in func.tags or packet in ELEMENTWISE_EXTRA:
        return _elementwise
    return None


def _log_sigmoid(mode: _BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> Any:
    """log_sigmoid_forward returns (output, buffer): the buffer is internal."""
    with mode.pause():
        value = aten.log_sigmoid_forward.default(*args)[0]
    bound = _elementwise(mode, _LogSigmoid(), args, kwargs, value)
    return [bound, None]


class _LogSigmoid:
    """log_sigmoid_forward seen as the elementwise function it computes (first output only)."""

    overloadpacket = aten.log_sigmoid_forward
    tags = (torch.Tag.pointwise,)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return aten.log_sigmoid_forward.default(x)[0]


def _nan_to_inf(error: torch.Tensor) -> torch.Tensor:
    """An error that could not be computed (inf - inf) is unbounded."""
    return torch.where(torch.isnan(error), math.inf, error)
