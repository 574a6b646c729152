"""Graph passes applied to an exported model, on onnx_ir's pass API: float16 rounding made explicit, float64 compute,
NaN kept by max pooling.

``RoundFloat16Pass`` makes float16 rounding explicit after every node, because onnxruntime's CPU
provider computes float16 chains in float32 without rounding in between, which is neither ONNX's
nor torch's arithmetic. ``ComputeInFloat64Pass`` computes a float32 graph in float64 and rounds once
at its outputs (on request only). ``PropagateNaNPass`` makes every max over windows or axes NaN where its window holds a NaN, as torch's are.
``round_float16``, ``compute_in_float64`` and ``propagate_nan`` run them on a ModelProto.
Every value a pass adds is named after the value it comes from (``x__f32``, ``y__f16``), so the
same graph always gives the same bytes; a graph a pass cannot rewrite raises ``ValueError``.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes import common

_F16, _F32, _F64 = ir.DataType.FLOAT16, ir.DataType.FLOAT, ir.DataType.DOUBLE
_NARROW = (_F16, _F32)
_FLOATS = (_F16, _F32, _F64)
# Ops whose float16 result is one of their (already float16) inputs, so rounding changes nothing.
_EXACT_OPS = frozenset({
    "Abs", "Clip", "Concat", "Constant", "ConstantOfShape", "Expand", "Flatten", "Gather", "Identity",
    "Max", "Min", "Neg", "Relu", "Reshape", "Slice", "Split", "Squeeze", "Transpose", "Unsqueeze", "Where",
})
_TYPED_OPS = frozenset({"EyeLike", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                        "Bernoulli", "Multinomial", "If", "Loop", "Scan"})


def round_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The float16 ``model`` with an explicit float16 rounding after every node (see RoundFloat16Pass)."""
    return _run(model, _infer_types(), RoundFloat16Pass())


def compute_in_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """The float32 or float16 ``model`` computed in float64, rounded once at each output (see ComputeInFloat64Pass)."""
    return _run(model, common.InlinePass(), _infer_types(), ComputeInFloat64Pass())


def propagate_nan(model: onnx.ModelProto, op_types: frozenset[str]) -> onnx.ModelProto:
    """``model`` with every max over windows or axes (nodes of ``op_types``) NaN where its window holds a NaN
    (see PropagateNaNPass)."""
    return _run(model, _infer_types(), PropagateNaNPass(op_types))


def _infer_types() -> ir.passes.PassBase:
    """onnx shape inference as the passes need it: types only, never refusing a graph."""
    return common.ShapeInferencePass(check_type=False, strict_mode=False, data_prop=False)


def _run(proto: onnx.ModelProto, *steps: ir.passes.PassBase) -> onnx.ModelProto:
    model = ir.from_proto(proto)
    ir.passes.Sequential(*steps)(model)
    return ir.to_proto(model)


