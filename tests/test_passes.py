"""Direct tests of export.lowerings.passes on tiny hand-built graphs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper

from export.lowerings import passes


def _run(model: onnx.ModelProto, **feeds: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _float16_graph() -> onnx.ModelProto:
    nodes = [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Mul", ["s", "b"], ["y"])]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT16, [4]) for n in ("a", "b")]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT16, [4])
    graph = helper.make_graph(nodes, "f16", inputs, [output])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _float32_graph() -> onnx.ModelProto:
    weight = onnx.numpy_helper.from_array(np.array([1.0, -1.0, 3.0], np.float32), "w")
    nodes = [helper.make_node("Mul", ["x", "w"], ["p"]), helper.make_node("Add", ["p", "x"], ["y"])]
    graph = helper.make_graph(nodes, "f32", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_round_float16_rounds_after_each_node() -> None:
    model = passes.round_float16(_float16_graph())
    onnx.checker.check_model(model, full_check=True)
    casts = [n for n in model.graph.node if n.op_type == "Cast"]
    to = [next(a.i for a in n.attribute if a.name == "to") for n in casts]
    assert to.count(TensorProto.FLOAT16) >= 2  # one rounding after Add, one after Mul (the output)
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    a = np.array([60000, 1.0, 0.1, 2049], np.float16)
    b = np.array([10000, 2.0 ** -11, 0.2, 1], np.float16)
    with np.errstate(over="ignore"):  # 60000 + 10000 overflows float16 to inf, as ONNX float16 does
        expected = (a + b) * b  # numpy float16: rounds after each op
    np.testing.assert_array_equal(_run(model, a=a, b=b), expected)


def test_compute_in_float64_widens_weights_and_casts_outputs() -> None:
    model = passes.compute_in_float64(_float32_graph())
    onnx.checker.check_model(model, full_check=True)
    assert all(t.data_type == TensorProto.DOUBLE for t in model.graph.initializer)
    produced = {o: n for n in model.graph.node for o in n.output}
    assert produced["y"].op_type == "Cast"
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    x = np.array([0.1, 1e8, 1.0 / 3.0], np.float32)
    w = np.array([1.0, -1.0, 3.0])
    expected = (x.astype(np.float64) * w + x.astype(np.float64)).astype(np.float32)
    np.testing.assert_array_equal(_run(model, x=x), expected)


def test_passes_are_deterministic() -> None:
    assert (passes.round_float16(_float16_graph()).SerializeToString()
            == passes.round_float16(_float16_graph()).SerializeToString())
    assert (passes.compute_in_float64(_float32_graph()).SerializeToString()
            == passes.compute_in_float64(_float32_graph()).SerializeToString())
