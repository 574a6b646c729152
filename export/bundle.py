"""Write checked deliverables: an ONNX file, or a bundle that anyone can re-check with onnxruntime alone.

A bundle (ONNX Model Zoo layout)::

    OUT/model.onnx
    OUT/test_data_set_N/input_0.pb, output_0.pb    probe inputs and torch eager's outputs
    OUT/manifest.json                               sha256, opset, tolerances, parity figures, versions

Everything is built beside its destination and renamed into place, so a failure (export, parity,
disk) leaves nothing behind and an existing deliverable is replaced only when asked.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from export import probes, special_values
from export.onnx_export import DEFAULT_OPSET, ExportError, check_compute, eval_copy, opset_range, to_onnx
from export.parity import TOLERANCES, ParityError, ParityReport, check_parity
from export.runtime import BundleError, OnnxModel, encode_tensor, verify_bundle
from export.runtime.verify import FORMAT, FORMAT_VERSION, MANIFEST, MODEL_FILE, SET_PREFIX, jsonable, sha256
from zoo.files import default_mode, write_atomic

# The probes replayed by a bundle: every special value and activation knee, plus ordinary and large rows.
BUNDLE_PROBES = ("special", "boundaries", "random(scale=1, batch=7)", "random(scale=100, batch=7)")


def write_onnx(
    model: torch.nn.Module,
    path: str | os.PathLike[str],
    *,
    opset: int = 17,
    exporter: str = "torchscript",
    dtype: str = "float32",
    dynamic_batch: bool = True,
    compute: str = "auto",
    overwrite: bool = False,
) -> ParityReport:
    """Export ``model`` to ``path`` only if it passes the parity check (ParityError otherwise); return the report."""
    path = pathlib.Path(path)
    preflight(path, bundle=False, overwrite=overwrite, opset=opset, exporter=exporter)
    with _staged(path, directory=False) as staged:
        to_onnx(model, staged, opset=opset, exporter=exporter, dtype=dtype, dynamic_batch=dynamic_batch,
                compute=compute)
        os.chmod(staged, default_mode())
        report = _parity(model, staged, shown_as=path, dtype=dtype)
        _check_target(path, overwrite, directory=False)
        os.replace(staged, path)
    return report


def write_bundle(
    model: torch.nn.Module,
    out_dir: str | os.PathLike[str],
    *,
    opset: int = 17,
    exporter: str = "torchscript",
    dtype: str = "float32",
    dynamic_batch: bool = True,
    compute: str = "auto",
    parity: bool = True,
    overwrite: bool = False,
) -> pathlib.Path:
    """Write a verified bundle to ``out_dir`` and return it; raises ParityError / ExportError, leaving nothing.

    The export must pass ``check_parity`` (unless ``parity=False``) and the finished bundle must pass
    ``verify_bundle`` before it is renamed into place. An existing bundle is replaced only with
    ``overwrite``; any other existing file or non-empty directory is never touched.
    """
    out = pathlib.Path(out_dir)
    preflight(out, bundle=True, overwrite=overwrite, opset=opset, exporter=exporter)
    with _staged(out, directory=True) as staged:
        model_path = to_onnx(
            model,
            staged / MODEL_FILE,
            opset=opset,
            exporter=exporter,
            dtype=dtype,
            dynamic_batch=dynamic_batch,
            compute=compute,
        )
        os.chmod(model_path, default_mode())
        report = _parity(model, model_path, shown_as=out / MODEL_FILE, dtype=dtype) if parity else None
        runtime = OnnxModel(model_path)
        sets = _write_test_data(model, runtime, staged, dtype)
        manifest = _manifest(model, runtime, report, opset=opset, exporter=exporter, dtype=dtype, sets=sets)
        write_atomic(staged / MANIFEST, json.dumps(manifest, indent=2).encode())
        try:
            verify_bundle(staged)
        except BundleError as exc:  # a bug here, never the user's input: say so in one line
            raise ExportError(f"the bundle written for {out} does not replay: {exc}") from exc
        _check_target(out, overwrite, directory=True)
        _swap_in(staged, out)
    return out


def is_bundle(path: pathlib.Path) -> bool:
    """Whether ``path`` is a directory holding a zoo bundle manifest."""
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


def default_opset(exporter: str) -> int:
    """The opset used when none is asked for: 17, or the exporter's lowest when that is higher (dynamo: 18)."""
    low, high = opset_range(exporter)
    return min(max(DEFAULT_OPSET, low), high)


