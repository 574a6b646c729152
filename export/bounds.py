"""Error bounds of float32 (float16) arithmetic, in two tiers: the model run in float64, carrying per
value the error a correct evaluation in the export dtype may have (a running error analysis).

Every ATen op the model dispatches is computed in float64 from the weights as exported, and two
tolerances are built from those of its inputs:

**Tier 1, the worst case** (``Bounded.error``): what ANY correct evaluation may be off by, with no
assumption. A sum or dot product of n terms, in any order, with or without FMA, may be off by
``gamma(n) * sum |terms|`` (Higham, ch. 3), plus the error its inputs carry through it (through
``|W|``); an elementwise op passes on its input's error through the function itself (the largest
change of f over ``[x - e, x + e]``) and adds its own rounding; a value (or the terms of a sum)
beyond the dtype's range has no bound: float arithmetic may overflow there in some order.

**Tier 2, honest rounding as it behaves** (``Bounded.spread`` and ``Bounded.allowance``): the
standard deviation of the error of an evaluation whose roundings are independent and mean-zero
(Higham and Mary, SIAM J. Sci. Comput. 2019; Ipsen and Zhou, SIAM J. Matrix Anal. Appl. 2020),
plus a deterministic allowance for what is not random. Variances add: a sum's own roundings add
``u^2 / 3`` times the square of each partial sum (round-to-nearest error is at most ``u |s|``, and a
uniform error on ``[-u|s|, u|s|]`` has that variance, which bounds ``ulp(s)^2 / 12``), so a sum of
n terms grows like ``sqrt(n)``, not n; an input's spread passes through a linear layer through
``W^2``, where the worst case uses ``|W|``. A kernel's own error (exp, tanh, erf, ...) counts as a
uniform error of ``KERNEL_ULPS`` ulps, independent between elements. Constants rounded once, a
decision that may flip (``where`` near its knee) and the limit taken at an infinity are the
allowance, which passes through ``|W|`` like the worst case, since it may have one sign everywhere.

An honest output lies within ``SPREADS`` spreads plus its allowance (``export.runtime.compare``
justifies the number); it must also lie within the worst-case bound. A wrong export is
systematic (a perturbed weight or bias shifts every affected element the same way), so it stands
out against the spread long before it reaches the worst case, which grows like ``(n |W|)^depth``.

What the second tier assumes, and where it may not hold: roundings independent and mean-zero
(round-to-nearest on varied data; a runtime that rounds toward zero, or data so regular that
errors align, breaks it); the partial sums of a dot product are those of its terms in a random
order (a runtime that sorts terms, or terms whose signs follow their index, has larger partial
sums); errors small enough to propagate to first order (an input error is carried through f over
``SPREADS`` spreads, so a knee within reach is taken into account). Where the worst case is the
smaller, it is the rule.

An activation that torch evaluates to NaN at +-inf where the function has a limit (GELU and SiLU at
-inf, Softsign, Softmax of infinities) takes that limit: it is the function's true value. The
tolerances are properties of the function and the dtype, never of one machine's kernels: torch
eager in float32 is judged by them like any runtime (see ``check_parity``).
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

from export.runtime.compare import SPREADS, Tolerance
from zoo.errors import ZooError

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


class BoundError(ZooError, ValueError):
    """The model uses an op without an error rule, so its parity cannot be judged; the message names it."""


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
    mode = _BoundMode(dtype, weights)
    inputs = torch.from_numpy(np.asarray(x, dtype=np.float64))
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        for name, module in wide.named_modules():
            if not list(module.children()):
                stack.enter_context(_hooked(module, name, mode, modules))
        stack.enter_context(mode)
        result = wide(inputs)
    outputs = list(result) if isinstance(result, (tuple, list)) else [result]
    run = BoundedRun(outputs=[o.numpy() for o in outputs], tolerances=[mode.tolerance(o) for o in outputs],
                     modules=mode.recorded)
    return run, mode.held_bytes()


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
            mode.recorded.append(ModuleValue(name, type(mod).__name__, output.numpy().copy(), mode.tolerance(output)))
        return output

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class _BoundMode(TorchDispatchMode):
    def __init__(self, dtype: str, weights: _Weights | None = None) -> None:
        super().__init__()
        self.weights = weights or _Weights(torch.nn.Module())
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
                f"no error rule for {func}, so the parity of a model that uses it cannot be judged; "
                "build the model from ops that have one (README: Parity, covered ops)"
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
            size = tensor.abs()
            beyond = (size > self.max) & (size < math.inf)
            if bound.partial is not None:  # a partial sum may overflow in some order
                beyond |= bound.partial.terms > self.max
            error = error.masked_fill(beyond, math.inf)
        bound.error = error
        unbounded = None
        for part in ("spread", "allowance", "local"):
            value = getattr(bound, part)
            if value is not None:
                unbounded = torch.isinf(error) if unbounded is None else unbounded
                setattr(bound, part, _nan_to_inf(value).masked_fill(unbounded, math.inf))
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
        return _sum(_scaled(bound.judged(), SPREADS), bound.allowance)

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
            error, spread = old.error.clone(), _full(old.spread, out)
            error[rows] = torch.where(taken, torch.where(exact, rounding, math.inf), error[rows])
            kernel = torch.where(torch.isinf(limit), 0.0, _kernel(self, limit.abs()))
            spread[rows] = torch.where(taken, torch.where(exact, kernel, math.inf), spread[rows])
            self.remember(fixed, Bounded(error, spread, old.allowance, local=old.local))
        return fixed


def _flat(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _full(part: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """A tier-2 part as a tensor of ``like``'s shape (zeros for None)."""
    return torch.zeros_like(like, dtype=torch.float64) if part is None else part.clone()


