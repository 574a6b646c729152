"""check_parity: the float error bound, every activation through both exporters, the report, the probes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import OverflowingReLU
from torch import nn

import zoo
from export import ParityError, ParityReport, check_parity, lowerings, to_onnx
from export.parity import bounds, matrix
from export.parity.probes import BATCH_SIZES, DTYPES, FINE_STEP, SWEEP_LIMIT, make_probes, special_values
from export.runtime.compare import Tolerance, classify, compare_output


def _in_turn(case: matrix.Case) -> bool:
    """Whether an activation's case is the one of its exporter and dtype taken here: the exporter's low and high
    opsets in turn, so each activation meets both under each exporter (make parity runs every combination)."""
    turn = list(matrix.activation_specs()).index(case.part) + list(DTYPES).index(case.dtype)
    return case.opset == matrix.opsets(case.exporter, quick=True)[turn % 2]


ACTIVATION_CASES = [c for c in matrix.cases(quick=True) if c.model == matrix.ALONE and _in_turn(c)]
LAYER_CASES = [c for c in matrix.cases(quick=True, only=["relu"]) if c.model != matrix.ALONE]
# One case per network, the exporters, opsets and dtypes taken in turn (make parity runs them all).
_NETWORK_GRID = sorted({(c.exporter, c.opset, c.dtype) for c in matrix.cases(quick=True, only=["conv2d"])})
NETWORK_CASES = [
    next(c for c in matrix.cases(quick=True, only=[name]) if (c.exporter, c.opset, c.dtype) == _NETWORK_GRID[k % len(_NETWORK_GRID)])
    for k, name in enumerate(matrix.NETWORKS)
]


def export_case(case: matrix.Case, directory: Path) -> tuple[nn.Module, Path]:
    model, example = matrix.build(case)
    path = to_onnx(model, directory / f"{case.label()}.onnx", opset=case.opset, exporter=case.exporter,
                   dtype=case.dtype, example_input=example, dynamic_axes=case.dynamic_axes())
    return model, path


@pytest.mark.parametrize("case", ACTIVATION_CASES, ids=matrix.Case.label)
def test_activation_parity(tmp_path: Path, case: matrix.Case) -> None:
    model, path = export_case(case, tmp_path)
    check_parity(model, path, explain=False)


@pytest.mark.parametrize("case", LAYER_CASES, ids=matrix.Case.label)
def test_linear_layer_parity(tmp_path: Path, case: matrix.Case) -> None:
    model, path = export_case(case, tmp_path)
    check_parity(model, path, explain=False)


@pytest.mark.parametrize("case", NETWORK_CASES, ids=matrix.Case.label)
def test_network_parity(tmp_path: Path, case: matrix.Case) -> None:
    """Convolution, norms, pooling, residual and attention networks pass, each under one exporter, opset, dtype
    (on a smaller budget: every probe value still appears)."""
    model, path = export_case(case, tmp_path)
    check_parity(model, path, explain=False, budget=2**14)


def test_every_activation_and_layer_is_covered() -> None:
    names = {c.part for c in ACTIVATION_CASES}
    assert set(zoo.activations.names()) <= names and {"gelu_tanh", "softplus_b2_t5"} <= names
    assert {c.model for c in LAYER_CASES} == set(zoo.layers.names())
    assert {(c.exporter, c.dtype) for c in ACTIVATION_CASES} == {
        (e, d) for e in ("torchscript", "dynamo") for d in DTYPES
    }
    assert {(c.part, c.exporter, c.opset) for c in ACTIVATION_CASES} == {
        (n, e, o) for n in names for e in ("torchscript", "dynamo") for o in matrix.opsets(e, quick=True)
    }
    assert {(c.exporter, c.dtype) for c in NETWORK_CASES} == {(e, d) for e in ("torchscript", "dynamo") for d in DTYPES}


# -- the bound itself ------------------------------------------------------------------------------
def test_a_dot_products_bound_grows_with_the_size_of_its_terms() -> None:
    """gamma_n * sum |terms|, not |y|: where a layer's terms cancel, the bound stays large."""
    layer = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -1.0, 1.0, -1.0]]))
    x = np.array([[1e4, 1e4, 1.0, 0.0], [1.0, 1.0, 1.0, 0.0]], dtype=np.float32)
    run = bounds.bounded_run(layer.eval(), x, dtype="float32")
    y, bound = run.outputs[0][:, 0], run.tolerances[0].bound[:, 0]
    assert y.tolist() == [1.0, 1.0]
    gamma = bounds.gamma(4, 2.0**-24)
    assert bound[0] >= gamma * (2e4 + 1) > 100 * bound[1]  # same y, far larger terms
    assert bound[1] >= gamma * 3