def preflight(
    path: pathlib.Path, *, bundle: bool, overwrite: bool, opset: int, exporter: str, dtype: str = "float32",
    compute: str = "auto",
) -> None:
    """Fail before any work (training, export) on a destination, opset or compute that cannot be; ExportError."""
    _check_target(path, overwrite, directory=bundle)
    check_compute(compute, dtype)
    low, high = opset_range(exporter)
    if isinstance(opset, bool) or not isinstance(opset, int) or not low <= opset <= high:
        raise ExportError(
            f"opset {opset!r} is not supported by the {exporter} exporter here; choose {low}..{high}"
        )


def _parity(
    model: torch.nn.Module, staged: pathlib.Path, *, shown_as: pathlib.Path, dtype: str
) -> ParityReport:
    """check_parity on the staged file, reported under the path the user asked for."""
    report = check_parity(model, staged, dtype=dtype, strict=False)
    report.path = str(shown_as)
    if not report.ok:
        raise ParityError(report)
    return report


def _check_target(path: pathlib.Path, overwrite: bool, *, directory: bool) -> None:
    """Refuse a destination that would lose someone's data; say what to do instead."""
    if not path.parent.is_dir():
        raise ExportError(f"cannot write {path}: directory {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise ExportError(f"cannot write {path}: directory {path.parent} is not writable")
    if not path.exists():
        return
    if directory:
        if path.is_dir() and not any(path.iterdir()):
            return
        if not is_bundle(path):
            raise ExportError(f"{path} exists and is not a zoo bundle; choose another output directory")
    elif path.is_dir():
        raise ExportError(f"{path} is a directory; give an .onnx file path (or --test-data for a bundle)")
    if not overwrite:
        raise ExportError(f"{path} already exists; pass --force (overwrite=True) to replace it")


def write_tensor(path: str | os.PathLike[str], array: np.ndarray, *, name: str = "") -> pathlib.Path:
    """Write ``array`` as an ONNX TensorProto ``.pb`` file, atomically."""
    return write_atomic(path, encode_tensor(array, name=name))


@contextlib.contextmanager
def _staged(target: pathlib.Path, *, directory: bool) -> Iterator[pathlib.Path]:
    """A temporary file or directory beside ``target``, removed unless the caller renamed it."""
    prefix, suffix = f".{target.name}.", ".tmp" + ("" if directory else ".onnx")
    try:
        if directory:
            staged = pathlib.Path(tempfile.mkdtemp(dir=target.parent, prefix=prefix, suffix=suffix))
            os.chmod(staged, default_mode(directory=True))
        else:
            descriptor, name = tempfile.mkstemp(dir=target.parent, prefix=prefix, suffix=suffix)
            os.close(descriptor)
            staged = pathlib.Path(name)
    except OSError as exc:
        raise ExportError(f"cannot write {target}: {exc.strerror or exc}") from exc
    try:
        yield staged
    finally:
        if staged.is_dir():
            shutil.rmtree(staged, ignore_errors=True)
        else:
            staged.unlink(missing_ok=True)


def _swap_in(staged: pathlib.Path, out: pathlib.Path) -> None:
    """Rename ``staged`` to ``out``; an old bundle there is moved aside first and removed after."""
    if out.is_dir() and any(out.iterdir()):
        old = pathlib.Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
        os.replace(out, old / "bundle")
        try:
            os.replace(staged, out)
        except BaseException:
            os.replace(old / "bundle", out)
            raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staged, out)


