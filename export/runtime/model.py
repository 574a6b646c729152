"""``OnnxModel``: run an exported model with onnxruntime and numpy alone (no torch, no onnx)."""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnxruntime

from .tensor_proto import LENGTH, VARINT, TensorProtoError, fields

# onnxruntime's type strings -> numpy dtypes.
ORT_TYPES = {
    "tensor(float)": np.dtype("float32"),
    "tensor(float16)": np.dtype("float16"),
    "tensor(double)": np.dtype("float64"),
    "tensor(int64)": np.dtype("int64"),
    "tensor(int32)": np.dtype("int32"),
    "tensor(int8)": np.dtype("int8"),
    "tensor(uint8)": np.dtype("uint8"),
    "tensor(bool)": np.dtype("bool"),
}


class ModelFileError(ValueError):
    """The file is missing, unreadable, truncated or not an ONNX model this runtime can run."""


class InputError(ValueError):
    """An input does not fit the model (rank, dtype, feature count); the message states the expected shape."""


class OnnxModel:
    """A single-input ONNX model loaded into onnxruntime: ``OnnxModel("mlp.onnx").run(x)``.

    A model of one-hot tokens, float input (batch, sequence, V), also takes token ids (N, L) of an
    integer dtype: they are one-hot encoded here (``vocabulary`` is V, else None).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
    ) -> None:
        """Load ``path``; ``threads`` caps onnxruntime's intra-op threads, ``providers`` defaults to CPU."""
        self.path = pathlib.Path(path)
        data = _read_model_file(self.path)
        self.opset = _default_opset(self.path, data)
        self._session = _session(self.path, data, threads, providers)
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise ModelFileError(f"{self.path} has {len(inputs)} inputs; OnnxModel runs single-input models")
        self.input_name: str = inputs[0].name
        self.input_shape: tuple[int | str | None, ...] = tuple(inputs[0].shape)
        if inputs[0].type not in ORT_TYPES:
            raise ModelFileError(f"{self.path} takes {inputs[0].type}, which OnnxModel does not feed")
        self.dtype: np.dtype = ORT_TYPES[inputs[0].type]
        outputs = self._session.get_outputs()
        self.output_names: list[str] = [output.name for output in outputs]
        self.output_shapes: list[tuple[int | str | None, ...]] = [tuple(output.shape) for output in outputs]
        self.metadata: dict[str, Any] = _parse_metadata(self._session.get_modelmeta().custom_metadata_map)
        self._fixed_dims = tuple((axis, dim) for axis, dim in enumerate(self.input_shape) if isinstance(dim, int))
        dynamic_batch_only = len(self._fixed_dims) == len(self.input_shape) - 1 and not isinstance(self.input_shape[0], int)
        self._sample_shape = self.input_shape[1:] if dynamic_batch_only else None
        self.vocabulary: int | None = _vocabulary(self.input_shape, self.dtype)
        self._infer = _runner(self._session)

    def __repr__(self) -> str:
        return f"OnnxModel({str(self.path)!r}, input={self.input_spec}, opset={self.opset})"

    @property
    def input_spec(self) -> str:
        """The accepted input as text, e.g. '(batch, 1) float32'."""
        dims = ", ".join("?" if d is None else str(d) for d in self.input_shape)
        return f"({dims}{',' if len(self.input_shape) == 1 else ''}) {self.dtype}"

    def run(self, x: Any) -> np.ndarray:
        """The first output for input ``x`` (a numpy array or nested lists of shape like ``input_shape``)."""
        return self._infer(self.output_names[:1], {self.input_name: self._prepare(x)})[0]

    def run_all(self, x: Any) -> dict[str, np.ndarray]:
        """Every output by name for input ``x``."""
        outputs = self._infer(self.output_names, {self.input_name: self._prepare(x)})
        return dict(zip(self.output_names, outputs))

    def _prepare(self, x: Any) -> np.ndarray:
        """``x`` as a contiguous array of the model's dtype; raises InputError when it does not fit."""
        if type(x) is np.ndarray and x.dtype == self.dtype and x.flags.c_contiguous:
            array = x
        else:
            array = np.ascontiguousarray(self._convert(x))
        shape = array.shape
        if shape[1:] == self._sample_shape and len(shape) == len(self.input_shape):
            return array
        if len(shape) != len(self.input_shape) or any(shape[axis] != dim for axis, dim in self._fixed_dims):
            raise InputError(f"expected input of shape {self.input_spec}, got {tuple(shape)}")
        return array

    @property
    def task(self) -> str | None:
        """The task the model was built for (its ``zoo.meta`` metadata), e.g. "classification"; None when unknown."""
        meta = self.metadata.get("zoo.meta")
        task = meta.get("task") if isinstance(meta, dict) else None
        return task if isinstance(task, str) else None

    @property
    def labels(self) -> list[str] | None:
        """The names of the classes, from the training set's parameters (``zoo.training``); None when it has none."""
        training = self.metadata.get("zoo.training")
        dataset = training.get("dataset") if isinstance(training, dict) else None
        params = dataset.get("params") if isinstance(dataset, dict) else None
        labels = params.get("labels") if isinstance(params, dict) else None
        return [str(label) for label in labels] if isinstance(labels, list) else None

    def _convert(self, x: Any) -> np.ndarray:
        try:
            array = np.asarray(x)
        except (ValueError, TypeError) as exc:
            raise InputError(
                f"expected input of shape {self.input_spec}, got a ragged or non-numeric value"
            ) from exc
        if self.vocabulary is not None and array.dtype.kind in "iu" and array.ndim == len(self.input_shape) - 1:
            return self._one_hot(array, self.vocabulary)
        if not np.can_cast(array.dtype, self.dtype, casting="same_kind"):
            raise InputError(f"expected input of shape {self.input_spec}, got values of dtype {array.dtype}")
        with np.errstate(over="ignore"):
            converted = array.astype(self.dtype)
        if self.dtype.kind == "f" and array.dtype.kind in "fiu":
            overflow = np.isinf(converted) & np.isfinite(array)
            if overflow.any():
                value, limit = float(array[overflow].flat[0]), float(np.finfo(self.dtype).max)
                raise InputError(f"input value {value:g} overflows {self.dtype} (largest {limit:g})")
        return converted

    def _one_hot(self, ids: np.ndarray, vocabulary: int) -> np.ndarray:
        """Token ids (N, L) as the one-hot rows (N, L, vocabulary) the model takes; InputError for an unknown id."""
        unknown = (ids < 0) | (ids >= vocabulary)
        if unknown.any():
            raise InputError(f"token id {ids[unknown].flat[0]} is not one of the model's {vocabulary} tokens "
                             f"(0 to {vocabulary - 1}); it takes token ids (N, L) or one-hot rows {self.input_spec}")
        return np.eye(vocabulary, dtype=self.dtype)[ids]


