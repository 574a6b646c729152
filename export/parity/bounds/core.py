"""The two-tier running error analysis: the model in float64, each value carrying what an evaluation in
float32 (float16) may be off by. The rules for each family of ops live beside this module.

**Tier 1, the worst case** (``Bounded.error``): what ANY correct evaluation may be off by, with no
assumption. A sum or dot product of n terms, in any order, with or without FMA, may be off by
``gamma(n) * sum |terms|`` (Higham, ch. 3), plus the error its inputs carry through it (through
``|W|``); an elementwise op passes on its input's error through the function itself (the largest
change of f over ``[x - e, x + e]``) and adds its own rounding; a value (or the terms of a sum)
beyond the dtype's range has no bound: float arithmetic may overflow there in some order.

**Tier 2, honest rounding as it behaves** (``Bounded.spread``, ``Bounded.local``,
``Bounded.allowance``): the standard deviation of the error of an evaluation whose roundings are
independent and mean-zero (Higham and Mary, SIAM J. Sci. Comput. 2019; Ipsen and Zhou, SIAM J.
Matrix Anal. Appl. 2020), plus a deterministic allowance for what is not random. Variances add:

- one rounding of a value s has variance ``ROUNDING (u s)^2`` (uniform on half an ulp);
- a sum of n terms adds one rounding per product and per partial sum: the partial sums of terms in
  a random order (``partial_squares``: they grow like sqrt(j) where terms cancel, like j where they
  do not), counting only the nonzero terms (adding 0 is exact: ReLU zeros, padding). So the error
  of a sum grows like ``sqrt(n)``, where the worst case grows like n;
- an input's spread passes through a linear layer through ``W^2`` (independent errors), where the
  worst case uses ``|W|``, and through an elementwise f by the change of f over ``SPREADS``
  spreads (a knee within reach counts);
- a kernel's own error (exp, tanh, erf, ...) is a spread of ``KERNEL_SPREAD`` ulps;
- the own rounding of the last sum (``local``) counts ``TAIL`` times in the verdict: its partial
  sums, and so its variance, vary from element to element, which gives it a heavier tail than a
  normal variable until a later sum averages it with others;
- constants rounded once, a decision that may flip (``where`` near its knee) and the limit taken at
  an infinity are the allowance, which passes through ``|W|`` like the worst case;
- a constant that a runtime holds rounded in one of a few known ways (the attention scale: ``Held``)
  shifts every value it reaches by a signed amount that ``|W|`` and a norm's ``|J|`` would inflate
  a hundredfold over a few layers: its effect is computed instead, the model run again in float64
  with the constant as each way holds it, and the largest change over the ways joins the allowance
  of every output and module value. The effects of several such constants add to first order (the
  second order, about u^2, is far below one rounding), so each one's largest change is added;
- a rounding shared by many values (a norm's mean and variance, shared by its whole row) is added
  coherently by the convolutions and pools after it: its variance at each output and module value
  is estimated from a few random draws of it, each a plain float64 forward (``norm.Drawn``), and
  joins the spread.

An honest output lies within ``SPREADS`` spreads plus its allowance (``export.runtime.compare``
justifies the number), and within the worst-case bound. A wrong export is systematic (a perturbed
weight or bias shifts every affected element the same way), so it stands out against the spread
long before it reaches the worst case, which grows like ``(n |W|)^depth``.

What tier 2 assumes, and where it may not hold: roundings independent and mean-zero
(round-to-nearest on varied data; a runtime that rounds toward zero, or data so regular that errors
align, breaks it); partial sums like those of the terms in a random order (a runtime that sorts
terms, or terms whose signs follow their index, has larger ones); errors small enough to propagate
to first order through products of two erroneous values. Where the worst case is the smaller, it is
the rule.

An activation that torch evaluates to NaN at +-inf where the function has a limit (GELU and SiLU at
-inf, Softsign, Softmax of infinities) takes that limit: it is the function's true value. The
tolerances are properties of the function and the dtype, never of one machine's kernels: torch
eager in float32 is judged by them like any runtime (see ``check_parity``).
"""

from __future__ import annotations

import collections
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

