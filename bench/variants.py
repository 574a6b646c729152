"""Honest evaluations and wrong exports of one model: what a parity judge must pass and what it must catch.

An *honest* variant is another correct evaluation of the model in its dtype: onnxruntime at every
optimisation level and thread count, either exporter at other opsets, upstream's plain export
where it computes the function, sums re-associated inside the graph, numpy kernels (onnx's
reference evaluator) summing every dot product sequentially, in reverse, with FMA, bias first or
through BLAS, the graph computing in float64, OpenVINO and tract where they compute the function.

A *mutant* is the project's own export with one systematic error, edited with the onnx API: one
influential weight, a bias, the output scale, a constant or a slope off by a small relative amount.

Each variant is a function from an input batch to the first output, so every judge sees the same
inputs. tests/test_mutants.py runs a few of each; bench/power.py measures them all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import math
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from export import lowerings
from export.onnx_export import to_onnx

Run = Callable[[np.ndarray], np.ndarray]
Edit = Callable[[onnx.ModelProto], None]
LEVELS = {
    "disable_all": onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
# How numpy sums each dot product (the reference evaluator's Gemm and MatMul, replaced).
SUM_ORDERS = ("sequential", "reversed", "fma", "bias-first", "blas")
# Rows OpenVINO and tract are judged on: they have their own NaN semantics (OpenVINO's Relu maps NaN
# to 0, tract's Tanh too) and OpenVINO's fused GELU overflows near 3e38 (README: runtime table).
RUNTIME_RANGE = 1e30
CHUNK = 2048


@dataclasses.dataclass(frozen=True)
class Variant:
    """One evaluation of a model: honest or a mutant, and the input rows it is judged on (None: all)."""

    name: str
    honest: bool
    run: Run
    rows: Callable[[np.ndarray], np.ndarray] | None = None

    def where(self, x: np.ndarray) -> np.ndarray:
        """The mask of rows of ``x`` this variant is judged on."""
        return np.ones(len(x), bool) if self.rows is None else self.rows(x)


# ---------------------------------------------------------------------------- runners


def ort_session(model: onnx.ModelProto | str | Path, *, level: str = "all",
                threads: int = 0) -> onnxruntime.InferenceSession:
    """onnxruntime's CPU provider at an optimisation level (LEVELS) and thread count (0: its default)."""
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = LEVELS[level]
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def onnx_runner(model: onnx.ModelProto | str | Path, *, level: str = "all", threads: int = 0) -> Run:
    """The first output of ``ort_session(model, level, threads)``, run in chunks of rows."""
    session = ort_session(model, level=level, threads=threads)
    name = session.get_inputs()[0].name
    return lambda x: _chunked(lambda part: session.run(None, {name: part})[0], x)


def numpy_runner(model: onnx.ModelProto, order: str) -> Run:
    """onnx's reference evaluator (numpy kernels) with every Gemm and MatMul summed in ``order``."""
    ops = [type(op, (_Summed,), {"order": order}) for op in ("Gemm", "MatMul")]
    evaluator = ReferenceEvaluator(model, new_ops=ops)
    name = model.graph.input[0].name
    return lambda x: _chunked(lambda part: evaluator.run(None, {name: part})[0], x, rows=256)


def _chunked(run: Run, x: np.ndarray, rows: int = CHUNK) -> np.ndarray:
    return np.concatenate([run(x[i:i + rows]) for i in range(0, len(x), rows)])


class _Summed(OpRun):
    """Gemm / MatMul in float32 with the dot products summed term by term in a chosen order."""

    op_domain = ""
    order = "sequential"

    def _run(self, a, b, c=None, alpha=None, beta=None, transA=None, transB=None):
        a = a.T if transA else a
        b = b.T if transB else b
        if (alpha or 1.0) != 1.0 or (c is not None and (beta or 1.0) != 1.0):
            raise NotImplementedError("Gemm with alpha or beta other than 1")
        bias = None if c is None else np.broadcast_to(c, (*a.shape[:-1], b.shape[-1])).astype(np.float32)
        with np.errstate(over="ignore", invalid="ignore"):  # probes at the float range overflow, as float32 does
            return (dot(a, b, bias, self.order),)


