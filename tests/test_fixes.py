"""Every export fix, on the inputs that exposed it: upstream's export breaks the float bound, ours meets it."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from conftest import ROOT
from torch import nn

import zoo
from export import ExportError, check_parity, lowerings, to_onnx
from export.lowerings import fix_table
from export.parity import bounds
from export.runtime.compare import compare_output

INF, NAN = float("inf"), float("nan")


def run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def agrees(model: nn.Module, path: Path, values: list[list[float]], dtype: str = "float32") -> bool:
    """The parity rule on these inputs: within the float bound of the function's value, NaN/inf where it has them."""
    x = np.array(values, dtype=dtype)
    run = bounds.bounded_run(model.eval().to(getattr(torch, dtype)), x, dtype=dtype)
    return compare_output("output", run_onnx(path, x), run.outputs[0], run.tolerances[0], dtype=dtype).ok


def export_both(model: nn.Module, tmp_path: Path, example: torch.Tensor, **options) -> tuple[Path | None, Path]:
    """(upstream's export or None if upstream refuses, ours)."""
    with lowerings.disabled():
        try:
            upstream = to_onnx(model, tmp_path / "upstream.onnx", example_input=example, **options)
        except ExportError:
            upstream = None
    return upstream, to_onnx(model, tmp_path / "ours.onnx", example_input=example, **options)


def test_softplus_threshold(tmp_path: Path) -> None:
    model = nn.Softplus(beta=2.0, threshold=5.0)
    values = [[2.5, 2.51, 3.0, 10.0]]  # beta * x >= threshold: torch returns x itself
    upstream, ours = export_both(model, tmp_path, torch.randn(2, 4))
    assert not agrees(model, upstream, values)
    assert agrees(model, ours, values)


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_log_sigmoid_underflow(tmp_path: Path, exporter: str) -> None:
    model = nn.LogSigmoid()
    values = [[-100.0, -90.0, -30.0, -20.0]]  # Log(Sigmoid(-100)) = log(0) = -inf; torch: -100
    upstream, ours = export_both(model, tmp_path, torch.randn(2, 4), exporter=exporter, opset=18)
    assert not agrees(model, upstream, values)
    assert agrees(model, ours, values)


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_silu_negative_tail(tmp_path: Path, exporter: str) -> None:
    model = nn.SiLU()
    values = [[-17.05, -16.0, -20.0, -25.0], [-95.0, -90.0, -INF, 1.0]]  # onnxruntime's Sigmoid is far off
    # here; below -88 exp(-x) overflows, and -inf * sigmoid(-inf) is NaN where the limit is 0
    upstream, ours = export_both(model, tmp_path, torch.randn(2, 4), exporter=exporter, opset=18)
    assert not agrees(model, upstream, values)
    assert agrees(model, ours, values)


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_glu_negative_tail(tmp_path: Path, exporter: str) -> None:
    model = nn.GLU()
    values = [[1e10, 7.5e16, -30.0, -5.7], [-INF, 2.0, -INF, 0.0]]  # a * sigmoid(b), a large and b negative,
    # and -inf * sigmoid(-inf), whose limit is 0
    upstream, ours = export_both(model, tmp_path, torch.randn(2, 4), exporter=exporter, opset=18)
    assert not agrees(model, upstream, values)
    assert agrees(model, ours, values)


def test_gelu_tanh_overflow(tmp_path: Path) -> None:
    model = nn.GELU(approximate="tanh")
    values = [[2.18e38, 1.8e38, 1.0, -1.0]]  # upstream overflows to inf; torch returns x
    upstream, ours = export_both(model, tmp_path, torch.randn(2, 4), opset=17)
    assert not agrees(model, upstream, values)
    assert agrees(model, ours, values)


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_hardswish_knee(tmp_path: Path, exporter: str) -> None:
    # Exposed in an MLP: the next layer scales the small values just above the knee at -3.
    model = nn.Sequential(nn.Hardswish(), nn.Linear(1, 1))
    with torch.no_grad():
        model[1].weight.fill_(1e4)
        model[1].bias.fill_(0.0)
    values = [[v] for v in np.linspace(-2.9999, -2.99, 64)]
    upstream, ours = export_both(model, tmp_path, torch.randn(2, 1), exporter=exporter, opset=18)
    assert not agrees(model, upstream, values)
    assert agrees(model, ours, values)


