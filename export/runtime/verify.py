"""``verify_bundle``: replay a bundle's test data through onnxruntime alone and compare with torch's outputs.

A bundle is a directory in the ONNX Model Zoo layout plus a manifest::

    model.onnx  manifest.json  test_data_set_0/input_0.pb  test_data_set_0/output_0.pb  ...
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pathlib
import re
from typing import Any

import numpy as np

from export.runtime.model import InputError, ModelFileError, OnnxModel
from export.runtime.tensor_proto import TensorProtoError, read_tensor

FORMAT = "zoo-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODEL_FILE = "model.onnx"
SET_PREFIX = "test_data_set_"


class BundleError(ValueError):
    """A bundle is missing, malformed, modified since export, or its outputs no longer match."""


class BundleMismatchError(BundleError):
    """onnxruntime's outputs differ from the expected ones; ``.report`` says where."""

    def __init__(self, report: VerifyReport) -> None:
        self.report = report
        super().__init__(report.summary())


@dataclasses.dataclass
class OutputCheck:
    """One expected output file compared with onnxruntime's result."""

    file: str
    elements: int
    max_abs_error: float
    max_rel_error: float
    failing: int  # finite elements outside np.isclose(actual, expected, rtol, atol)
    nonfinite_mismatches: int  # positions where NaN / +inf / -inf differ
    worst: dict[str, Any] | None = None  # the element furthest out of tolerance, when any is

    @property
    def ok(self) -> bool:
        """Every element within tolerance and every NaN/inf where expected."""
        return self.failing == 0 and self.nonfinite_mismatches == 0


