"""``check_parity``: torch eager against onnxruntime on every probe, explained output by output."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
import torch

from export import probes as probe_inputs
from export import special_values
from export.onnx_export import DTYPES, eval_copy
from export.runtime.verify import referee
from zoo.errors import ZooError

# Per dtype: (rtol, atol) for np.isclose(onnx, torch).
TOLERANCES = {"float32": (1e-5, 1e-6), "float16": (1e-3, 1e-3)}
WORST_COUNT = 5


class ParityError(ZooError):
    """The exported model does not compute the torch model's function; ``.report`` says where."""

    def __init__(self, report: ParityReport) -> None:
        self.report = report
        super().__init__(report.explain())


@dataclass
class Mismatch:
    """One output element where onnxruntime and torch disagree beyond tolerance."""

    output: str
    probe: str
    row: int
    input: list[float]
    torch: float
    onnx: float
    float64: float  # torch in float64 on the same input: how far torch itself is from exact
    excess: float  # |onnx - torch| - (atol + rtol * |torch|); inf for a non-finite mismatch


@dataclass
class OutputStats:
    """Error statistics of one output over all probes (polygraphy style)."""

    name: str
    elements: int
    max_abs_error: float
    mean_abs_error: float
    median_abs_error: float
    p99_abs_error: float
    max_rel_error: float
    mean_rel_error: float
    median_rel_error: float
    p99_rel_error: float
    failing: int  # finite elements outside np.isclose(onnx, torch) that the float64 referee does not clear
    refereed: int  # cleared by the float64 referee: onnx no farther from float64 than torch (+ tol), or
    # both overflowed where torch's float32 sum overflowed and float64 did not
    nonfinite_mismatches: int  # positions where NaN / +inf / -inf differ from torch
    needed_atol: float  # the smallest atol that passes at this rtol
    needed_rtol: float  # the smallest rtol that passes at this atol
    excused: int  # elements where the torch reference was corrected (special_values)
    reference: str  # onnx.reference.ReferenceEvaluator's verdict against torch

    @property
    def ok(self) -> bool:
        """No element out of tolerance and every NaN/inf where torch has it."""
        return self.failing == 0 and self.nonfinite_mismatches == 0


@dataclass
class ParityReport:
    """The result of one parity check; ``ok`` is the verdict, the rest explains it."""

    path: str
    dtype: str
    rtol: float
    atol: float
    probes: int
    batch_sizes: list[int]
    outputs: list[OutputStats] = field(default_factory=list)
    worst: list[Mismatch] = field(default_factory=list)
    excuses: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every output passes and nothing failed to run."""
        return not self.errors and all(output.ok for output in self.outputs)

    @property
    def max_abs_error(self) -> float:
        """The largest absolute error over all outputs."""
        return max((o.max_abs_error for o in self.outputs), default=math.nan)

    @property
    def max_rel_error(self) -> float:
        """The largest relative error over all outputs."""
        return max((o.max_rel_error for o in self.outputs), default=math.nan)

    def summary(self) -> str:
        """One line: verdict, errors, failing counts and the tolerance that would have passed."""
        verdict = "PASS" if self.ok else "FAIL"
        if self.errors:
            return f"{verdict} {self.path}: {self.errors[0]}"
        failing = sum(o.failing for o in self.outputs)
        refereed = sum(o.refereed for o in self.outputs)
        nonfinite = sum(o.nonfinite_mismatches for o in self.outputs)
        elements = sum(o.elements for o in self.outputs)
        needed = max(o.needed_atol for o in self.outputs)
        where = f" ({refereed} more cleared by the float64 referee)" if refereed else ""
        return (
            f"{verdict} {self.path} [{self.dtype}, rtol={self.rtol:g}, atol={self.atol:g}]: "
            f"{failing}/{elements} out of tolerance{where}, {nonfinite} NaN/inf mismatches, "
            f"max abs {self.max_abs_error:.3g}, max rel {self.max_rel_error:.3g}, "
            f"needs atol {needed:.3g}; {self.probes} probes"
        )

    def explain(self) -> str:
        """The summary and the worst input, for an error message."""
        if not self.worst:
            return self.summary()
        w = self.worst[0]
        return (
            f"{self.summary()}; worst: output {w.output!r} on probe {w.probe} row {w.row} "
            f"input {w.input[:4]}: torch {w.torch!r}, onnx {w.onnx!r}, torch float64 {w.float64!r}"
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (non-finite floats become the strings 'nan', 'inf', '-inf')."""
        data = asdict(self)
        data.update(ok=self.ok, max_abs_error=self.max_abs_error, max_rel_error=self.max_rel_error)
        return _jsonable(data)


