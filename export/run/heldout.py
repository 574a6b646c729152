"""A classifier row's held-out rows: torch's accuracy, the exported model's, and where the two disagree.

Torch scores the trained model on the CPU in eval mode, as it is exported; the exported model runs in
onnxruntime (``export.runtime.OnnxModel``, one thread) on the same rows, token ids as they are (the
runtime one-hot encodes them, as `zoo predict` does). A sequence classifier is scored per position,
and by whole sequences. The confusion matrix (rows: the true class, columns: torch's prediction) and
torch's predictions for the first SAMPLES rows are what the pictures draw.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from export.runtime import OnnxModel
from export.runtime.commands import CLASSIFIER_TASKS
from zoo.errors import ZooError

SAMPLES = 8  # held-out inputs drawn with their predicted labels
CHUNK = 1024  # rows per forward pass: a bounded batch whatever the held-out set's size


class AccuracyError(ZooError):
    """A row's trained model does not reach the held-out accuracy its recipe states."""


def scored(data: Any) -> bool:
    """Whether ``data`` is a classification set with held-out rows, whose rows are scored here."""
    test = getattr(data, "test", None)  # the dataset contract does not require held-out rows
    return data.task in CLASSIFIER_TASKS and test is not None and len(test.y) > 0


def predictions(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    """The class of the highest logit that ``run`` gives each row of ``x``, CHUNK rows at a time."""
    return np.concatenate([np.argmax(run(x[i : i + CHUNK]), axis=-1) for i in range(0, len(x), CHUNK)])


def score(model: torch.nn.Module, data: Any, *, required: float | None) -> tuple[dict[str, Any], np.ndarray]:
    """Torch's held-out scores, confusion matrix and sample predictions, and its predictions themselves."""
    model.eval()
    with torch.no_grad():
        predicted = predictions(lambda batch: model(torch.from_numpy(batch)).numpy(), data.test.x.cpu().numpy())
    truth = data.test.y.cpu().numpy()
    classes = max(int(data.params.get("classes") or 0), int(truth.max()) + 1, int(predicted.max()) + 1)
    pairs = truth.reshape(-1) * classes + predicted.reshape(-1)
    right = predicted == truth
    result: dict[str, Any] = {"train_rows": len(data.x), "rows": len(truth), "predictions": int(truth.size),
                              "accuracy": float(right.mean())}
    if right.ndim == 2:
        result["sequence_accuracy"] = float(right.all(axis=1).mean())
    result.update(required=required, samples=predicted[:SAMPLES].tolist(),
                  confusion=np.bincount(pairs, minlength=classes * classes).reshape(classes, classes).tolist())
    return result, predicted


def check(heldout: dict[str, Any]) -> None:
    """AccuracyError when the held-out accuracy is below the one the row must reach."""
    required = heldout["required"]
    if required is not None and heldout["accuracy"] < required:
        raise AccuracyError(f"held-out accuracy {heldout['accuracy']:.1%} is below the {required:.0%} this row "
                            "must reach: its recipe is too short for this model")


def score_onnx(path: Any, data: Any, torch_predicted: np.ndarray) -> dict[str, Any]:
    """The exported model's held-out accuracy, and how many of its predictions differ from torch's."""
    predicted = predictions(OnnxModel(path, threads=1).run, data.test.x.cpu().numpy())
    return {"onnx_accuracy": float(np.mean(predicted == data.test.y.cpu().numpy())),
            "differ": int(np.count_nonzero(predicted != torch_predicted))}
