"""Running one row of `zoo run`, wherever it runs, and storing its bundle where the client runs.

`run_row` builds, trains and exports one job into a private temporary directory and returns the row
with the bundle's files as bytes, so a row can run in this process, in a local worker or on a
remote Dask worker that shares no filesystem with the client. `store_bundle` then writes the files
under OUT/models/<row>/ in one rename, so an interrupted run never leaves half a bundle.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import zoo
from export.run.rows import NOTES_PUBLISHED, Job, Row
from zoo.errors import ZooError
from zoo.files import default_mode, write_atomic
from zoo.timing import timed


@dataclasses.dataclass
class Finished:
    """A row and, when it passed, its bundle: relative path -> file content."""

    row: Row
    files: dict[str, bytes] = dataclasses.field(default_factory=dict)


def bundle_dir(out: str | os.PathLike[str], name: str) -> pathlib.Path:
    """Where the bundle of row `name` lives under OUT."""
    return pathlib.Path(out) / "models" / re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def run_row(job: Job, *, out: str = "zoo-out", device: str = "auto", opset: int = 17, seed: int = 0) -> Finished:
    """Build, train and export (bundle with parity check) one job; any failure becomes a failed row.

    The bundle is made in a temporary directory here and returned as bytes; its manifest names the
    model where `store_bundle` will put it, under the client's `out`, so that a bundle is the same
    bytes wherever its row ran.
    """
    import torch

    started = time.perf_counter()
    row = job.row()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same arithmetic in every process, whatever --jobs is
    files: dict[str, bytes] = {}
    try:
        with warnings.catch_warnings(record=True) as caught, \
                tempfile.TemporaryDirectory(prefix="zoo-row-") as scratch:  # kept in the report, not on the terminal
            warnings.simplefilter("always")
            target = pathlib.Path(scratch) / "bundle"
            _run_stages(job, row, target, device=device, opset=opset, seed=seed)
            files = {path.relative_to(target).as_posix(): path.read_bytes()
                     for path in sorted(target.rglob("*")) if path.is_file()}
            files["manifest.json"] = _renamed(files["manifest.json"], target, bundle_dir(out, job.name))
    except Exception as exc:  # noqa: BLE001 - third-party plugins may raise anything; it becomes the row's error
        message = (str(exc) if isinstance(exc, ZooError) else f"{type(exc).__name__}: {exc}").strip()
        row.error = message.splitlines()[0] if message else type(exc).__name__
    finally:
        torch.set_num_threads(threads)
        row.seconds["total"] = round(time.perf_counter() - started, 3)
    row.warnings = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    return Finished(row, files)


def _run_stages(job: Job, row: Row, target: pathlib.Path, *, device: str, opset: int, seed: int) -> None:
    from export.bundle import write_bundle
    from export.parity import ParityError

    model = zoo.create_model(**job.model, seed=seed)
    data = zoo.datasets.create(job.dataset, seed=seed, **job.data)
    row.stage = "train"
    with timed(row.seconds, "train"):
        result = zoo.train(model, data, device=device, seed=seed, progress=False, **job.train)
    row.train_loss, row.history, row.epochs = result.final_loss, list(result.history), result.recipe["epochs"]
    model = model.cpu()
    score_onnx = _score_heldout(job, row, model, data)
    if job.model["name"] == "linear_regression":
        with timed(row.seconds, "regression"):
            row.regression = _compare_regression(job, model, data, device=device, seed=seed)

    def exported(path: pathlib.Path) -> None:
        score_onnx(path)
        row.stage = "parity"  # the model is exported and runs: what fails from here on is its parity check

    row.stage = "export"
    try:
        write_bundle(model, target, opset=opset, timings=row.seconds, on_exported=exported)
    except ParityError as exc:
        row.stage = "parity"
        if exc.report is not None:  # None: an op without a rule, nothing judged
            row.worst_ratio, row.max_abs_error = exc.report.worst_ratio, exc.report.max_abs_error
        raise
    manifest = json.loads((target / "manifest.json").read_text(encoding="utf-8"))
    parity = manifest["parity"]
    row.worst_ratio, row.max_abs_error = float(parity["worst_ratio"]), float(parity["max_abs_error"])
    row.compute = manifest["compute"]
    row.onnx = f"models/{bundle_dir('.', job.name).name}/model.onnx"
    row.stage, row.ok = "done", True


def _score_heldout(job: Job, row: Row, model: Any, data: Any) -> Callable[[pathlib.Path], None]:
    """Score a classifier on its held-out rows (AccuracyError below the job's accuracy); return what scores
    the exported model on them (nothing to do for other rows)."""
    from export.run import heldout

    if not heldout.scored(data):
        return lambda path: None
    row.stage = "accuracy"
    with timed(row.seconds, "heldout"):
        scores, predicted = heldout.score(model, data, required=job.accuracy)
    row.heldout = scores
    heldout.check(scores)

    def score_onnx(path: pathlib.Path) -> None:
        with timed(row.seconds, "heldout_onnx"):
            scores.update(heldout.score_onnx(path, data, predicted))

    return score_onnx


def _renamed(manifest: bytes, staged: pathlib.Path, final: pathlib.Path) -> bytes:
    """The manifest with the staged model path (in the parity summary) replaced by its final one."""
    def quoted(path: pathlib.Path) -> bytes:
        return json.dumps(os.fspath(path / "model.onnx"))[1:-1].encode()  # as the manifest escapes it

    return manifest.replace(quoted(staged), quoted(final))


def _mean(values: list[float]) -> float:
    """A correctly rounded mean: the same bits whatever the thread count or BLAS."""
    return math.fsum(values) / len(values)


def _least_squares(x: list[float], y: list[float]) -> tuple[float, float]:
    """The (w, b) of y = w x + b by least squares, in exactly rounded sums so every machine agrees."""
    x_mean, y_mean = _mean(x), _mean(y)
    dx = [xi - x_mean for xi in x]
    w = math.fsum(d * (yi - y_mean) for d, yi in zip(dx, y)) / math.fsum(d * d for d in dx)
    return w, y_mean - w * x_mean


def _compare_regression(job: Job, model: Any, data: Any, *, device: str, seed: int) -> dict[str, Any]:
    """Learned (w, b) next to the notes' recipe run here, the notes' printed numbers and least squares."""
    notes_model = zoo.create_model(**job.model, seed=seed)
    notes = zoo.train(notes_model, data, recipe="notes", device=device, seed=seed, progress=False)
    x, y = data.x.double().cpu().flatten().tolist(), data.y.double().cpu().flatten().tolist()
    w_ols, b_ols = _least_squares(x, y)

    def fit(w: float, b: float) -> dict[str, float]:
        return {"w": w, "b": b, "mse": _mean([(w * xi + b - yi) ** 2 for xi, yi in zip(x, y)])}

    fits: dict[str, Any] = {
        "default": fit(*_weight_bias(model)),
        "notes": {**fit(*_weight_bias(notes_model)), "history": list(notes.history)},
    }
    if job.model["layer"] in NOTES_PUBLISHED:  # a third-party layer has no printed result in the notes
        published_w, published_b = NOTES_PUBLISHED[job.model["layer"]]
        fits["notes_published"] = {"w": published_w, "b": published_b}
    fits["least_squares"] = fit(w_ols, b_ols)
    return fits


def _weight_bias(model: Any) -> tuple[float, float]:
    params = dict(model.named_parameters())
    return float(params["weight"].detach().flatten()[0]), float(params["bias"].detach().flatten()[0])


def store_bundle(out: str | os.PathLike[str], finished: Finished) -> None:
    """Write a passing row's bundle to OUT/models/<row>/ in one rename; remove a failing row's stale one.

    The files go to a hidden directory beside the target first, so that an interrupt leaves either
    the old bundle, the new one or none, never half of one. An earlier run's bundle under a failing
    row's name is removed: it must not pass for this run's result.
    """
    from export.bundle import is_bundle

    target = bundle_dir(out, finished.row.name)
    if not finished.row.ok:
        if is_bundle(target):
            shutil.rmtree(target)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = pathlib.Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        os.chmod(staged, default_mode(directory=True))
        for relative, data in finished.files.items():
            write_atomic(staged / relative, data)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staged, target)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
