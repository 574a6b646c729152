"""Exporter adapters: one lowering emitted as a torchscript symbolic and as a dynamo translation.

The torchscript symbolics are registered for the duration of one export; the dynamo ones form the
``custom_translation_table`` (onnxscript, opset 18). In float16 a formula runs in float32 and
rounds once, as torch's CPU kernels do (their "opmath" type).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from export.lowerings import Lowering, Ops


def _in_opmath(lowering: Lowering, ops: Ops, x: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a formula on float16 in float32 and round once, as torch's kernels do."""
    ops.dtype = ops.dtype_of(x)
    if ops.dtype != "float16":
        return lowering(ops, x, *args, **kwargs)
    ops.dtype = "float32"
    return ops.cast(lowering(ops, ops.cast(x, "float32"), *args, **kwargs), "float16")


# ---------------------------------------------------------------------------- torchscript


_ATTRIBUTE_SUFFIX = {float: "f", int: "i", str: "s"}  # torchscript's g.op(name_f=...) convention


class _TorchScriptOps(Ops):
    def __init__(self, graph: Any) -> None:
        self.graph = graph

    def __call__(self, op_type: str, *inputs: Any, **attributes: Any) -> Any:
        named = {f"{k}_{_ATTRIBUTE_SUFFIX[type(v)]}": v for k, v in attributes.items()}
        return self.graph.op(op_type, *inputs, **named)

    def const(self, value: float) -> Any:
        return self.graph.op("Constant", value_t=torch.tensor(value, dtype=getattr(torch, self.dtype)))

    def dtype_of(self, value: Any) -> str:
        from torch.onnx import JitScalarType

        return str(JitScalarType.from_value(value, JitScalarType.FLOAT).dtype()).removeprefix("torch.")

    def halves(self, value: Any, axis: int) -> tuple[Any, Any]:
        if self.graph.opset >= 18:
            return self.graph.op("Split", value, axis_i=axis, num_outputs_i=2, outputs=2)
        return self.graph.op("Split", value, axis_i=axis, outputs=2)

    def reduce(self, op_type: str, value: Any, axis: int) -> Any:
        if op_type == "ReduceSum" or self.graph.opset >= 18:
            axes = self.graph.op("Constant", value_t=torch.tensor([axis], dtype=torch.int64))
            return self.graph.op(op_type, value, axes, keepdims_i=1)
        return self.graph.op(op_type, value, axes_i=[axis], keepdims_i=1)


def _torchscript_symbolic(lowering: Lowering) -> Callable[..., Any]:
    from torch.onnx import symbolic_helper

    def symbolic(graph: Any, x: Any, *args: Any) -> Any:
        return _in_opmath(lowering, _TorchScriptOps(graph), x, *args)

    # parse_args pairs its codes with the parameter names it reads from the signature.
    formula_params = list(inspect.signature(lowering.formula).parameters.values())
    graph_param = inspect.Parameter("graph", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    symbolic.__signature__ = inspect.Signature([graph_param, *formula_params[1:]])  # type: ignore[attr-defined]
    return symbolic_helper.parse_args(*lowering.torchscript_args)(symbolic)


@contextlib.contextmanager
def torchscript_symbolics(lowerings: Sequence[Lowering], opset: int) -> Iterator[None]:
    """Register the torchscript symbolics of ``lowerings`` for ``opset`` for the duration of one export."""
    chosen = [item for item in lowerings if item.torchscript]
    for item in chosen:
        torch.onnx.register_custom_op_symbolic(f"aten::{item.op}", _torchscript_symbolic(item), opset)
    try:
        yield
    finally:
        for item in chosen:
            torch.onnx.unregister_custom_op_symbolic(f"aten::{item.op}", opset)


# ---------------------------------------------------------------------------- dynamo


class _DynamoOps(Ops):
    def __call__(self, op_type: str, *inputs: Any, **attributes: Any) -> Any:
        from onnxscript import opset18

        return getattr(opset18, op_type)(*inputs, **attributes)

    def const(self, value: float) -> Any:
        import onnx_ir

        return self("Constant", value=onnx_ir.tensor(np.array(value, dtype=self.dtype)))

    def dtype_of(self, value: Any) -> str:
        return str(value.dtype.numpy())

    def halves(self, value: Any, axis: int) -> tuple[Any, Any]:
        return tuple(self("Split", value, axis=axis, num_outputs=2))

    def reduce(self, op_type: str, value: Any, axis: int) -> Any:
        import onnx_ir

        axes = self("Constant", value=onnx_ir.tensor(np.array([axis], dtype=np.int64)))
        return self(op_type, value, axes, keepdims=1)


def dynamo_translations(lowerings: Sequence[Lowering]) -> dict[Callable, Callable]:
    """The dynamo ``custom_translation_table`` of ``lowerings`` (opset 18 onnxscript)."""
    table: dict[Callable, Callable] = {}
    for item in lowerings:
        if item.dynamo:
            for overload in item.overloads:
                packet, name = overload.split(".")
                table[getattr(getattr(torch.ops.aten, packet), name)] = functools.partial(_dynamo_translation, item)
    return table


def _dynamo_translation(lowering: Lowering, x: Any, *args: Any, **kwargs: Any) -> Any:
    return _in_opmath(lowering, _DynamoOps(), x, *args, **kwargs)