@dataclasses.dataclass
class VerifyReport:
    """The result of replaying every test data set of a bundle."""

    path: str
    sha256: str
    opset: int | None
    rtol: float
    atol: float
    checks: list[OutputCheck]

    @property
    def ok(self) -> bool:
        """Every output of every test data set matches."""
        return all(check.ok for check in self.checks)

    @property
    def max_abs_error(self) -> float:
        """The largest absolute error over all outputs."""
        return max((c.max_abs_error for c in self.checks), default=0.0)

    @property
    def max_rel_error(self) -> float:
        """The largest relative error over all outputs."""
        return max((c.max_rel_error for c in self.checks), default=0.0)

    def summary(self) -> str:
        """One line: verdict, counts, errors and the worst element when something fails."""
        failing = sum(c.failing for c in self.checks)
        nonfinite = sum(c.nonfinite_mismatches for c in self.checks)
        elements = sum(c.elements for c in self.checks)
        line = (
            f"{'PASS' if self.ok else 'FAIL'} {self.path} [rtol={self.rtol:g}, atol={self.atol:g}]: "
            f"{len(self.checks)} outputs, {failing}/{elements} out of tolerance, {nonfinite} NaN/inf mismatches, "
            f"max abs {self.max_abs_error:.3g}, max rel {self.max_rel_error:.3g}"
        )
        bad = next((c for c in self.checks if not c.ok), None)
        if bad is not None and bad.worst:
            w = bad.worst
            line += f"; worst: {bad.file} at {w['index']}: expected {w['expected']}, got {w['actual']}"
        return line

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (non-finite floats become the strings 'nan', 'inf', '-inf')."""
        data = dataclasses.asdict(self)
        data["checks"] = [{**dataclasses.asdict(c), "ok": c.ok} for c in self.checks]
        data.update(ok=self.ok, max_abs_error=self.max_abs_error, max_rel_error=self.max_rel_error)
        return jsonable(data)


def verify_bundle(path: str | os.PathLike[str], *, strict: bool = True) -> VerifyReport:
    """Check a bundle (its directory or its model.onnx) with onnxruntime alone.

    Raises BundleError when the manifest is missing or malformed, the model's sha256 differs from
    the manifest's or a test data set is unreadable; with ``strict``, BundleMismatchError when an
    output differs beyond the manifest's tolerances or in its NaN/inf pattern.
    """
    root = bundle_dir(path)
    manifest = load_manifest(root)
    model_path = root / manifest["model"]["file"]
    digest = sha256(model_path)
    if digest != manifest["model"]["sha256"]:
        raise BundleError(f"{model_path} does not match the manifest's sha256: it changed after export")
    try:
        model = OnnxModel(model_path)
    except ModelFileError as exc:
        raise BundleError(str(exc)) from exc
    rtol, atol = manifest["tolerances"]["rtol"], manifest["tolerances"]["atol"]
    checks = []
    for set_dir in _test_sets(root, manifest["test_data_sets"]):
        checks.extend(_replay(model, set_dir, root, rtol, atol))
    report = VerifyReport(str(root), digest, model.opset, rtol, atol, checks)
    if strict and not report.ok:
        raise BundleMismatchError(report)
    return report


def bundle_dir(path: str | os.PathLike[str]) -> pathlib.Path:
    """The bundle directory for a bundle path or the model.onnx inside one."""
    path = pathlib.Path(path)
    root = path.parent if path.is_file() else path
    if not path.exists():
        raise BundleError(f"{path}: no such bundle")
    if not (root / MANIFEST).is_file():
        raise BundleError(
            f"{path} is not a bundle: no {MANIFEST} (write one with `zoo export ... --test-data`)"
        )
    return root


def load_manifest(root: pathlib.Path) -> dict[str, Any]:
    """The parsed, checked manifest.json of the bundle at ``root``."""
    where = root / MANIFEST
    try:
        manifest = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"{where} is not readable JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{where} is not a {FORMAT} manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{where} has format_version {version!r}; this zoo reads {FORMAT_VERSION} (upgrade zoo)"
        )
    _require(where, manifest, "model.file", lambda v: isinstance(v, str) and v == pathlib.Path(v).name)
    _require(
        where, manifest, "model.sha256", lambda v: isinstance(v, str) and re.fullmatch("[0-9a-f]{64}", v)
    )
    for key in ("tolerances.rtol", "tolerances.atol"):
        _require(where, manifest, key, lambda v: _number(v) and math.isfinite(v) and v >= 0)
    _require(
        where, manifest, "test_data_sets", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1
    )
    return manifest


def _require(where: pathlib.Path, manifest: dict[str, Any], dotted: str, valid: Any) -> None:
    value: Any = manifest
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None or not valid(value):
        raise BundleError(f"{where}: missing or invalid {dotted!r} ({value!r})")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def sha256(path: pathlib.Path) -> str:
    """The hex sha256 of a file; BundleError when it cannot be read."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return digest.hexdigest()


def _test_sets(root: pathlib.Path, count: int) -> list[pathlib.Path]:
    found = sorted(p.name for p in root.glob(f"{SET_PREFIX}*") if p.is_dir())
    wanted = [f"{SET_PREFIX}{i}" for i in range(count)]
    if sorted(wanted) != found:
        raise BundleError(f"{root} holds test data sets {found}; its manifest lists {count} ({wanted[0]}..)")
    return [root / name for name in wanted]


def _replay(
    model: OnnxModel, set_dir: pathlib.Path, root: pathlib.Path, rtol: float, atol: float
) -> list[OutputCheck]:
    x = _tensor(set_dir / "input_0.pb", root, model.input_name, model.dtype)
    try:
        outputs = model.run_all(x)
    except InputError as exc:
        raise BundleError(f"{set_dir.relative_to(root)}/input_0.pb: {exc}") from exc
    checks = []
    for index, name in enumerate(model.output_names):
        file = set_dir / f"output_{index}.pb"
        expected = _tensor(file, root, name, outputs[name].dtype)
        reference = set_dir / f"reference_{index}.pb"
        exact = _tensor(reference, root, name, np.dtype(np.float64)) if reference.exists() else None
        checks.append(
            compare(str(file.relative_to(root)), outputs[name], expected, rtol=rtol, atol=atol, exact=exact)
        )
    return checks


