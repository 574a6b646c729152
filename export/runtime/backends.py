"""The ONNX runtimes ``zoo verify --runtime`` can replay a bundle in: onnxruntime, OpenVINO, tract.

Each is loaded from the model file and called with one input array, returning every output in the
model's order. OpenVINO and tract are optional extras (``pip install 'zoo-onnx[openvino]'`` /
``'zoo-onnx[tract]'``, or ``zoo-onnx-runtime[...]``); asking for one that is not installed is a
``RuntimeMissingError`` saying so.
"""

from __future__ import annotations

import importlib.util
import pathlib
from collections.abc import Callable

import numpy as np

RUNTIMES = ("onnxruntime", "openvino", "tract")
Runner = Callable[[np.ndarray], list[np.ndarray]]
_PACKAGE = {"onnxruntime": "onnxruntime", "openvino": "openvino", "tract": "tract"}
# The distribution whose extras install the others: this directory ships in zoo-onnx as export.runtime
# and alone, torch-free, in zoo-onnx-runtime as zoo_onnx_runtime.
DISTRIBUTION = "zoo-onnx-runtime" if __package__ == "zoo_onnx_runtime" else "zoo-onnx"


class RuntimeMissingError(ValueError):
    """The runtime asked for is not installed; the message says how to install it."""


class RuntimeLoadError(ValueError):
    """The runtime refused the model (an op or a dtype it does not support)."""


def load_runner(runtime: str, path: pathlib.Path) -> Runner:
    """A function running the model at ``path`` in ``runtime`` (one of RUNTIMES)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
    if importlib.util.find_spec(_PACKAGE[runtime]) is None:
        raise RuntimeMissingError(f"runtime {runtime!r} is not installed: pip install '{DISTRIBUTION}[{runtime}]'")
    try:
        return {"onnxruntime": _onnxruntime, "openvino": _openvino, "tract": _tract}[runtime](path)
    except (RuntimeMissingError, ValueError):
        raise
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RuntimeLoadError(f"{runtime} cannot load {path}: {first}") from error


def _onnxruntime(path: pathlib.Path) -> Runner:
    from .model import OnnxModel

    model = OnnxModel(path)
    return lambda x: list(model.run_all(x).values())


def _openvino(path: pathlib.Path) -> Runner:
    import openvino

    # f32 explicitly: on CPUs with bf16 or AMX units OpenVINO otherwise infers in bf16 by default.
    compiled = openvino.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    outputs = list(compiled.outputs)

    def run(x: np.ndarray) -> list[np.ndarray]:
        result = compiled(x)
        return [np.asarray(result[output]) for output in outputs]

    return run


def _tract(path: pathlib.Path) -> Runner:
    import tract

    # tract >= 0.21: load() gives an InferenceModel, into_model() types and optimises it; the
    # symbolic batch axis stays symbolic, so one runnable serves every batch size.
    model = tract.onnx().load(str(path)).into_model().into_runnable()

    def run(x: np.ndarray) -> list[np.ndarray]:
        return [np.asarray(value.to_numpy()) for value in model.run([np.ascontiguousarray(x)])]

    return run
