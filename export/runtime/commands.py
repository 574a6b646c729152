"""What ``verify`` and ``predict`` do and print, for both command lines that offer them.

``zoo verify`` / ``zoo predict`` (click, in ``export.cli``) and ``zoo-onnx-runtime`` (argparse, in
``.cli``) are thin wrappers over these functions: the same lines on stdout through ``echo``, and
every failure one of ``ERRORS``, whose message is the whole one-line explanation.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
import zipfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from .backends import RuntimeMissingError
from .compare import jsonable
from .model import InputError, ModelFileError, OnnxModel
from .tensor_proto import TensorProtoError, read_tensor
from .verify import MODEL_FILE, BundleDamagedError, BundleError, verify_bundle

Echo = Callable[[str], None]
OUTPUT_SUFFIXES = (".npy", ".npz")


class CommandError(ValueError):
    """A command cannot do what it was asked; the message says why in one line (exit status 1)."""


class UsageError(CommandError):
    """The arguments do not fit together (exit status 2, as for any usage error)."""


# Every error a command reports as one line; anything else is a bug and keeps its traceback.
ERRORS = (CommandError, BundleError, InputError, ModelFileError, TensorProtoError, RuntimeMissingError)


def emit_json(data: Any, echo: Echo) -> None:
    """A JSON document on stdout, laid out as every zoo command's --json."""
    echo(json.dumps(data, indent=2))


def verify(bundle: pathlib.Path, *, runtime: str = "onnxruntime", as_json: bool = False, echo: Echo = print) -> None:
    """Replay BUNDLE in ``runtime``: a line per output and PASS, or the report as JSON; CommandError on FAIL.

    A damaged bundle raises BundleDamagedError (one line), with its damage as JSON first under ``as_json``.
    """
    try:
        report = verify_bundle(bundle, strict=False, runtime=runtime)
    except BundleDamagedError as exc:
        if as_json:
            emit_json(exc.to_dict(), echo)
        raise
    if as_json:
        emit_json(report.to_dict(), echo)
    else:
        for output in report.outputs:
            echo(f"  {'ok' if output.ok else 'FAIL':4} {output.describe()}")
    if not report.ok:
        raise CommandError(f"{report.verdict()} {report.path} [{runtime}]: {report.worst()}")
    if not as_json:
        echo(f"PASS {report.path} [{runtime}, {report.test_data_sets} test data sets]")


def predict(
    model_path: pathlib.Path,
    values: Sequence[float] = (),
    *,
    input_path: pathlib.Path | None = None,
    output: pathlib.Path | None = None,
    as_json: bool = False,
    echo: Echo = print,
) -> None:
    """Run MODEL (an .onnx file or a bundle) on VALUES or an --input file; print the rows or write ``output``.

    A classifier's rows print as the class each input gets (by name when its training set named
    them), a sequence classifier's as the class at each position; --json gives those as
    ``predictions`` beside the raw ``outputs``, and ``output`` holds the raw outputs (logits).
    """
    if (input_path is None) == (not values):
        raise UsageError("give the input either as VALUES or with --input x.npy (one of them)")
    if output is not None:
        check_output(output)
    if _is_torch_archive(model_path):
        raise CommandError(f"{model_path} is a torch checkpoint (as `zoo train -o` writes), not an ONNX model: "
                           f"export it first with `zoo export {model_path} -o {model_path.with_suffix('.onnx').name}`")
    model = OnnxModel(model_path / MODEL_FILE if model_path.is_dir() else model_path)
    x = read_input(input_path) if input_path is not None else rows(model, values)
    outputs = model.run_all(x)
    classes = predicted_classes(model, outputs)
    if output is not None:
        save(output, outputs)
        if as_json:
            emit_json({"model": str(model.path), "output": str(output), "rows": len(x)}, echo)
        else:
            echo(f"wrote {output} ({', '.join(f'{k} {v.shape}' for k, v in outputs.items())})")
    elif as_json:
        document = {"model": str(model.path), "outputs": {k: jsonable(v.tolist()) for k, v in outputs.items()}}
        if classes is not None:
            document.update(predictions=classes.tolist(), labels=model.labels)
        emit_json(document, echo)
    elif classes is not None:
        for line in class_lines(classes, model.labels):
            echo(line)
    else:
        for name, value in outputs.items():
            if len(outputs) > 1:
                echo(f"{name}:")
            for row in np.asarray(value).reshape(len(value), -1):
                echo(" ".join(str(v) for v in row))


# The tasks whose outputs are logits over classes (per input, or per position of a sequence).
CLASSIFIER_TASKS = ("classification", "sequence_classification")


