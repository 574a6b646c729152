"""to_onnx: opset ranges, checked files, dynamic batch, metadata, atomic writes, the caller's model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from torch import nn

import zoo
from export import ExportError, ParityError, to_onnx
from export.onnx_export import (
    DEFAULT_OPSET,
    ExportOptions,
    _validate,
    dynamic_axes,
    onnxruntime_max_opset,
    opset_range,
)
from zoo.errors import ZooError


@pytest.fixture(scope="module")
def mlp() -> nn.Module:
    return zoo.create_model("mlp", in_features=3, out_features=2, hidden=[8], seed=0)


def dims(value: onnx.ValueInfoProto) -> list[str | int]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def run(path: Path, x: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def test_errors_are_zoo_errors() -> None:
    assert issubclass(ExportError, ZooError) and issubclass(ParityError, ZooError)


def test_opset_ranges_are_what_exporter_and_onnxruntime_both_support() -> None:
    from torch.onnx import _constants

    assert opset_range("torchscript") == (13, min(_constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET, onnxruntime_max_opset()))
    assert opset_range("dynamo") == (18, min(_constants.ONNX_MAX_OPSET, onnxruntime_max_opset()))
    assert opset_range()[0] <= DEFAULT_OPSET <= opset_range()[1]


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_opsets_outside_the_range_are_refused(tmp_path: Path, mlp: nn.Module, exporter: str) -> None:
    low, high = opset_range(exporter)
    for opset in (low - 1, high + 1):
        with pytest.raises(ExportError, match=f"{low}..{high}"):
            to_onnx(mlp, tmp_path / "m.onnx", opset=opset, exporter=exporter)
    assert not any(tmp_path.iterdir())


def test_exporter_returning_another_opset_is_refused(tmp_path: Path, mlp: nn.Module) -> None:
    proto = onnx.load(to_onnx(mlp, tmp_path / "m.onnx", opset=17))
    with pytest.raises(ExportError, match="returned opset 17 instead of 18"):
        _validate(proto, ExportOptions(opset=18), 2)


def test_invalid_model_is_refused(tmp_path: Path, mlp: nn.Module) -> None:
    proto = onnx.load(to_onnx(mlp, tmp_path / "m.onnx"))
    proto.graph.node[0].input[0] = "missing"
    with pytest.raises(ExportError, match="invalid"):
        _validate(proto, ExportOptions(), 2)


def test_unknown_exporter_and_dtype(tmp_path: Path, mlp: nn.Module) -> None:
    with pytest.raises(ExportError, match="exporter"):
        to_onnx(mlp, tmp_path / "m.onnx", exporter="tflite")
    with pytest.raises(ExportError, match="dtype"):
        to_onnx(mlp, tmp_path / "m.onnx", dtype="bfloat16")


def test_dynamo_without_onnxscript_says_how_to_install(tmp_path: Path, mlp: nn.Module,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # what an environment without it looks like
    with pytest.raises(ExportError, match="pip install onnxscript"):
        to_onnx(mlp, tmp_path / "m.onnx", exporter="dynamo", opset=18)


@pytest.mark.parametrize("exporter,opset", [("torchscript", 17), ("dynamo", 18)])
def test_checked_file_with_symbolic_batch_and_metadata(tmp_path: Path, mlp: nn.Module, exporter: str,
                                                       opset: int) -> None:
    mlp.zoo_training = {"recipe": "default", "final_loss": 0.5}
    try:
        path = to_onnx(mlp, tmp_path / "m.onnx", exporter=exporter, opset=opset, metadata={"owner": "me"})
    finally:
        del mlp.zoo_training
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    assert {o.domain: o.version for o in proto.opset_import}[""] == opset
    assert dims(proto.graph.input[0]) == ["batch", 3] and dims(proto.graph.output[0]) == ["batch", 2]
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["zoo.config"]) == mlp.zoo_config
    assert json.loads(props["zoo.training"]) == {"recipe": "default", "final_loss": 0.5}
    assert props["zoo.version"] == zoo.__version__ and props["zoo.torch_version"] == torch.__version__
    assert props["zoo.onnx_version"] == onnx.__version__
    assert (props["zoo.opset"], props["zoo.exporter"], props["zoo.dtype"]) == (str(opset), exporter, "float32")
    assert props["owner"] == "me"
    for batch in (1, 2, 7, 64):
        assert run(path, np.zeros((batch, 3), np.float32)).shape == (batch, 2)


def test_static_batch(tmp_path: Path, mlp: nn.Module) -> None:
    proto = onnx.load(to_onnx(mlp, tmp_path / "m.onnx", dynamic_batch=False, example_input=torch.zeros(5, 3)))
    assert dims(proto.graph.input[0]) == [5, 3] and dims(proto.graph.output[0]) == [5, 2]


def test_batch_one_example_is_traced_at_batch_two(tmp_path: Path, mlp: nn.Module) -> None:
    path = to_onnx(mlp, tmp_path / "m.onnx", example_input=torch.zeros(1, 3))
    assert run(path, np.zeros((7, 3), np.float32)).shape == (7, 2)


class BatchBaked(nn.Module):
    """Reshapes to the traced batch size: the batch axis cannot stay symbolic."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(2, -1) * 2


