"""Bundles: written whole or not at all, replayed by onnxruntime alone, and every tampering caught."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil

import numpy as np
import pytest
import torch
from torch import nn

import zoo
from export import ExportError, ParityError
from export.bundle import write_bundle, write_onnx, write_tensor
from export.parity import TOLERANCES
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
    assert sorted(os.listdir(out)) == ["manifest.json", "model.onnx", "test_data_set_0", "test_data_set_1"]
    assert sorted(os.listdir(out / "test_data_set_0")) == ["input_0.pb", "output_0.pb", "reference_0.pb"]
    manifest = manifest_of(out)
    assert manifest["format"] == "zoo-bundle" and manifest["format_version"] == 1
    assert manifest["model"]["sha256"] == hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()
    assert (manifest["opset"], manifest["exporter"], manifest["dtype"]) == (17, "torchscript", "float32")
    assert manifest["inputs"] == [{"name": "input", "shape": ["batch", 3], "dtype": "float32"}]
    assert manifest["outputs"] == [{"name": "output", "shape": ["batch", 2], "dtype": "float32"}]
    assert (manifest["tolerances"]["rtol"], manifest["tolerances"]["atol"]) == TOLERANCES["float32"]
    assert manifest["parity"]["ok"] is True and manifest["parity"]["summary"].startswith("PASS")
    assert manifest["parity"]["max_abs_error"] <= 1e-5
    assert {"zoo", "torch", "onnx", "onnxruntime"} <= set(manifest["versions"])
    assert manifest["config"] == model.zoo_config and manifest["test_data_sets"] == 2
    assert os.stat(out / "model.onnx").st_mode & 0o077, "a deliverable must not be private to its writer"


def test_test_data_hold_special_values_and_torch_eager_outputs(bundle):
    model, out = bundle
    name, x = read_tensor(out / "test_data_set_0" / "input_0.pb")
    assert name == "input" and x.dtype == np.float32 and x.shape[1] == 3
    for value in (np.nan, np.inf, -np.inf, np.finfo(np.float32).smallest_subnormal, 3e38):
        assert (np.isnan(x) if np.isnan(value) else x == value).any(), value
    assert (np.signbit(x) & (x == 0)).any(), "-0.0 is probed"
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(x)).numpy()
    _, y = read_tensor(out / "test_data_set_0" / "output_0.pb")
    np.testing.assert_array_equal(y, expected)  # NaN where torch has NaN, bit-exact elsewhere
    assert np.isnan(y).any()
    # the dynamic axis replayed at batch 1
    assert read_tensor(out / "test_data_set_1" / "input_0.pb").array.shape == (1, 3)


def test_verify_passes_on_the_bundle_or_its_model_file(bundle):
    out = bundle[1]
    report = verify_bundle(out)
    assert report.ok and len(report.checks) == 2 and report.max_abs_error <= 1e-5
    assert report.sha256 == manifest_of(out)["model"]["sha256"] and report.opset == 17
    assert verify_bundle(out / "model.onnx").ok
    json.dumps(report.to_json(), allow_nan=False)  # strict JSON: non-finite values are strings


# -- tampering -------------------------------------------------------------------------------------
def test_a_modified_model_fails_the_checksum(copy):
    data = bytearray((copy / "model.onnx").read_bytes())
    data[-1] ^= 1
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        verify_bundle(copy)


def shift_expectation(set_dir, change) -> None:
    """Change torch's expected output and its float64 reference alike, as another model would."""
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
    with pytest.raises(BundleMismatchError, match="1/") as caught:
        verify_bundle(copy)
    report = caught.value.report
    assert not report.ok and report.max_abs_error == pytest.approx(1e-3, rel=1e-2)
    (bad,) = [c for c in report.checks if not c.ok]
    assert bad.failing == 1 and bad.worst["index"] == [row, 0]
    assert not verify_bundle(copy, strict=False).ok


@pytest.mark.parametrize("swap", ["nan_to_number", "number_to_nan", "inf_to_max"])
def test_the_nan_inf_pattern_must_match_exactly(copy, swap):
    y = read_tensor(copy / "test_data_set_0" / "output_0.pb").array
    if swap == "nan_to_number":
        shift_expectation(copy / "test_data_set_0", lambda v: np.where(np.isnan(y), 0.0, v))
    elif swap == "number_to_nan":
        row = np.flatnonzero(np.isfinite(y[:, 0]))[0]
        shift_expectation(copy / "test_data_set_0", lambda v: np.where(np.arange(len(v))[:, None] == row, np.nan, v))
    else:  # expected NaN, onnxruntime now gives finite values there
        x = read_tensor(copy / "test_data_set_0" / "input_0.pb").array
        write_tensor(copy / "test_data_set_0" / "input_0.pb", np.where(np.isnan(x), np.inf, x), name="input")
    report = verify_bundle(copy, strict=False)
    assert not report.ok
    assert sum(c.nonfinite_mismatches for c in report.checks) >= 1


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda m: m.update(format_version=2), "upgrade zoo"),
        (lambda m: m["model"].pop("sha256"), "model.sha256"),
        (lambda m: m["model"].update(file="../model.onnx"), "model.file"),
        (lambda m: m["tolerances"].update(rtol=-1), "tolerances.rtol"),
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
    data = (copy / "test_data_set_0" / "output_0.pb").read_bytes()
    (copy / "test_data_set_0" / "output_0.pb").write_bytes(data[:-5])
    with pytest.raises(BundleError, match="output_0.pb is not a readable TensorProto"):
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
    assert not report.ok and report.worst and report.path == str(tmp_path / "flip" / "model.onnx")
    with pytest.raises(ParityError):
        write_onnx(SignFlip(), tmp_path / "flip.onnx")
    assert os.listdir(tmp_path) == []


def test_an_export_failure_leaves_nothing_behind(tmp_path):
    with pytest.raises(ExportError, match="opset 99"):
        write_bundle(tanh_mlp(), tmp_path / "b", opset=99)
    with pytest.raises(ExportError, match="does not exist"):
        write_bundle(tanh_mlp(), tmp_path / "missing" / "b")
    assert os.listdir(tmp_path) == []


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
    assert manifest["dtype"] == "float16"
    assert (manifest["tolerances"]["rtol"], manifest["tolerances"]["atol"]) == TOLERANCES["float16"]
    assert read_tensor(out / "test_data_set_0" / "input_0.pb").array.dtype == np.float16
    assert verify_bundle(out).ok


def test_static_batch_bundle_splits_the_probe_rows_into_sets(tmp_path):
    # parity=False: check_parity does not yet run on a static batch axis (it feeds batches 1, 2, 7, 64)
    out = write_bundle(tanh_mlp(), tmp_path / "static", dynamic_batch=False, parity=False)
    manifest = manifest_of(out)
    batch = manifest["inputs"][0]["shape"][0]
    assert isinstance(batch, int) and manifest["dynamic_batch"] is False and manifest["parity"] is None
    sets = manifest["test_data_sets"]
    assert sets > 1 and math.isfinite(sets)
    for index in range(sets):
        assert read_tensor(out / f"test_data_set_{index}" / "input_0.pb").array.shape == (batch, 3)
    assert verify_bundle(out).ok