def _sum(*parts: torch.Tensor | None) -> torch.Tensor | None:
    """The sum of the parts that are not None (None when all are)."""
    present = [p for p in parts if p is not None]
    if not present:
        return None
    total = present[0]
    for part in present[1:]:
        total = total + part
    return total


def _scaled(part: torch.Tensor | None, factor: Any) -> torch.Tensor | None:
    return None if part is None else part * factor


def _quadrature(*parts: torch.Tensor | None) -> torch.Tensor | None:
    """sqrt of the sum of squares of the parts that are not None: independent spreads combined."""
    squares = _sum(*(None if p is None else p * p for p in parts))
    return None if squares is None else squares.sqrt()


Rule = Callable[[_BoundMode, Any, tuple, dict, Any], Any]


# ---------------------------------------------------------------------------- rules


def _moves(mode: _BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> Any:
    """Views, copies and reshapes: both tiers (and an unrounded sum's parts) move with the values."""
    source = next((a for a in _flat(args[0]) if isinstance(a, torch.Tensor)), None)
    single = isinstance(args[0], torch.Tensor)
    sources = [mode.bounded(v) for v in (_flat(args[0]) if not single else [args[0]]) if isinstance(v, torch.Tensor)]

    def move(part: Callable[[Bounded], torch.Tensor | None]) -> Any:
        if any(part(b) is None for b in sources):
            if all(part(b) is None for b in sources):
                return None
            part = _zero_for_none(part)

        def lift(value: Any) -> Any:
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                return part(mode.bounded(value))
            if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
                return [part(mode.bounded(v)) for v in value]
            return value

        return func(*[lift(a) for a in args], **kwargs)

    with mode.pause():
        moved = [move(lambda b: b.error), move(lambda b: b.spread), move(lambda b: b.allowance),
                 move(lambda b: b.local)]
    if isinstance(moved[0], (list, tuple)):
        return [Bounded(e, s, a, local=v) for e, s, a, v in
                zip(moved[0], *(m if m is not None else [None] * len(moved[0]) for m in moved[1:]))]
    bound = Bounded(*moved[:3], local=moved[3])
    partial = mode.bounded(source).partial if single else None
    if partial is not None:
        with mode.pause():
            nonzero = None if partial.nonzero is None else \
                move(lambda b: b.partial.nonzero.expand_as(b.partial.terms).to(torch.float64))
            bound.partial = Partial(move(lambda b: b.partial.terms), partial.count, move(lambda b: b.partial.carried),
                                    move(lambda b: b.partial.squares), move(lambda b: b.partial.variance), nonzero)
    return bound


def _zero_for_none(part: Callable[[Bounded], torch.Tensor | None]) -> Callable[[Bounded], torch.Tensor]:
    def read(bound: Bounded) -> torch.Tensor:
        value = part(bound)
        return torch.zeros_like(bound.error) if value is None else value
    return read


def _constant(mode: _BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> Any:
    return None  # a new tensor of exact values: no error


def _matmul(mode: _BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> Bounded:
    """mm / bmm: a dot product of the inner dimension's terms."""
    return _dot(mode, func, args[0], args[1], out)


def _dot(mode: _BoundMode, func: Any, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor,
         bias: torch.Tensor | None = None) -> Bounded:
    """The terms a_ij b_jk summed over j; an operand with no error costs no extra product."""
    ba, bb = mode.bounded(a), mode.bounded(b)
    with mode.pause():
        ea, eb = ba.error, bb.error
        b_exact = not bool((eb > 0).any())
        a_exact = not bool((ea > 0).any())
        size_a, size_b = a.abs(), mode.weights.derived(b, "abs", torch.abs)
        square_a, square_b = a * a, mode.weights.derived(b, "square", torch.square)
        if b_exact:
            carried = torch.zeros_like(out) if a_exact else func(ea, size_b)
            terms = func(size_a, size_b) + carried
        else:
            carried = func(ea, size_b) + func(size_a, eb) + func(ea, eb)
            terms = func(size_a + ea, size_b + eb)
        squares = func(square_a, square_b)
        variance = _sum(
            None if ba.spread is None else func(ba.spread ** 2, square_b),
            None if bb.spread is None else func(square_a, bb.spread ** 2),
            None if ba.spread is None or bb.spread is None else func(ba.spread ** 2, bb.spread ** 2),
        )
        allowance = _sum(
            None if ba.allowance is None else func(ba.allowance, size_b + eb),
            None if bb.allowance is None else func(size_a, bb.allowance),
        )
        # adding a zero term is exact: rounding happens at the nonzero terms only (ReLU zeros, padding)
        columns = mode.weights.derived(b, "nonzero", lambda t: (t != 0).sum(-2, keepdim=True).to(torch.float64))
        nonzero = torch.minimum((a != 0).sum(-1, keepdim=True).to(torch.float64), columns)
        partial = Partial(terms, a.shape[-1], carried, squares,
                          torch.zeros_like(out) if variance is None else variance, nonzero)
        if bias is not None:
            partial = _joined(mode, partial, bias, 1.0)
            allowance = _sum(allowance, mode.bounded(bias).allowance)
    return _finished(mode, partial, out, allowance)


def _joined(mode: _BoundMode, partial: Partial, other: Any, scale: float) -> Partial:
    """``partial`` with ``scale * other`` added as one more term of the same sum (a fused bias Add)."""
    if not isinstance(other, torch.Tensor):
        other = torch.tensor(float(other), dtype=torch.float64)
    bound = mode.bounded(other)
    error = scale * bound.error
    variance = partial.variance if bound.spread is None else partial.variance + (scale * bound.spread) ** 2
    nonzero = None if partial.nonzero is None else partial.nonzero + (other != 0)
    return Partial(partial.terms + scale * other.abs() + error, partial.count + 1, partial.carried + error,
                   partial.squares + (scale * other) ** 2, variance, nonzero)


def _finished(mode: _BoundMode, partial: Partial, out: torch.Tensor, allowance: torch.Tensor | None) -> Bounded:
    """Both tiers of an n-term sum: gamma_n of its terms (tier 1); u^2/3 of each product and partial sum (tier 2)."""
    n = partial.count
    error = partial.carried + gamma(n, mode.unit) * partial.terms + mode.tiny
    steps = n if partial.nonzero is None else partial.nonzero
    rounding = mode.unit**2 * ROUNDING * (partial.squares + partial_squares(out, partial.squares, steps))
    spread = (partial.variance + rounding).sqrt() + mode.tiny
    return Bounded(error, spread, allowance, partial, local=rounding)


def _addmm(mode: _BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> Bounded:
    bias, a, b = args[:3]
    if kwargs.get("beta", 1) != 1 or kwargs.get("alpha", 1) != 1:
        raise BoundError("no error rule for addmm with beta or alpha other than 1")
    return _dot(mode, aten.mm.default, a, b, out, bias)


def _add(mode: _BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> Bounded:
    """a + alpha * b (sub: alpha negated); an operand that is an unrounded sum takes the other as one more term."""
    a, b = args[0], args[1]
    alpha = kwargs.get("alpha", args[2] if len(args) > 2 else 1)
    if func.overloadpacket is aten.rsub:
        a, b = b, a
    scale = abs(float(alpha))
    ba, bb = mode.bounded(a), mode.bounded(b)
    with mode.pause():
        allowance = _sum(ba.allowance, _scaled(bb.allowance, scale))
        for sum_, other, other_scale in ((ba, b, scale), (bb, a, 1.0)):
            if sum_.partial is not None and isinstance(other, torch.Tensor):
                partial = sum_.partial
                if sum_ is bb:  # the sum itself is scaled by alpha
                    partial = Partial(partial.terms * scale, partial.count, partial.carried * scale,
                                      partial.squares * scale**2, partial.variance * scale**2, partial.nonzero)
                return _finished(mode, _joined(mode, partial, other, other_scale), out, allowance)
        carried = ba.error + scale * bb.error
        spread = _quadrature(ba.spread, _scaled(bb.spread, scale), _rounding(mode, out.abs()))
        local = _sum(ba.local, _scaled(bb.local, scale**2))
    return Bounded(carried + mode.own(out.abs() + carried, SCALAR_ULPS), spread, allowance, local=local)


def _rounding(mode: _BoundMode, size: torch.Tensor, count: float = 1.0) -> torch.Tensor:
    """The spread of ``count`` independent roundings of values of ``size``, and what underflow may lose."""
    return math.sqrt(count * ROUNDING) * mode.unit * size + mode.tiny


def _kernel(mode: _BoundMode, size: torch.Tensor) -> torch.Tensor:
    """The spread of a transcendental kernel's own error at values of ``size``, and what underflow may lose."""
    return KERNEL_SPREAD * mode.unit * size + mode.tiny


def _mul(mode: _BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> Bounded:
    a, b = args[0], args[1]
    ba, bb = mode.bounded(a), mode.bounded(b)
    with mode.pause():
        ma, mb = _magnitude(a), _magnitude(b)
        carried = ba.error * mb + ma * bb.error + ba.error * bb.error
        spread = _quadrature(_scaled(ba.spread, mb), _scaled(bb.spread, ma), _rounding(mode, out.abs()))
        allowance = _sum(_scaled(ba.allowance, mb + bb.error), _scaled(bb.allowance, ma))
        local = _sum(_scaled(ba.local, mb * mb), _scaled(bb.local, ma * ma))
        return Bounded(carried + mode.own(out.abs() + carried, SCALAR_ULPS), spread, allowance, local=local)


def _div(mode: _BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> Bounded:
    a, b = args[0], args[1]
    if kwargs.get("rounding_mode") is not None:
        raise BoundError("no error rule for div with a rounding mode")
    ba, bb = mode.bounded(a), mode.bounded(b)
    with mode.pause():
        mb = _magnitude(b)
        room = mb - bb.error
        carried = torch.where(room > 0, (ba.error + out.abs() * bb.error) / room, math.inf)
        spread = _quadrature(_scaled(ba.spread, 1 / mb), _scaled(bb.spread, out.abs() / mb), _rounding(mode, out.abs()))
        inverse = torch.where(room > 0, 1 / room, math.inf)
        allowance = _sum(_scaled(ba.allowance, inverse), _scaled(bb.allowance, out.abs() * inverse))
        local = _sum(_scaled(ba.local, 1 / mb**2), _scaled(bb.local, (out / mb) ** 2))
        return Bounded(carried + mode.own(out.abs() + carried, SCALAR_ULPS), spread, allowance, local=local)


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
        constants = _rounded_constants(mode, func, args, kwargs, out)
        carried = torch.zeros_like(out) if constants is None else constants
        spreads: list[torch.Tensor] = []
        locals_: list[torch.Tensor] = []
        allowance = constants
        for index, value in enumerate(args):
            if not (isinstance(value, torch.Tensor) and value.is_floating_point()):
                continue
            bound = mode.bounded(value)
            if bool((bound.error > 0).any()):
                carried = carried + _change(func, args, kwargs, out, index, bound.error)
            reach = mode.reach(bound)
            if reach is not None and bool((reach > 0).any()):
                # the change over SPREADS spreads plus the allowance (and never past the worst case),
                # shared between the two parts of tier 2 in proportion
                reach = torch.minimum(reach, bound.error)
                change = _change(func, args, kwargs, out, index, reach)
                share = torch.where(reach > 0, change / reach, 0.0)
                if bound.spread is not None:
                    spreads.append(share * bound.spread)
                if bound.local is not None:
                    locals_.append(share**2 * bound.local)
                if bound.allowance is not None:
                    allowance = _sum(allowance, share * bound.allowance)
        local = _sum(*locals_)
        if packet in EXACT:
            return Bounded(carried, _quadrature(*spreads), allowance, local=local)
        size = TERMS[packet](args[0], out, **kwargs) if packet in TERMS else out.abs()
        basic = packet in BASIC
        ulps = BASIC_ULPS if basic else KERNEL_ULPS
        # at an infinite input (or output) the op's value is its limit: no rounding of its own
        limit = ~(size < math.inf) & (carried == 0)  # size is |f| or more: infinite or NaN where out is
        own = torch.where(limit, 0.0, mode.own(size + carried, ulps))
        rounding = torch.where(limit, 0.0, _rounding(mode, size, BASIC_ULPS) if basic else _kernel(mode, size))
    return Bounded(carried + own, _quadrature(*spreads, rounding), allowance, local=local)


def _change(func: Any, args: tuple, kwargs: dict, out: torch.Tensor, index: int, step: torch.Tensor) -> torch.Tensor:
    """The largest change of f when argument ``index`` moves by up to ``step`` either way (where step > 0)."""
    value = args[index]
    moved = []
    for sign in (1.0, -1.0):
        shifted = list(args)
        shifted[index] = value + sign * step
        moved.append((func(*shifted, **kwargs) - out).abs())
    return torch.where(step > 0, _nan_to_inf(torch.maximum(*moved)), 0.0)


def _rounded_constants(mode: _BoundMode, func: Any, args: tuple, kwargs: dict, out: torch.Tensor) -> torch.Tensor | None:
    """How far f moves when each of its float constants (a threshold, a slope) is rounded to the dtype."""
    change = None
    for index, value in enumerate(args):
        if isinstance(value, float) and math.isfinite(value):
            rounded = float(np.array(value, dtype=mode.narrow))
            if rounded != value:
                shifted = list(args)
                shifted[index] = rounded
                change = _sum(change, _nan_to_inf((func(*shifted, **kwargs) - out).abs()))
    return change


def _decision(mode: _BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> Bounded:
    """A comparison or logical op: 1 where the answer could go either way (tier 1: error; tier 2: allowance)."""
    packet = func.overloadpacket
    with mode.pause():
        if packet in (aten.logical_not, aten.bitwise_not):
            bound = mode.bounded(args[0])
            return Bounded(bound.error.clone(), None, bound.allowance)
        if packet in (aten.logical_and, aten.logical_or, aten.bitwise_and, aten.bitwise_or):
            first, second = mode.bounded(args[0]), mode.bounded(args[1])
            flags = [f for f in (first.allowance, second.allowance) if f is not None]
            return Bounded(torch.maximum(first.error, second.error), None,
                           torch.maximum(*flags) if len(flags) == 2 else (flags[0] if flags else None))
        if packet in (aten.isnan, aten.isinf, aten.isfinite, aten.signbit):
            return Bounded(torch.zeros_like(out, dtype=torch.float64))
        a, b = args[0], args[1]
        gap = (a - b).abs() if isinstance(b, torch.Tensor) else (a - float(b)).abs()
        first, second = mode.bounded(a), mode.bounded(b) if isinstance(b, torch.Tensor) else Bounded(torch.tensor(0.0))
        margin = first.error + second.error
        reach = _sum(mode.reach(first), mode.reach(second))
        near = None if reach is None else ((gap <= reach) & (reach > 0)).to(torch.float64)
        return Bounded(((gap <= margin) & (margin > 0)).to(torch.float64), None, near)


def _where(mode: _BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> Bounded:
    """where(c, a, b): the chosen branch's error, and where c is uncertain the jump between branches."""
    cond, a, b = args[0], args[1], args[2]
    bc, ba, bb = mode.bounded(cond), mode.bounded(a), mode.bounded(b)
    with mode.pause():
        ea, eb = ba.error, bb.error
        chosen = torch.where(cond, ea, eb)
        jump = (torch.as_tensor(a, dtype=torch.float64) - b).abs()
        error = torch.where(bc.error > 0, torch.maximum(chosen, jump + ea + eb), chosen)
        spread, local = _picked(cond, ba.spread, bb.spread, out), _picked(cond, ba.local, bb.local, out)
        allowance = _picked(cond, ba.allowance, bb.allowance, out)
        if bc.allowance is not None and bool((bc.allowance > 0).any()):
            # where the decision may flip, either branch, and the jump between them, is honest
            near = bc.allowance > 0
            spread = torch.where(near, torch.maximum(_full(ba.spread, out), _full(bb.spread, out)), _full(spread, out))
            local = torch.where(near, torch.maximum(_full(ba.local, out), _full(bb.local, out)), _full(local, out))
            flip = jump + _full(ba.allowance, out) + _full(bb.allowance, out)
            allowance = torch.where(near, torch.maximum(_full(allowance, out), flip), _full(allowance, out))
    return Bounded(error, spread, allowance, local=local)


def _picked(cond: torch.Tensor, a: torch.Tensor | None, b: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor | None:
    if a is None and b is None:
        return None
    return torch.where(cond, _full(a, out), _full(b, out))


def _softmax(mode: _BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> Bounded:
    """softmax: each p_i moves by p_i (e_i - sum_j p_j e_j); exp, the n-term sum and the division round."""
    x, dim = args[0], args[1]
    bound = mode.bounded(x)
    soft = func.overloadpacket is aten._softmax
    with mode.pause():
        e = bound.error
        p = out if soft else out.exp()
        weighted = e + (p * e).sum(dim, keepdim=True)
        n = x.shape[dim]
        shifted = _nan_to_inf((x - x.amax(dim, keepdim=True)).abs())  # its rounding moves exp(x - max) by u |x - max|
        # tier 2: e_i - sum_j p_j e_j with independent e: variances sigma_i^2 + sum_j p_j^2 sigma_j^2
        spread = None if bound.spread is None else \
            (bound.spread**2 + ((p * bound.spread) ** 2).sum(dim, keepdim=True)).sqrt()
        allowance = None if bound.allowance is None else bound.allowance + (p * bound.allowance).sum(dim, keepdim=True)
        # the shift x - max, exp, the n-term sum and the division (log: the log of the sum) each round
        own = mode.unit * (KERNEL_SPREAD**2 + ROUNDING * (shifted**2 + n + 2)).sqrt()  # relative
        if soft:
            ulps = KERNEL_ULPS + gamma(n, mode.unit) / mode.unit + 2 + shifted
            rounding = out * own + mode.tiny
            return Bounded(out * weighted + mode.own(out * ulps), _quadrature(_scaled(spread, out), rounding),
                           _scaled(allowance, out), local=_scaled(bound.local, out * out))
        log_sum = (out - x + x.amax(dim, keepdim=True)).abs()  # |log sum exp(x - max)|
        size = shifted + KERNEL_ULPS * log_sum + (n + KERNEL_ULPS) + out.abs()
        rounding = _quadrature(own * (1 + log_sum), _rounding(mode, out.abs()))
        return Bounded(weighted + mode.own(size), _quadrature(spread, rounding), allowance, local=bound.local)


def _reduce(mode: _BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> Bounded:
    """sum / mean over some dims: an n-term sum (mean then divides by n, one more rounding)."""
    x = args[0]
    bound = mode.bounded(x)
    with mode.pause():
        count = max(1, x.numel() // max(1, out.numel()))
        mean = func.overloadpacket is aten.mean
        total = out * count if mean else out
        summed = (lambda t: func(t, *args[1:], **kwargs) * (count if mean else 1))
        partial = Partial(summed(x.abs() + bound.error), count, summed(bound.error), summed(x * x),
                          torch.zeros_like(out) if bound.spread is None else summed(bound.spread**2))
        allowance = None if bound.allowance is None else summed(bound.allowance)
        result = _finished(mode, partial, total, allowance)
        if not mean:
            return result
        return Bounded(result.error / count + mode.own(out.abs()), _quadrature(result.spread / count,
                       _rounding(mode, out.abs())), _scaled(allowance, 1 / count), local=result.local / count**2)


def _glu(mode: _BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> Bounded:
    """a * sigmoid(b) over the two halves of ``dim``: elementwise in (a, b), with sigmoid's underflow."""
    x, dim = args[0], args[1] if len(args) > 1 else kwargs.get("dim", -1)
    bound = mode.bounded(x)
    with mode.pause():
        (a, b), (ea, eb) = x.chunk(2, dim), bound.error.chunk(2, dim)
        s = torch.sigmoid(b)
        moved = torch.maximum((torch.sigmoid(b + eb) - s).abs(), (torch.sigmoid(b - eb) - s).abs())
        # sigmoid(b) may underflow to a subnormal (or to 0) before a scales it up
        carried = _nan_to_inf(s * ea + (a.abs() + ea) * (moved + mode.tiny))
        slope = s * (1 - s)
        spread = allowance = local = None
        if bound.spread is not None:
            sa, sb = bound.spread.chunk(2, dim)
            spread = _quadrature(s * sa, a.abs() * slope * sb)
        if bound.allowance is not None:
            aa, ab = bound.allowance.chunk(2, dim)
            allowance = s * aa + (a.abs() + ea) * slope * ab
        if bound.local is not None:
            la, lb = bound.local.chunk(2, dim)
            local = s * s * la + (a * slope) ** 2 * lb
        # sigmoid(b) may underflow before a scales it up: |a| times what underflow may lose
        rounding = _quadrature(_kernel(mode, out.abs()), _rounding(mode, out.abs()), a.abs() * mode.tiny)
        return Bounded(carried + mode.own(out.abs() + carried, KERNEL_ULPS + 1), _quadrature(spread, rounding),
                       allowance, local=local)


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
    return torch.nan_to_num(error, nan=math.inf, posinf=math.inf, neginf=-math.inf)