def _vocabulary(shape: tuple[int | str | None, ...], dtype: np.dtype) -> int | None:
    """V for a model of one-hot tokens, a float input (batch, sequence, V) of any length and V fixed; else None.

    Such a model also takes token ids (N, L) of an integer dtype, as zoo's transformer does in torch.
    """
    tokens = len(shape) == 3 and dtype.kind == "f" and isinstance(shape[2], int)
    return shape[2] if tokens and not isinstance(shape[1], int) else None


def _read_model_file(path: pathlib.Path) -> bytes:
    if path.is_dir():
        hint = " (a bundle: pass its model.onnx)" if (path / "model.onnx").is_file() else ""
        raise ModelFileError(f"{path} is a directory, not an ONNX model file{hint}")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such ONNX model file") from None
    except OSError as exc:
        raise ModelFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if not data:
        raise ModelFileError(f"{path} is empty, not an ONNX model")
    return data


def _default_opset(path: pathlib.Path, data: bytes) -> int | None:
    """The default-domain opset from ModelProto.opset_import (field 8), read without onnx."""
    try:
        for number, wire, value in fields(data):
            if number == 8 and wire == LENGTH:
                entry = {n: v for n, w, v in fields(value) if w in (VARINT, LENGTH)}
                if entry.get(1, b"") in (b"", b"ai.onnx"):
                    return int(entry.get(2, 0))
    except TensorProtoError as exc:
        raise ModelFileError(f"{path} is truncated or not an ONNX model ({exc})") from exc
    return None


def _session(
    path: pathlib.Path, data: bytes, threads: int | None, providers: Sequence[str] | None
) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: ORT's warnings are not the user's business
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    available = onnxruntime.get_available_providers()
    chosen = list(providers) if providers is not None else ["CPUExecutionProvider"]
    missing = [p for p in chosen if p not in available]
    if missing or not chosen:
        raise ValueError(f"providers {missing or chosen} are not available; choose from {available}")
    try:
        return onnxruntime.InferenceSession(data, options, providers=chosen)
    except Exception as exc:
        reason = str(exc).split(" : ")[-1].strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"{path} is not a valid ONNX model: {reason}") from exc


def _runner(session: onnxruntime.InferenceSession) -> Any:
    """``session.run`` with one reusable RunOptions: a fresh default per call costs a third of a small model's time."""
    options = onnxruntime.RunOptions()
    return lambda names, feed: session.run(names, feed, options)


def _parse_metadata(props: dict[str, str]) -> dict[str, Any]:
    """metadata_props with JSON objects and arrays (zoo.config, zoo.training) parsed; the rest as text."""
    parsed: dict[str, Any] = {}
    for key, value in props.items():
        parsed[key] = value
        if value[:1] in ("{", "["):
            try:
                parsed[key] = json.loads(value)
            except ValueError:
                pass
    return parsed