@pytest.mark.parametrize("model", [nn.Hardshrink(), nn.Softshrink()], ids=["hardshrink", "softshrink"])
def test_shrink_nan(tmp_path: Path, model: nn.Module) -> None:
    values = [[NAN, 0.2, -0.7, 1.0]]  # torch keeps NaN; upstream's Where chain returns 0
    upstream, ours = export_both(model, tmp_path, torch.randn(2, 4))
    assert not agrees(model, upstream, values)
    assert agrees(model, ours, values)


def test_threshold_exports(tmp_path: Path) -> None:
    model = zoo.activations.create("threshold")
    values = [[0.1, 0.11, -5.0, NAN]]
    upstream, ours = export_both(model, tmp_path, torch.randn(2, 4))
    assert upstream is None  # torchscript refuses a non-zero threshold
    assert agrees(model, ours, values)


def test_celu_float16(tmp_path: Path) -> None:
    model = nn.CELU()
    values = [[-3.0, -0.5, 0.0, 2.0]]
    upstream, ours = export_both(model, tmp_path, torch.randn(2, 4), dtype="float16")
    assert upstream is None  # ONNX Celu has no float16 schema: the model is invalid
    assert agrees(model.half(), ours, values, dtype="float16")


def test_rrelu_dynamo(tmp_path: Path) -> None:
    model = nn.RReLU().eval()
    values = [[-3.0, -0.5, 0.0, 2.0]]
    upstream, ours = export_both(model, tmp_path, torch.randn(2, 4), exporter="dynamo", opset=18)
    assert upstream is None  # dynamo cannot translate rrelu_with_noise
    assert agrees(model, ours, values)


class _GlobalMax(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=(2, 3))


MAX_POOLS = [  # MaxPool from either exporter, ReduceMax
    pytest.param(nn.MaxPool2d(3, stride=1, padding=1), "torchscript", id="max_pool-torchscript"),
    pytest.param(nn.MaxPool2d(2), "dynamo", id="max_pool-dynamo"),
    pytest.param(nn.AdaptiveMaxPool2d(1), "torchscript", id="adaptive_max_pool"),
    pytest.param(_GlobalMax(), "dynamo", id="amax"),
]


@pytest.mark.parametrize(("model", "exporter"), MAX_POOLS)
def test_max_pool_keeps_nan(tmp_path: Path, model: nn.Module, exporter: str) -> None:
    image = np.arange(16.0).reshape(1, 1, 4, 4)
    values = np.concatenate([np.where(np.arange(16).reshape(1, 1, 4, 4) == at, NAN, image) for at in (0, 5, 15)])
    upstream, ours = export_both(model, tmp_path, torch.randn(2, 1, 4, 4), exporter=exporter)
    assert not agrees(model, upstream, values.tolist())  # onnxruntime's max drops the NaN
    assert agrees(model, ours, values.tolist())


@pytest.mark.parity  # compared with torch eager: run again under torch's baseline kernels
@pytest.mark.parametrize("activation", ["relu", "elu"])
def test_float16_rounds_like_torch(tmp_path: Path, activation: str) -> None:
    """compute="float16" rounds every node to float16 as torch does. Without explicit rounding,
    onnxruntime keeps hidden values in float32: no overflow to inf, other values everywhere."""
    model = zoo.create_model("mlp", in_features=1, out_features=1, activation=activation, seed=0)
    upstream, ours = export_both(model, tmp_path, torch.randn(2, 1), dtype="float16", compute="float16")
    model.half()
    for values in ([[v] for v in (1e3, 3e3, 1e4, 3e4, 6e4, -6e4, -3e4, -1e4)],
                   [[float(v)] for v in np.linspace(-100, 100, 201)]):
        assert not same_as_torch(model, upstream, values)
        assert same_as_torch(model, ours, values)
    check_parity(model, ours)


