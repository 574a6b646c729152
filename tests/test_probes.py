"""Probes for any input shape within an element budget; any model a user brings; ops without a rule; located failures."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import ROOT, reseal
from torch import nn

import zoo
from export import ExportError, ParityError, check_parity, to_onnx
from export.bundle import write_bundle, write_tensor
from export.parity import bounds, coverage
from export.parity.probes import (
    BATCH_SIZES,
    LENGTHS,
    PROBE_ELEMENTS,
    boundary_values,
    make_probes,
    special_kinds,
    special_values,
    sweep_values,
)
from export.runtime import BundleMismatchError, read_tensor, verify_bundle


def bits(values: np.ndarray) -> set[int]:
    """The values as their bit patterns: -0.0 and NaN compare like any other value."""
    return set(np.ascontiguousarray(values).ravel().view(np.uint32 if values.dtype == np.float32 else np.uint16).tolist())


def every_row(shape, **kwargs) -> np.ndarray:
    probes = make_probes(shape, **kwargs)
    return np.concatenate([p.data for p in probes if p.data.shape[1:] == tuple(np.atleast_1d(shape))])


# -- the budget ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("shape", "dynamic"), [(784, ()), ((1, 32, 32), ()), ((8, 10), (0,)), ((3, 10), (0,))])
def test_a_probe_set_holds_about_the_budget_in_elements(shape, dynamic) -> None:
    probes = make_probes(shape, dynamic=dynamic)
    elements = sum(p.data.size for p in probes)
    assert 0.9 * PROBE_ELEMENTS <= elements <= PROBE_ELEMENTS
    half = sum(p.data.size for p in make_probes(shape, dynamic=dynamic, budget=PROBE_ELEMENTS // 2))
    assert 0.9 * PROBE_ELEMENTS / 2 <= half <= PROBE_ELEMENTS / 2


def test_a_model_with_few_inputs_keeps_every_value_at_every_position() -> None:
    for features in (1, 3):
        rows = every_row(features)
        for values in (sweep_values("float32"), boundary_values("float32"), special_values("float32")):
            for column in rows.T:
                assert bits(values) <= bits(column)
        assert len(rows) >= len(sweep_values("float32")) + len(boundary_values("float32"))


@pytest.mark.parametrize("shape", [784, (1, 32, 32), (3, 128, 128)])
def test_every_probe_value_appears_somewhere(shape) -> None:
    rows = every_row(shape, knees=(0.37,))
    for values in (sweep_values("float32"), boundary_values("float32", (0.37,)), special_values("float32")):
        assert bits(values) <= bits(rows)


def alone_at(rows: np.ndarray, kind: np.floating, place: tuple[int, ...]) -> bool:
    """Whether some row holds ``kind`` at ``place`` with ordinary values (|x| <= 1) almost everywhere else."""
    flat = rows.reshape(len(rows), -1)
    same = np.isnan(flat) if np.isnan(kind) else (flat == kind) & (np.signbit(flat) == np.signbit(kind))
    ordinary = (np.abs(flat) <= 1).mean(1) > 0.9
    return bool((same[:, np.ravel_multi_index(place, rows.shape[1:])] & ordinary).any())


def test_special_values_sit_at_corners_edges_and_interior_of_every_channel() -> None:
    rows = every_row((3, 9, 9))
    for kind in special_kinds("float32"):
        for place in [(c, y, x) for c in range(3) for y in (0, 4, 8) for x in (0, 4, 8)]:
            assert alone_at(rows, kind, place), (kind, place)


def test_a_sequence_is_probed_at_its_first_and_last_token() -> None:
    rows = every_row((6, 4))
    for kind in special_kinds("float32"):
        for place in [(token, feature) for token in (0, 5) for feature in (0, 3)]:
            assert alone_at(rows, kind, place), (kind, place)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_whole_inputs_at_extreme_scales(dtype) -> None:
    rows = every_row((1, 32, 32), dtype=dtype).reshape(-1, 1024).astype(np.float64)
    info = np.finfo(dtype)
    magnitude = np.abs(rows)
    assert ((magnitude < info.smallest_normal) & (magnitude > 0)).mean(1).max() > 0.9  # subnormal throughout
    assert (magnitude > float(info.max) / 1e4).mean(1).max() > 0.9  # huge throughout


def test_an_axis_of_any_size_is_probed_at_other_lengths_and_the_batch_at_every_size() -> None:
    probes = make_probes((8, 10), dynamic=(0,))
    assert {p.data.shape[1:] for p in probes} == {(length, 10) for length in (8, *LENGTHS)}
    assert set(BATCH_SIZES) <= {p.batch for p in probes}
    assert set(BATCH_SIZES) <= {p.batch for p in make_probes((1, 32, 32))}


def test_probes_are_deterministic_in_their_seed() -> None:
    first, again, other = (make_probes((1, 32, 32), seed=seed) for seed in (3, 3, 4))
    assert [(p.name, p.labels, p.data.tobytes()) for p in first] == [(p.name, p.labels, p.data.tobytes()) for p in again]
    assert first[0].data.tobytes() != other[0].data.tobytes()  # random rows
    assert first[-1].name == "sweep" and first[-1].data.tobytes() == other[-1].data.tobytes()


# -- any model a user brings -----------------------------------------------------------------------
class TokenMixer(nn.Module):
    """(batch, length, 6) -> (batch, length, 6): per-token layers, the mean over the tokens and a softmax across them."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc, self.act, self.out, self.mix = nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 6), nn.Softmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc(x))
        return self.out(h - self.centre(h, x)) + self.mix(x)

    def centre(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return h.mean(dim=1, keepdim=True)


class BakedLength(TokenMixer):
    """Divides by the traced length: right at the export example's length only."""

    def centre(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return h.sum(dim=1, keepdim=True) / int(x.shape[1])


@pytest.fixture(scope="module")
def sequence_bundle(tmp_path_factory) -> tuple[nn.Module, Path]:
    model = TokenMixer()
    out = write_bundle(model, tmp_path_factory.mktemp("seq") / "bundle", example_input=torch.randn(2, 8, 6),
                       dynamic_axes=(1,))
    return model, out


@pytest.mark.parity
def test_a_sequence_model_passes_at_every_length_and_its_bundle_replays(sequence_bundle) -> None:
    model, out = sequence_bundle
    report = check_parity(model, out / "model.onnx")
    assert report.ok and report.sample_shapes == [[length, 6] for length in sorted((8, *LENGTHS))]
    assert 0.9 * PROBE_ELEMENTS <= report.elements <= PROBE_ELEMENTS
    assert {p.key: p.value for p in onnx.load(out / "model.onnx").metadata_props}["zoo.sample_shape"] == "[8, 6]"
    shapes = {read_tensor(d / "input_0.pb").array.shape[1:] for d in out.glob("test_data_set_*")}
    assert shapes == {(length, 6) for length in (8, *LENGTHS)}
    assert verify_bundle(out).ok


def test_a_changed_reference_at_another_length_is_located_by_its_set(sequence_bundle, tmp_path) -> None:
    _, out = sequence_bundle
    copy = Path(shutil.copytree(out, tmp_path / "copy"))
    sets = sorted(copy.glob("test_data_set_*"), key=lambda d: int(d.name.rsplit("_", 1)[1]))
    longest = next(d for d in sets if read_tensor(d / "input_0.pb").array.shape[1] == 17)
    for stem in ("output_0", "reference_0"):
        y = read_tensor(longest / f"{stem}.pb").array
        y[3, 16, 0] += 1e-2
        write_tensor(longest / f"{stem}.pb", y, name="output")
    with pytest.raises(BundleMismatchError) as caught:
        verify_bundle(reseal(copy))
    assert caught.value.report.worst_set == f"row 3 of {longest.name}" and f"at row 3 of {longest.name}" in str(caught.value)


def test_a_length_baked_into_the_graph_fails_at_the_other_lengths(tmp_path) -> None:
    model = BakedLength()
    path = to_onnx(model, tmp_path / "baked.onnx", example_input=torch.randn(2, 8, 6), dynamic_axes=(1,))
    report = check_parity(model, path, strict=False, explain=False)
    assert not report.ok and "random at shape" in report.worst_probe
    assert len(report.worst_input) == int(report.worst_probe.split("shape (")[1].split(",")[0]) * 6


class Fixed(nn.Module):
    """Takes (batch, 8, 6) inputs only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], 8 * 6)


class BakedShape(nn.Module):
    """Takes any length in torch; its torchscript graph reshapes to the traced length."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], int(x.shape[1]), 6) * 2


def test_an_axis_that_is_not_dynamic_is_refused_in_one_line(tmp_path) -> None:
    example = torch.randn(2, 8, 6)
    with pytest.raises(zoo.ZooError, match="input axis 1 was exported at the fixed size 8"):
        to_onnx(Fixed(), tmp_path / "f.onnx", exporter="dynamo", example_input=example, dynamic_axes=(1,))
    for model in (Fixed(), BakedShape()):  # torchscript's graphs reshape to the traced size: run at another
        with pytest.raises(ExportError, match=r"declares input axes \[1\] of any size but fails at shape \[2, 11, 6\]") as caught:
            to_onnx(model, tmp_path / "b.onnx", example_input=example, dynamic_axes=(1,))
        assert "\n" not in str(caught.value) and not (tmp_path / "b.onnx").exists()
    path = to_onnx(nn.Flatten(), tmp_path / "any.onnx", example_input=example, dynamic_axes=(1,))  # any length
    with pytest.raises(ParityError, match=r"the torch model fails on inputs of shape \[1, 6\], but the ONNX input"):
        check_parity(Fixed(), path)  # a model that is not the one exported: it takes 8 rows of 6 only


@pytest.fixture(scope="module")
def image_mlp(tmp_path_factory) -> tuple[nn.Module, Path]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(1024, 16), nn.ReLU(), nn.Linear(16, 4))
    return model, to_onnx(model, tmp_path_factory.mktemp("image") / "m.onnx", example_input=torch.randn(2, 1, 32, 32))


@pytest.mark.parity
def test_a_plain_image_model_passes_on_the_budget(image_mlp) -> None:
    model, path = image_mlp
    report = check_parity(model, path)
    assert report.ok and report.sample_shapes == [[1, 32, 32]]
    assert 0.9 * PROBE_ELEMENTS <= report.elements <= PROBE_ELEMENTS and report.rows == report.elements // 1024


def test_a_wrong_weight_of_an_image_model_names_the_input_and_the_layer(image_mlp, tmp_path) -> None:
    model, path = image_mlp
    proto = onnx.load(path)
    weight = next(t for t in proto.graph.initializer if t.name == "1.weight")
    values = onnx.numpy_helper.to_array(weight).copy()
    values[3] *= 1 + 1e-4
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    onnx.save(proto, tmp_path / "bad.onnx")
    report = check_parity(model, tmp_path / "bad.onnx", strict=False)
    assert not report.ok and len(report.worst_input) == 1024
    assert "torch module '1' (Linear)" in report.culprit


# -- an op without a rule --------------------------------------------------------------------------
class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * 6 * 6, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def test_an_op_without_a_rule_is_a_parity_error_naming_the_op_and_its_module(tmp_path, monkeypatch) -> None:
    monkeypatch.delitem(bounds.RULES, torch.ops.aten.convolution, raising=False)  # whatever rules exist by then
    model = SmallCNN()
    path = to_onnx(model, tmp_path / "cnn.onnx", example_input=torch.randn(2, 1, 8, 8))
    with pytest.raises(ParityError) as caught:
        check_parity(model, path)
    message = str(caught.value)
    assert isinstance(caught.value, zoo.ZooError) and isinstance(caught.value, bounds.BoundError)
    assert caught.value.report is None and "\n" not in message
    assert "aten.convolution.default" in message and "module 'features.0' (Conv2d)" in message
    assert "@export.parity.bounds.rule(torch.ops.aten.convolution)" in message and "covered ops" in message


class FloorDivide(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.div(x, 3.0, rounding_mode="floor")


def test_a_rule_that_cannot_judge_a_use_of_its_op_names_the_module_too() -> None:
    model = nn.Sequential(nn.Linear(2, 2), FloorDivide())
    with pytest.raises(ParityError, match=r"div with a rounding mode \(called by module '1' \(FloorDivide\)\)"):
        bounds.bounded_run(model.eval(), np.ones((2, 2), np.float32), dtype="float32")


# -- located failures ------------------------------------------------------------------------------
class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.act = nn.Linear(4, 4), nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(x)) + x


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_a_wrong_node_in_a_nested_module_is_located_there(tmp_path, exporter) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Sequential(Block(), Block()), nn.Linear(4, 1))
    path = to_onnx(model, tmp_path / "m.onnx", exporter=exporter, example_input=torch.randn(2, 3))
    proto = onnx.load(path)
    [_, second] = [n for n in proto.graph.node if n.op_type == "Tanh"]
    second.op_type = "Sigmoid"  # the activation of block 1.1 computes another function
    onnx.save(proto, path)
    report = check_parity(model, path, strict=False)
    assert "Sigmoid" in report.culprit and "torch module '1.1.act' (Tanh)" in report.culprit


