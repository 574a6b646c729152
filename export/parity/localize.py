"""Explain a parity failure by its node: the first torch module whose ONNX value leaves its bound.

Like polygraphy's ``--onnx-outputs mark all`` and ``torch.onnx.verification.find_mismatch``: every
intermediate value of the graph becomes an output, the failing input runs through onnxruntime
with optimisations off, and each module's output (in the order the modules finish, from
``export.parity.bounds`` with its bound) is compared with the value of the last ONNX node the exporter
wrote inside that module's scope with the module output's shape (size-1 axes aside). The first one
outside its bound is where the wrong lowering sits, unless it holds a later module's value: an
exporter that folds a batch norm into the conv before it writes the fused node in the conv's scope.
"""

from __future__ import annotations

import ast
import math

import numpy as np
import onnx
import torch

from export.parity.bounds import ModuleValue, bounded_run
from export.parity.check import ProbeSet, worst_row
from export.runtime.compare import OutputVerdict, compare_output

SCOPES = "pkg.torch.onnx.name_scopes"  # the dynamo exporter's node metadata: ['', 'fc0', 'linear']


def first_failing_node(model: torch.nn.Module, proto: onnx.ModelProto, probe_set: ProbeSet,
                       verdicts: list[OutputVerdict], dtype: str) -> str | None:
    """One line naming the first ONNX node (and its torch module) whose value leaves its bound, or why not."""
    found = worst_row(verdicts, probe_set)
    if found is None:
        return None
    probe, row = found
    x = probe.data[row:row + 1]
    try:
        run = bounded_run(model, x, dtype=dtype, modules=True)
        values, producers = _every_value(proto, x)
    except Exception as error:  # noqa: BLE001 - an explanation must never hide the verdict it explains
        return f"could not localise the failure: {type(error).__name__}: {error}"
    for number, module in enumerate(run.modules):
        node = _last_node_of(proto, module.name, values, module.value.shape)
        if node is None:
            continue
        value = values[node.output[0]].reshape(module.value.shape)
        verdict = _judged(node, value, module)
        if not verdict.ok and not _fused(node, value, run.modules[number + 1:]):
            return (f"first node out of its bound: {node.op_type} {node.name!r}, the output of torch module "
                    f"{module.name!r} ({module.kind}): {verdict.describe()}")
    bad = next(v for v in verdicts if not v.ok and v.worst)
    last = producers.get(bad.name)
    where = f"{last.op_type} {last.name!r}" if last is not None else repr(bad.name)
    return f"every module's value is within its bound; the error appears at the output node {where}"


def _judged(node: onnx.NodeProto, value: np.ndarray, module: ModuleValue) -> OutputVerdict:
    return compare_output(node.output[0], value, module.value, module.tolerance, dtype=str(value.dtype))


def _fused(node: onnx.NodeProto, value: np.ndarray, later: list[ModuleValue]) -> bool:
    """Whether the node holds the value of a module that runs later (a batch norm folded into its conv)."""
    return any(m.value.shape == value.shape and _judged(node, value, m).ok for m in later)


def _every_value(proto: onnx.ModelProto, x: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, onnx.NodeProto]]:
    """Every node output of the graph on input ``x`` (onnxruntime, no optimisations), and who produced it."""
    import onnxruntime

    marked = onnx.ModelProto()
    marked.CopyFrom(proto)
    inferred = onnx.shape_inference.infer_shapes(marked).graph
    types = {v.name: v for v in [*inferred.value_info, *inferred.output]}
    existing = {o.name for o in marked.graph.output}
    for node in marked.graph.node:
        for name in node.output:
            if name and name not in existing and name in types and types[name].type.HasField("tensor_type"):
                marked.graph.output.append(types[name])
                existing.add(name)
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(marked.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    outputs = session.run(names, {session.get_inputs()[0].name: x})
    producers = {name: node for node in proto.graph.node for name in node.output}
    return dict(zip(names, outputs)), producers


def _last_node_of(proto: onnx.ModelProto, module: str, values: dict[str, np.ndarray],
                  shape: tuple[int, ...]) -> onnx.NodeProto | None:
    """The last float node inside ``module``'s scope whose value has the module output's shape (size-1 axes aside)."""
    found = None
    for node in proto.graph.node:
        value = values.get(node.output[0]) if node.output else None
        if (value is not None and _squeezed(value.shape) == _squeezed(shape) and value.size == math.prod(shape)
                and np.issubdtype(value.dtype, np.floating) and _scope(node) == module):
            found = node
    return found


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(size for size in shape if size != 1)


def _scope(node: onnx.NodeProto) -> str | None:
    """The module a node was exported from, by its qualified name ('' for the model's own forward).

    The dynamo exporter records each enclosing module's qualified name in the node's metadata
    (['', 'blocks', 'blocks.0', 'blocks.0.fc', 'linear']); torchscript names the node by the scopes
    ('/blocks/blocks.0/fc/Gemm'), each either qualified or relative to the one before.
    """
    for prop in node.metadata_props:
        if prop.key == SCOPES:
            scopes = ast.literal_eval(prop.value)
            return scopes[-2] if len(scopes) >= 2 else ""
    if not node.name.startswith("/"):
        return None
    name = ""
    for part in node.name.split("/")[1:-1]:
        name = part if not name or part.startswith(f"{name}.") else f"{name}.{part}"
    return name