from export.parity.errors import ParityError
from export.runtime.compare import SPREADS, Tolerance

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
# Tier 2. The variance of one round-to-nearest error in units of (u |s|)^2: uniform on half an ulp,
# ulp(s)^2 / 12, averaged over mantissas spread evenly on a log scale (0.541 / 3).
ROUNDING = 0.18
# A kernel's own error as a spread, in units of u |f|: twice the largest standard deviation measured
# against float64 (onnxruntime's Tanh, 1.06 ulps; its Erf and Exp, torch's kernels 0.3 to 0.45).
KERNEL_SPREAD = 2.0
# The own rounding of one sum, seen at one element, has a heavier tail than a normal variable (its
# partial sums, and so its variance, vary from element to element): it counts TAIL times in the
# verdict, until a later sum averages it with others (export.runtime.compare gives the numbers).
TAIL = 5.0

aten = torch.ops.aten
# Norms with 1-d weights that are not elementwise: a row's statistics mix its values, so at an infinite
# value every float evaluation gives NaN, and torch's float64 value at +-LARGE (its statistics
# overflowing) is no limit of the function.
ROW_NORMS = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.RMSNorm, torch.nn.LocalResponseNorm,
             torch.nn.InstanceNorm1d, torch.nn.InstanceNorm2d, torch.nn.InstanceNorm3d)


class BoundError(ParityError, ValueError):
    """The model uses an op without an error rule, so its parity cannot be judged; the message names the op,
    the module that called it and how to add a rule."""


@dataclass
class Partial:
    """An unrounded sum (a dot product before its bias): what a fused Add needs to join it as one more term."""

    terms: torch.Tensor  # sum |terms|, each with its error (tier 1)
    count: int  # how many terms
    carried: torch.Tensor  # the tier-1 error carried from the inputs
    squares: torch.Tensor  # sum terms^2 (tier 2: the sizes of the roundings)
    variance: torch.Tensor  # the tier-2 variance carried from the inputs
    nonzero: torch.Tensor | None = None  # how many terms are not 0 (adding 0 is exact), None: all


@dataclass
class Bounded:
    """What the pass knows of one value: its worst-case bound, its spread and allowance, and its sum."""

    error: torch.Tensor
    spread: torch.Tensor | None = None  # None: exact in tier 2
    allowance: torch.Tensor | None = None  # None: no deterministic allowance
    partial: Partial | None = None
    local: torch.Tensor | None = None  # the variance, within spread^2, of the last sum's own rounding

    def judged(self) -> torch.Tensor | None:
        """The spread the verdict uses: the last sum's own rounding counted TAIL times."""
        if self.local is None:
            return self.spread
        return (self.spread**2 + (TAIL - 1) * self.local).sqrt()


@dataclass(frozen=True)
class Held:
    """One way a runtime may hold a rounded constant: the ``call``-th call (from 0, in the order the forward makes
    them) of any of the aten ``ops`` (overload packets), its arguments changed by ``change(func, args, kwargs)``."""

    ops: tuple[Any, ...]
    call: int
    change: Callable[[Any, tuple, dict], tuple[tuple, dict]]

    def dispatch(self) -> TorchDispatchMode:
        """The plain float64 forward with the constant held this way."""
        return _Holding(self)


class _Holding(TorchDispatchMode):
    """A plain float64 forward in which one constant is held as ``held`` says."""

    def __init__(self, held: Held) -> None:
        super().__init__()
        self.held, self.seen = held, 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func.overloadpacket in self.held.ops:
            if self.seen == self.held.call:
                args, kwargs = self.held.change(func, args, kwargs)
            self.seen += 1
        return func(*args, **kwargs)


@dataclass
class ModuleValue:
    """A leaf module's output in float64 with its tolerance, in call order (for explaining failures)."""

    name: str
    kind: str
    value: np.ndarray
    tolerance: Tolerance


@dataclass
class BoundedRun:
    """The float64 outputs of a model, the tolerance of each, and every leaf module's output."""

    outputs: list[np.ndarray]
    tolerances: list[Tolerance]
    modules: list[ModuleValue] = field(default_factory=list)


def gamma(n: int, unit: float) -> float:
    """Higham's gamma_n = n u / (1 - n u): the relative error bound of an n-term sum."""
    return math.inf if n * unit >= 1 else n * unit / (1 - n * unit)


def partial_squares(total: torch.Tensor, squares: torch.Tensor, count: Any) -> torch.Tensor:
    """The expected sum of the squared partial sums of ``count`` terms (a number or a tensor) added in a random order.

    For terms with sum s and sum of squares q, the first j of a random order sum to j s / n on
    average, with variance j (n - j) / (n (n - 1)) (q - s^2 / n); summed over j that is about
    ``n s^2 / 3 + n q / 6``: partial sums grow like sqrt(j) where terms cancel, like j where they don't.
    """
    n = count.clamp(min=1) if isinstance(count, torch.Tensor) else max(count, 1)
    spread = (squares - total * total / n).clamp(min=0)
    return total * total * ((n + 1) * (2 * n + 1) / (6 * n)) + spread * ((n + 1) / 6)


