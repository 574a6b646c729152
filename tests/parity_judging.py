"""Judging plain torch models as ``check_parity`` does, sharing the costly parts between tests.

A ``Judged`` model is exported once per (exporter, dtype, opset); ``check_parity`` runs once per dtype
(the probes and their float64 reference with both tiers are the expensive part), and every other
export, runtime and mutant of the model is judged by ``export.parity.check.judge`` on those same
probes, exactly as check_parity judges its own onnxruntime run.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Callable

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from bench.variants import initializer, ort_session
from export import to_onnx
from export.parity import judge
from export.parity.check import ParityReport, ProbeSet, parity_run
from export.parity.probes import PROBE_ELEMENTS
from export.runtime.compare import OutputVerdict, compare_output

Run = Callable[[np.ndarray], list[np.ndarray]]
Edit = Callable[[onnx.ModelProto], None]


class Judged:
    """One model, its exports, and check_parity's probes for each dtype."""

    def __init__(self, model: torch.nn.Module, example: torch.Tensor, root: pathlib.Path, *, budget: int = PROBE_ELEMENTS,
                 base: str = "torchscript", **defaults: object) -> None:
        """``defaults`` are export options every export of the model takes (``dynamic_axes``, ...); ``base`` is the
        exporter whose export check_parity runs on (the others are judged on its probes)."""
        self.model, self.example, self.root, self.budget, self.base = model.eval(), example, root, budget, base
        self.defaults = defaults
        self.paths: dict[tuple, pathlib.Path] = {}
        self.checked: dict[str, tuple[ParityReport, ProbeSet]] = {}
        self.seconds: dict[str, float] = {}

    def export(self, exporter: str = "torchscript", dtype: str = "float32", **options: object) -> pathlib.Path:
        """The model exported with these options (once)."""
        key = (exporter, dtype, *sorted(options.items()))
        if key not in self.paths:
            path = self.root / ("-".join(str(k) for k in key).replace("(", "").replace(")", "") + ".onnx")
            self.paths[key] = to_onnx(self.model, path, example_input=self.example, exporter=exporter, dtype=dtype,
                                      **{**self.defaults, **options})
        return self.paths[key]

    def check(self, dtype: str) -> tuple[ParityReport, ProbeSet]:
        """check_parity of the base exporter's export in ``dtype`` (once: ``parity_run``, which it raises from), with
        the probes it judged."""
        if dtype not in self.checked:
            path = self.export(self.base, dtype)
            start = time.perf_counter()
            self.checked[dtype] = parity_run(self.model, path, budget=self.budget)
            self.seconds[dtype] = time.perf_counter() - start
        return self.checked[dtype]

    def report(self, exporter: str, dtype: str) -> ParityReport:
        """What check_parity says of this exporter's export: its own run for the base exporter, the same probes for
        the other."""
        report = self.check(dtype)[0]
        if exporter == self.base:
            return report
        path = self.export(exporter, dtype)
        judged = ParityReport(str(path), dtype, report.probes, report.rows, report.batch_sizes)
        judged.outputs = self.verdicts(onnxruntime_run(path), dtype)
        return judged

    def verdicts(self, run: Run, dtype: str, rows: Callable[[np.ndarray], np.ndarray] | None = None
                 ) -> list[OutputVerdict]:
        """Every output of ``run`` over the dtype's probes (only the ``rows`` it selects), as check_parity judges."""
        _, probes = self.check(dtype)
        outputs = probes.stack([run(p.data) for p in probes.batches])
        names = [f"output{i}" for i in range(len(outputs))]
        if rows is None:
            return judge(names, outputs, probes, dtype)
        keep = rows(probes.inputs)
        return [compare_output(name, actual[keep], reference[keep], tolerance.rows(keep), dtype=dtype)
                for name, actual, reference, tolerance in zip(names, outputs, probes.references, probes.tolerances)]

    def mutant(self, edit: Edit, dtype: str = "float32", exporter: str = "torchscript") -> list[OutputVerdict]:
        """The verdicts on the export with one ``edit`` (a wrong constant or weight), run by onnxruntime."""
        proto = onnx.load(str(self.export(exporter, dtype)))
        edit(proto)
        onnx.checker.check_model(proto, full_check=True)
        return self.verdicts(onnxruntime_run(proto), dtype)


