"""check_parity: every activation through both exporters, the report, the probes, the excuses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from torch import nn

import zoo
from export import ParityError, ParityReport, check_parity, fixes, matrix, to_onnx
from export.probes import BATCH_SIZES, DTYPES, SWEEP_LIMIT, SWEEP_STEP, make_probes, special_values
from export.special_values import EXCUSES

ACTIVATION_CASES = [c for c in matrix.cases(quick=True) if c.model == matrix.ALONE]
LAYER_CASES = [c for c in matrix.cases(quick=True, activations=["relu"]) if c.model != matrix.ALONE]


def export_case(case: matrix.Case, directory: Path) -> tuple[nn.Module, Path]:
    model, example = matrix.build(case)
    path = to_onnx(model, directory / f"{case.label()}.onnx", opset=case.opset, exporter=case.exporter,
                   dtype=case.dtype, example_input=example)
    return model, path


@pytest.mark.parametrize("case", ACTIVATION_CASES, ids=matrix.Case.label)
def test_activation_parity(tmp_path: Path, case: matrix.Case) -> None:
    model, path = export_case(case, tmp_path)
    check_parity(model, path, reference=False)


@pytest.mark.parametrize("case", LAYER_CASES, ids=matrix.Case.label)
def test_linear_layer_parity(tmp_path: Path, case: matrix.Case) -> None:
    model, path = export_case(case, tmp_path)
    check_parity(model, path, reference=False)


def test_every_activation_and_layer_is_covered() -> None:
    names = {c.activation for c in ACTIVATION_CASES}
    assert set(zoo.activations.names()) <= names and {"gelu_tanh", "softplus_b2_t5"} <= names
    assert {c.model for c in LAYER_CASES} == set(zoo.layers.names())
    assert {(c.exporter, c.dtype) for c in ACTIVATION_CASES} == {
        (e, d) for e in ("torchscript", "dynamo") for d in DTYPES
    }


@pytest.fixture(scope="module")
def default_mlp(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    model = zoo.create_model("mlp", in_features=2, out_features=1, hidden=[16, 16], activation="tanh", seed=0)
    return model, to_onnx(model, tmp_path_factory.mktemp("mlp") / "mlp.onnx")


def test_report_explains_per_output(default_mlp: tuple[nn.Module, Path]) -> None:
    model, path = default_mlp
    report = check_parity(model, path)
    assert isinstance(report, ParityReport) and report.ok and report.dtype == "float32"
    assert (report.rtol, report.atol) == (1e-5, 1e-6)
    assert report.batch_sizes[:4] == list(BATCH_SIZES)
    [output] = report.outputs
    assert output.name == "output" and output.failing == 0 and output.nonfinite_mismatches == 0
    assert 0 <= output.max_abs_error and output.needed_atol == 0.0 or output.needed_atol <= report.atol
    assert output.reference == "agrees with torch"
    assert report.summary().startswith("PASS") and "\n" not in report.summary()
    text = json.dumps(report.to_json(), allow_nan=False)
    assert json.loads(text)["ok"] is True


def test_failure_raises_with_the_report_and_names_the_worst_input(default_mlp: tuple[nn.Module, Path]) -> None:
    _, path = default_mlp
    other = zoo.create_model("mlp", in_features=2, out_features=1, hidden=[16, 16], activation="tanh", seed=1)
    with pytest.raises(ParityError) as raised:
        check_parity(other, path)
    report = raised.value.report
    assert not report.ok and report.outputs[0].failing > 0
    assert report.worst and report.worst[0].probe in str(raised.value)
    assert not check_parity(other, path, strict=False).ok


def test_nan_positions_must_match(tmp_path: Path) -> None:
    model = nn.Hardshrink()
    with fixes.disabled():  # upstream's torchscript lowering maps NaN to 0
        path = to_onnx(model, tmp_path / "m.onnx", example_input=torch.zeros(2, 4))
    report = check_parity(model, path, strict=False)
    assert not report.ok and report.outputs[0].failing == 0
    assert report.outputs[0].nonfinite_mismatches > 0
    assert np.isnan(report.worst[0].torch) and report.worst[0].onnx == 0.0


def test_a_wider_tolerance_is_the_callers_explicit_choice(default_mlp: tuple[nn.Module, Path]) -> None:
    model, path = default_mlp
    report = check_parity(model, path, rtol=0.5, atol=0.5, dtype="float32")
    assert (report.rtol, report.atol) == (0.5, 0.5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_probes_cover_the_float_range(dtype: str) -> None:
    probes = make_probes(3, dtype=dtype, seed=7)
    assert [p.data.tolist() for p in probes[:3]] == [p.data.tolist() for p in make_probes(3, dtype=dtype, seed=7)[:3]]
    assert set(BATCH_SIZES) <= {p.batch for p in probes}
    assert all(p.data.dtype == np.dtype(dtype) and p.data.shape[1] == 3 for p in probes)
    sweep = next(p.data for p in probes if p.name == "sweep")[:, 0]
    grid = np.sort(sweep[np.abs(sweep) <= SWEEP_LIMIT])
    assert grid[0] <= -SWEEP_LIMIT and grid[-1] >= SWEEP_LIMIT and np.diff(grid).max() <= max(SWEEP_STEP, float(np.spacing(np.array(SWEEP_LIMIT, dtype)))) * 1.01
    special = next(p.data for p in probes if p.name == "special")
    info = np.finfo(dtype)
    must = [0.0, info.smallest_subnormal, info.max, np.inf, -np.inf, 1e4, -1e4, float(np.log(info.max))]
    must += [3e38, -3e38] if dtype == "float32" else [65504.0, -65504.0]
    for column in special.T:
        assert np.isnan(column).any() and np.signbit(column[column == 0]).any()
        for value in must:
            assert np.isclose(column.astype(np.float64), np.float64(np.array(value, dtype)), rtol=1e-3).any(), value


def test_special_values_are_dtype_aware() -> None:
    assert np.float32(3e38) in special_values("float32")
    assert np.isinf(special_values("float16").astype(np.float64)).sum() == 2
    assert np.abs(special_values("float16")[np.isfinite(special_values("float16"))]).max() == 65504


@pytest.mark.parametrize("excuse", EXCUSES, ids=lambda e: e.plugin)
def test_excused_torch_values_are_really_wrong(excuse) -> None:
    x = torch.tensor(excuse.examples * 4)  # 2+ elements: torch's vectorised kernel
    y = excuse.module()(x)
    truth = excuse.correct(x, y)
    assert not torch.equal(y, truth), "torch is right now: remove the excuse"
    assert torch.isfinite(truth).sum() >= torch.isfinite(x).sum()


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("excuse", EXCUSES, ids=lambda e: e.plugin)
def test_excused_inputs_get_the_true_value_from_onnx(tmp_path: Path, excuse, exporter: str) -> None:
    x = torch.tensor(excuse.examples * 4)
    model = excuse.module()
    path = to_onnx(model, tmp_path / "m.onnx", example_input=torch.zeros(2, len(x)), exporter=exporter, opset=18)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    actual = session.run(None, {"input": x[None].numpy()})[0][0]
    np.testing.assert_array_equal(actual, excuse.correct(x, model(x)).numpy())
    assert check_parity(model, path).outputs[0].excused > 0


def test_static_batch_model_is_checked_in_chunks_of_its_batch(tmp_path: Path) -> None:
    model = zoo.create_model("mlp", in_features=2, out_features=1, hidden=[16, 16], activation="tanh", seed=0)
    path = to_onnx(model, tmp_path / "m.onnx", dynamic_batch=False, example_input=torch.zeros(7, 2))
    report = check_parity(model, path, reference=False)
    assert report.batch_sizes == [7] and report.outputs[0].elements == sum(
        p.batch for p in make_probes(2, dtype="float32")
    )


def test_float64_referee_clears_torch_rounding_but_not_another_function():
    from export.parity import _output_stats

    exact = np.array([0.1, 0.1, 0.1, -4.6e37, -4.6e37, 2.0])
    torch_out = np.array([0.1 + 3e-6, 0.1 + 3e-6, 0.1, -np.inf, -np.inf, 2.0])  # torch's own rounding / overflow
    onnx_out = np.array([0.1 - 1e-7, 0.1 + 9e-6, 0.1 + 3e-6, np.nan, 1.0, 2.0])
    stats, excess = _output_stats("y", torch_out, onnx_out, 1e-5, 1e-6, exact)
    # element 0: onnx closer to float64 than torch -> cleared; 1: farther than torch + tol -> fails;
    # 2: torch is exact, onnx off by 3e-6 -> fails; 3: both overflowed -> cleared;
    # 4: torch overflowed but onnx is finite and wrong -> a NaN/inf mismatch; 5: equal.
    assert stats.refereed == 2
    assert stats.failing == 2 and stats.nonfinite_mismatches == 1
    assert list(np.isfinite(excess)) == [False, True, True, False, False, False]
    without, _ = _output_stats("y", torch_out, onnx_out, 1e-5, 1e-6)
    assert without.refereed == 0 and without.failing == 3 and without.nonfinite_mismatches == 2