def _tensor(file: pathlib.Path, root: pathlib.Path, name: str, dtype: np.dtype) -> np.ndarray:
    try:
        tensor = read_tensor(file)
    except TensorProtoError as exc:
        raise BundleError(str(exc)) from exc
    where = file.relative_to(root)
    if tensor.name and tensor.name != name:
        raise BundleError(f"{where} holds tensor {tensor.name!r}, the model's is named {name!r}")
    if tensor.array.dtype != dtype:
        raise BundleError(f"{where} holds {tensor.array.dtype} values, the model uses {dtype}")
    return tensor.array


def referee(
    actual: np.ndarray, expected: np.ndarray, exact: np.ndarray, *, rtol: float, atol: float
) -> tuple[np.ndarray, np.ndarray]:
    """The float64 referee: (finite elements it clears, non-finite ones it clears).

    ``exact`` is the same model run in float64. A finite element outside np.isclose(actual,
    expected) is cleared when actual is no farther from exact than expected (torch's float32
    value) is, plus the tolerance: torch's own rounding is not the function. Where expected
    overflowed although exact is finite, actual must overflow too (or be close to exact).
    """
    with np.errstate(all="ignore"):
        finite = np.isfinite(actual) & np.isfinite(expected)
        outside = finite & (np.abs(actual - expected) > atol + rtol * np.abs(expected))
        own = np.abs(expected - exact) + atol + rtol * np.abs(exact)
        cleared = outside & (np.abs(actual - exact) <= own)
        torch_overflowed = ~np.isfinite(expected) & np.isfinite(exact)
        close = np.isfinite(actual) & (np.abs(actual - exact) <= atol + rtol * np.abs(exact))
        overflowed = torch_overflowed & (~np.isfinite(actual) | close)
        overflowed &= ~((actual == expected) | (np.isnan(actual) & np.isnan(expected)))
    return cleared, overflowed


def compare(
    file: str, actual: np.ndarray, expected: np.ndarray, *, rtol: float, atol: float, exact: np.ndarray | None = None
) -> OutputCheck:
    """Compare like np.isclose(actual, expected, rtol, atol), with the float64 referee when ``exact``
    is given; NaN/inf must sit exactly where expected has them."""
    if actual.shape != expected.shape:
        worst = {"index": None, "expected": f"shape {expected.shape}", "actual": f"shape {actual.shape}"}
        return OutputCheck(file, int(expected.size), math.inf, math.inf, int(expected.size), 0, worst)
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    finite = np.isfinite(a) & np.isfinite(e)
    nonfinite_bad = ~finite & ~((a == e) | (np.isnan(a) & np.isnan(e)))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        abs_err = np.where(finite, np.abs(a - e), 0.0)
        rel_err = np.where(abs_err == 0, 0.0, abs_err / np.abs(e))
    excess = np.where(nonfinite_bad, np.inf, abs_err - (atol + rtol * np.abs(e)))
    failing = finite & (excess > 0)
    if exact is not None:
        cleared, overflowed = referee(a, e, exact.astype(np.float64), rtol=rtol, atol=atol)
        failing &= ~cleared
        nonfinite_bad &= ~overflowed
    worst = None
    if failing.any() or nonfinite_bad.any():
        at = np.unravel_index(int(np.argmax(np.where(failing | nonfinite_bad, excess, -np.inf))), e.shape)
        worst = {"index": [int(i) for i in at], "expected": float(e[at]), "actual": float(a[at])}
    return OutputCheck(
        file=file,
        elements=int(e.size),
        max_abs_error=float(abs_err.max(initial=0.0)),
        max_rel_error=float(rel_err[finite].max(initial=0.0)),
        failing=int(failing.sum()),
        nonfinite_mismatches=int(nonfinite_bad.sum()),
        worst=worst,
    )


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers and non-finite floats as 'nan', 'inf', '-inf'."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