class RoundFloat16Pass(ir.passes.InPlacePass):
    """Compute a float16 graph in float32 with an explicit float16 rounding after every node.

    The result is the ONNX float16 semantics (every node's output is a float16 value), written
    so that onnxruntime's CPU provider cannot skip the roundings: it runs float16 nodes in float32
    and drops the casts between consecutive ones, which lets hidden values exceed 65504 and
    accumulate differently from torch. Inputs, outputs and stored weights stay float16.
    Needs value types (run shape inference first).
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        refused = sorted({node.op_type for node in graph} & _TYPED_OPS)
        if refused:
            raise ValueError(f"cannot make float16 rounding explicit around {refused}")
        nodes = list(graph)
        outputs = {index: (value.name, _F16) for index, value in enumerate(graph.outputs) if value.dtype == _F16}
        wide: dict[ir.Value, ir.Value] = {}  # float16 value -> the float32 value later nodes read
        widen = [_cast(value, _F32, "__f32") for value in [*graph.inputs, *graph.initializers.values()]
                 if value.dtype == _F16]
        for cast in widen:
            wide[cast.inputs[0]] = cast.outputs[0]
        _prepend(graph, widen)
        for node in nodes:
            _read_through(node, wide)
            node.attributes.update(_widened_attributes(node, _F32))
            rounding: list[ir.Node] = []
            for value in node.outputs:
                if value.dtype == _F16 or (node.op_type == "Cast" and _cast_target(node) == _F16):
                    rounding.extend(_rounding(node, value, wide))
            if rounding:
                graph.insert_after(node, rounding)
        _round_outputs(graph, outputs, wide)
        return ir.passes.PassResult(model, modified=True)


class ComputeInFloat64Pass(ir.passes.InPlacePass):
    """Compute a float32 or float16 graph in float64 and round once, at each output.

    Where a trained layer's terms nearly cancel, every float32 evaluation of it (torch's or
    onnxruntime's, each with its own summation order and kernels) is off by more than the
    tolerance, and the two are off differently; in float16 every node's rounding is that large.
    Computed in float64, the exported graph gives the correctly rounded value of torch's function,
    never farther from it than torch's own arithmetic. Weights are stored as float64 copies of the
    model's (exact); a node that onnxruntime has no float64 kernel for runs in float32 between casts.
    Needs value types (run shape inference first) and no local functions (inline them first).
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        if model.functions:
            raise ValueError("inline the model's local functions before computing it in float64")
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
        nodes = list(graph)
        types = {value: value.dtype for value in _values(graph)}  # as exported, before any rewriting
        outputs = {index: (value.name, value.dtype) for index, value in enumerate(graph.outputs)
                   if value.dtype in _NARROW}
        wide: dict[ir.Value, ir.Value] = {}  # value -> the float64 value later nodes read
        widen = [_cast(value, _F64, "__f64") for value in graph.inputs if value.dtype in _NARROW]
        for cast in widen:
            wide[cast.inputs[0]] = cast.outputs[0]
        _prepend(graph, widen)
        for tensor in graph.initializers.values():
            if tensor.dtype in _NARROW:
                tensor.const_value = _retyped(tensor.const_value, _F64)
                tensor.dtype = _F64
        dropped = []
        for node in nodes:
            original = list(node.inputs)
            _read_through(node, wide)
            if node.op_type == "Cast" and _cast_target(node) in _FLOATS and types.get(original[0]) in _FLOATS:
                wide[node.outputs[0]] = node.inputs[0]  # a rounding inside the float64 region: dropped
                dropped.append(node)
                continue
            widened = _widened_attributes(node, _F64)
            if _has_float64_kernel(node, original, types, opset, widened):
                node.attributes.update(widened)
            else:
                _in_float32(graph, node, original, types, wide)
        _round_outputs(graph, outputs, wide)
        graph.remove(dropped, safe=True)
        return ir.passes.PassResult(model, modified=True)


class PropagateNaNPass(ir.passes.InPlacePass):
    """Give NaN wherever a MaxPool or ReduceMax window holds a NaN, as torch's max pooling and amax do.

    ONNX does not say what these ops give for NaN, and onnxruntime's CPU kernels drop it (max(NaN, 1) is
    1 at any position in the window). The same op over the NaN mask finds the windows that hold one,
    and a Where puts NaN there; every other value is the op's own. The new nodes carry the op's name
    and scope, so a failure inside still names its module. Needs value types (run shape inference first).
    """

    def __init__(self, op_types: frozenset[str]) -> None:
        super().__init__()
        self.op_types = op_types

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        maxima = [node for node in graph if node.op_type in self.op_types and node.domain in ("", "ai.onnx")]
        for node in maxima:
            graph.insert_after(node, _nan_where_found(node))
        return ir.passes.PassResult(model, modified=bool(maxima))