def _probe_batch(in_features: int, dtype: str) -> np.ndarray:
    """The rows a bundle replays: the BUNDLE_PROBES of ``export.probes``, stacked."""
    found = {p.name: p.data for p in probes.make_probes(in_features, dtype=dtype, seed=0)}
    return np.concatenate([found[name] for name in BUNDLE_PROBES])


def _write_test_data(model: torch.nn.Module, runtime: OnnxModel, out: pathlib.Path, dtype: str) -> int:
    """Write the probe rows and torch eager's outputs as test data sets; return how many sets."""
    batch, features = runtime.input_shape
    rows = _probe_batch(features, dtype)
    if isinstance(batch, int):  # a static batch axis: one set per `batch` rows, the last one wrapped
        count = -(-len(rows) // batch)
        rows = np.resize(rows, (count * batch, features))
        chunks = np.split(rows, count)
    else:  # the whole batch, and its first row alone to replay the dynamic axis at batch 1
        chunks = [rows, rows[:1]]
    for index, chunk in enumerate(chunks):
        set_dir = out / f"{SET_PREFIX}{index}"
        set_dir.mkdir()
        write_tensor(set_dir / "input_0.pb", chunk, name=runtime.input_name)
        outputs = _torch_outputs(model, chunk, dtype)
        with eval_copy(model, getattr(torch, dtype)) as stored:  # float64 from the weights as exported
            exact = _torch_outputs(stored, chunk.astype(np.float64), "float64")
        for position, name in enumerate(runtime.output_names):
            write_tensor(set_dir / f"output_{position}.pb", outputs[position], name=name)
            write_tensor(set_dir / f"reference_{position}.pb", exact[position], name=name)
    return len(chunks)


def _torch_outputs(model: torch.nn.Module, x: np.ndarray, dtype: str) -> list[np.ndarray]:
    """torch eager's outputs in ``dtype`` (float64 for the referee's reference), corrected only where
    ``export.special_values`` documents torch is wrong."""
    with (
        eval_copy(model, getattr(torch, dtype)) as torch_model,
        special_values.corrected(torch_model),
        torch.no_grad(),
    ):
        outputs = torch_model(torch.from_numpy(x))
    outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    return [output.numpy() for output in outputs]


def _manifest(
    model: torch.nn.Module,
    runtime: OnnxModel,
    report: ParityReport | None,
    *,
    opset: int,
    exporter: str,
    dtype: str,
    sets: int,
) -> dict[str, Any]:
    import onnx
    import onnxruntime

    import zoo

    rtol, atol = (report.rtol, report.atol) if report else TOLERANCES[dtype]
    return jsonable(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": {
                "file": MODEL_FILE,
                "sha256": sha256(runtime.path),
                "bytes": runtime.path.stat().st_size,
            },
            "opset": opset,
            "exporter": exporter,
            "dtype": dtype,
            "compute": runtime.metadata.get("zoo.compute"),
            "dynamic_batch": not isinstance(runtime.input_shape[0], int),
            "inputs": [{"name": runtime.input_name, "shape": _shape(runtime.input_shape), "dtype": dtype}],
            "outputs": [
                {"name": name, "shape": _shape(dims), "dtype": dtype}
                for name, dims in zip(runtime.output_names, runtime.output_shapes)
            ],
            "tolerances": {"rtol": rtol, "atol": atol},
            "test_data_sets": sets,
            "parity": {**report.to_json(), "summary": report.summary()} if report else None,
            "versions": {
                "zoo": zoo.__version__,
                "torch": torch.__version__,
                "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__,
                "numpy": np.__version__,
                "python": sys.version.split()[0],
            },
            "config": getattr(model, "zoo_config", None),
            "training": getattr(model, "zoo_training", None),
        }
    )


def _shape(dims: tuple[int | str | None, ...]) -> list[int | str | None]:
    return [d if isinstance(d, int) or d is None else str(d) for d in dims]
