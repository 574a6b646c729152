"""``check_parity``: the exported model against the function's float64 value, within what float arithmetic allows.

Every probe (``export.parity.probes``) runs through onnxruntime and, with the same weights as exported,
through ``export.parity.bounds``: torch in float64 carrying both tiers of each output element's tolerance
(the worst case of any correct evaluation, and the spread of honest rounding). The ONNX output
passes where ``export.runtime.compare`` says so (within both tiers, NaN/inf where the function has
them); the same rule judges torch eager in float32 on this machine, and where torch fails it the
report says so (a kernel of this CPU), without excusing or blaming the export.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch

from export.onnx_export import DTYPES, SAMPLE_SHAPE_KEY, eval_copy
from export.parity.bounds import BoundedRun, bounded_run
from export.parity.errors import ParityError
from export.parity.probes import PROBE_ELEMENTS, Probe, knees_of, make_probes
from export.runtime.compare import (
    OutputVerdict,
    Tolerance,
    batch_slices,
    compare_output,
    jsonable,
    locate_batch,
    stack_batches,
)
from zoo.models import EXAMPLE_LENGTH


@dataclass
class ProbeSet:
    """The probe batches of one model and, stacked (``stack_batches``), their float64 reference and tolerance
    per output."""

    batches: list[Probe]
    references: list[np.ndarray]  # per output: every batch's float64 value, stacked
    tolerances: list[Tolerance]
    shapes: list[list[tuple[int, ...]]] = field(default_factory=list)  # per output, each batch's; [] stacked by rows

    @classmethod
    def of(cls, batches: list[Probe], values: list[list[np.ndarray]], bounds: list[list[Tolerance]]) -> ProbeSet:
        """A probe set from each batch's reference and tolerance per output."""
        per_output = list(zip(*values))
        return cls(batches, [stack_batches(parts) for parts in per_output],
                   [Tolerance.stack(parts) for parts in zip(*bounds)],
                   [[part.shape for part in parts] for parts in per_output])

    @property
    def inputs(self) -> np.ndarray:
        """Every probe row, stacked (all batches hold samples of one shape)."""
        if len({p.data.shape[1:] for p in self.batches}) > 1:
            raise ValueError("the probe batches hold samples of several shapes; read them from .batches")
        return np.concatenate([p.data for p in self.batches])

    def stack(self, per_batch: list[list[np.ndarray]]) -> list[np.ndarray]:
        """Each batch's outputs (one list per batch) as one array per output, stacked as the references are."""
        return [stack_batches(parts) for parts in zip(*per_batch)]

    def piece(self, output: int, batch: int) -> tuple[np.ndarray, Tolerance]:
        """One batch's reference and tolerance of one output, in the batch's own shape."""
        shapes = self._shapes(output)
        where, shape = batch_slices(shapes)[batch], shapes[batch]
        tolerance = self.tolerances[output].rows(where)
        return self.references[output][where].reshape(shape), Tolerance(
            *(getattr(tolerance, f).reshape(shape) for f in ("bound", "spread", "allowance")))

    def locate(self, output: int, index: list[int]) -> tuple[Probe, int]:
        """The probe batch and row of an element of a stacked output."""
        batch, row = locate_batch(self._shapes(output), index)
        return self.batches[batch], row

    def _shapes(self, output: int) -> list[tuple[int, ...]]:
        if self.shapes:
            return self.shapes[output]
        rest = self.references[output].shape[1:]
        return [(p.batch, *rest) for p in self.batches]


@dataclass
class ParityReport:
    """The result of one parity check; ``ok`` is the verdict, the rest explains it."""

    path: str
    dtype: str
    probes: int
    rows: int
    batch_sizes: list[int]
    elements: int = 0  # input elements over every probe batch
    sample_shapes: list[list[int]] = field(default_factory=list)  # every sample shape probed (one per length)
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
        return (f"{verdict} {self.path} [{self.dtype}, {self.rows} rows ({self.elements} elements) in "
                f"{self.probes} probe batches]: {parts}")

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
    budget: int = PROBE_ELEMENTS,
) -> ParityReport:
    """Check the ONNX file at ``path`` against ``model`` on every probe; raise ``ParityError`` if ``strict`` and not ok.

    ``dtype`` defaults to the one recorded in the model file. The probes' sample shape, and which of
    its axes take any size, come from the file's input (``export.parity.probes``; ``budget`` input
    elements). With ``explain``, a failure names the first ONNX node whose intermediate value leaves
    its bound (``export.parity.localize``). An op the bounds pass has no rule for raises
    ``export.parity.bounds.BoundError``, a ``ParityError`` too.
    """
    report, _ = parity_run(model, path, dtype=dtype, explain=explain, seed=seed, budget=budget)
    if strict and not report.ok:
        raise ParityError(report)
    return report