# Memory for one chunk of probe rows (values, both tiers, every intermediate): about this many bytes.
CHUNK_BYTES = 512 * 2**20


FIRST_CHUNK = 32


def bounded_run(model: torch.nn.Module, x: np.ndarray, *, dtype: str, modules: bool = False,
                chunk_bytes: int = CHUNK_BYTES) -> BoundedRun:
    """Run ``model`` (already in eval mode) in float64 on ``x`` with both tiers of ``dtype`` arithmetic.

    Rows go through in chunks sized from the first one's memory, so the pass holds about
    ``chunk_bytes`` whatever the model and the number of rows.
    """
    wide = _float64_copy(model)
    weights = _Weights(wide)
    first, held = _run_chunk(wide, x[:FIRST_CHUNK], dtype, modules, weights)
    runs = [first]
    rows = max(FIRST_CHUNK, int(chunk_bytes * min(len(x), FIRST_CHUNK) / max(held, 1)))
    for start in range(FIRST_CHUNK, len(x), rows):
        runs.append(_run_chunk(wide, x[start:start + rows], dtype, modules, weights)[0])
    if len(runs) == 1:
        return first
    return BoundedRun(
        outputs=[np.concatenate(parts) for parts in zip(*(r.outputs for r in runs))],
        tolerances=[Tolerance.concatenate(parts) for parts in zip(*(r.tolerances for r in runs))],
        modules=[ModuleValue(m[0].name, m[0].kind, np.concatenate([v.value for v in m]),
                             Tolerance.concatenate([v.tolerance for v in m])) for m in zip(*(r.modules for r in runs))],
    )


class _Weights:
    """What a dot product needs of a weight (|W|, W^2, its nonzero count), computed once for every chunk."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.pointers = {t.data_ptr() for t in [*model.parameters(), *model.buffers()]}
        self.cache: dict[tuple, torch.Tensor] = {}

    def derived(self, tensor: torch.Tensor, kind: str, make: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``make(tensor)``, remembered when the tensor is (a view of) a weight, which no chunk changes."""
        if tensor.data_ptr() not in self.pointers:
            return make(tensor)
        key = (tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()), kind)
        if key not in self.cache:
            self.cache[key] = make(tensor)
        return self.cache[key]


def _run_chunk(wide: torch.nn.Module, x: np.ndarray, dtype: str, modules: bool,
               weights: _Weights) -> tuple[BoundedRun, int]:
    """One chunk of rows through the pass, and the bytes it held."""
    mode = BoundMode(dtype, weights)
    inputs = torch.from_numpy(np.asarray(x, dtype=np.float64))
    outputs = _forward(wide, inputs, mode, modules, mode)
    run = BoundedRun(outputs=[o.numpy() for o in outputs], tolerances=[mode.tolerance(o) for o in outputs],
                     modules=mode.recorded)
    for ways in mode.held:
        _allow_held(run, [_held_values(wide, inputs, BoundMode(dtype, weights), modules, way) for way in ways])
    for draws in mode.sampled:
        _spread_sampled(run, [_held_values(wide, inputs, BoundMode(dtype, weights), modules, way) for way in draws])
    return run, mode.held_bytes()


def _held_values(wide: torch.nn.Module, inputs: torch.Tensor, mode: BoundMode, modules: bool,
                 way: Any) -> list[np.ndarray]:
    """The outputs, then the module values, of a plain float64 forward under ``way.dispatch()``."""
    outputs = _forward(wide, inputs, mode, modules, way.dispatch())
    return [*(o.numpy() for o in outputs), *(m.value for m in mode.recorded)]


def _allow_held(run: BoundedRun, changed: list[list[np.ndarray]]) -> None:
    """Add to the allowance of each output and module value its largest change over the ways (``changed``)."""
    values = [*run.outputs, *(m.value for m in run.modules)]
    tolerances = [*run.tolerances, *(m.tolerance for m in run.modules)]
    for k, (tolerance, value) in enumerate(zip(tolerances, values)):
        tolerance.allowance = tolerance.allowance + np.max([_change(way[k], value) for way in changed], axis=0)