def dot(a: np.ndarray, b: np.ndarray, bias: np.ndarray | None, order: str) -> np.ndarray:
    """a @ b (+ bias) in float32, each output's terms added one at a time in ``order`` (see SUM_ORDERS)."""
    if order == "blas":
        y = np.matmul(a, b).astype(np.float32)
        return y if bias is None else (y + bias).astype(np.float32)
    terms = a[..., :, None].astype(np.float64) * b.astype(np.float64)  # (..., n, m), exact
    if order != "fma":
        terms = terms.astype(np.float32).astype(np.float64)  # each product rounds on its own
    if order == "reversed":
        terms = terms[..., ::-1, :]
    total = np.zeros(terms.shape[:-2] + terms.shape[-1:], np.float32)
    if bias is not None and order == "bias-first":
        total = bias.astype(np.float32)
    for k in range(terms.shape[-2]):
        total = (total.astype(np.float64) + terms[..., k, :]).astype(np.float32)
    if bias is not None and order != "bias-first":
        total = (total + bias).astype(np.float32)
    return total


def torch_runner(model: torch.nn.Module) -> Run:
    """torch eager in the model's dtype."""
    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()
    return run


def runtime_rows(x: np.ndarray) -> np.ndarray:
    """Rows where OpenVINO and tract compute the function: no NaN, no infinity, below RUNTIME_RANGE.

    An infinite input makes NaN inside a norm (x - mean), which their Relu maps to 0: their NaN semantics.
    """
    magnitude = np.abs(x.reshape(len(x), -1).astype(np.float64))  # float16 holds neither 1e30 nor a finite bound
    return (magnitude < RUNTIME_RANGE).all(1)  # False at NaN and at +-inf


# ---------------------------------------------------------------------------- honest variants


def honest(model: torch.nn.Module, proto: onnx.ModelProto, *, example: torch.Tensor,
           exporters: bool = True, plain: bool = True, runtimes: bool = True, threads: bool = True) -> list[Variant]:
    """Every honest evaluation of ``model`` (exported as ``proto``) that this machine can run."""
    variants = [Variant(f"onnxruntime {level}", True, onnx_runner(proto, level=level)) for level in LEVELS]
    if threads:
        variants += [Variant(f"onnxruntime {n} thread{'s' * (n > 1)}", True, onnx_runner(proto, threads=n))
                     for n in (1, 2)]
    variants += [Variant(f"numpy, {order} sums", True, numpy_runner(proto, order)) for order in SUM_ORDERS]
    variants += [Variant(f"sums {name}", True, onnx_runner(_edited(proto, edit))) for name, edit in REASSOCIATED]
    variants.append(Variant("float64 graph", True, onnx_runner(_exported(model, example, compute="float64"))))
    if exporters:
        from export.parity.matrix import opsets
        for exporter in ("torchscript", "dynamo"):
            if exporter == "dynamo" and importlib.util.find_spec("onnxscript") is None:
                continue
            for opset in opsets(exporter, quick=True):
                exported = _exported(model, example, exporter=exporter, opset=opset)
                variants.append(Variant(f"{exporter} opset {opset}", True, onnx_runner(exported)))
                if plain and not _fixed_ops(model, exporter):
                    with lowerings.disabled():
                        upstream = _exported(model, example, exporter=exporter, opset=opset)
                    variants.append(Variant(f"plain torch.onnx {exporter} opset {opset}", True, onnx_runner(upstream)))
    if runtimes:
        variants += _runtime_variants(proto)
    return variants