def parity_run(model: torch.nn.Module, path: str | os.PathLike[str], *, dtype: str | None = None,
               explain: bool = True, seed: int = 0, budget: int = PROBE_ELEMENTS) -> tuple[ParityReport, ProbeSet]:
    """``check_parity`` without raising, with the probe set it judged (a bundle stores it)."""
    proto = onnx.load(os.fspath(path), load_external_data=False)
    dtype = dtype or _model_dtype(proto)
    if dtype not in DTYPES:
        raise ValueError(f"parity is defined for {sorted(DTYPES)}, not {dtype!r}")
    sample_shape, dynamic = sample_shape_of(proto)
    static = _static_batch(proto)
    with eval_copy(model, DTYPES[dtype]) as exported:
        probe_set = reference_probes(exported, sample_shape, dtype=dtype, seed=seed, budget=budget, dynamic=dynamic)
        batches = probe_set.batches
        torch_outputs = probe_set.stack([_run_torch(exported, p.data) for p in batches])
        sizes = [static] if static else sorted({p.batch for p in batches})
        shapes = sorted({p.data.shape[1:] for p in batches})
        report = ParityReport(os.fspath(path), dtype, len(batches), sum(p.batch for p in batches), sizes,
                              elements=sum(p.data.size for p in batches), sample_shapes=[list(s) for s in shapes])
        session = _session(path)
        names = [o.name for o in session.get_outputs()]
        if len(names) != len(probe_set.references):
            report.errors.append(
                f"the ONNX model has {len(names)} outputs, the torch model {len(probe_set.references)}")
        else:
            runs = _run_all(session, batches, static, report)
            if runs is not None:
                report.outputs = judge(names, probe_set.stack(runs), probe_set, dtype)
                report.torch = judge(names, torch_outputs, probe_set, dtype)
                _point_at_worst(report, probe_set)
        if explain and not report.ok and report.outputs:
            from export.parity.localize import first_failing_node

            report.culprit = first_failing_node(exported, proto, probe_set, report.outputs, dtype)
    return report, probe_set


def reference_probes(model: torch.nn.Module, sample_shape: tuple[int, ...], *, dtype: str, seed: int = 0,
                     budget: int = PROBE_ELEMENTS, dynamic: tuple[int, ...] = ()) -> ProbeSet:
    """Every probe for ``model`` (in eval mode and the export dtype) with its float64 reference and bound.

    ``dynamic`` lists the axes of ``sample_shape`` that take any size (``make_probes``). The bounds
    pass runs once per sample shape, in chunks (``bounded_run``).
    """
    batches = make_probes(sample_shape or (1,), dtype=dtype, seed=seed, knees=knees_of(model), budget=budget,
                          dynamic=dynamic)
    batches = [Probe(p.name, p.data.reshape(p.batch, *sample_shape), p.labels) if not sample_shape else p
               for p in batches]
    values: list[list[np.ndarray]] = [[] for _ in batches]
    bounds: list[list[Tolerance]] = [[] for _ in batches]
    for shape in dict.fromkeys(p.data.shape[1:] for p in batches):
        members = [i for i, p in enumerate(batches) if p.data.shape[1:] == shape]
        run = _bounded_at(model, np.concatenate([batches[i].data for i in members]), dtype, dynamic)
        ends = np.cumsum([batches[i].batch for i in members])
        for i, end in zip(members, ends):
            rows = slice(int(end) - batches[i].batch, int(end))
            values[i] = [output[rows] for output in run.outputs]
            bounds[i] = [tolerance.rows(rows) for tolerance in run.tolerances]
    return ProbeSet.of(batches, values, bounds)


