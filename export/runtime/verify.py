"""``verify_bundle``: replay a bundle's probes in a runtime alone and judge them by the parity rule.

A bundle is a directory in the ONNX Model Zoo layout plus a manifest::

    model.onnx  manifest.json  test_data_set_N/{input_0, output_0, reference_0, bound_0, spread_0, allowance_0}.pb ...

The manifest lists every other file with its sha256 and size (``export.runtime.integrity``), and
``verify_bundle`` checks them all before it loads the model or reads a test data file, so a damaged
bundle is reported as damaged (BundleDamagedError), never as a model that computes wrong values.
Its test data sets are every probe of the export-time parity check, with the float64 reference and
both tiers of each output element's tolerance (the worst-case bound, the spread of honest rounding
and the allowance), so ``verify_bundle`` has the power of ``check_parity`` and applies the same
rule (``export.runtime.compare``) with onnxruntime, OpenVINO or tract.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

import numpy as np

from .backends import RuntimeLoadError, load_runner
from .compare import SPREADS, OutputVerdict, Tolerance, compare_output, jsonable, locate_batch, stack_batches
from .integrity import MANIFEST, Damage, damage, listing_problem, some
from .model import InputError, ModelFileError, OnnxModel
from .tensor_proto import TensorProtoError, read_tensor

__all__ = ["BundleDamagedError", "BundleError", "BundleMismatchError", "VerifyReport", "is_bundle", "jsonable", "verify_bundle"]

FORMAT = "zoo-bundle"
FORMAT_VERSION = 4  # 3: the manifest's `files` table covers every file; 4: both tiers of the tolerance
# Each output's tolerance, one file each per test data set: <kind>_<output>.pb (Tolerance's fields).
TOLERANCE_FILES = ("bound", "spread", "allowance")
MODEL_FILE = "model.onnx"
SET_PREFIX = "test_data_set_"


class BundleError(ValueError):
    """A bundle is missing, malformed, modified since export, or its outputs no longer match."""


class BundleDamagedError(BundleError):
    """The bundle's files differ from its manifest (missing, changed, unexpected, a symlink); ``.damage`` lists them."""

    def __init__(self, root: pathlib.Path, found: list[Damage]) -> None:
        self.path = str(root)
        self.damage = found
        super().__init__(f"bundle damaged: {some([str(d) for d in found])} "
                         f"({root} differs from its {MANIFEST}: copy or export it again)")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict: ok (False), the bundle's path, every damaged path with its problem, the one line."""
        return {"ok": False, "path": self.path, "damaged": [d._asdict() for d in self.damage], "summary": str(self)}


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
    worst_set: str | None = None  # the test data set and row of the worst failing element, e.g. "test_data_set_3"

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
        tiers = bad.explain_worst()
        return (f"worst ({w.element_class}) of output {bad.name!r}: expected {w.reference!r}, got {w.actual!r} "
                f"at {self.worst_set or f'row {w.index[0]}'}" + (f", {tiers}" if tiers else ""))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (non-finite floats become the strings 'nan', 'inf', '-inf')."""
        data = jsonable(self)
        for entry, verdict in zip(data["outputs"], self.outputs):
            entry.update(ok=verdict.ok, finite_ok=verdict.finite_ok, summary=verdict.describe())
        data.update(ok=self.ok, finite_ok=self.finite_ok, worst_ratio=self.worst_ratio, summary=self.summary())
        return data


def verify_bundle(path: str | os.PathLike[str], *, strict: bool = True, runtime: str = "onnxruntime") -> VerifyReport:
    """Check a bundle (its directory or its model.onnx) in ``runtime`` alone (no torch).

    Raises BundleDamagedError, before anything else is read, when a file differs from the
    manifest's table (missing, changed, unexpected, a symlink); BundleError when the manifest is
    missing or malformed, a test data file is unreadable or the runtime cannot load the model; with
    ``strict``, BundleMismatchError when an output breaks the parity rule.
    """
    root = bundle_dir(path)
    manifest = load_manifest(root)
    check_integrity(root, manifest)
    model_path = root / manifest["model"]["file"]
    try:
        model = OnnxModel(model_path)
        run = model.run_all if runtime == "onnxruntime" else _named(load_runner(runtime, model_path), model)
    except (ModelFileError, RuntimeLoadError) as exc:
        raise BundleError(str(exc)) from exc
    dtype = manifest["dtype"]
    sets = _test_sets(root, manifest["test_data_sets"])
    kinds = ("reference", *TOLERANCE_FILES)
    parts: dict[str, dict[str, list[np.ndarray]]] = {name: {k: [] for k in ("actual", *kinds)}
                                                      for name in model.output_names}
    for set_dir in sets:
        x = _tensor(set_dir / "input_0.pb", root, model.input_name, model.dtype)
        try:
            outputs = run(x)
        except InputError as exc:
            raise BundleError(f"{set_dir.relative_to(root)}/input_0.pb: {exc}") from exc
        for index, name in enumerate(model.output_names):
            parts[name]["actual"].append(outputs[name])
            for kind in kinds:
                parts[name][kind].append(_tensor(set_dir / f"{kind}_{index}.pb", root, name, np.dtype(np.float64)))
    expected = [o["name"] for o in manifest.get("outputs", [])] or model.output_names
    stacked = {name: {k: stack_batches(v) for k, v in part.items()} for name, part in parts.items()}
    verdicts = [
        compare_output(name, stacked[name]["actual"], stacked[name]["reference"],
                       Tolerance(*(stacked[name][k] for k in TOLERANCE_FILES)), dtype=dtype, expected_name=wanted)
        for name, wanted in zip(model.output_names, expected)
    ]
    digest = manifest["files"][model_path.name]["sha256"]
    report = VerifyReport(str(root), digest, model.opset, runtime, len(sets), verdicts,
                          _worst_set(verdicts, {name: [r.shape for r in part["reference"]] for name, part in parts.items()}))
    if strict and not report.ok:
        raise BundleMismatchError(report)
    return report


def _worst_set(verdicts: list[OutputVerdict], shapes: dict[str, list[tuple[int, ...]]]) -> str | None:
    """Where the worst element of the first failing output lies: its test data set and row."""
    bad = next((v for v in verdicts if not v.ok and v.worst is not None and not v.problem), None)
    if bad is None:
        return None
    index, row = locate_batch(shapes[bad.name], bad.worst.index)
    return f"row {row} of {SET_PREFIX}{index}"


def _named(runner: Any, model: OnnxModel) -> Any:
    """A runner's output list as a dict by the model's output names, with the model's input checks."""
    return lambda x: dict(zip(model.output_names, runner(model._prepare(x))))


def check_integrity(root: pathlib.Path, manifest: dict[str, Any]) -> None:
    """Raise BundleDamagedError unless the files under ``root`` are exactly those of the manifest's table."""
    try:
        found = damage(root, manifest["files"])
    except OSError as exc:
        raise BundleError(f"cannot read the bundle {root}: {exc.strerror or exc}") from exc
    if found:
        raise BundleDamagedError(root, found)


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
    if where.is_symlink():
        raise BundleDamagedError(root, [Damage(MANIFEST, "symlink")])
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
    problem = listing_problem(manifest.get("files"))
    if problem:
        raise BundleError(f"{where}: {problem}")
    _require(where, manifest, "model.file",
             lambda v: isinstance(v, str) and v == pathlib.Path(v).name and v in manifest["files"])
    _require(where, manifest, "dtype", lambda v: v in ("float32", "float16"))
    _require(where, manifest, "criterion.unit_roundoff", lambda v: _number(v) and 0 < v < 1)
    _require(where, manifest, "criterion.spreads", lambda v: v == SPREADS)
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


def _test_sets(root: pathlib.Path, count: int) -> list[pathlib.Path]:
    """The test data set folders the manifest counts; BundleError naming those missing or not counted."""
    found = {p.name for p in root.glob(f"{SET_PREFIX}*") if p.is_dir()}
    wanted = [f"{SET_PREFIX}{i}" for i in range(count)]
    missing, extra = [w for w in wanted if w not in found], sorted(found.difference(wanted), key=_natural)
    if missing or extra:
        named = [f"{name} missing" for name in missing] + [f"{name} not counted" for name in extra]
        raise BundleError(f"{root / MANIFEST} counts {count} test data sets: {some(named)}")
    return [root / name for name in wanted]


def _natural(name: str) -> tuple[int, str]:
    """test_data_set_2 before test_data_set_10."""
    return len(name), name


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