def _runtime_variants(proto: onnx.ModelProto) -> list[Variant]:
    from export.runtime.backends import load_runner

    found = []
    with tempfile.TemporaryDirectory(prefix="zoo-variants-") as directory:
        path = Path(directory) / "model.onnx"
        onnx.save(proto, str(path))
        for runtime in ("openvino", "tract"):
            if importlib.util.find_spec(runtime) is None:
                continue
            runner = load_runner(runtime, path)
            found.append(Variant(runtime, True, lambda x, r=runner: _chunked(lambda p: r(p)[0], x), runtime_rows))
    return found


def _fixed_ops(model: torch.nn.Module, exporter: str) -> bool:
    """Whether one of zoo's lowerings replaces upstream's export of ``model``'s activation with this
    exporter: upstream's is then not a correct evaluation (README: Export fixes)."""
    import zoo
    from export.lowerings.fix_table import builtin

    spec = getattr(model, "zoo_config", {}).get("activation") or type(model).__name__
    name = zoo.activations.resolve(spec["name"] if isinstance(spec, dict) else spec)[0]
    return any(lowering.op.startswith(name) and lowering.exporters in ("both", exporter) for lowering in builtin())


def _exported(model: torch.nn.Module, example: torch.Tensor, **options: object) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory(prefix="zoo-variants-") as directory:
        path = to_onnx(model, Path(directory) / "model.onnx", example_input=example, **options)
        return onnx.load(str(path))


def _edited(proto: onnx.ModelProto, edit: Edit) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    edit(copy)
    return copy


def split_gemms(proto: onnx.ModelProto, *, reverse: bool = False, split: bool = True) -> None:
    """Each Gemm (transB=1) as MatMul(s) + bias Add; with ``split`` over two halves of the inner dimension."""
    nodes = []
    for node in proto.graph.node:
        if node.op_type != "Gemm":
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert attrs.get("transB") == 1 and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0
        a, w_name, bias = node.input
        w = numpy_helper.to_array(initializer(proto, w_name)).T  # (inner, out)
        tag = node.name.strip("/").replace("/", "_") or f"gemm{len(nodes)}"
        halves = np.array_split(np.arange(w.shape[0]), 2) if split and w.shape[0] > 1 else [np.arange(w.shape[0])]
        parts = []
        for k, rows in enumerate(halves):
            wk, lo, hi, ax = (f"{tag}_{s}{k}" for s in ("w", "lo", "hi", "ax"))
            proto.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w[rows]), wk))
            piece = a
            if len(halves) > 1:
                piece = f"{tag}_a{k}"
                proto.graph.initializer.extend([
                    numpy_helper.from_array(np.array([rows[0]], np.int64), lo),
                    numpy_helper.from_array(np.array([rows[-1] + 1], np.int64), hi),
                    numpy_helper.from_array(np.array([1], np.int64), ax)])
                nodes.append(helper.make_node("Slice", [a, lo, hi, ax], [piece]))
            nodes.append(helper.make_node("MatMul", [piece, wk], [f"{tag}_m{k}"]))
            parts.append(f"{tag}_m{k}")
        if reverse:
            parts = parts[::-1]
        total = parts[0]
        for k, part in enumerate([*parts[1:], bias]):
            out = node.output[0] if k == len(parts) - 1 else f"{tag}_s{k}"
            nodes.append(helper.make_node("Add", [total, part], [out]))
            total = out
        proto.graph.initializer.remove(initializer(proto, w_name))
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)


REASSOCIATED: list[tuple[str, Edit]] = [
    ("split in halves", lambda p: split_gemms(p)),
    ("split, halves reversed", lambda p: split_gemms(p, reverse=True)),
    ("bias Add separate from the MatMul", lambda p: split_gemms(p, split=False)),
]


# ---------------------------------------------------------------------------- mutants


def initializer(proto: onnx.ModelProto, name: str) -> onnx.TensorProto:
    """The initializer called ``name``."""
    return next(i for i in proto.graph.initializer if i.name == name)