class Double(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0


def test_a_node_holding_a_later_modules_value_is_not_blamed(tmp_path) -> None:
    """A runtime or exporter that folds the next op into a layer (a batch norm into its conv) writes the
    fused node in the layer's scope: the layer is not the culprit, the wrong node after it is."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), Double(), nn.Tanh(), nn.Linear(4, 1))
    proto = onnx.load(to_onnx(model, tmp_path / "m.onnx", example_input=torch.randn(2, 3)))
    gemm = next(n for n in proto.graph.node if n.op_type == "Gemm")
    double = next(n for n in proto.graph.node if n.op_type == "Mul")
    kept = [a for a in gemm.attribute if a.name not in ("alpha", "beta")]
    gemm.ClearField("attribute")
    gemm.attribute.extend([*kept, onnx.helper.make_attribute("alpha", 2.0), onnx.helper.make_attribute("beta", 2.0)])
    for node in proto.graph.node:
        node.input[:] = [gemm.output[0] if name == double.output[0] else name for name in node.input]
    proto.graph.node.remove(double)
    next(n for n in proto.graph.node if n.op_type == "Tanh").op_type = "Sigmoid"
    onnx.save(proto, tmp_path / "folded.onnx")
    report = check_parity(model, tmp_path / "folded.onnx", strict=False)
    assert "torch module '2' (Tanh)" in report.culprit


# -- the covered ops -------------------------------------------------------------------------------
def test_the_covered_ops_table_is_generated_and_in_the_readme() -> None:
    table = coverage.markdown()
    assert (ROOT / coverage.PATH).read_text() == table, "rules changed: run python -m export.parity.coverage"
    rows = [line for line in table.splitlines() if line.startswith("|")]
    assert "\n".join(rows) in (ROOT / "README.md").read_text(), "rules changed: run python -m export.parity.coverage"
    assert "`aten.addmm`" in table and "any other op torch tags `pointwise`" in table