def predicted_classes(model: OnnxModel, outputs: dict[str, np.ndarray]) -> np.ndarray | None:
    """The class of the highest logit, (N,) or (N, L), for a classifier of one output; None for other models."""
    if model.task not in CLASSIFIER_TASKS or len(outputs) != 1:
        return None
    return np.argmax(next(iter(outputs.values())), axis=-1)


def class_lines(classes: np.ndarray, labels: Sequence[str] | None) -> list[str]:
    """One line per input row: its class (``2 triangle`` when the classes are named), or a sequence's classes."""
    def named(k: int) -> str:
        return labels[k] if labels is not None and k < len(labels) else str(k)

    if classes.ndim == 1:
        return [f"{k} {named(k)}" if labels is not None else str(k) for k in classes.tolist()]
    return [" ".join(named(k) for k in row) for row in classes.reshape(len(classes), -1).tolist()]


def rows(model: OnnxModel, values: Sequence[float]) -> np.ndarray:
    """VALUES as (N, F) rows for a model taking (batch, F) input."""
    shape = model.input_shape
    if len(shape) != 2 or not isinstance(shape[1], int):
        raise UsageError(f"VALUES need a model taking (batch, features) input, this one takes {model.input_spec}")
    if len(values) % shape[1]:
        raise UsageError(
            f"got {len(values)} values, not a multiple of the model's {shape[1]} input features "
            f"(expected input of shape {model.input_spec})"
        )
    return np.array(values, dtype=np.float64).reshape(-1, shape[1])


def _is_torch_archive(path: pathlib.Path) -> bool:
    """Whether ``path`` is a torch.save file (a zip archive holding data.pkl), as `zoo train -o` writes; read, not loaded."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/data.pkl") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def read_input(path: pathlib.Path) -> np.ndarray:
    """The array in a .npy file, or in a TensorProto .pb file."""
    if path.suffix == ".pb":
        return read_tensor(path).array
    try:
        with path.open("rb") as handle:
            head = handle.read(len(np.lib.format.MAGIC_PREFIX))
        if head != np.lib.format.MAGIC_PREFIX and not zipfile.is_zipfile(path):
            raise CommandError(
                f"{path} is not a .npy file: write the input rows with numpy.save('x.npy', rows) "
                f"(from a text table: rows = numpy.loadtxt('{path}', ndmin=2))"
            )
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise CommandError(f"{path}: no such input file") from None
    except (OSError, ValueError) as exc:
        raise CommandError(f"cannot read {path} as a .npy array: {exc}") from exc
    if not isinstance(array, np.ndarray):
        raise CommandError(f"{path} is an .npz archive; give one array as a .npy file")
    if array.ndim == 0 or len(array) == 0:
        raise CommandError(f"{path} holds no rows (shape {array.shape}); give at least one input row")
    return array


def check_output(path: pathlib.Path) -> None:
    """Refuse, before any work, an output path that cannot take a numpy file (zoo.files' rules; no zoo here)."""
    if path.is_dir():
        raise CommandError(f"cannot write {path}: it is a directory; give a file name")
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise CommandError(f"cannot write {path}: a numpy output file ends in .npy or .npz (e.g. {path.stem}.npy)")
    existing = next((parent for parent in path.parents if parent.exists()), path.parents[-1])
    if not existing.is_dir():
        raise CommandError(f"cannot write {path}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CommandError(f"cannot write {path}: cannot create files in {existing}")


def save(path: pathlib.Path, outputs: dict[str, np.ndarray]) -> None:
    """Write the outputs atomically: one array as .npy, or every output by name as .npz."""
    buffer = io.BytesIO()
    if path.suffix == ".npz":
        np.savez(buffer, **outputs)
    elif len(outputs) == 1:
        np.save(buffer, next(iter(outputs.values())))
    else:
        raise UsageError(f"the model has {len(outputs)} outputs; write them with -o {path.stem}.npz")
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with _parents_made(path):
            try:
                with open(temporary, "xb") as handle:
                    handle.write(buffer.getvalue())
                os.replace(temporary, path)
            except BaseException:
                temporary.unlink(missing_ok=True)
                raise
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror or exc}") from exc


@contextlib.contextmanager
def _parents_made(path: pathlib.Path) -> Iterator[None]:
    """Create the missing parent directories of ``path`` for a block; remove them again if it fails."""
    missing = [parent for parent in path.parents if not parent.exists()]
    for parent in reversed(missing):
        parent.mkdir()
    try:
        yield
    except BaseException:
        for parent in missing:
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise
