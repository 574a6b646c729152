"""``verify_bundle``: replay a bundle's probes in a runtime alone and judge them by the parity rule.

A bundle is a directory in the ONNX Model Zoo layout plus a manifest::

    model.onnx  manifest.json  test_data_set_N/{input_0, output_0, reference_0, bound_0}.pb ...

Its test data sets are every probe of the export-time parity check, with the float64 reference and
the error bound of each output element, so ``verify_bundle`` has the power of ``check_parity`` and
applies the same rule (``export.runtime.compare``) with onnxruntime, OpenVINO or tract.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import re
from typing import Any

import numpy as np

from export.runtime.backends import RuntimeLoadError, load_runner
from export.runtime.compare import OutputVerdict, compare_output, jsonable
from export.runtime.model import InputError, ModelFileError, OnnxModel
from export.runtime.tensor_proto import TensorProtoError, read_tensor

__all__ = ["BundleError", "BundleMismatchError", "VerifyReport", "is_bundle", "jsonable", "verify_bundle"]

FORMAT = "zoo-bundle"
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
MODEL_FILE = "model.onnx"
SET_PREFIX = "test_data_set_"


class BundleError(ValueError):
    """A bundle is missing, malformed, modified since export, or its outputs no longer match."""


class BundleMismatchError(BundleError):
    """The runtime's outputs break the parity rule; ``.report`` says where."""

    def __init__(self, report: VerifyReport) -> None:
        self.report = report
        super().__init__(report.summary())


@dataclasses.dataclass
class VerifyReport:
    """The result of replaying every test data set of a bundle in one runtime."""

    path: str
    sha256: str
    opset: int | None
    runtime: str
    test_data_sets: int
    outputs: list[OutputVerdict]

    @property
    def ok(self) -> bool:
        """Every output passes in every element class."""
        return all(o.ok for o in self.outputs)

    @property
    def finite_ok(self) -> bool:
        """Every finite reference value is met within its bound (a runtime's NaN/inf semantics aside)."""
        return all(o.finite_ok for o in self.outputs)

    @property
    def worst_ratio(self) -> float:
        """The largest error of a finite element in units of its bound."""
        return max((o.worst_ratio for o in self.outputs), default=0.0)

    def summary(self) -> str:
        """One line: verdict, runtime, the worst element in units of its bound, failures per class."""
        details = "; ".join(o.describe() for o in self.outputs)
        line = f"{self.verdict()} {self.path} [{self.runtime}, {self.test_data_sets} test data sets]: {details}"
        return line + (f"; {self.worst()}" if self.worst() else "")

    def verdict(self) -> str:
        """PASS, FAIL, or FAIL (NaN/inf only) when every finite value is within its bound."""
        return "PASS" if self.ok else ("FAIL (NaN/inf only)" if self.finite_ok else "FAIL")

    def worst(self) -> str | None:
        """The worst failing element of the first failing output, as text."""
        bad = next((o for o in self.outputs if not o.ok), None)
        if bad is None:
            return None
        if bad.problem or bad.worst is None:
            return bad.describe()
        w = bad.worst
        return (f"worst ({w.element_class}) of output {bad.name!r}: expected {w.reference!r} +- {w.bound:.3g}, "
                f"got {w.actual!r} at row {w.index[0]}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (non-finite floats become the strings 'nan', 'inf', '-inf')."""
        data = jsonable(self)
        for entry, verdict in zip(data["outputs"], self.outputs):
            entry.update(ok=verdict.ok, finite_ok=verdict.finite_ok, summary=verdict.describe())
        data.update(ok=self.ok, finite_ok=self.finite_ok, worst_ratio=self.worst_ratio, summary=self.summary())
        return data


def verify_bundle(path: str | os.PathLike[str], *, strict: bool = True, runtime: str = "onnxruntime") -> VerifyReport:
    """Check a bundle (its directory or its model.onnx) in ``runtime`` alone (no torch).

    Raises BundleError when the manifest is missing or malformed, the model's sha256 differs from
    the manifest's, a test data file is missing or unreadable, or the runtime cannot load the model;
    with ``strict``, BundleMismatchError when an output breaks the parity rule.
    """
    root = bundle_dir(path)
    manifest = load_manifest(root)
    model_path = root / manifest["model"]["file"]
    digest = sha256(model_path)
    if digest != manifest["model"]["sha256"]:
        raise BundleError(f"{model_path} does not match the manifest's sha256: it changed after export")
    try:
        model = OnnxModel(model_path)
        run = model.run_all if runtime == "onnxruntime" else _named(load_runner(runtime, model_path), model)
    except (ModelFileError, RuntimeLoadError) as exc:
        raise BundleError(str(exc)) from exc
    dtype = manifest["dtype"]
    sets = _test_sets(root, manifest["test_data_sets"])
    parts: dict[str, dict[str, list[np.ndarray]]] = {name: {"actual": [], "reference": [], "bound": []}
                                                      for name in model.output_names}
    for set_dir in sets:
        x = _tensor(set_dir / "input_0.pb", root, model.input_name, model.dtype)
        try:
            outputs = run(x)
        except InputError as exc:
            raise BundleError(f"{set_dir.relative_to(root)}/input_0.pb: {exc}") from exc
        for index, name in enumerate(model.output_names):
            parts[name]["actual"].append(outputs[name])
            for kind in ("reference", "bound"):
                parts[name][kind].append(_tensor(set_dir / f"{kind}_{index}.pb", root, name, np.dtype(np.float64)))
    expected = [o["name"] for o in manifest.get("outputs", [])] or model.output_names
    verdicts = [
        compare_output(name, *(np.concatenate(parts[name][k]) for k in ("actual", "reference", "bound")),
                       dtype=dtype, expected_name=wanted)
        for name, wanted in zip(model.output_names, expected)
    ]
    report = VerifyReport(str(root), digest, model.opset, runtime, len(sets), verdicts)
    if strict and not report.ok:
        raise BundleMismatchError(report)
    return report


def _named(runner: Any, model: OnnxModel) -> Any:
    """A runner's output list as a dict by the model's output names, with the model's input checks."""
    return lambda x: dict(zip(model.output_names, runner(model._prepare(x))))


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


def is_bundle(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a directory holding a zoo bundle manifest (of any format version)."""
    try:
        manifest = json.loads((pathlib.Path(path) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


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
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise BundleError(f"{where} has format_version {version!r}; this zoo reads {FORMAT_VERSION} "
                          f"({'upgrade zoo' if newer else 're-export the bundle with this zoo'})")
    _require(where, manifest, "model.file", lambda v: isinstance(v, str) and v == pathlib.Path(v).name)
    _require(
        where, manifest, "model.sha256", lambda v: isinstance(v, str) and re.fullmatch("[0-9a-f]{64}", v)
    )
    _require(where, manifest, "dtype", lambda v: v in ("float32", "float16"))
    _require(where, manifest, "criterion.unit_roundoff", lambda v: _number(v) and 0 < v < 1)
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


def _tensor(file: pathlib.Path, root: pathlib.Path, name: str, dtype: np.dtype) -> np.ndarray:
    if not file.is_file():
        raise BundleError(f"{file.relative_to(root)} is missing: the bundle is incomplete (export it again)")
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
