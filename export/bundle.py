"""Write checked deliverables: an ONNX file, or a bundle that anyone can re-check with onnxruntime alone.

A bundle (ONNX Model Zoo layout)::

    OUT/model.onnx
    OUT/test_data_set_N/input_0.pb                  one parity probe batch each (every probe of the check)
    OUT/test_data_set_N/output_0.pb                 the function's value, rounded to the export dtype
    OUT/test_data_set_N/reference_0.pb              the float64 value (export.parity.bounds)
    OUT/test_data_set_N/bound_0.pb, spread_0.pb, allowance_0.pb   its tolerance: the worst-case bound,
                                                    the spread of honest rounding, the allowance
    OUT/manifest.json                               every other file's sha256 and size, opset, criterion,
                                                    parity verdict, versions

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
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from export.onnx_export import ExportError, ExportOptions, export_options, to_onnx
from export.parity import ParityError, ParityReport, ProbeSet, parity_run
from export.parity.bounds import UNIT
from export.runtime import BundleError, OnnxModel, encode_tensor, is_bundle, verify_bundle
from export.runtime.compare import SPREADS, Tolerance
from export.runtime.integrity import file_table
from export.runtime.verify import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    MODEL_FILE,
    SET_PREFIX,
    TOLERANCE_FILES,
    jsonable,
)
from zoo.files import default_mode, parents_made, write_atomic
from zoo.timing import timed

# Where a deliverable that failed parity is kept with --keep-on-failure: beside the asked-for path.
FAILED_MARK = ".FAILED-PARITY"


def write_onnx(
    model: torch.nn.Module,
    path: str | os.PathLike[str],
    options: ExportOptions | None = None,
    *,
    overwrite: bool = False,
    keep_on_failure: bool = False,
    timings: dict[str, float] | None = None,
    example_input: torch.Tensor | None = None,
    **changes: Any,
) -> ParityReport:
    """Export ``model`` to ``path`` only if it passes the parity check (ParityError otherwise); return the report.

    ``options`` (an ExportOptions, or its fields as keywords) and ``example_input`` say how, as for
    ``to_onnx``. With ``keep_on_failure`` a failing model is still written, as ``<stem>.FAILED-PARITY.onnx`` beside
    ``path`` with its report in ``<stem>.FAILED-PARITY.json``, and ParityError is raised all the same.
    ``timings``, when given, receives the seconds of the "export" and of the "parity" check.
    """
    path = pathlib.Path(path)
    options = export_options(options, **changes)
    preflight(path, bundle=False, overwrite=overwrite)
    with parents_made(path), _staged(path, directory=False) as staged:
        with timed(timings, "export"):
            to_onnx(model, staged, options, example_input=example_input)
        os.chmod(staged, default_mode())
        with timed(timings, "parity"):
            report, _ = _parity(model, staged, shown_as=path, dtype=options.dtype)
        if not report.ok:
            if keep_on_failure:
                kept = failed_path(path)
                write_atomic(kept.with_suffix(".json"), json.dumps(report.to_dict(), indent=2).encode())
                os.replace(staged, kept)
            raise ParityError(report)
        _check_target(path, overwrite, directory=False)
        os.replace(staged, path)
    return report


def failed_path(path: pathlib.Path) -> pathlib.Path:
    """Where ``keep_on_failure`` puts a deliverable that failed parity: clearly named, beside ``path``."""
    if path.suffix == ".onnx":
        return path.with_name(f"{path.stem}{FAILED_MARK}.onnx")
    return path.with_name(f"{path.name}{FAILED_MARK}")


def write_bundle(
    model: torch.nn.Module,
    out_dir: str | os.PathLike[str],
    options: ExportOptions | None = None,
    *,
    overwrite: bool = False,
    keep_on_failure: bool = False,
    timings: dict[str, float] | None = None,
    example_input: torch.Tensor | None = None,
    on_exported: Callable[[pathlib.Path], None] | None = None,
    **changes: Any,
) -> pathlib.Path:
    """Write a verified bundle to ``out_dir`` and return it; raises ParityError / ExportError, leaving nothing.

    ``options`` (an ExportOptions, or its fields as keywords) and ``example_input`` say how, as for
    ``to_onnx``. The export must pass ``check_parity`` and the finished bundle must pass ``verify_bundle`` (the
    same rule on the same probes) before it is renamed into place. An existing bundle is replaced
    only with ``overwrite``; any other existing file or non-empty directory is never touched. With
    ``keep_on_failure`` a failing bundle is still written, to ``<out_dir>.FAILED-PARITY``, and
    ParityError is raised all the same. ``timings``, when given, receives the seconds of the
    "export" and of the "parity" check. ``on_exported``, when given, is called with the exported model
    file before its parity check (`zoo run` scores it on held-out rows there, whatever parity says).
    """
    out = pathlib.Path(out_dir)
    options = export_options(options, **changes)
    preflight(out, bundle=True, overwrite=overwrite)
    with parents_made(out), _staged(out, directory=True) as staged:
        with timed(timings, "export"):
            model_path = to_onnx(model, staged / MODEL_FILE, options, example_input=example_input)
        os.chmod(model_path, default_mode())
        if on_exported is not None:
            on_exported(model_path)
        with timed(timings, "parity"):
            report, probe_set = _parity(model, model_path, shown_as=out / MODEL_FILE, dtype=options.dtype)
        runtime = OnnxModel(model_path)
        sets = _write_test_data(probe_set, runtime, staged, options.dtype)
        manifest = _manifest(model, runtime, report, options, sets=sets, files=file_table(staged))
        write_atomic(staged / MANIFEST, json.dumps(manifest, indent=2).encode())
        if not report.ok:
            if keep_on_failure:
                _swap_in(staged, failed_path(out))
            raise ParityError(report)
        try:
            verify_bundle(staged)
        except BundleError as exc:  # a bug here, never the user's input: say so in one line
            raise ExportError(f"the bundle written for {out} does not replay: {exc}") from exc
        _check_target(out, overwrite, directory=True)
        _swap_in(staged, out)
    return out


def preflight(path: pathlib.Path, *, bundle: bool, overwrite: bool) -> None:
    """Fail before any work (training, export) on a destination that cannot be written; ExportError."""
    _check_target(path, overwrite, directory=bundle)


def _parity(
    model: torch.nn.Module, staged: pathlib.Path, *, shown_as: pathlib.Path, dtype: str
) -> tuple[ParityReport, ProbeSet]:
    """The parity check of the staged file, reported under the path the user asked for."""
    report, probe_set = parity_run(model, staged, dtype=dtype)
    report.path = str(shown_as)
    return report, probe_set


def _check_target(path: pathlib.Path, overwrite: bool, *, directory: bool) -> None:
    """Refuse a destination that would lose someone's data; say what to do instead."""
    if not path.parent.is_dir():
        return  # created when the deliverable is renamed into place (zoo.files.parents_made)
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
        raise ExportError(f"{path} already exists; pass overwrite=True to replace it")


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


