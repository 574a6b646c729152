"""``check_parity``: the exported model against the function's float64 value, within what float arithmetic allows.

Every probe (``export.parity.probes``) runs through onnxruntime and, with the same weights as exported,
through ``export.parity.bounds``: torch in float64 carrying both tiers of each output element's tolerance
(the worst case of any correct evaluation, and the spread of honest rounding). The ONNX output
passes where ``export.runtime.compare`` says so (within both tiers, NaN/inf where the function has
them); the same rule judges torch eager in float32 on this machine, and where torch fails it the
report says so (a kernel of this CPU), without excusing or blaming the export.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch

from export.onnx_export import DTYPES, eval_copy
from export.parity.bounds import bounded_run
from export.parity.probes import Probe, knees_of, make_probes
from export.runtime.compare import OutputVerdict, Tolerance, compare_output, jsonable
from zoo.errors import ZooError


class ParityError(ZooError):
    """The exported model does not compute the torch model's function; ``.report`` says where."""

    def __init__(self, report: ParityReport) -> None:
        self.report = report
        super().__init__(report.explain())


@dataclass
class ProbeSet:
    """The probe batches of one model and, stacked, their float64 reference and tolerance per output."""

    batches: list[Probe]
    references: list[np.ndarray]  # per output, (rows, ...) float64
    tolerances: list[Tolerance]

    @property
    def inputs(self) -> np.ndarray:
        """Every probe row, stacked."""
        return np.concatenate([p.data for p in self.batches])

    def split(self, stacked: np.ndarray) -> list[np.ndarray]:
        """A stacked array cut back into one piece per probe batch."""
        return np.split(stacked, np.cumsum([p.batch for p in self.batches])[:-1])

    def locate(self, row: int) -> tuple[str, int, list[float]]:
        """(probe name, row in that probe, the input row) for a stacked row."""
        for probe in self.batches:
            if row < probe.batch:
                return probe.name, row, probe.data[row].astype(float).tolist()
            row -= probe.batch
        raise IndexError(row)


@dataclass
class ParityReport:
    """The result of one parity check; ``ok`` is the verdict, the rest explains it."""

    path: str
    dtype: str
    probes: int
    rows: int
    batch_sizes: list[int]
    outputs: list[OutputVerdict] = field(default_factory=list)
    torch: list[OutputVerdict] = field(default_factory=list)  # torch eager in the export dtype, this machine
    worst_input: list[float] | None = None  # the input row of the worst element
    worst_probe: str | None = None
    culprit: str | None = None  # the first ONNX node whose value leaves its bound, and its torch module
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every output passes in every element class and nothing failed to run."""
        return not self.errors and bool(self.outputs) and all(o.ok for o in self.outputs)

    @property
    def worst_ratio(self) -> float:
        """The largest error of a finite element in units of its bound (at most 1 to pass)."""
        return max((o.worst_ratio for o in self.outputs), default=math.nan)

    @property
    def worst_statistical(self) -> float:
        """The largest error of a finite element in units of its statistical bound (at most 1 to pass)."""
        return max((o.worst_statistical for o in self.outputs), default=math.nan)

    @property
    def max_abs_error(self) -> float:
        """The largest absolute error of a finite element: informative only, the bound is the rule."""
        return max((o.max_abs_error for o in self.outputs), default=math.nan)

    @property
    def torch_ok(self) -> bool:
        """Whether torch eager on this machine meets the same bound (False: a torch kernel is off here)."""
        return all(o.ok for o in self.torch)

    def summary(self) -> str:
        """One line: verdict, the worst element in units of each tier, failures per class."""
        verdict = "PASS" if self.ok else "FAIL"
        if self.errors:
            return f"{verdict} {self.path}: {self.errors[0]}"
        parts = "; ".join(o.describe() for o in self.outputs)
        return f"{verdict} {self.path} [{self.dtype}, {self.rows} rows in {self.probes} probes]: {parts}"

    def explain(self) -> str:
        """The summary, the worst element and where it comes from, for an error message."""
        lines = [self.summary()]
        bad = next((o for o in self.outputs if not o.ok and o.worst), None)
        if bad is not None:
            w = bad.worst
            tiers = bad.explain_worst()
            lines.append(f"worst: output {bad.name!r} ({w.element_class}) on probe {self.worst_probe}, input "
                         f"{_short(self.worst_input)}: expected {w.reference!r}, got {w.actual!r}"
                         + (f", {tiers}" if tiers else ""))
        if self.culprit:
            lines.append(self.culprit)
        return "; ".join(lines)

    def torch_note(self) -> str | None:
        """What torch eager got wrong on this machine, or None."""
        bad = [o for o in self.torch if not o.ok]
        if not bad:
            return None
        return ("torch eager on this machine is outside the float bound too (its kernel, not the export): "
                + "; ".join(o.describe() for o in bad))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (non-finite floats become the strings 'nan', 'inf', '-inf')."""
        data = jsonable(self)
        for key, verdicts in (("outputs", self.outputs), ("torch", self.torch)):
            for entry, verdict in zip(data[key], verdicts):
                entry.update(ok=verdict.ok, finite_ok=verdict.finite_ok, summary=verdict.describe())
        data.update(ok=self.ok, worst_ratio=jsonable(self.worst_ratio),
                    worst_statistical=jsonable(self.worst_statistical), max_abs_error=jsonable(self.max_abs_error),
                    torch_ok=self.torch_ok, summary=self.summary())
        return data