def check_parity(
    model: torch.nn.Module,
    path: str | os.PathLike[str],
    *,
    dtype: str | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    strict: bool = True,
    reference: bool = True,
    seed: int = 0,
) -> ParityReport:
    """Compare torch eager with onnxruntime on every probe; raise ``ParityError`` if ``strict`` and not ok.

    ``dtype`` defaults to the dtype recorded in the model file, ``rtol``/``atol`` to that dtype's
    tolerance. NaN/+inf/-inf must sit exactly where torch has them, except where
    ``export.special_values`` documents that torch itself is wrong.
    """
    proto = onnx.load(os.fspath(path), load_external_data=False)
    dtype = dtype or _model_dtype(proto)
    if dtype not in TOLERANCES:
        raise ValueError(f"parity is defined for {sorted(TOLERANCES)}, not {dtype!r}")
    default_rtol, default_atol = TOLERANCES[dtype]
    rtol = default_rtol if rtol is None else rtol
    atol = default_atol if atol is None else atol
    sample_shape = _sample_shape(proto)
    batches = probe_inputs.make_probes(math.prod(sample_shape), dtype=dtype, seed=seed)
    inputs = [p.data.reshape(p.batch, *sample_shape) for p in batches]
    static = _static_batch(proto)
    sizes = [static] if static else sorted({p.batch for p in batches})
    report = ParityReport(os.fspath(path), dtype, rtol, atol, len(batches), sizes)
    session = _session(path)
    with eval_copy(model, DTYPES[dtype]) as torch_model:
        raw = _run_torch(torch_model, inputs)
        with special_values.corrected(torch_model) as used:
            expected = _run_torch(torch_model, inputs) if used else raw
        # The same function in float64: from the weights as exported (float16 rounds them).
        with eval_copy(torch_model, torch.float64) as wide_model, special_values.corrected(wide_model):
            wide = _run_torch(wide_model, [x.astype(np.float64) for x in inputs])
    report.excuses = [e.describe() for e in used]
    actual = [_run_session(session, x, static) for x in inputs]
    names = [o.name for o in session.get_outputs()]
    evaluated = _run_reference(proto, inputs) if reference else "not run: reference=False"
    _compare(report, names, batches, raw, expected, actual, wide, evaluated)
    if strict and not report.ok:
        raise ParityError(report)
    return report


def _model_dtype(proto: onnx.ModelProto) -> str:
    recorded = {p.key: p.value for p in proto.metadata_props}.get("zoo.dtype")
    if recorded in TOLERANCES:
        return recorded
    elem_type = proto.graph.input[0].type.tensor_type.elem_type
    return str(onnx.helper.tensor_dtype_to_np_dtype(elem_type))


def _sample_shape(proto: onnx.ModelProto) -> tuple[int, ...]:
    """The input's shape after the batch axis (must be static)."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim[1:]
    if any(not d.dim_value for d in dims):
        raise ValueError("parity probes need a static shape after the batch axis")
    return tuple(d.dim_value for d in dims)


def _static_batch(proto: onnx.ModelProto) -> int | None:
    """The fixed batch size of a model exported with dynamic_batch=False, else None."""
    first = proto.graph.input[0].type.tensor_type.shape.dim[0]
    return None if first.dim_param or not first.dim_value else first.dim_value


def _run_session(session: Any, x: np.ndarray, static: int | None) -> list[np.ndarray]:
    """Run one probe; a static batch axis takes it in chunks of that size (the last one wrapped)."""
    name = session.get_inputs()[0].name
    if static is None:
        return _to_list(session.run(None, {name: x}))
    rows = np.arange(-(-len(x) // static) * static) % len(x)
    chunks = [session.run(None, {name: x[rows[i:i + static]]}) for i in range(0, len(rows), static)]
    return [np.concatenate(parts)[: len(x)] for parts in zip(*chunks)]


def _session(path: str | os.PathLike[str]) -> Any:
    import onnxruntime

    return onnxruntime.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])


def _run_torch(model: torch.nn.Module, inputs: list[np.ndarray]) -> list[list[np.ndarray]]:
    with torch.no_grad():
        return [_to_list(model(torch.from_numpy(x))) for x in inputs]


def _run_reference(proto: onnx.ModelProto, inputs: list[np.ndarray]) -> list[list[np.ndarray]] | str:
    """onnx.reference on every probe, or why it could not run."""
    from onnx.reference import ReferenceEvaluator

    try:
        evaluator = ReferenceEvaluator(proto)
        name = proto.graph.input[0].name
        with np.errstate(all="ignore"):
            return [_to_list(evaluator.run(None, {name: x})) for x in inputs]
    except Exception as error:  # noqa: BLE001 - the reference is an opinion, never a failure
        return f"not run: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def _to_list(outputs: Any) -> list[np.ndarray]:
    if isinstance(outputs, (list, tuple)):
        return [np.asarray(o.numpy() if isinstance(o, torch.Tensor) else o) for o in outputs]
    return [outputs.numpy() if isinstance(outputs, torch.Tensor) else np.asarray(outputs)]


def _compare(
    report: ParityReport,
    names: list[str],
    batches: list[probe_inputs.Probe],
    raw: list[list[np.ndarray]],
    expected: list[list[np.ndarray]],
    actual: list[list[np.ndarray]],
    wide: list[list[np.ndarray]],
    evaluated: list[list[np.ndarray]] | str,
) -> None:
    if len(actual[0]) != len(expected[0]):
        report.errors.append(f"onnx has {len(actual[0])} outputs, torch {len(expected[0])}")
        return
    for index, name in enumerate(names):
        bad = [p.name for p, e, a in zip(batches, expected, actual) if e[index].shape != a[index].shape]
        if bad:
            report.errors.append(f"output {name!r} has another shape than torch on probes {bad[:3]}")
            continue
        torch_out, onnx_out, exact = _stack(expected, index), _stack(actual, index), _stack(wide, index)
        stats, mismatches = _output_stats(name, torch_out, onnx_out, report.rtol, report.atol, exact)
        stats.excused = int(np.sum(~_same(torch_out, _stack(raw, index))))
        stats.reference = _reference_verdict(evaluated, index, torch_out, report.rtol, report.atol)
        report.outputs.append(stats)
        report.worst.extend(_locate(name, mismatches, (torch_out, onnx_out, exact), batches))
    report.worst = sorted(report.worst, key=lambda m: -m.excess)[:WORST_COUNT]


def _stack(results: list[list[np.ndarray]], index: int) -> np.ndarray:
    return np.concatenate([r[index].reshape(r[index].shape[0], -1) for r in results]).astype(np.float64)


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise: equal, or both NaN."""
    return (a == b) | (np.isnan(a) & np.isnan(b))