def _write_test_data(probe_set: ProbeSet, runtime: OnnxModel, out: pathlib.Path, dtype: str) -> int:
    """Write every probe batch with its reference (rounded, and float64) and bound; return how many sets.

    A static batch axis takes each probe batch in sets of that size, the last one wrapped around.
    """
    static = runtime.input_shape[0]
    index = 0
    for number, probe in enumerate(probe_set.batches):
        pieces = [probe_set.piece(position, number) for position in range(len(runtime.output_names))]
        chunk = static if isinstance(static, int) else probe.batch
        for start in range(0, probe.batch, chunk):
            rows = np.arange(start, start + chunk) % probe.batch
            _write_set(out / f"{SET_PREFIX}{index}", probe.data[rows], [(r[rows], t.rows(rows)) for r, t in pieces],
                       runtime, dtype)
            index += 1
    return index


def _write_set(set_dir: pathlib.Path, x: np.ndarray, expected: list[tuple[np.ndarray, Tolerance]], runtime: OnnxModel,
               dtype: str) -> None:
    """One test data set: the input, and per output its rounded and float64 reference and its tolerance."""
    set_dir.mkdir()
    write_tensor(set_dir / "input_0.pb", x, name=runtime.input_name)
    for position, (name, (reference, tolerance)) in enumerate(zip(runtime.output_names, expected)):
        with np.errstate(over="ignore"):
            write_tensor(set_dir / f"output_{position}.pb", reference.astype(dtype), name=name)
        write_tensor(set_dir / f"reference_{position}.pb", reference, name=name)
        for kind in TOLERANCE_FILES:
            write_tensor(set_dir / f"{kind}_{position}.pb", getattr(tolerance, kind), name=name)


def _manifest(
    model: torch.nn.Module,
    runtime: OnnxModel,
    report: ParityReport,
    options: ExportOptions,
    *,
    sets: int,
    files: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    import onnx
    import onnxruntime

    import zoo

    return jsonable(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": {"file": MODEL_FILE},
            "opset": options.chosen_opset,
            "exporter": options.exporter,
            "dtype": options.dtype,
            "compute": runtime.metadata.get("zoo.compute"),
            "dynamic_batch": not isinstance(runtime.input_shape[0], int),
            "inputs": [{"name": runtime.input_name, "shape": _shape(runtime.input_shape), "dtype": options.dtype}],
            "outputs": [
                {"name": name, "shape": _shape(dims), "dtype": options.dtype}
                for name, dims in zip(runtime.output_names, runtime.output_shapes)
            ],
            "criterion": {
                "rule": "|actual - reference| <= bound and <= spreads * spread + allowance per element; "
                        "NaN where reference is NaN; reference's infinity where it is one; "
                        "anything where bound is infinite",
                "unit_roundoff": UNIT[options.dtype],
                "spreads": SPREADS,
            },
            "test_data_sets": sets,
            "parity": report.to_dict(),
            "versions": {
                "zoo": zoo.__version__,
                "torch": torch.__version__,
                "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__,
                "numpy": np.__version__,
                "python": sys.version.split()[0],
            },
            "config": getattr(model, "zoo_config", None),
            # as the model file records it: what was trained, not how long it took or where
            "training": runtime.metadata.get("zoo.training"),
            "files": files,  # every file but this one, checked by verify_bundle before anything else
        }
    )


def _shape(dims: tuple[int | str | None, ...]) -> list[int | str | None]:
    return [d if isinstance(d, int) or d is None else str(d) for d in dims]