def check_parity(
    model: torch.nn.Module,
    path: str | os.PathLike[str],
    *,
    dtype: str | None = None,
    strict: bool = True,
    explain: bool = True,
    seed: int = 0,
) -> ParityReport:
    """Check the ONNX file at ``path`` against ``model`` on every probe; raise ``ParityError`` if ``strict`` and not ok.

    ``dtype`` defaults to the one recorded in the model file. With ``explain``, a failure names the
    first ONNX node whose intermediate value leaves its bound (``export.parity.localize``).
    """
    report, _ = parity_run(model, path, dtype=dtype, explain=explain, seed=seed)
    if strict and not report.ok:
        raise ParityError(report)
    return report


def parity_run(model: torch.nn.Module, path: str | os.PathLike[str], *, dtype: str | None = None,
               explain: bool = True, seed: int = 0) -> tuple[ParityReport, ProbeSet]:
    """``check_parity`` without raising, with the probe set it judged (a bundle stores it)."""
    proto = onnx.load(os.fspath(path), load_external_data=False)
    dtype = dtype or _model_dtype(proto)
    if dtype not in DTYPES:
        raise ValueError(f"parity is defined for {sorted(DTYPES)}, not {dtype!r}")
    sample_shape = _sample_shape(proto)
    static = _static_batch(proto)
    with eval_copy(model, DTYPES[dtype]) as exported:
        probe_set = reference_probes(exported, sample_shape, dtype=dtype, seed=seed)
        torch_outputs = _run_torch(exported, probe_set.inputs)
        sizes = [static] if static else sorted({p.batch for p in probe_set.batches})
        report = ParityReport(os.fspath(path), dtype, len(probe_set.batches), len(probe_set.inputs), sizes)
        session = _session(path)
        names = [o.name for o in session.get_outputs()]
        if len(names) != len(probe_set.references):
            report.errors.append(
                f"the ONNX model has {len(names)} outputs, the torch model {len(probe_set.references)}")
        else:
            runs = [_run_session(session, p.data, static) for p in probe_set.batches]
            report.outputs = judge(names, [np.concatenate(parts) for parts in zip(*runs)], probe_set, dtype)
            report.torch = judge(names, torch_outputs, probe_set, dtype)
            _point_at_worst(report, probe_set)
        if explain and not report.ok and report.outputs:
            from export.parity.localize import first_failing_node

            report.culprit = first_failing_node(exported, proto, probe_set, report.outputs, dtype)
    return report, probe_set


def reference_probes(model: torch.nn.Module, sample_shape: tuple[int, ...], *, dtype: str, seed: int = 0) -> ProbeSet:
    """Every probe for ``model`` (in eval mode and the export dtype) with its float64 reference and bound."""
    batches = make_probes(math.prod(sample_shape), dtype=dtype, seed=seed, knees=knees_of(model))
    batches = [Probe(p.name, p.data.reshape(p.batch, *sample_shape)) for p in batches]
    run = bounded_run(model, np.concatenate([p.data for p in batches]), dtype=dtype)
    return ProbeSet(batches, run.outputs, run.tolerances)


def judge(names: list[str], outputs: list[np.ndarray], probe_set: ProbeSet, dtype: str) -> list[OutputVerdict]:
    """Each output against its reference and tolerance (``export.runtime.compare``)."""
    return [compare_output(name, actual, reference, tolerance, dtype=dtype)
            for name, actual, reference, tolerance in zip(names, outputs, probe_set.references, probe_set.tolerances)]


def _point_at_worst(report: ParityReport, probe_set: ProbeSet) -> None:
    bad = next((o for o in report.outputs if not o.ok and o.worst), None)
    if bad is not None:
        report.worst_probe, row, report.worst_input = probe_set.locate(bad.worst.index[0])
        report.worst_probe = f"{report.worst_probe} row {row}"


def _short(values: list[float] | None) -> str:
    if values is None:
        return "-"
    return str(values[:4])[:-1] + (", ...]" if len(values) > 4 else "]")


def _model_dtype(proto: onnx.ModelProto) -> str:
    recorded = {p.key: p.value for p in proto.metadata_props}.get("zoo.dtype")
    if recorded in DTYPES:
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
        return list(session.run(None, {name: x}))
    rows = np.arange(-(-len(x) // static) * static) % len(x)
    chunks = [session.run(None, {name: x[rows[i:i + static]]}) for i in range(0, len(rows), static)]
    return [np.concatenate(parts)[: len(x)] for parts in zip(*chunks)]


def _session(path: str | os.PathLike[str]) -> Any:
    import onnxruntime

    return onnxruntime.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])


def _run_torch(model: torch.nn.Module, x: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        outputs = model(torch.from_numpy(x))
    return [o.numpy() for o in (outputs if isinstance(outputs, (tuple, list)) else (outputs,))]
