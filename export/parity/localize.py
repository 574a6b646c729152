"""Explain a parity failure by its node: the first torch module whose ONNX value leaves its bound.

Like polygraphy's ``--onnx-outputs mark all`` and ``torch.onnx.verification.find_mismatch``: every
intermediate value of the graph becomes an output, the failing input runs through onnxruntime
with optimisations off, and each module's output (in the order the modules finish, from
``export.parity.bounds`` with its bound) is compared with the value of the ONNX node that computes it:
the last node the exporter wrote inside that module's scope (its own or a submodule's) whose value, with
the module output's shape (size-1 axes aside), is used outside that scope. The first one outside its
bound is where the wrong lowering sits, unless it holds a later module's value. A node into which the
exporter folded modules (a batch norm into the conv before it) is compared with the last one's output
and names them all: the graph shows the fold as a module with weights but no node of its own.
"""

from __future__ import annotations

import ast
import math

import numpy as np
import onnx
import torch

from export.parity.bounds import ModuleValue, bounded_run
from export.parity.judging import ProbeSet, worst_row
from export.runtime.compare import OutputVerdict, compare_output

SCOPES = "pkg.torch.onnx.name_scopes"  # the dynamo exporter's node metadata: ['', 'fc0', 'linear']
RULE = "pkg.onnxscript.rewriter.rule_name"  # its optimizer's rewrites: 'FuseBatchNormIntoConv, ...'


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
        node = _output_node(proto, module.name, values, module.value.shape)
        if node is None:
            continue
        computed = _computed(proto, model, node, number, run.modules)
        value = values[node.output[0]].reshape(computed[-1].value.shape)
        verdict = _judged(node, value, computed[-1])
        if not verdict.ok and not _fused(node, value, run.modules[number + 1:]):
            return (f"first node out of its bound: {node.op_type} {node.name!r}, the output of "
                    f"{_named(node, computed)}: {verdict.describe()}")
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


def _output_node(proto: onnx.ModelProto, module: str, values: dict[str, np.ndarray],
                 shape: tuple[int, ...]) -> onnx.NodeProto | None:
    """The node computing ``module``'s output: the last float node inside the module's scope (or a submodule's) whose
    value has the output's shape (size-1 axes aside) and is used outside that scope or is a graph output.

    Not the last node of the module's own scope: where a submodule computes the output (a block ending in an
    activation module, ``act(out + identity)``), that would be a value before it (the residual Add).
    """
    inside = [node for node in proto.graph.node if _within(_scope(node), module)]
    used_outside = {name for node in proto.graph.node if not _within(_scope(node), module) for name in node.input}
    used_outside.update(output.name for output in proto.graph.output)
    found = None
    for node in inside:
        value = values.get(node.output[0]) if node.output else None
        if (value is not None and node.output[0] in used_outside and _squeezed(value.shape) == _squeezed(shape)
                and value.size == math.prod(shape) and np.issubdtype(value.dtype, np.floating)):
            found = node
    return found


def _within(scope: str | None, module: str) -> bool:
    """Whether ``scope`` is ``module`` or one of its submodules (qualified names)."""
    return scope is not None and (scope == module or scope.startswith(f"{module}."))


def _computed(proto: onnx.ModelProto, model: torch.nn.Module, node: onnx.NodeProto, number: int,
              modules: list[ModuleValue]) -> list[ModuleValue]:
    """The modules whose work ``node`` holds, in order (its value is the last one's output): ``modules[number]`` and
    those the exporter folded into it, which have weights but no node of their own. dynamo's optimizer writes a
    conv and its batch norm as one node in the norm's scope, reading the conv's weights by their names; the
    torchscript exporter writes it in the conv's scope, and the norm's parameters appear under no name."""
    module = modules[number]
    initializers = {tensor.name for tensor in proto.graph.initializer}
    owners = {name.rpartition(".")[0] for name in node.input if name in initializers}
    before = {m.name: m for m in modules
              if m.name in owners and not _within(m.name, module.name) and _nodeless(proto, m.name)}
    after = [m for m in modules[number + 1:number + 2]
             if m.value.shape == module.value.shape and _vanished(proto, model, m.name, initializers)]
    return [*before.values(), module, *after]


def _vanished(proto: onnx.ModelProto, model: torch.nn.Module, module: str, initializers: set[str]) -> bool:
    """Whether ``module`` has weights (parameters or buffers) but neither a node nor an initializer named after it."""
    weights = [*model.get_submodule(module).parameters(), *model.get_submodule(module).buffers()]
    return bool(weights) and _nodeless(proto, module) and not any(name.startswith(f"{module}.") for name in initializers)


def _nodeless(proto: onnx.ModelProto, module: str) -> bool:
    """Whether no node of the graph comes from ``module`` or its submodules."""
    return not any(_within(_scope(node), module) for node in proto.graph.node)


def _named(node: onnx.NodeProto, computed: list[ModuleValue]) -> str:
    """The torch module a node computes, or the modules the exporter folded into it (and its rewrite, if recorded)."""
    if len(computed) == 1:
        return f"torch module {computed[0].name!r} ({computed[0].kind})"
    names = " + ".join(f"{m.name!r} ({m.kind})" for m in computed)
    rule = {p.key: p.value for p in node.metadata_props}.get(RULE)
    return f"torch modules {names}, folded into one node by the exporter" + (f" ({rule})" if rule else "")


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