def same_as_torch(model: nn.Module, path: Path, values: list[list[float]]) -> bool:
    """torch's float16 value, rounding for rounding (NaN/inf included)."""
    x = np.array(values, dtype="float16")
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(x)).numpy()
    return bool(np.isclose(run_onnx(path, x), expected, rtol=1e-3, atol=1e-3, equal_nan=True).all())


def test_float16_rounds_once_inside_an_op(tmp_path: Path) -> None:
    """With explicit rounding, a multi-node lowering must still round once (torch's opmath)."""
    model = nn.Mish().half()
    graph = onnx.load(to_onnx(model, tmp_path / "mish.onnx", example_input=torch.randn(2, 4), dtype="float16"))
    rounding = [n for n in graph.graph.node if n.op_type == "Cast" and n.attribute[0].i == onnx.TensorProto.FLOAT16]
    assert len(rounding) == 2  # the op's own result, and the final cast to the float16 output
    check_parity(model, tmp_path / "mish.onnx")


def test_fixes_are_scoped_to_one_export(tmp_path: Path) -> None:
    """After to_onnx, a plain torch.onnx.export sees upstream's symbolics again."""
    model = nn.Softplus(beta=2.0, threshold=5.0)
    to_onnx(model, tmp_path / "ours.onnx", example_input=torch.randn(2, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(2, 4),), str(tmp_path / "plain.onnx"), dynamo=False, opset_version=17)
    ops = {n.op_type for n in onnx.load(str(tmp_path / "plain.onnx")).graph.node}
    assert "Where" not in ops


@pytest.mark.parity  # trained weights differ with torch's kernels: run again under its baseline ones
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_the_same_model_exported_twice_gives_the_same_bytes(tmp_path: Path, exporter: str) -> None:
    """No timings, devices or source paths in the file: the artifact does not depend on the machine."""
    model = zoo.create_model("mlp", activation="gelu", seed=0)
    zoo.train(model, zoo.datasets.create("nonlinear", seed=0, n=200), seed=0, progress=False)
    first = to_onnx(model, tmp_path / "a.onnx", exporter=exporter).read_bytes()
    second = to_onnx(model, tmp_path / "b.onnx", exporter=exporter).read_bytes()
    assert first == second
    text = first.decode("latin-1")
    checkout = {str(ROOT), str(Path(zoo.__file__).parents[1])}  # as resolved and as imported
    for machine_specific in (*checkout, str(tmp_path), "site-packages", '"seconds"'):
        assert machine_specific not in text, machine_specific


def test_fixes_markdown_is_current() -> None:
    path = Path(fix_table.__file__).with_name("FIXES.md")
    assert path.read_text() == fix_table.markdown(), "regenerate: python -c 'from export.lowerings import fix_table; ...'"
    documented = {f.test for f in fix_table.builtin()} | {
        fix_table.FLOAT16_ROUNDING[-1], fix_table.FLOAT64_COMPUTE[-1], fix_table.MAX_POOL_NAN[-1]}
    assert documented <= set(globals()), documented - set(globals())


TRAINED = ["sigmoid", "elu", "celu", "hardsigmoid", "softplus", "log_sigmoid", "mish", "hardswish"]


@pytest.mark.parity  # trained weights differ with torch's kernels: run again under its baseline ones
@pytest.mark.parametrize("activation", TRAINED)
def test_trained_mlp_parity(tmp_path: Path, activation: str) -> None:
    """The trained MLPs of `zoo run` that exposed inexact float32 kernels, in float32 graphs."""
    model = trained_mlp(activation)
    report = check_parity(model, to_onnx(model, tmp_path / "ours.onnx"), strict=False)
    assert report.ok and compute_of(tmp_path / "ours.onnx") == "float32", report.summary()


def trained_mlp(activation: str) -> nn.Module:
    model = zoo.create_model("mlp", activation=activation, seed=0)
    zoo.train(model, zoo.datasets.create("nonlinear", seed=0), seed=0, progress=False)
    return model


def compute_of(path: Path) -> str:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}["zoo.compute"]