def set_initializer(proto: onnx.ModelProto, name: str, array: np.ndarray) -> None:
    """Replace the initializer ``name`` by ``array`` (in its own dtype)."""
    old = initializer(proto, name)
    dtype = numpy_helper.to_array(old).dtype
    old.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array, dtype), name))


def gemms(proto: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The Gemm nodes (the linear layers of an MLP export), first to last."""
    return [n for n in proto.graph.node if n.op_type == "Gemm"]


def scaled_initializer(name: str, factor: float, index: tuple[int, ...] | None = None) -> Edit:
    """Multiply initializer ``name`` (or one element of it) by ``factor``."""
    def edit(proto: onnx.ModelProto) -> None:
        array = numpy_helper.to_array(initializer(proto, name)).astype(np.float64)
        if index is None:
            array = array * factor
        else:
            array[index] *= factor
        set_initializer(proto, name, array)
    return edit


def influential_weight(proto: onnx.ModelProto, layer: int, x: np.ndarray) -> tuple[str, tuple[int, int]]:
    """The weight of Gemm ``layer`` whose term is largest on average over the rows of ``x``: (name, index)."""
    node = gemms(proto)[layer]
    hidden = np.nan_to_num(_value_of(proto, node.input[0], x), nan=0.0, posinf=0.0, neginf=0.0)
    weight = numpy_helper.to_array(initializer(proto, node.input[1])).astype(np.float64)  # (out, in), transB
    influence = np.abs(weight) * np.abs(hidden).mean(0)[None, :]
    return node.input[1], tuple(int(i) for i in np.unravel_index(np.argmax(influence), influence.shape))


def _value_of(proto: onnx.ModelProto, name: str, x: np.ndarray) -> np.ndarray:
    """The graph's value called ``name`` on input ``x`` (onnxruntime, no optimisations)."""
    if name == proto.graph.input[0].name:
        return x.reshape(len(x), -1)
    marked = _edited(proto, lambda p: p.graph.output.extend([helper.make_empty_tensor_value_info(name)]))
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = onnxruntime.InferenceSession(marked.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run([name], {proto.graph.input[0].name: x})[0].reshape(len(x), -1)


LINEAR_OPS = ("Gemm", "MatMul", "Conv")


def scalar_constants(proto: onnx.ModelProto) -> list[tuple[str, float]]:
    """Every scalar float constant of the graph outside the linear layers (an activation's constants): (where, value)."""
    weights = {name for node in proto.graph.node if node.op_type in LINEAR_OPS for name in node.input[1:]}
    found = []
    for init in proto.graph.initializer:
        if init.name in weights:
            continue
        array = numpy_helper.to_array(init)
        if array.size == 1 and np.issubdtype(array.dtype, np.floating) and math.isfinite(float(array.reshape(-1)[0])):
            found.append((f"initializer:{init.name}", float(array.reshape(-1)[0])))
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].type == onnx.AttributeProto.TENSOR:
            array = numpy_helper.to_array(node.attribute[0].t)
            if array.size == 1 and np.issubdtype(array.dtype, np.floating) and math.isfinite(float(array.reshape(-1)[0])):
                found.append((f"constant:{node.output[0]}", float(array.reshape(-1)[0])))
    return [(where, value) for where, value in found if value not in (0.0, 1.0, -1.0)]


def scaled_constant(where: str, factor: float) -> Edit:
    """Multiply the scalar constant found by ``scalar_constants`` at ``where`` by ``factor``."""
    kind, name = where.split(":", 1)

    def edit(proto: onnx.ModelProto) -> None:
        if kind == "initializer":
            scaled_initializer(name, factor)(proto)
            return
        node = next(n for n in proto.graph.node if n.op_type == "Constant" and n.output[0] == name)
        array = numpy_helper.to_array(node.attribute[0].t)
        node.attribute[0].t.CopyFrom(numpy_helper.from_array((array.astype(np.float64) * factor).astype(array.dtype)))
    return edit


def slopes(proto: onnx.ModelProto) -> list[tuple[str, str]]:
    """Every float attribute of an activation node that sets a slope or a scale (LeakyRelu's alpha, Elu's
    alpha, ...): (node, attribute)."""
    return [(node.name or node.output[0], a.name) for node in proto.graph.node if node.op_type not in LINEAR_OPS
            for a in node.attribute if a.type == onnx.AttributeProto.FLOAT and a.name in ("alpha", "beta", "gamma", "lambd")]


def scaled_slope(node_name: str, attribute: str, factor: float) -> Edit:
    """Multiply a float attribute of one node by ``factor``."""
    def edit(proto: onnx.ModelProto) -> None:
        node = next(n for n in proto.graph.node if (n.name or n.output[0]) == node_name)
        attr = next(a for a in node.attribute if a.name == attribute)
        attr.f = float(np.float32(attr.f * factor))
    return edit


def mlp_mutants(proto: onnx.ModelProto, x: np.ndarray, *, sizes: tuple[float, ...] = (1e-3, 1e-4, 1e-5, 1e-6)
                ) -> list[tuple[str, Edit]]:
    """The mutant classes of issue 21 on an MLP export: one influential weight per layer, the output
    bias, the output scale, each activation constant and slope, each off by every relative ``size``."""
    last = gemms(proto)[-1]
    edits: list[tuple[str, Edit]] = []
    for size in sizes:
        for layer in sorted({0, len(gemms(proto)) - 1}):
            name, index = influential_weight(proto, layer, x)
            edits.append((f"layer {layer} weight {index} x(1{size:+g})", scaled_initializer(name, 1 + size, index)))
        edits.append((f"output bias x(1{size:+g})", scaled_initializer(last.input[2], 1 + size)))
        edits.append((f"output x(1{size:+g})", _both(scaled_initializer(last.input[1], 1 + size),
                                                      scaled_initializer(last.input[2], 1 + size))))
        for where, value in scalar_constants(proto):
            edits.append((f"constant {value:.6g} x(1{size:+g})", scaled_constant(where, 1 + size)))
        for node, attribute in slopes(proto):
            edits.append((f"{attribute} of {node} x(1{size:+g})", scaled_slope(node, attribute, 1 + size)))
    return edits


def _both(first: Edit, second: Edit) -> Edit:
    def edit(proto: onnx.ModelProto) -> None:
        first(proto)
        second(proto)
    return edit


def mutants(proto: onnx.ModelProto, edits: list[tuple[str, Edit]]) -> list[Variant]:
    """Each edit applied to a copy of ``proto``, run by onnxruntime."""
    return [Variant(name, False, onnx_runner(_edited(proto, edit))) for name, edit in edits]


# ---------------------------------------------------------------------------- measures


def deviation(actual: np.ndarray, reference: np.ndarray) -> float:
    """max |actual - reference| / (|reference| + RMS(reference)) over finite references; inf where the
    NaN/inf pattern differs (issue 21's measure of how far an evaluation strays)."""
    actual, reference = actual.astype(np.float64), reference.astype(np.float64)
    finite = np.isfinite(reference)
    if (np.isnan(reference) != np.isnan(actual)).any() or (np.isinf(reference) & (actual != reference)).any():
        return math.inf
    if not finite.any():
        return 0.0
    scale = np.abs(reference[finite]) + math.sqrt(float(np.mean(reference[finite] ** 2)))
    with np.errstate(invalid="ignore", over="ignore"):
        error = np.abs(actual[finite] - reference[finite])
    error = np.where(np.isnan(error), math.inf, error)
    return float(np.max(error / np.where(scale > 0, scale, 1.0)))


@contextlib.contextmanager
def threads(count: int) -> Iterator[None]:
    """torch's thread count for a block (the studies run one torch thread per process)."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