def test_fixed_batch_axis_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    (tmp_path / "m.onnx").write_bytes(b"previous")
    with pytest.raises(ExportError, match="fixed batch axis"):
        to_onnx(BatchBaked(), tmp_path / "m.onnx", example_input=torch.zeros(2, 3))
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
    assert (tmp_path / "m.onnx").read_bytes() == b"previous"


def test_the_example_has_the_models_input_shape_and_its_sequence_axis_stays_dynamic(tmp_path: Path) -> None:
    model = zoo.create_model("transformer", width=8, heads=2, depth=1, seed=0)
    proto = onnx.load(to_onnx(model, tmp_path / "t.onnx", dynamic_batch=False))
    assert dims(proto.graph.input[0]) == [2, "sequence", 10]
    assert run(tmp_path / "t.onnx", np.zeros((2, 9, 10), np.float32)).shape == (2, 9, 10)


class TwoFreeAxes(nn.Module):
    """Takes (batch, any, any, 3) inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.zoo_meta = {"input_shape": [None, None, 3]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=-1) * 2


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_several_any_length_axes_are_numbered(tmp_path: Path, exporter: str) -> None:
    assert dynamic_axes(TwoFreeAxes()) == {0: "batch", 1: "sequence1", 2: "sequence2"}
    proto = onnx.load(to_onnx(TwoFreeAxes(), tmp_path / "m.onnx", exporter=exporter))
    assert dims(proto.graph.input[0]) == ["batch", "sequence1", "sequence2", 3]
    assert run(tmp_path / "m.onnx", np.ones((3, 4, 5, 3), np.float32)).tolist() == np.full((3, 4, 5), 6.0).tolist()


def test_exporter_failure_is_an_export_error(tmp_path: Path) -> None:
    class Failing(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.fft.fft(x).abs()  # no ONNX symbolic for aten::fft_fft in torchscript

    with pytest.raises(ExportError, match="torchscript exporter failed"):
        to_onnx(Failing(), tmp_path / "m.onnx", example_input=torch.zeros(2, 4))
    assert not any(tmp_path.iterdir())


def test_example_input_needed_without_zoo_config(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="example_input"):
        to_onnx(nn.Linear(3, 2), tmp_path / "m.onnx")


def test_callers_model_keeps_its_mode_and_dtype(tmp_path: Path) -> None:
    model = zoo.create_model("mlp", in_features=3, out_features=2, hidden=[8], seed=0)
    model.train()
    model.fc0.eval()
    to_onnx(model, tmp_path / "m.onnx", dtype="float16")
    assert model.training and not model.fc0.training and model.out.training
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_float16_file_has_float16_io_and_weights(tmp_path: Path, mlp: nn.Module) -> None:
    proto = onnx.load(to_onnx(mlp, tmp_path / "m.onnx", dtype="float16"))
    float16 = onnx.TensorProto.FLOAT16
    assert proto.graph.input[0].type.tensor_type.elem_type == float16
    assert proto.graph.output[0].type.tensor_type.elem_type == float16
    assert {t.data_type for t in proto.graph.initializer} == {float16}
    assert run(tmp_path / "m.onnx", np.ones((2, 3), np.float16)).dtype == np.float16


def test_names_are_the_callers(tmp_path: Path, mlp: nn.Module) -> None:
    proto = onnx.load(to_onnx(mlp, tmp_path / "m.onnx", input_names=("x",), output_names=("y",)))
    assert [v.name for v in proto.graph.input] == ["x"] and [v.name for v in proto.graph.output] == ["y"]


@pytest.mark.parametrize(("exporter", "opset"), [("torchscript", 17), ("dynamo", 18)])
def test_the_default_opset_follows_the_exporter(tmp_path: Path, mlp: nn.Module, exporter: str, opset: int) -> None:
    path = to_onnx(mlp, tmp_path / "m.onnx", exporter=exporter)
    assert {p.key: p.value for p in onnx.load(str(path)).metadata_props}["zoo.opset"] == str(opset)


def test_the_default_graph_computes_in_its_own_dtype(tmp_path: Path, mlp: nn.Module) -> None:
    """No Cast to double and no double initializer: tract and OpenVINO run it as it is."""
    graph = onnx.load(str(to_onnx(mlp, tmp_path / "m.onnx"))).graph
    assert all(t.data_type == onnx.TensorProto.FLOAT for t in graph.initializer)
    assert not [n for n in graph.node if n.op_type == "Cast"]
    with pytest.raises(ExportError, match="compute must be"):
        to_onnx(mlp, tmp_path / "x.onnx", compute="auto")