@pytest.mark.parity  # trained, and torch eager judged
def test_log_softmax_mlp_passes_in_float32(tmp_path: Path) -> None:
    """`zoo run`'s mlp-log_softmax: its output layer sums terms of about 50 that cancel to about 0.3.
    Any float32 evaluation is far from exact there in relative terms; the bound grows with the terms,
    so a correct float32 graph passes, and the default export is that graph."""
    model = trained_mlp("log_softmax")
    path = to_onnx(model, tmp_path / "float32.onnx")
    report = check_parity(model, path, strict=False)
    assert report.ok and report.torch_ok, report.summary()
    graph = onnx.load(str(path)).graph
    assert compute_of(path) == "float32"
    assert all(t.data_type == onnx.TensorProto.FLOAT for t in graph.initializer)
    assert not [n for n in graph.node if n.op_type == "Cast" and n.attribute[0].i == onnx.TensorProto.DOUBLE]


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("model", [nn.Softmax(dim=-1), nn.LogSoftmax(dim=-1), nn.Softmin(dim=-1)],
                         ids=["softmax", "log_softmax", "softmin"])
def test_limits_at_infinity(tmp_path: Path, exporter: str, model: nn.Module) -> None:
    """A row holding +inf: the limit puts all the weight on the infinite entries; upstream gives NaN."""
    values = [[INF, 1.0, -2.0, 0.5], [INF, INF, 0.0, -INF], [-INF, -INF, -INF, -INF], [NAN, 1.0, 2.0, 3.0]]
    upstream, ours = export_both(model, tmp_path, torch.randn(2, 4), exporter=exporter)
    assert not agrees(model, upstream, values)
    assert agrees(model, ours, values)


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_selu_near_zero(tmp_path: Path, exporter: str) -> None:
    """ONNX Selu computes alpha * (exp(x) - 1): every digit of expm1 is lost for |x| < 1e-7."""
    model = nn.SELU()
    values = [[-1e-8, -3e-10, -1e-12, -2e-5]]
    upstream, ours = export_both(model, tmp_path, torch.randn(2, 4), exporter=exporter)
    assert not agrees(model, upstream, values)
    assert agrees(model, ours, values)


def float_types(path: Path) -> dict[str, int]:
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(path))).graph
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)
    values = [*graph.value_info, *graph.output]
    return {v.name: v.type.tensor_type.elem_type for v in values if v.type.tensor_type.elem_type in floats}


@pytest.mark.parametrize("activation", ["glu", "hardshrink", "tanhshrink"])
def test_float64_graph_rounds_once(tmp_path: Path, activation: str) -> None:
    """Parity-matrix MLPs with x @ W.T + b layers that failed while each layer rounded to float32:
    computed in float64, the only float32 values left are the model's input and output."""
    from export.parity import matrix

    model, example = matrix.build(matrix.Case(activation, "param_linear", "torchscript", 17, "float32"))
    path = to_onnx(model, tmp_path / "ours.onnx", example_input=example, compute="float64")
    report = check_parity(model, path, strict=False)
    assert report.ok, report.summary()
    narrow = [name for name, kind in float_types(path).items() if kind == onnx.TensorProto.FLOAT]
    assert narrow == ["output"]
    weights = onnx.load(str(path)).graph.initializer
    assert weights and all(t.data_type == onnx.TensorProto.DOUBLE for t in weights)


@pytest.mark.parity  # trained
def test_float32_only_kernels_run_between_casts(tmp_path: Path) -> None:
    """onnxruntime has no float64 Erf kernel: those nodes stay float32 inside the float64 graph."""
    model = trained_mlp("gelu")
    path = to_onnx(model, tmp_path / "ours.onnx", compute="float64")
    types = float_types(path)
    nodes = [n for n in onnx.load(str(path)).graph.node if n.op_type == "Erf"]
    assert nodes and all(types[n.output[0]] == onnx.TensorProto.FLOAT for n in nodes)
    report = check_parity(model, path, strict=False)
    assert report.ok, report.summary()


def test_readme_fix_table_is_current() -> None:
    """The README's fix table is FIXES.md's, row for row."""
    readme = (Path(fix_table.__file__).parents[2] / "README.md").read_text()
    rows = [line for line in fix_table.markdown().splitlines() if line.startswith("| ") and "| --- |" not in line]
    assert rows and all(row in readme for row in rows), [row[:60] for row in rows if row not in readme]
