"""Bundles: written whole or not at all, replayed by a runtime alone with the export-time rule, tampering caught."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil

import numpy as np
import pytest
import torch
from conftest import umask
from torch import nn

import zoo
from export import ExportError, ParityError
from export.bundle import failed_path, write_bundle, write_onnx, write_tensor
from export.parity import check_parity
from export.runtime import (
    BundleError,
    BundleMismatchError,
    OnnxModel,
    read_tensor,
    verify_bundle,
)


def tanh_mlp(seed: int = 0, **kwargs) -> nn.Module:
    options = {"in_features": 3, "out_features": 2, "hidden": [8], "activation": "tanh", **kwargs}
    return zoo.create_model("mlp", seed=seed, **options)


class SignFlip(nn.Module):
    """Its forward branches on the data, so a traced graph keeps one branch: not torch's function."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(1, 1)
        self.zoo_config = {"in_features": 1}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        return y if bool(x.sum() > 0) else -y


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A float32 bundle of a 3-feature MLP (built once; tests copy it before changing it)."""
    model = tanh_mlp()
    return model, write_bundle(model, tmp_path_factory.mktemp("bundles") / "mlp3")


@pytest.fixture
def copy(bundle, tmp_path):
    return shutil.copytree(bundle[1], tmp_path / "copy")


def manifest_of(path):
    return json.loads((path / "manifest.json").read_text())


# -- what a bundle holds ---------------------------------------------------------------------------
def test_layout_and_manifest(bundle):
    model, out = bundle
    manifest = manifest_of(out)
    sets = manifest["test_data_sets"]
    assert sorted(os.listdir(out)) == sorted(["manifest.json", "model.onnx", *(f"test_data_set_{i}" for i in range(sets))])
    assert sorted(os.listdir(out / "test_data_set_0")) == ["bound_0.pb", "input_0.pb", "output_0.pb", "reference_0.pb"]
    assert manifest["format"] == "zoo-bundle" and manifest["format_version"] == 2
    assert manifest["model"]["sha256"] == hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()
    assert (manifest["opset"], manifest["exporter"], manifest["dtype"]) == (17, "torchscript", "float32")
    assert manifest["compute"] == "float32"
    assert manifest["inputs"] == [{"name": "input", "shape": ["batch", 3], "dtype": "float32"}]
    assert manifest["outputs"] == [{"name": "output", "shape": ["batch", 2], "dtype": "float32"}]
    assert manifest["criterion"]["unit_roundoff"] == 2.0**-24
    assert manifest["parity"]["ok"] is True and manifest["parity"]["summary"].startswith("PASS")
    assert 0 < manifest["parity"]["worst_ratio"] <= 1
    assert {"zoo", "torch", "onnx", "onnxruntime"} <= set(manifest["versions"])
    assert manifest["config"] == model.zoo_config
    mode = os.stat(out / "model.onnx").st_mode & 0o777
    assert mode == 0o666 & ~umask(), "a deliverable has the umask's permissions, not mkstemp's private ones"


def test_test_data_are_every_probe_of_the_export_time_check(bundle):
    _, out = bundle
    manifest = manifest_of(out)
    rows = [read_tensor(out / f"test_data_set_{i}" / "input_0.pb").array for i in range(manifest["test_data_sets"])]
    x = np.concatenate(rows)
    assert x.dtype == np.float32 and x.shape == (manifest["parity"]["rows"], 3)
    assert {1, 2, 7, 64} <= {len(r) for r in rows}  # the dynamic axis replayed at every probe batch size
    for value in (np.nan, np.inf, -np.inf, np.finfo(np.float32).smallest_subnormal, 3e38):
        assert (np.isnan(x) if np.isnan(value) else x == value).any(), value
    assert (np.signbit(x) & (x == 0)).any(), "-0.0 is probed"
    first = out / "test_data_set_0"
    reference, bound = (read_tensor(first / f"{k}_0.pb").array for k in ("reference", "bound"))
    assert reference.dtype == bound.dtype == np.float64 and (bound >= 0).all()
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(read_tensor(first / "output_0.pb").array, reference.astype(np.float32))


def test_verify_has_the_power_of_the_export_time_check(bundle):
    model, out = bundle
    report = verify_bundle(out)
    [output] = report.outputs
    assert report.ok and report.runtime == "onnxruntime" and 0 < report.worst_ratio <= 1
    assert output.counts == check_parity(model, out / "model.onnx").outputs[0].counts
    assert report.sha256 == manifest_of(out)["model"]["sha256"] and report.opset == 17
    assert verify_bundle(out / "model.onnx").ok
    json.dumps(report.to_dict(), allow_nan=False)  # strict JSON: non-finite values are strings


# -- tampering -------------------------------------------------------------------------------------
def test_a_modified_model_fails_the_checksum(copy):
    data = bytearray((copy / "model.onnx").read_bytes())
    data[-1] ^= 1
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        verify_bundle(copy)


def shift_expectation(set_dir, change) -> None:
    """Change the expected output and its float64 reference alike, as another model would."""
    for stem in ("output_0", "reference_0"):
        file = set_dir / f"{stem}.pb"
        write_tensor(file, change(read_tensor(file).array), name="output")


def test_a_changed_output_value_is_reported_with_its_position(copy):
    y = read_tensor(copy / "test_data_set_0" / "output_0.pb").array
    row = int(np.flatnonzero(np.isfinite(y[:, 0]))[0])

    def nudge(values):
        values[row, 0] += 1e-3
        return values

    shift_expectation(copy / "test_data_set_0", nudge)
    with pytest.raises(BundleMismatchError, match="failing: 1 finite") as caught:
        verify_bundle(copy)
    report = caught.value.report
    [bad] = report.outputs
    assert not report.ok and bad.failures["finite"] == 1 and bad.worst.index == [row, 0]
    assert "at None" not in report.summary() and f"at row {row}" in report.summary()
    assert not verify_bundle(copy, strict=False).ok


def special_set(bundle_dir):
    """The test data set of the special-values probe (the one whose reference holds NaN)."""
    sets = sorted(bundle_dir.glob("test_data_set_*"))
    return next(d for d in sets if np.isnan(read_tensor(d / "reference_0.pb").array).any())


@pytest.mark.parametrize("swap", ["nan_to_number", "number_to_nan", "nan_input_to_inf"])
def test_the_nan_inf_pattern_must_match_exactly(copy, swap):
    where = special_set(copy)
    y = read_tensor(where / "reference_0.pb").array
    if swap == "nan_to_number":  # a function that is 0 (give or take 1e-6) where this one is NaN
        shift_expectation(where, lambda v: np.where(np.isnan(y), 0.0, v))
        bound = read_tensor(where / "bound_0.pb").array
        write_tensor(where / "bound_0.pb", np.where(np.isnan(y), 1e-6, bound), name="output")
    elif swap == "number_to_nan":
        row = np.flatnonzero(np.isfinite(y[:, 0]))[0]
        shift_expectation(where, lambda v: np.where(np.arange(len(v))[:, None] == row, np.nan, v))
    else:  # expected NaN, onnxruntime now gives something else there
        x = read_tensor(where / "input_0.pb").array
        write_tensor(where / "input_0.pb", np.where(np.isnan(x), 1.0, x), name="input")
    report = verify_bundle(copy, strict=False)
    assert not report.ok
    assert report.outputs[0].failures["nan"] + report.outputs[0].failures["finite"] >= 1


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda m: m.update(format_version=3), "upgrade zoo"),
        (lambda m: m.update(format_version=1), "re-export the bundle"),
        (lambda m: m["model"].pop("sha256"), "model.sha256"),
        (lambda m: m["model"].update(file="../model.onnx"), "model.file"),
        (lambda m: m["criterion"].update(unit_roundoff=-1), "criterion.unit_roundoff"),
        (lambda m: m.update(test_data_sets=3), "test data sets"),
        (lambda m: m.update(format="something-else"), "not a zoo-bundle manifest"),
    ],
)
def test_a_malformed_manifest_is_refused(copy, change, fragment):
    manifest = manifest_of(copy)
    change(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=fragment):
        verify_bundle(copy)


def test_missing_or_broken_parts_are_refused(copy, tmp_path):
    with pytest.raises(BundleError, match="no such bundle"):
        verify_bundle(tmp_path / "nowhere")
    data = (copy / "test_data_set_0" / "bound_0.pb").read_bytes()
    (copy / "test_data_set_0" / "bound_0.pb").write_bytes(data[:-5])
    with pytest.raises(BundleError, match="bound_0.pb is not a readable TensorProto"):
        verify_bundle(copy)
    (copy / "test_data_set_0" / "bound_0.pb").write_bytes(data)
    (copy / "test_data_set_1" / "reference_0.pb").unlink()
    with pytest.raises(BundleError, match="test_data_set_1/reference_0.pb is missing"):
        verify_bundle(copy)
    shutil.rmtree(copy / "test_data_set_1")
    with pytest.raises(BundleError, match="test data sets"):
        verify_bundle(copy)
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not readable JSON"):
        verify_bundle(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match="not a bundle: no manifest.json"):
        verify_bundle(copy)


# -- all or nothing --------------------------------------------------------------------------------
def test_a_parity_failure_leaves_nothing_behind(tmp_path):
    with pytest.raises(ParityError) as caught:
        write_bundle(SignFlip(), tmp_path / "flip")
    report = caught.value.report
    assert not report.ok and report.worst_probe and report.path == str(tmp_path / "flip" / "model.onnx")
    with pytest.raises(ParityError):
        write_onnx(SignFlip(), tmp_path / "flip.onnx")
    assert os.listdir(tmp_path) == []


def test_keep_on_failure_keeps_the_failing_deliverable_clearly_marked(tmp_path):
    with pytest.raises(ParityError):
        write_bundle(SignFlip(), tmp_path / "flip", keep_on_failure=True)
    kept = failed_path(tmp_path / "flip")
    assert kept.name == "flip.FAILED-PARITY" and manifest_of(kept)["parity"]["ok"] is False
    assert not verify_bundle(kept, strict=False).ok
    with pytest.raises(ParityError):
        write_onnx(SignFlip(), tmp_path / "flip.onnx", keep_on_failure=True)
    assert sorted(os.listdir(tmp_path)) == ["flip.FAILED-PARITY", "flip.FAILED-PARITY.json", "flip.FAILED-PARITY.onnx"]
    assert json.loads((tmp_path / "flip.FAILED-PARITY.json").read_text())["ok"] is False


def test_an_export_failure_leaves_nothing_behind(tmp_path):
    with pytest.raises(ExportError, match="opset 99"):
        write_bundle(tanh_mlp(), tmp_path / "b", opset=99)
    with pytest.raises(ExportError, match="opset 99"):
        write_bundle(tanh_mlp(), tmp_path / "missing" / "b", opset=99)
    assert os.listdir(tmp_path) == []
    assert verify_bundle(write_bundle(tanh_mlp(), tmp_path / "made" / "b")).ok  # missing parents are created
    with pytest.raises(ParityError):
        write_bundle(SignFlip(), tmp_path / "gone" / "b")
    assert os.listdir(tmp_path) == ["made"]  # and removed again when nothing is written


def test_existing_outputs_are_replaced_only_when_asked(bundle, tmp_path):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not a zoo bundle"):
        write_bundle(tanh_mlp(), other, overwrite=True)
    assert os.listdir(other) == ["keep.txt"]

    out = shutil.copytree(bundle[1], tmp_path / "b")
    old_sha = manifest_of(out)["model"]["sha256"]
    with pytest.raises(ExportError, match="already exists"):
        write_bundle(tanh_mlp(seed=1), out)
    assert manifest_of(out)["model"]["sha256"] == old_sha
    write_bundle(tanh_mlp(seed=1), out, overwrite=True)
    assert manifest_of(out)["model"]["sha256"] != old_sha and verify_bundle(out).ok
    assert sorted(os.listdir(tmp_path)) == ["b", "notes"]  # no staging or old copies left


def test_write_onnx_checks_parity_and_refuses_to_clobber(tmp_path):
    path = tmp_path / "mlp.onnx"
    report = write_onnx(tanh_mlp(), path)
    assert report.ok and report.path == str(path)
    assert OnnxModel(path).input_shape == ("batch", 3)
    with pytest.raises(ExportError, match="already exists"):
        write_onnx(tanh_mlp(), path)
    with pytest.raises(ExportError, match="is a directory"):
        write_onnx(tanh_mlp(), tmp_path)
    assert write_onnx(tanh_mlp(seed=1), path, overwrite=True).ok
    assert os.listdir(tmp_path) == ["mlp.onnx"]


# -- other dtypes and batch axes ---------------------------------------------------------------------
def test_float16_bundle(tmp_path):
    out = write_bundle(tanh_mlp(), tmp_path / "half", dtype="float16")
    manifest = manifest_of(out)
    assert manifest["dtype"] == "float16" and manifest["criterion"]["unit_roundoff"] == 2.0**-11
    assert read_tensor(out / "test_data_set_0" / "input_0.pb").array.dtype == np.float16
    assert verify_bundle(out).ok


def test_static_batch_bundle_splits_the_probe_rows_into_sets(tmp_path):
    out = write_bundle(tanh_mlp(), tmp_path / "static", dynamic_batch=False)
    manifest = manifest_of(out)
    batch = manifest["inputs"][0]["shape"][0]
    assert isinstance(batch, int) and manifest["dynamic_batch"] is False and manifest["parity"]["ok"]
    sets = manifest["test_data_sets"]
    assert sets > 1 and math.isfinite(sets)
    for index in range(sets):
        assert read_tensor(out / f"test_data_set_{index}" / "input_0.pb").array.shape == (batch, 3)
    assert verify_bundle(out).ok