def _bounded_at(model: torch.nn.Module, x: np.ndarray, dtype: str, dynamic: tuple[int, ...]) -> BoundedRun:
    """The bounds pass on samples of one shape; a model that cannot take that shape on an axis of any size is
    a ParityError saying so."""
    try:
        return bounded_run(model, x, dtype=dtype)
    except ParityError:
        raise
    except Exception as error:
        if not dynamic:
            raise
        text = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ParityError(f"the torch model fails on inputs of shape {list(x.shape[1:])}, but the ONNX input takes "
                          f"any size on axis {', '.join(str(a + 1) for a in dynamic)}: {type(error).__name__}: {text}; "
                          "export without that dynamic axis, or make the model take any size there") from error


def judge(names: list[str], outputs: list[np.ndarray], probe_set: ProbeSet, dtype: str) -> list[OutputVerdict]:
    """Each output (stacked as ``probe_set.stack`` does) against its reference and tolerance (``export.runtime.compare``)."""
    return [compare_output(name, actual, reference, tolerance, dtype=dtype)
            for name, actual, reference, tolerance in zip(names, outputs, probe_set.references, probe_set.tolerances)]


def worst_row(outputs: list[OutputVerdict], probe_set: ProbeSet) -> tuple[Probe, int] | None:
    """The probe batch and row of the worst element of the first failing output, or None when all pass."""
    bad = next((k for k, o in enumerate(outputs) if not o.ok and o.worst), None)
    return None if bad is None else probe_set.locate(bad, outputs[bad].worst.index)


def _point_at_worst(report: ParityReport, probe_set: ProbeSet) -> None:
    found = worst_row(report.outputs, probe_set)
    if found is not None:
        probe, row = found
        report.worst_probe = f"{probe.label(row)} (batch {probe.name!r} row {row})"
        report.worst_input = probe.data[row].astype(float).ravel().tolist()


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


def sample_shape_of(proto: onnx.ModelProto) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The input's shape after the batch axis, and which of those axes take any size (a symbolic dim).

    Such an axis has the size it had in the example the model was exported with (``zoo.sample_shape``
    in its metadata, written by ``to_onnx``), else ``zoo.models.EXAMPLE_LENGTH``.
    """
    tensor = proto.graph.input[0].type.tensor_type
    if not tensor.HasField("shape") or not tensor.shape.dim:
        raise ValueError(f"the ONNX input {proto.graph.input[0].name!r} declares no shape; parity probes need one")
    dims = tensor.shape.dim[1:]
    recorded = _recorded_sample_shape(proto)
    example = recorded if recorded is not None and len(recorded) == len(dims) else [EXAMPLE_LENGTH] * len(dims)
    shape = tuple(d.dim_value or example[axis] for axis, d in enumerate(dims))
    return shape, tuple(axis for axis, d in enumerate(dims) if not d.dim_value)


def _recorded_sample_shape(proto: onnx.ModelProto) -> list[int] | None:
    text = {p.key: p.value for p in proto.metadata_props}.get(SAMPLE_SHAPE_KEY)
    try:
        shape = json.loads(text) if text else None
    except ValueError:
        return None
    ok = isinstance(shape, list) and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)
    return shape if ok else None


def _static_batch(proto: onnx.ModelProto) -> int | None:
    """The fixed batch size of a model exported with dynamic_batch=False, else None."""
    first = proto.graph.input[0].type.tensor_type.shape.dim[0]
    return None if first.dim_param or not first.dim_value else first.dim_value


def _run_all(session: Any, batches: list[Probe], static: int | None, report: ParityReport) -> list[list[np.ndarray]] | None:
    """Every probe batch through onnxruntime, or None with the reason in ``report.errors`` when one fails."""
    runs = []
    for probe in batches:
        try:
            runs.append(_run_session(session, probe.data, static))
        except Exception as error:  # noqa: BLE001 - onnxruntime raises its own types; the report says where
            text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            report.errors.append(f"onnxruntime fails on probe batch {probe.name!r} of shape {list(probe.data.shape)}: "
                                 f"{text}")
            return None
    return runs


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