def _spread_sampled(run: BoundedRun, drawn: list[list[np.ndarray]]) -> None:
    """Add to the spread of each output and module value, in quadrature, the mean square of its change over the
    draws (``drawn``) of one correlated rounding."""
    values = [*run.outputs, *(m.value for m in run.modules)]
    tolerances = [*run.tolerances, *(m.tolerance for m in run.modules)]
    for k, (tolerance, value) in enumerate(zip(tolerances, values)):
        variance = np.mean([_change(draw[k], value) ** 2 for draw in drawn], axis=0)
        tolerance.spread = np.sqrt(tolerance.spread**2 + variance)


def _forward(wide: torch.nn.Module, inputs: torch.Tensor, mode: BoundMode, modules: bool,
             dispatch: TorchDispatchMode) -> list[torch.Tensor]:
    """The model's outputs on ``inputs`` under ``dispatch``, its modules hooked to ``mode`` (which records them)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        for name, module in wide.named_modules():
            stack.enter_context(_hooked(module, name, mode, modules))
        stack.enter_context(dispatch)
        result = wide(inputs)
    return list(result) if isinstance(result, (tuple, list)) else [result]


def _change(new: np.ndarray, old: np.ndarray) -> np.ndarray:
    """|new - old|: 0 where equal (an infinity unchanged), infinite where either is NaN."""
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(np.where(new == old, 0.0, np.abs(new - old)), nan=math.inf, posinf=math.inf)


def _float64_copy(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model).to(torch.float64).eval()


@contextlib.contextmanager


def _hooked(module: torch.nn.Module, name: str, mode: BoundMode, record: bool) -> Iterator[None]:
    """Keep the stack of modules running (an error names the caller), give a leaf activation its limits at
    +-inf, and record the module's output when asked (every module but the model itself, in the order they end)."""
    elementwise = (not list(module.children()) and all(p.dim() < 2 for p in module.parameters())
                   and not isinstance(module, ROW_NORMS))

    def enter(mod: torch.nn.Module, inputs: tuple[Any, ...]) -> None:
        mode.calls.append((name, type(mod).__name__))

    def hook(mod: torch.nn.Module, inputs: tuple[Any, ...], output: Any) -> Any:
        mode.calls.pop()
        if not inputs or not isinstance(inputs[0], torch.Tensor):
            return None
        if elementwise and isinstance(output, torch.Tensor):
            output = mode.take_limits(mod, inputs[0], output)
        value = next((v for v in flat(output) if isinstance(v, torch.Tensor)), None)  # attention: (output, weights)
        if record and name and value is not None and value.is_floating_point():
            mode.recorded.append(ModuleValue(name, type(mod).__name__, value.numpy().copy(), mode.tolerance(value)))
        return output

    handles = [module.register_forward_pre_hook(enter), module.register_forward_hook(hook)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class BoundMode(TorchDispatchMode):
    def __init__(self, dtype: str, weights: _Weights | None = None) -> None:
        super().__init__()
        self.weights = weights or _Weights(torch.nn.Module())
        self.unit = UNIT[dtype]
        self.tiny = float(np.finfo(dtype).tiny)  # what underflow may lose in one op
        self.max = float(np.finfo(dtype).max)
        self.narrow = np.dtype(dtype)
        self.known: dict[int, tuple[torch.Tensor, Bounded]] = {}
        self.recorded: list[ModuleValue] = []
        self.calls: list[tuple[str, str]] = []  # (name, class) of each module whose forward is running
        self.paused = False
        self.counts: collections.Counter = collections.Counter()  # calls of each op so far (for Held.call)
        # per constant a runtime may hold rounded, the ways it may hold it: each way's dispatch() gives the plain
        # float64 forward that holds it so
        self.held: list[tuple[Any, ...]] = []
        # per correlated rounding (a norm's statistics), random draws of it: their effects' mean square is its
        # variance at every value
        self.sampled: list[tuple[Any, ...]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.paused:
            return out
        self.counts[func.overloadpacket] += 1
        rule = rule_for(func)
        if rule is None:
            raise BoundError(self.missing_rule(func))
        try:
            bounded = rule(self, func, args, kwargs, out)
        except BoundError as error:  # a rule that cannot judge this use of its op: say where it is
            raise BoundError(f"{error} (called by {self.caller()})") from None
        if bounded is not None:
            for tensor, bound in zip(flat(out), flat(bounded)):
                if isinstance(tensor, torch.Tensor) and bound is not None:
                    self.remember(tensor, bound)
        return out

    def caller(self) -> str:
        """The module whose forward runs now, for an error message."""
        name, kind = self.calls[-1] if self.calls else ("", "")
        return f"module {name!r} ({kind})" if name else f"the model itself ({kind})" if kind else "the model"

    def missing_rule(self, func: Any) -> str:
        """What to say of an op without a rule: the op, the module that called it, how to add a rule."""
        packet = func.overloadpacket.__name__
        return (f"no parity rule for {func}, called by {self.caller()}, so the parity of this model cannot be judged; "
                f"build it from covered ops, or add a rule with @export.parity.bounds.rule(torch.ops.aten.{packet}) "
                "(README: Parity, covered ops)")

    # -- bookkeeping
    def remember(self, tensor: torch.Tensor, bound: Bounded) -> None:
        """Keep a value's tiers. Where it, or the terms of its sum, pass the dtype's range, neither tier bounds it
        (float arithmetic may overflow there); where only the worst case has no bound (a variance that might
        cancel to 0), tier 2 still judges it."""
        error = nan_to_inf(bound.error)
        overflow = torch.isinf(error) & ~torch.isfinite(tensor) if tensor.is_floating_point() else None
        if tensor.is_floating_point():  # beyond the dtype's range any evaluation may overflow
            size = tensor.abs()
            beyond = (size > self.max) & (size < math.inf)
            overflow |= beyond
            if bound.partial is not None:  # a partial sum may overflow in some order: of the worst case, of the terms
                beyond |= bound.partial.terms > self.max
                overflow |= bound.partial.terms - bound.partial.carried > self.max
            error = error.masked_fill(beyond, math.inf)
        bound.error = error
        for part in ("spread", "allowance", "local"):
            value = getattr(bound, part)
            if value is not None:
                value = nan_to_inf(value)
                setattr(bound, part, value if overflow is None else value.masked_fill(overflow, math.inf))
        self.known[id(tensor)] = (tensor, bound)  # the tensor held, so its id is never reused during the pass

    def held_bytes(self) -> int:
        """The memory of every value seen so far and its tolerances: what a chunk of rows costs."""
        parts = [t for tensor, bound in self.known.values()
                 for t in (tensor, bound.error, bound.spread, bound.allowance) if t is not None]
        return sum(t.element_size() * t.numel() for t in parts)

    def bounded(self, value: Any) -> Bounded:
        if isinstance(value, torch.Tensor):
            if id(value) not in self.known:  # a weight or a constant: exact, and asked for again
                self.known[id(value)] = (value, Bounded(torch.zeros_like(value, dtype=torch.float64)))
            return self.known[id(value)][1]
        return Bounded(torch.tensor(0.0))

    def error(self, value: Any) -> torch.Tensor:
        return self.bounded(value).error

    def tolerance(self, value: torch.Tensor) -> Tolerance:
        """Both tiers of a value, as the numpy arrays the verdict takes."""
        bound = self.bounded(value)
        zero = np.zeros(value.shape)
        spread = bound.judged()
        return Tolerance(bound.error.numpy().copy(),
                         zero if spread is None else spread.numpy().copy(),
                         zero if bound.allowance is None else bound.allowance.numpy().copy())

    def own(self, size: torch.Tensor, ulps: float = 1.0) -> torch.Tensor:
        """The rounding an op adds: ``ulps`` units of ``size`` (its terms), plus what underflow may lose."""
        return ulps * self.unit * size + self.tiny

    def reach(self, bound: Bounded) -> torch.Tensor | None:
        """How far an honest evaluation may stray in tier 2 (SPREADS spreads plus the allowance), or None."""
        if bound.spread is None and bound.allowance is None:
            return None
        return add_parts(scaled(bound.judged(), SPREADS), bound.allowance)

    def stray(self, bound: Bounded) -> torch.Tensor | float:
        """How far an honest evaluation of a value may stray (its tier-2 reach, 0 where exact in tier 2): what an
        allowance's product with that value carries, where the worst case carries the tier-1 error."""
        reach = self.reach(bound)
        return 0.0 if reach is None else reach

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
            rounding = torch.where(torch.isinf(limit), 0.0, self.own(limit.abs(), KERNEL_ULPS))
            fixed, old = out.clone(), self.bounded(out)
            fixed[rows] = torch.where(taken, limit, out[rows])
            error, spread = old.error.clone(), full(old.spread, out)
            error[rows] = torch.where(taken, torch.where(exact, rounding, math.inf), error[rows])
            kernel = torch.where(torch.isinf(limit), 0.0, kernel_spread(self, limit.abs()))
            spread[rows] = torch.where(taken, torch.where(exact, kernel, math.inf), spread[rows])
            self.remember(fixed, Bounded(error, spread, old.allowance, local=old.local))
        return fixed


def flat(value: Any) -> list[Any]:
    """A list of the values of a tuple or list, or of one value."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


def full(part: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """A tier-2 part as a tensor of ``like``'s shape (zeros for None)."""
    return torch.zeros_like(like, dtype=torch.float64) if part is None else part.clone()


def add_parts(*parts: torch.Tensor | None) -> torch.Tensor | None:
    """The sum of the parts that are not None (None when all are)."""
    present = [p for p in parts if p is not None]
    if not present:
        return None
    total = present[0]
    for part in present[1:]:
        total = total + part
    return total


def scaled(part: torch.Tensor | None, factor: Any) -> torch.Tensor | None:
    return None if part is None else part * factor


def quadrature(*parts: torch.Tensor | None) -> torch.Tensor | None:
    """sqrt of the sum of squares of the parts that are not None: independent spreads combined."""
    squares = add_parts(*(None if p is None else p * p for p in parts))
    return None if squares is None else squares.sqrt()


Rule = Callable[[BoundMode, Any, tuple, dict, Any], Any]


def joined(mode: BoundMode, partial: Partial, other: Any, scale: float) -> Partial:
    """``partial`` with ``scale * other`` added as one more term of the same sum (a fused bias Add)."""
    if not isinstance(other, torch.Tensor):
        other = torch.tensor(float(other), dtype=torch.float64)
    bound = mode.bounded(other)
    error = scale * bound.error
    variance = partial.variance if bound.spread is None else partial.variance + (scale * bound.spread) ** 2
    nonzero = None if partial.nonzero is None else partial.nonzero + (other != 0)
    return Partial(partial.terms + scale * other.abs() + error, partial.count + 1, partial.carried + error,
                   partial.squares + (scale * other) ** 2, variance, nonzero)


def finished(mode: BoundMode, partial: Partial, out: torch.Tensor, allowance: torch.Tensor | None) -> Bounded:
    """Both tiers of an n-term sum: gamma_n of its terms (tier 1); u^2/3 of each product and partial sum (tier 2)."""
    n = partial.count
    error = partial.carried + gamma(n, mode.unit) * partial.terms + mode.tiny
    steps = n if partial.nonzero is None else partial.nonzero
    rounding = mode.unit**2 * ROUNDING * (partial.squares + partial_squares(out, partial.squares, steps))
    spread = (partial.variance + rounding).sqrt() + mode.tiny
    return Bounded(error, spread, allowance, partial, local=rounding)


def rounding_spread(mode: BoundMode, size: torch.Tensor, count: float = 1.0) -> torch.Tensor:
    """The spread of ``count`` independent roundings of values of ``size``, and what underflow may lose."""
    return math.sqrt(count * ROUNDING) * mode.unit * size + mode.tiny


def kernel_spread(mode: BoundMode, size: torch.Tensor) -> torch.Tensor:
    """The spread of a transcendental kernel's own error at values of ``size``, and what underflow may lose."""
    return KERNEL_SPREAD * mode.unit * size + mode.tiny


def magnitude(value: Any) -> Any:
    """|value| for a tensor or a number."""
    return value.abs() if isinstance(value, torch.Tensor) else abs(float(value))


# Every rule, by the aten op (overload packet) it judges; POINTWISE for every pointwise op without its own.
RULES: dict[Any, Rule] = {}


POINTWISE = "pointwise"


def rule(*packets: Any) -> Callable[[Rule], Rule]:
    """Decorator: ``fn(mode, func, args, kwargs, out)`` gives both tiers of the output of these aten ops."""
    def register(fn: Rule) -> Rule:
        for packet in packets:
            RULES[packet] = fn
        return fn
    return register


def rule_for(func: Any) -> Rule | None:
    """The rule for one aten op, or None when there is none."""
    packet = func.overloadpacket
    if packet in RULES:
        return RULES[packet]
    return RULES.get(POINTWISE) if torch.Tag.pointwise in func.tags else None


def nan_to_inf(error: torch.Tensor) -> torch.Tensor:
    """An error that could not be computed (inf - inf) is unbounded."""
    return torch.nan_to_num(error, nan=math.inf, posinf=math.inf, neginf=-math.inf)