def _nan_where_found(node: ir.Node) -> list[ir.Node]:
    """IsNaN, the node's op over the mask, and a Where that gives NaN where the mask's max is 1."""
    x, y = node.inputs[0], node.outputs[0]
    name = y.name
    y.name = f"{name}__max"

    def add(op_type: str, inputs: list[ir.Value | None], attributes: dict, suffix: str, output: str = "") -> ir.Node:
        made = ir.node(op_type, inputs, attributes, name=f"{node.name}{suffix}", metadata_props=dict(node.metadata_props))
        made.outputs[0].name = output or f"{name}{suffix}"
        return made

    isnan = add("IsNaN", [x], {}, "__isnan")
    mask = add("Cast", isnan.outputs, {"to": x.dtype}, "__nan_mask")
    found = add(node.op_type, [mask.outputs[0], *node.inputs[1:]], dict(node.attributes), "__nan_found")
    hit = add("Cast", found.outputs, {"to": ir.DataType.BOOL}, "__nan_hit")
    nan = add("Constant", [], {"value": ir.tensor(np.array(np.nan, x.dtype.numpy()))}, "__nan")
    where = add("Where", [hit.outputs[0], nan.outputs[0], y], {}, "__nan_kept", output=name)
    where.outputs[0].type, where.outputs[0].shape = y.type, y.shape  # y's place, graph output included
    y.replace_all_uses_with(where.outputs[0], replace_graph_outputs=True)
    where.replace_input_with(2, y)  # replace_all_uses_with rewired the Where's own input too
    return [isnan, mask, found, hit, nan, where]


def _values(graph: ir.Graph) -> list[ir.Value]:
    return [*graph.inputs, *graph.initializers.values(), *(value for node in graph for value in node.outputs)]


def _cast(value: ir.Value, to: ir.DataType, suffix: str, name: str | None = None) -> ir.Node:
    """A Cast of ``value`` to ``to`` whose output is named ``name`` (default: value's name + suffix)."""
    node = ir.node("Cast", [value], {"to": to})
    node.outputs[0].name = name or f"{value.name}{suffix}"
    return node


def _prepend(graph: ir.Graph, nodes: list[ir.Node]) -> None:
    if nodes and graph.num_nodes():
        graph.insert_before(graph.node(0), nodes)
    else:
        graph.extend(nodes)


def _read_through(node: ir.Node, replacements: dict[ir.Value, ir.Value]) -> None:
    for index, value in enumerate(node.inputs):
        if value in replacements:
            node.replace_input_with(index, replacements[value])


def _rounding(node: ir.Node, value: ir.Value, wide: dict[ir.Value, ir.Value]) -> list[ir.Node]:
    """The casts that round ``value`` to float16 and widen it again; records what later nodes read."""
    if node.op_type == "Cast":  # already rounds: only widen its result again
        casts = [_cast(value, _F32, "__f32")]
    elif node.op_type in _EXACT_OPS:
        return []
    else:
        narrow = _cast(value, _F16, "__f16")
        casts = [narrow, _cast(narrow.outputs[0], _F32, "__f32")]
    wide[value] = casts[-1].outputs[0]
    return casts


def _round_outputs(graph: ir.Graph, outputs: dict[int, tuple[str, ir.DataType]],
                   wide: dict[ir.Value, ir.Value]) -> None:
    """Each output ``index: (name, dtype)`` becomes a Cast to ``dtype`` of what later nodes would read, named ``name``."""
    for index, (name, dtype) in outputs.items():
        value = graph.outputs[index]
        source = wide.get(value, value)
        for renamed in (value, source):
            if renamed.name == name:
                renamed.name = f"{name}__out"
        final = _cast(source, dtype, "", name)
        final.outputs[0].type, final.outputs[0].shape = ir.TensorType(dtype), value.shape
        graph.append(final)
        graph.outputs[index] = final.outputs[0]
    for value in _values(graph):
        if not (value.is_graph_input() or value.is_graph_output() or value.is_initializer()):
            value.type, value.shape = None, None  # stale after the rewrite; inference recomputes them


