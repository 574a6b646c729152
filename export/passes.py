"""Graph passes applied to an exported model: float16 rounding made explicit, float64 compute.

``round_float16`` makes float16 rounding explicit after every node, because onnxruntime's CPU
provider computes float16 chains in float32 without rounding in between, which is neither ONNX's
nor torch's arithmetic. ``compute_in_float64`` computes a float32 graph in float64 and rounds once
at its outputs (on request only).
"""

from __future__ import annotations

import functools

import numpy as np
import onnx

_F16, _F32, _F64 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE
_NARROW = (_F16, _F32)
_FLOATS = (_F16, _F32, _F64)
# Ops whose float16 result is one of their (already float16) inputs, so rounding changes nothing.
_EXACT_OPS = frozenset({
    "Abs", "Clip", "Concat", "Constant", "ConstantOfShape", "Expand", "Flatten", "Gather", "Identity",
    "Max", "Min", "Neg", "Relu", "Reshape", "Slice", "Split", "Squeeze", "Transpose", "Unsqueeze", "Where",
})
_TYPED_OPS = frozenset({"EyeLike", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                        "Bernoulli", "Multinomial", "If", "Loop", "Scan"})


def compute_in_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """Compute a float32 or float16 graph in float64 and round once, at each output.

    Where a trained layer's terms nearly cancel, every float32 evaluation of it (torch's or
    onnxruntime's, each with its own summation order and kernels) is off by more than the
    tolerance, and the two are off differently; in float16 every node's rounding is that large.
    Computed in float64, the exported graph gives the correctly rounded value of torch's function,
    never farther from it than torch's own arithmetic. Weights are stored as float64 copies of the
    model's (exact); a node that onnxruntime has no float64 kernel for runs in float32 between casts.
    """
    if model.functions:
        model = onnx.inliner.inline_local_functions(model)
    inferred = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.input, *inferred.value_info, *inferred.output]}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    opset = next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
    graph = model.graph
    outputs = {v.name: v.type.tensor_type.elem_type for v in graph.output if v.type.tensor_type.elem_type in _NARROW}
    alias: dict[str, str] = {}  # original name -> the name its float64 value is read by
    nodes: list[onnx.NodeProto] = []
    for value in graph.input:
        if value.type.tensor_type.elem_type in _NARROW:
            alias[value.name] = _cast(nodes, value.name, f"{value.name}__f64", _F64)
    for tensor in graph.initializer:
        if tensor.data_type in _NARROW:
            tensor.CopyFrom(_float64_tensor(tensor))
    for node in graph.node:
        original = list(node.input)
        node.input[:] = [alias.get(name, name) for name in original]
        if node.op_type == "Cast" and _cast_target(node) in _FLOATS and types.get(original[0]) in _FLOATS:
            alias[node.output[0]] = node.input[0]  # a rounding inside the float64 region: dropped
            continue
        for index, name in enumerate(node.output):
            if name in outputs:
                node.output[index] = alias[name] = f"{name}__f64"
        if _has_float64_kernel(node, original, types, opset):
            _float64_attributes(node)
            nodes.append(node)
        else:
            _in_float32(node, original, types, nodes)
    for name, elem_type in sorted(outputs.items()):
        _cast(nodes, alias[name], name, elem_type)
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    return model


def _cast(nodes: list[onnx.NodeProto], source: str, target: str, to: int) -> str:
    nodes.append(onnx.helper.make_node("Cast", [source], [target], to=to))
    return target


def _float64_tensor(tensor: onnx.TensorProto) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensor).astype(np.float64), tensor.name)


def _float64_attributes(node: onnx.NodeProto) -> None:
    """Tensors inside Constant / ConstantOfShape become float64, and so do Casts to a narrower float."""
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type in _NARROW:
            attribute.t.CopyFrom(_float64_tensor(attribute.t))
        elif node.op_type == "Cast" and attribute.name == "to" and attribute.i in _NARROW:
            attribute.i = _F64


def _in_float32(node: onnx.NodeProto, original: list[str], types: dict[str, int], nodes: list[onnx.NodeProto]) -> None:
    """Run ``node`` on float32 casts of its float inputs and widen its float outputs back to float64."""
    node.input[:] = [
        _cast(nodes, name, f"{name}__f32", _F32) if types.get(source) in _NARROW else name
        for name, source in zip(node.input, original)
    ]
    _to_float32_attributes(node)
    widen = [(k, name) for k, name in enumerate(node.output) if types.get(name.removesuffix("__f64")) in _NARROW]
    for index, name in widen:
        node.output[index] = f"{name}__f32"
    nodes.append(node)
    for _, name in widen:
        _cast(nodes, f"{name}__f32", name, _F64)