def _output_stats(
    name: str, expected: np.ndarray, actual: np.ndarray, rtol: float, atol: float, exact: np.ndarray | None = None
) -> tuple[OutputStats, np.ndarray]:
    """Statistics and, per element, how far beyond tolerance it is (inf for NaN/inf mismatches).

    With ``exact`` (the same model run in float64), the float64 referee of
    ``export.runtime.verify.referee`` clears torch's own float32 rounding and overflow.
    """
    finite = np.isfinite(expected) & np.isfinite(actual)
    nonfinite_bad = ~finite & ~_same(expected, actual)
    cleared = overflowed = np.zeros(expected.shape, bool)
    if exact is not None:
        cleared, overflowed = referee(actual, expected, exact, rtol=rtol, atol=atol)
        nonfinite_bad &= ~overflowed
    scale = np.abs(expected)
    with np.errstate(all="ignore"):
        abs_err = np.where(finite, np.abs(actual - expected), 0.0)
        rel_err = np.where(abs_err == 0, 0.0, abs_err / scale)
        needed_rtol = np.where(abs_err <= atol, 0.0, (abs_err - atol) / scale)
    excess = np.where(nonfinite_bad, np.inf, abs_err - (atol + rtol * scale))
    failing = finite & (excess > 0) & ~cleared
    abs_f, rel_f = abs_err[finite], rel_err[finite]
    stats = OutputStats(
        name=name,
        elements=int(expected.size),
        max_abs_error=_stat(np.max, abs_f),
        mean_abs_error=_stat(np.mean, abs_f),
        median_abs_error=_stat(np.median, abs_f),
        p99_abs_error=_stat(_p99, abs_f),
        max_rel_error=_stat(np.max, rel_f),
        mean_rel_error=_stat(np.mean, rel_f),
        median_rel_error=_stat(np.median, rel_f),
        p99_rel_error=_stat(_p99, rel_f),
        failing=int(failing.sum()),
        refereed=int(cleared.sum() + overflowed.sum()),
        nonfinite_mismatches=int(nonfinite_bad.sum()),
        needed_atol=_stat(np.max, np.maximum(abs_f - rtol * scale[finite], 0.0)),
        needed_rtol=_stat(np.max, needed_rtol[finite]),
        excused=0,
        reference="",
    )
    return stats, np.where(failing | nonfinite_bad, excess, -np.inf)


def _p99(values: np.ndarray) -> float:
    return float(np.percentile(values, 99, method="nearest"))  # no interpolation between inf values


def _stat(function: Any, values: np.ndarray) -> float:
    return float(function(values)) if values.size else 0.0


def _locate(
    name: str, excess: np.ndarray, values: tuple[np.ndarray, np.ndarray, np.ndarray], batches: list[probe_inputs.Probe]
) -> list[Mismatch]:
    """The worst mismatching elements of one output, traced back to their probe and row."""
    flat = excess.reshape(-1)
    worst = [i for i in np.argsort(-flat, kind="stable")[:WORST_COUNT] if flat[i] > -np.inf]
    starts = np.cumsum([0] + [p.batch for p in batches])
    width = excess.shape[1]
    found = []
    for position in worst:
        row = int(position // width)
        probe = int(np.searchsorted(starts, row, side="right") - 1)
        local = row - int(starts[probe])
        row_input = batches[probe].data[local].astype(float).tolist()
        at = [float(v.flat[position]) for v in values]
        found.append(Mismatch(name, batches[probe].name, local, row_input, *at, float(flat[position])))
    return found


def _reference_verdict(
    evaluated: list[list[np.ndarray]] | str, index: int, expected: np.ndarray, rtol: float, atol: float
) -> str:
    if isinstance(evaluated, str):
        return evaluated
    stats, _ = _output_stats("reference", expected, _stack(evaluated, index), rtol, atol)
    if stats.ok:
        return "agrees with torch"
    return f"disagrees with torch: {stats.failing} out of tolerance, {stats.nonfinite_mismatches} NaN/inf"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
