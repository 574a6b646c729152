"""Bundles: written whole or not at all, replayed by a runtime alone with the export-time rule, damage caught first."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil

import numpy as np
import pytest
import torch
from conftest import reseal, umask
from torch import nn

import zoo
from export import ExportError, ParityError
from export.bundle import failed_path, write_bundle, write_onnx, write_tensor
from export.parity import check_parity
from export.runtime import (
    BundleDamagedError,
    BundleError,
    BundleMismatchError,
    OnnxModel,
    read_tensor,
    verify_bundle,
)
from export.runtime.verify import FORMAT_VERSION


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
    assert sorted(os.listdir(out / "test_data_set_0")) == ["allowance_0.pb", "bound_0.pb", "input_0.pb", "output_0.pb",
                                                                    "reference_0.pb", "spread_0.pb"]
    assert manifest["format"] == "zoo-bundle" and manifest["format_version"] == FORMAT_VERSION
    every_file = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert sorted(manifest["files"]) == [f for f in every_file if f != "manifest.json"]
    for name, listed in manifest["files"].items():
        data = (out / name).read_bytes()
        assert listed == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}, name
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
    assert report.sha256 == manifest_of(out)["files"]["model.onnx"]["sha256"] and report.opset == 17
    assert verify_bundle(out / "model.onnx").ok
    json.dumps(report.to_dict(), allow_nan=False)  # strict JSON: non-finite values are strings


# -- damage: found before anything is judged -------------------------------------------------------
def flip_a_byte(file, at: int = -1) -> None:
    data = bytearray(file.read_bytes())
    data[at] ^= 1
    file.write_bytes(bytes(data))


def corrupt_a_reference(set_dir) -> None:
    """A float64 reference value garbled in place, as a bad disk or transfer would (same size)."""
    data = bytearray((set_dir / "reference_0.pb").read_bytes())
    data[-2] ^= 0x40  # in the exponent of the last value
    (set_dir / "reference_0.pb").write_bytes(bytes(data))


def planted_link(copy) -> None:
    """bound_0.pb replaced by a symlink to a file with the very same bytes outside the bundle."""
    target = copy.parent / "outside.pb"
    shutil.copy(copy / "test_data_set_3" / "bound_0.pb", target)
    (copy / "test_data_set_3" / "bound_0.pb").unlink()
    (copy / "test_data_set_3" / "bound_0.pb").symlink_to(target)


DAMAGE = {
    "output-deleted": (lambda c: (c / "test_data_set_3" / "output_0.pb").unlink(), "test_data_set_3/output_0.pb missing"),
    "output-truncated": (
        lambda c: (c / "test_data_set_3" / "output_0.pb").write_bytes((c / "test_data_set_3" / "output_0.pb").read_bytes()[:-4]),
        "test_data_set_3/output_0.pb changed",
    ),
    "output-one-byte": (lambda c: flip_a_byte(c / "test_data_set_3" / "output_0.pb"), "test_data_set_3/output_0.pb changed"),
    "reference-corrupted": (lambda c: corrupt_a_reference(c / "test_data_set_3"), "test_data_set_3/reference_0.pb changed"),
    "set-missing": (lambda c: shutil.rmtree(c / "test_data_set_3"), "test_data_set_3/ missing"),
    "set-extra": (lambda c: shutil.copytree(c / "test_data_set_0", c / "test_data_set_99"), "test_data_set_99/ unexpected"),
    "stray-file": (lambda c: (c / "test_data_set_3" / "notes.txt").write_text("hello"), "test_data_set_3/notes.txt unexpected"),
    "model-changed": (lambda c: flip_a_byte(c / "model.onnx"), "model.onnx changed"),
    "symlink": (planted_link, "test_data_set_3/bound_0.pb is a symlink"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damage_is_named_in_one_line_before_the_model_is_judged(copy, damage):
    edit, named = DAMAGE[damage]
    edit(copy)
    with pytest.raises(BundleDamagedError) as caught:
        verify_bundle(copy, strict=False)
    message = str(caught.value)
    assert message.startswith(f"bundle damaged: {named} ({copy} ") and "\n" not in message
    assert [str(d) for d in caught.value.damage] == [named]  # that file alone: no model blamed, no other set named


def test_much_damage_names_the_first_few_and_counts_the_rest(copy):
    sets = manifest_of(copy)["test_data_sets"]
    for index in range(sets):
        flip_a_byte(copy / f"test_data_set_{index}" / "input_0.pb")
    third = sorted(f"test_data_set_{i}" for i in range(sets))[2]
    with pytest.raises(BundleDamagedError, match=f"{third}/input_0.pb changed and {sets - 3} more") as caught:
        verify_bundle(copy)
    assert len(caught.value.damage) == sets
    assert caught.value.to_dict()["damaged"][0] == {"path": "test_data_set_0/input_0.pb", "problem": "changed"}


def test_a_symlinked_folder_or_manifest_is_refused(copy):
    (copy / "test_data_set_3").rename(copy.parent / "elsewhere")
    (copy / "test_data_set_3").symlink_to(copy.parent / "elsewhere")
    with pytest.raises(BundleDamagedError, match="bundle damaged: test_data_set_3 is a symlink [(]"):
        verify_bundle(copy)
    (copy / "test_data_set_3").unlink()
    (copy.parent / "elsewhere").rename(copy / "test_data_set_3")
    (copy / "manifest.json").rename(copy.parent / "manifest.json")
    (copy / "manifest.json").symlink_to(copy.parent / "manifest.json")
    with pytest.raises(BundleDamagedError, match="bundle damaged: manifest.json is a symlink"):
        verify_bundle(copy)


def shift_expectation(set_dir, change) -> None:
    """Change the expected output and its float64 reference alike, as another model would (manifest included)."""
    for stem in ("output_0", "reference_0"):
        file = set_dir / f"{stem}.pb"
        write_tensor(file, change(read_tensor(file).array), name="output")
    reseal(set_dir.parent)


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
    report = verify_bundle(reseal(copy), strict=False)
    assert not report.ok
    assert report.outputs[0].failures["nan"] + report.outputs[0].failures["finite"] >= 1


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda m: m.update(format_version=FORMAT_VERSION + 1), "upgrade zoo"),
        (lambda m: m.update(format_version=3), "re-export the bundle"),  # before the second tier
        (lambda m: m.pop("files"), "'files' table is missing"),
        (lambda m: m["files"]["model.onnx"].pop("sha256"), "no sha256 and size for 'model.onnx'"),
        (lambda m: m["files"].update({"../model.onnx": m["files"]["model.onnx"]}), "lists '../model.onnx', which is no"),
        (lambda m: m["files"].update({"/etc/passwd": m["files"]["model.onnx"]}), "lists '/etc/passwd', which is no"),
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


def test_missing_or_broken_parts_of_a_consistent_manifest_are_refused(copy, tmp_path):
    """Files broken before the manifest was written (a writer's bug) still give one clear error each."""
    with pytest.raises(BundleError, match="no such bundle"):
        verify_bundle(tmp_path / "nowhere")
    data = (copy / "test_data_set_0" / "bound_0.pb").read_bytes()
    (copy / "test_data_set_0" / "bound_0.pb").write_bytes(data[:-5])
    with pytest.raises(BundleError, match="bound_0.pb is not a readable TensorProto"):
        verify_bundle(reseal(copy))
    (copy / "test_data_set_0" / "bound_0.pb").write_bytes(data)
    (copy / "test_data_set_1" / "reference_0.pb").unlink()
    with pytest.raises(BundleError, match="test_data_set_1/reference_0.pb is missing"):
        verify_bundle(reseal(copy))
    shutil.rmtree(copy / "test_data_set_1")
    with pytest.raises(BundleError, match=r"counts \d+ test data sets: test_data_set_1 missing$"):
        verify_bundle(reseal(copy))
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


def test_on_exported_runs_the_exported_model_before_its_parity_check(tmp_path):
    seen = []
    with pytest.raises(ParityError):
        write_bundle(SignFlip(), tmp_path / "flip", on_exported=lambda path: seen.append(OnnxModel(path).run([[1.0]])))
    assert len(seen) == 1 and seen[0].shape == (1, 1)  # called, though the check then failed
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
    old_sha = manifest_of(out)["files"]["model.onnx"]["sha256"]
    with pytest.raises(ExportError, match="already exists"):
        write_bundle(tanh_mlp(seed=1), out)
    assert manifest_of(out)["files"]["model.onnx"]["sha256"] == old_sha
    write_bundle(tanh_mlp(seed=1), out, overwrite=True)
    assert manifest_of(out)["files"]["model.onnx"]["sha256"] != old_sha and verify_bundle(out).ok
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
    # a fixed batch of 256 (not the 2 rows traced by default): a few dozen sets, not thousands
    out = write_bundle(tanh_mlp(), tmp_path / "static", dynamic_batch=False, example_input=torch.zeros(256, 3))
    manifest = manifest_of(out)
    batch = manifest["inputs"][0]["shape"][0]
    assert batch == 256 and manifest["dynamic_batch"] is False and manifest["parity"]["ok"]
    sets = manifest["test_data_sets"]
    assert sets > 1 and math.isfinite(sets)
    for index in range(sets):
        assert read_tensor(out / f"test_data_set_{index}" / "input_0.pb").array.shape == (batch, 3)
    assert verify_bundle(out).ok