def _has_float64_kernel(node: onnx.NodeProto, original: list[str], types: dict[str, int], opset: int) -> bool:
    """Whether onnxruntime's CPU provider runs ``node`` with its float32 tensors made float64."""
    if node.domain not in ("", "ai.onnx") or not any(types.get(name) in _NARROW for name in [*original, *node.output]):
        return True
    signature = tuple(types.get(name, 0) for name in original)
    outputs = tuple(types.get(name.removesuffix("__f64"), 0) for name in node.output)
    attributes = tuple(a.SerializeToString() for a in node.attribute)
    return _loads_in_float64(node.op_type, opset, signature, outputs, attributes)


@functools.cache
def _loads_in_float64(
    op_type: str, opset: int, inputs: tuple[int, ...], outputs: tuple[int, ...], attributes: tuple[bytes, ...]
) -> bool:
    import onnxruntime

    def wide(elem_type: int) -> int:
        return _F64 if elem_type in _NARROW else elem_type

    node = onnx.helper.make_node(op_type, [f"i{k}" if t else "" for k, t in enumerate(inputs)],
                                 [f"o{k}" for k in range(len(outputs))])
    node.attribute.extend(onnx.AttributeProto.FromString(a) for a in attributes)
    _float64_attributes(node)
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


def round_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Compute a float16 graph in float32 with an explicit float16 rounding after every node.

    The result is the ONNX float16 semantics (every node's output is a float16 value), written
    so that onnxruntime's CPU provider cannot skip the roundings: it runs float16 nodes in float32
    and drops the casts between consecutive ones, which lets hidden values exceed 65504 and
    accumulate differently from torch. Inputs, outputs and stored weights stay float16.
    """
    graph = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.value_info, *graph.output]}
    refused = sorted({n.op_type for n in graph.node} & _TYPED_OPS)
    if refused:
        raise ValueError(f"cannot make float16 rounding explicit around {refused}")
    outputs = {v.name for v in graph.output if v.type.tensor_type.elem_type == _F16}
    rename: dict[str, str] = {}
    nodes: list[onnx.NodeProto] = []
    for value in graph.input:
        if value.type.tensor_type.elem_type == _F16:
            rename[value.name] = _widen(nodes, value.name)
    for tensor in model.graph.initializer:
        if tensor.data_type == _F16:
            rename[tensor.name] = _widen(nodes, tensor.name)
    for node in model.graph.node:
        node.input[:] = [rename.get(name, name) for name in node.input]
        _to_float32_attributes(node)
        nodes.append(node)
        for index, name in enumerate(node.output):
            if types.get(name) == _F16 or (node.op_type == "Cast" and _cast_target(node) == _F16):
                rename[name] = _round(nodes, node, index, exact=node.op_type in _EXACT_OPS)
    # Graph outputs become the final casts' outputs; their old producers write `name__out`.
    inner = {name: f"{name}__out" for name in outputs}
    for node in nodes:
        node.input[:] = [inner.get(n, n) for n in node.input]
        node.output[:] = [inner.get(n, n) for n in node.output]
    for name in outputs:
        source = rename.get(name, name)
        nodes.append(onnx.helper.make_node("Cast", [inner.get(source, source)], [name], to=_F16))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.value_info[:]
    return model


def _widen(nodes: list[onnx.NodeProto], name: str) -> str:
    wide = f"{name}__f32"
    nodes.append(onnx.helper.make_node("Cast", [name], [wide], to=_F32))
    return wide


def _round(nodes: list[onnx.NodeProto], node: onnx.NodeProto, index: int, exact: bool) -> str:
    """Round output ``index`` of ``node`` to float16 and back; return the name to read it by."""
    name = node.output[index]
    if node.op_type == "Cast":  # already rounds: only widen its result again
        return _widen(nodes, name)
    if exact:
        return name
    narrow = f"{name}__f16"
    nodes.append(onnx.helper.make_node("Cast", [name], [narrow], to=_F16))
    return _widen(nodes, narrow)


def _cast_target(node: onnx.NodeProto) -> int:
    return next(a.i for a in node.attribute if a.name == "to")


def _to_float32_attributes(node: onnx.NodeProto) -> None:
    """float16 tensors inside Constant / ConstantOfShape become (exactly equal) float32 ones."""
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == _F16:
            values = onnx.numpy_helper.to_array(attribute.t).astype(np.float32)
            attribute.t.CopyFrom(onnx.numpy_helper.from_array(values, attribute.t.name))