def _in_float32(graph: ir.Graph, node: ir.Node, original: list[ir.Value | None],
                types: dict[ir.Value, ir.DataType | None], wide: dict[ir.Value, ir.Value]) -> None:
    """Run ``node`` on float32 casts of its float inputs and widen its float outputs back to float64."""
    for index, (value, source) in enumerate(zip(list(node.inputs), original)):
        if value is not None and types.get(source) in _NARROW:
            narrow = _cast(value, _F32, "__f32")
            graph.insert_before(node, narrow)
            node.replace_input_with(index, narrow.outputs[0])
    node.attributes.update(_widened_attributes(node, _F32))
    widen = []
    for value in node.outputs:
        if types.get(value) in _NARROW:
            name, value.name = value.name, f"{value.name}__f32"
            widen.append(_cast(value, _F64, "", f"{name}__f64"))
            wide[value] = widen[-1].outputs[0]
    if widen:
        graph.insert_after(node, widen)


def _widened_attributes(node: ir.Node, to: ir.DataType) -> dict[str, ir.Attr]:
    """The attributes of ``node`` that change when it computes in ``to``: narrower float tensors, Casts to float16/32."""
    narrower = {_F16} if to == _F32 else set(_NARROW)
    changed: dict[str, ir.Attr] = {}
    for name, attribute in node.attributes.items():
        if attribute.type == ir.AttributeType.TENSOR and attribute.value.dtype in narrower:
            changed[name] = ir.AttrTensor(name, _retyped(attribute.value, to))
        elif to == _F64 and node.op_type == "Cast" and name == "to" and attribute.value in narrower:
            changed[name] = ir.AttrInt64(name, to)
    return changed


def _retyped(tensor: ir.TensorProtocol, to: ir.DataType) -> ir.TensorProtocol:
    """``tensor``'s values in the wider float type ``to`` (exact)."""
    return ir.tensor(tensor.numpy().astype(to.numpy()), name=tensor.name)


def _cast_target(node: ir.Node) -> int:
    return node.attributes["to"].value


def _has_float64_kernel(node: ir.Node, original: list[ir.Value | None], types: dict[ir.Value, ir.DataType | None],
                        opset: int, widened: dict[str, ir.Attr]) -> bool:
    """Whether onnxruntime's CPU provider runs ``node`` with its float32 tensors made float64."""
    if node.domain not in ("", "ai.onnx") or not any(types.get(v) in _NARROW for v in [*original, *node.outputs]):
        return True
    signature = tuple(int(types.get(value) or 0) for value in original)
    outputs = tuple(int(types.get(value) or 0) for value in node.outputs)
    attributes = tuple(ir.serde.serialize_attribute(attribute).SerializeToString()
                       for attribute in {**node.attributes, **widened}.values())
    return _loads_in_float64(node.op_type, opset, signature, outputs, attributes)


@functools.cache
def _loads_in_float64(
    op_type: str, opset: int, inputs: tuple[int, ...], outputs: tuple[int, ...], attributes: tuple[bytes, ...]
) -> bool:
    """Whether onnxruntime loads a one-node graph of ``op_type`` with float16/32 tensors made float64."""
    import onnxruntime

    def wide(elem_type: int) -> int:
        return _F64 if elem_type in _NARROW else elem_type

    node = onnx.helper.make_node(op_type, [f"i{k}" if t else "" for k, t in enumerate(inputs)],
                                 [f"o{k}" for k in range(len(outputs))])
    node.attribute.extend(onnx.AttributeProto.FromString(a) for a in attributes)
    graph = onnx.helper.make_graph(
        [node], "probe",
        [onnx.helper.make_tensor_value_info(f"i{k}", wide(t), None) for k, t in enumerate(inputs) if t],
        [onnx.helper.make_tensor_value_info(f"o{k}", wide(t), None) for k, t in enumerate(outputs)],
    )
    probe = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)], ir_version=8)
    try:
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        onnxruntime.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - only a missing kernel means "no"; anything else is not ours to judge
        return "NOT_IMPLEMENTED" not in str(error)
    return True
