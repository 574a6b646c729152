"""Checkpoints: one file with a model's weights and the names that rebuild it, written atomically.

The file is a `torch.save` of plain types and tensors, so it loads with `weights_only=True`:
{"format": "zoo.checkpoint", "version": 1, "config": model.zoo_config, "state_dict": {...},
"training": dataset, recipe, metrics, ... (or None), "versions": {"zoo": ..., "torch": ...}}.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import pickle
import zipfile
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from zoo.errors import CheckpointError, ZooError
from zoo.files import write_atomic

if TYPE_CHECKING:
    from zoo.training import TrainResult

__all__ = ["FORMAT", "VERSION", "load_checkpoint", "save_checkpoint"]

FORMAT = "zoo.checkpoint"
VERSION = 1
ONNX_FIRST_BYTE = b"\x08"  # an ONNX ModelProto opens with field 1 (ir_version), a varint


def save_checkpoint(
    path: str | os.PathLike[str], model: nn.Module, result: TrainResult | None = None
) -> pathlib.Path:
    """Write the model's weights, zoo_config, training summary (`result`'s, else model.zoo_training) and versions.

    The file appears whole or not at all (temporary file + rename). Raises CheckpointError for a
    model that zoo.create_model did not build (no zoo_config) or a file that cannot be written.
    """
    from zoo import __version__

    config = getattr(model, "zoo_config", None)
    if not isinstance(config, dict):
        raise CheckpointError(
            "only models built by zoo.create_model can be checkpointed: this one has no zoo_config to rebuild it from"
        )
    training = result.summary() if result is not None else getattr(model, "zoo_training", None)
    _check_json("zoo_config", config)
    _check_json("training summary", training)
    record = {
        "format": FORMAT,
        "version": VERSION,
        "config": config,
        "training": training,
        "versions": {"zoo": __version__, "torch": str(torch.__version__)},  # str: TorchVersion is no plain type
        "state_dict": {key: value.detach().cpu() for key, value in model.state_dict().items()},
    }
    return _write_atomic(record, pathlib.Path(path))


def load_checkpoint(path: str | os.PathLike[str]) -> nn.Module:
    """Rebuild the model saved at `path` (on CPU, in eval mode, zoo_training restored).

    Raises CheckpointError for a missing, truncated or foreign file, or one whose model cannot be
    rebuilt here (e.g. a plugin that is not installed).
    """
    import zoo

    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file; its messages advise trusting the file
        raise CheckpointError(f"{path} {_unreadable(path, exc)}") from exc
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a torch file but not a zoo checkpoint; write one with zoo.save_checkpoint or `zoo train -o`"
        )
    if record.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {record.get('version')!r}; this zoo reads {VERSION}")
    try:
        model = zoo.create_model(**record["config"])
        model.load_state_dict(record["state_dict"])
    except (ZooError, RuntimeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild its model {record.get('config')}: {_first_line(exc)}") from exc
    if record.get("training") is not None:
        model.zoo_training = record["training"]
    return model.eval()


def _check_json(label: str, value: Any) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"cannot checkpoint the model: its {label} is not plain JSON ({exc})") from exc


def _write_atomic(record: dict[str, Any], path: pathlib.Path) -> pathlib.Path:
    """torch.save to memory, then write the file atomically; nothing is left on failure."""
    buffer = io.BytesIO()
    torch.save(record, buffer)
    try:
        return write_atomic(path, buffer.getvalue())
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint {path}: {exc.strerror or exc}") from exc


def _unreadable(path: pathlib.Path, exc: Exception) -> str:
    """What `path` is, since torch.load failed on it: "is ..." in a few words."""
    if not zipfile.is_zipfile(path):
        with path.open("rb") as handle:
            head = handle.read(1)
        if path.suffix.lower() == ".onnx" or head == ONNX_FIRST_BYTE:
            return "is an ONNX model, not a checkpoint (run it with `zoo predict`; checkpoints come from `zoo train -o`)"
        return "is not a zoo checkpoint: truncated, or not written by zoo.save_checkpoint / `zoo train -o`"
    if isinstance(exc, pickle.UnpicklingError):
        return "is not a zoo checkpoint: it holds pickled Python objects, which zoo never loads"
    return "is not a zoo checkpoint: a damaged torch archive"


def _first_line(exc: BaseException) -> str:
    """The first line of an error message (load_state_dict's run over many)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines or [""])[0][:300]