def test_every_correct_float32_evaluation_in_another_order_passes() -> None:
    """Sums in any order, with FMA or not, are within the bound; an error of twice the bound is not."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((1, 256)).astype(np.float32) * 50
    layer = nn.Linear(256, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(w))
    x = rng.standard_normal((64, 256)).astype(np.float32)
    run = bounds.bounded_run(layer.eval(), x, dtype="float32")
    terms = (x * w).astype(np.float32)
    for order in (slice(None), slice(None, None, -1)):
        running = np.zeros(64, np.float32)
        for column in terms.T[order]:
            running = (running + column).astype(np.float32)
        verdict = compare_output("y", running[:, None], run.outputs[0], run.tolerances[0], dtype="float32")
        assert verdict.ok and verdict.worst_ratio < 1
    off = (run.outputs[0] + 2 * run.tolerances[0].bound).astype(np.float32)
    assert not compare_output("y", off, run.outputs[0], run.tolerances[0], dtype="float32").ok


def test_element_classes_judge_nan_inf_and_range() -> None:
    reference = np.array([1.0, np.nan, np.inf, 5.0, 3.4028e38])
    bound = np.array([1e-6, 0.0, 0.0, np.inf, 1e34])
    assert {k: v.tolist() for k, v in classify(reference, bound).items()} == {
        "finite": [True, False, False, False, True], "nan": [False, True, False, False, False],
        "inf": [False, False, True, False, False], "unconstrained": [False, False, False, True, False],
    }
    good = np.array([1.0, np.nan, np.inf, -7.0, np.inf], np.float32)  # 3.4028e38 + bound may overflow
    assert compare_output("y", good, reference, Tolerance.worst_case(bound), dtype="float32").ok
    for index, wrong in ((0, 1.1), (1, 0.0), (2, 3e38), (4, -np.inf)):
        bad = good.copy()
        bad[index] = wrong
        verdict = compare_output("y", bad, reference, Tolerance.worst_case(bound), dtype="float32")
        assert not verdict.ok and verdict.worst.index == [index]
    wrong_dtype = compare_output("y", good.astype(np.float64), reference, Tolerance.worst_case(bound), dtype="float32")
    assert not wrong_dtype.ok and "dtype" in wrong_dtype.problem
    assert "shape" in compare_output("y", good[:2], reference, Tolerance.worst_case(bound), dtype="float32").problem


@pytest.mark.parametrize(("activation", "x", "limit"), [
    ("gelu", -np.inf, 0.0), ("gelu", np.inf, np.inf), ("silu", -np.inf, 0.0), ("mish", -np.inf, 0.0),
    ("softsign", np.inf, 1.0), ("softsign", -np.inf, -1.0), ("hardswish", -np.inf, 0.0), ("softplus", -np.inf, 0.0),
])
def test_the_reference_takes_the_functions_limit_at_infinity(activation: str, x: float, limit: float) -> None:
    run = bounds.bounded_run(zoo.activations.create(activation).eval(), np.full((1, 2), x, np.float32),
                             dtype="float32")
    assert run.outputs[0].tolist() == [[limit, limit]] and run.tolerances[0].bound.max() <= np.finfo(np.float32).tiny


def test_an_op_without_an_error_rule_is_a_clear_error() -> None:
    class Cumulative(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cumsum(x, dim=1)

    with pytest.raises(bounds.BoundError, match="cumsum"):
        bounds.bounded_run(Cumulative(), np.ones((2, 3), np.float32), dtype="float32")


def test_a_where_on_an_uncertain_comparison_allows_either_branch() -> None:
    class Step(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = x * 3.0 - 0.3
            return torch.where(y > 0, y + 1, y)

    x = np.array([[0.1], [1.0]], np.float32)  # 3 * 0.1 - 0.3 is 0 up to rounding: either branch is right
    run = bounds.bounded_run(Step().eval(), x, dtype="float32")
    assert run.tolerances[0].bound[0, 0] >= 1.0 and run.tolerances[0].bound[1, 0] < 1e-5


# -- the report ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def default_mlp(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    model = zoo.create_model("mlp", in_features=2, out_features=1, hidden=[16, 16], activation="tanh", seed=0)
    return model, to_onnx(model, tmp_path_factory.mktemp("mlp") / "mlp.onnx")


@pytest.mark.parity  # it asserts torch eager's verdict: run again under torch's baseline kernels
def test_report_speaks_in_units_of_each_tier(default_mlp: tuple[nn.Module, Path]) -> None:
    model, path = default_mlp
    report = check_parity(model, path)
    assert isinstance(report, ParityReport) and report.ok and report.dtype == "float32"
    assert set(BATCH_SIZES) <= set(report.batch_sizes)
    [output] = report.outputs
    assert output.name == "output" and not any(output.failures.values())
    assert 0 < report.worst_ratio <= 1 and output.counts["finite"] > 10_000
    assert 0.05 < report.worst_statistical <= 1  # honest rounding sits inside the second tier, not far inside
    assert report.torch_ok and report.torch_note() is None
    summary = report.summary()
    assert summary.startswith("PASS") and "of its worst-case bound and" in summary and "of its statistical bound" in summary
    assert "\n" not in summary
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["ok"] is True and data["worst_statistical"] == report.worst_statistical


def test_failure_names_the_worst_input_and_the_first_node_out_of_bound(default_mlp) -> None:
    _, path = default_mlp
    other = zoo.create_model("mlp", in_features=2, out_features=1, hidden=[16, 16], activation="tanh", seed=1)
    with pytest.raises(ParityError) as raised:
        check_parity(other, path)
    report = raised.value.report
    assert not report.ok and report.outputs[0].failures["finite"] > 0
    assert report.worst_probe in str(raised.value)
    assert "'fc0'" in report.culprit and "Gemm" in report.culprit  # the first layer's weights differ


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_a_wrong_lowering_is_located_at_its_module(tmp_path: Path, exporter: str) -> None:
    model = zoo.create_model("mlp", in_features=1, out_features=1, hidden=[8, 8], activation="tanh", seed=0)
    path = to_onnx(model, tmp_path / "m.onnx", exporter=exporter)
    proto = onnx.load(path)
    tanh = next(n for n in proto.graph.node if n.op_type == "Tanh")
    tanh.op_type = "Sigmoid"  # act1 or act0 computes another function
    onnx.save(proto, path)
    report = check_parity(model, path, strict=False)
    assert not report.ok and "Sigmoid" in report.culprit and "(Tanh)" in report.culprit


def test_nan_positions_must_match(tmp_path: Path) -> None:
    model = nn.Hardshrink()
    with lowerings.disabled():  # upstream's torchscript lowering maps NaN to 0
        path = to_onnx(model, tmp_path / "m.onnx", example_input=torch.zeros(2, 4))
    report = check_parity(model, path, strict=False)
    assert not report.ok and report.outputs[0].failures == {"finite": 0, "nan": report.outputs[0].failures["nan"],
                                                            "inf": 0, "unconstrained": 0}
    assert report.outputs[0].worst.element_class == "nan" and report.outputs[0].worst.actual == 0.0


def test_the_output_dtype_is_compared(tmp_path: Path) -> None:
    model = nn.Tanh()
    path = to_onnx(model, tmp_path / "m.onnx", example_input=torch.zeros(2, 3))
    proto = onnx.load(path)
    proto.graph.node.append(onnx.helper.make_node("Cast", ["output"], ["wide"], to=onnx.TensorProto.DOUBLE))
    proto.graph.output[0].CopyFrom(onnx.helper.make_tensor_value_info("wide", onnx.TensorProto.DOUBLE, ["batch", 3]))
    onnx.save(proto, path)
    report = check_parity(model, path, strict=False, dtype="float32")
    assert not report.ok and "dtype float64" in report.summary()


def test_torch_kernels_are_judged_by_the_same_rule_and_reported(tmp_path: Path) -> None:
    """torch eager is judged by the bound like any runtime: where its float32 kernel is wrong, the report
    says so and the export still passes. The defect is made to order, so it is the same on every CPU."""
    model = OverflowingReLU()
    path = to_onnx(model, tmp_path / "m.onnx", example_input=torch.zeros(2, 2))
    report = check_parity(model, path)
    assert report.ok and not report.torch_ok
    assert "torch eager on this machine" in report.torch_note()
    with torch.no_grad():
        assert model(torch.tensor([1e9, 1.0])).tolist() == [math.inf, 1.0]


# -- probes ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_probes_cover_the_float_range(dtype: str) -> None:
    probes = make_probes(3, dtype=dtype, seed=7)
    assert [p.data.tolist() for p in probes[:3]] == [p.data.tolist() for p in make_probes(3, dtype=dtype, seed=7)[:3]]
    assert set(BATCH_SIZES) <= {p.batch for p in probes}
    assert all(p.data.dtype == np.dtype(dtype) and p.data.shape[1] == 3 for p in probes)
    sweep = next(p.data for p in probes if p.name == "sweep")[:, 0]
    grid = np.sort(sweep[np.abs(sweep) <= SWEEP_LIMIT])
    assert grid[0] <= -SWEEP_LIMIT and grid[-1] >= SWEEP_LIMIT
    training = np.sort(sweep[np.abs(sweep) <= 10])
    assert np.diff(training).max() <= max(FINE_STEP, float(np.spacing(np.array(10, dtype)))) * 1.01
    special = next(p.data for p in probes if p.name == "special")
    info = np.finfo(dtype)
    must = [0.0, info.smallest_subnormal, info.max, np.inf, -np.inf, 1e4, -1e4, float(np.log(info.max))]
    must += [3e38, -3e38] if dtype == "float32" else [65504.0, -65504.0]
    for column in special.T:
        assert np.isnan(column).any() and np.signbit(column[column == 0]).any()
        for value in must:
            assert np.isclose(column.astype(np.float64), np.float64(np.array(value, dtype)), rtol=1e-3).any(), value


def test_probes_are_dense_around_the_models_own_knees() -> None:
    from export.parity.probes import knees_of

    model = zoo.activations.create("softshrink", lambd=0.37)
    knees = knees_of(model)
    assert knees == (0.37,)
    rows = next(p.data for p in make_probes(1, knees=knees) if p.name == "boundaries")[:, 0]
    near = np.sort(rows[np.abs(rows - np.float32(0.37)) <= 0.1])
    assert np.float32(0.37) in near and np.nextafter(np.float32(0.37), np.float32(1)) in near
    assert np.diff(near).max() <= 1.01e-3


def test_special_values_are_dtype_aware() -> None:
    assert np.float32(3e38) in special_values("float32")
    assert np.isinf(special_values("float16").astype(np.float64)).sum() == 2


def test_static_batch_model_is_checked_in_chunks_of_its_batch(tmp_path: Path) -> None:
    model = zoo.create_model("mlp", in_features=2, out_features=1, hidden=[16, 16], activation="tanh", seed=0)
    path = to_onnx(model, tmp_path / "m.onnx", dynamic_batch=False, example_input=torch.zeros(7, 2))
    report = check_parity(model, path, explain=False)
    assert report.batch_sizes == [7] and report.outputs[0].elements == report.rows