def unconstrained_ordinary_rows(probes: ProbeSet, largest: float = 10.0) -> list[str]:
    """The probe rows of N(0, 1) values at scales up to ``largest`` where some output element has neither tier
    finite: none, or the check would pass anything there."""
    bad = []
    for b, probe in enumerate(probes.batches):
        rows = [r for r in range(probe.batch) if _scale(probe.label(r)) <= largest]
        for output in range(len(probes.references)):
            tolerance = probes.piece(output, b)[1]
            judged = (np.isfinite(tolerance.bound) | np.isfinite(tolerance.statistical())).reshape(probe.batch, -1)
            bad += [probe.label(r) for r in rows if not judged[r].all()]
    return bad


def _scale(label: str) -> float:
    """The scale of a random probe row ('random(scale=0.1) row 3'), inf for any other row."""
    if not label.startswith("random(scale="):
        return np.inf
    return float(label.removeprefix("random(scale=").split(")")[0])


def passed(verdicts: list[OutputVerdict]) -> bool:
    return all(v.ok for v in verdicts)


def describe(verdicts: list[OutputVerdict]) -> str:
    return "; ".join(v.describe() for v in verdicts)


def onnxruntime_run(model: onnx.ModelProto | pathlib.Path, level: str = "all", threads: int = 0) -> Run:
    """Every output of onnxruntime's CPU provider at an optimisation level and thread count (0: its default)."""
    session = ort_session(model, level=level, threads=threads)
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


# ---------------------------------------------------------------------------- graph edits (mutants)


def scaled_element(shape: tuple[int, ...], columns: slice, factor: float) -> Edit:
    """Multiply the largest element among ``columns`` of the one initializer of ``shape`` by ``factor``: one key
    weight of an attention's (width, 3 width) input projection."""
    def edit(proto: onnx.ModelProto) -> None:
        tensor = next(i for i in proto.graph.initializer if tuple(i.dims) == shape)
        array = numpy_helper.to_array(tensor)
        wide = array.astype(np.float64)
        part = wide[:, columns]
        part[np.unravel_index(np.argmax(np.abs(part)), part.shape)] *= factor
        wide[:, columns] = part
        tensor.CopyFrom(numpy_helper.from_array(wide.astype(array.dtype), tensor.name))
    return edit


def scaled_attribute(op_type: str, attribute: str, factor: float) -> Edit:
    """Multiply a float attribute (a norm's epsilon) of every ``op_type`` node by ``factor``."""
    def edit(proto: onnx.ModelProto) -> None:
        nodes = [n for n in proto.graph.node if n.op_type == op_type]
        assert nodes, f"no {op_type} node"
        for node in nodes:
            found = next(a for a in node.attribute if a.name == attribute)
            found.f = float(np.float32(found.f * factor))
    return edit


def scaled_input(op_type: str, index: int, factor: float) -> Edit:
    """Multiply what feeds input ``index`` of every ``op_type`` node by ``factor``: a Mul node in between."""
    return _interposed(op_type, index, "Mul", factor, "scaled")


def shifted_input(op_type: str, index: int, offsets: list[float]) -> Edit:
    """Add ``offsets`` (along the last axis) to what feeds input ``index`` of every ``op_type`` node: an Add node
    in between (a softmax's scores, one key favoured)."""
    return _interposed(op_type, index, "Add", offsets, "shifted")


def _interposed(op_type: str, index: int, op: str, constant: float | list[float], tag: str) -> Edit:
    """Put ``op`` with ``constant`` (in the input's dtype) between input ``index`` of every ``op_type`` node and
    what feeds it."""
    def edit(proto: onnx.ModelProto) -> None:
        nodes = [n for n in proto.graph.node if n.op_type == op_type]
        assert nodes, f"no {op_type} node"
        dtype = _value_dtype(proto, nodes[0].input[index])
        for k, node in enumerate(nodes):
            source, changed, name = node.input[index], f"mutant_{tag}_{k}", f"mutant_{tag}_constant_{k}"
            proto.graph.initializer.append(numpy_helper.from_array(np.array(constant, dtype), name))
            position = list(proto.graph.node).index(node)
            proto.graph.node.insert(position, helper.make_node(op, [source, name], [changed]))
            node.input[index] = changed
    return edit


def _value_dtype(proto: onnx.ModelProto, name: str) -> np.dtype:
    inferred = onnx.shape_inference.infer_shapes(proto).graph
    for value in [*inferred.value_info, *inferred.input, *inferred.output]:
        if value.name == name:
            return helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
    return numpy_helper.to_array(initializer(proto, name)).dtype
