"""zoo's model families trained from their defaults, as `zoo train <family>` does (the model's and the
dataset's defaults, the classify recipe): held-out accuracy and seconds, against an MLP on the same
inputs; then each trained family exported and run in onnxruntime against torch eager, at batch 1 and
64 with one thread each, as a ratio.

Targets (issue 23): cnn >= 95% on shapes and at least 30 points above the MLP; transformer >= 95% per
position on sort.

Usage: .venv/bin/python -m bench.bench_classify [--threads N] [--only shapes|signals|sort]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

import zoo
from bench.common import Figure, median_seconds, print_table

# Each (label, builder) is measured on the dataset; the families come first, a flattened MLP last.
Builder = Callable[[], nn.Module]


def family(name: str) -> Builder:
    """The registered model ``name`` with its defaults, as `zoo train NAME` builds it."""
    return lambda: zoo.create_model(name, seed=0)


def flat_mlp(features: int, classes: int, hidden: list[int]) -> Builder:
    """zoo's mlp on the flattened input: it sees each pixel (sample) at its own position."""
    return lambda: nn.Sequential(nn.Flatten(), zoo.create_model("mlp", in_features=features, out_features=classes,
                                                                 hidden=hidden, seed=0))


RUNS: dict[str, list[tuple[str, Builder]]] = {
    "shapes": [("cnn", family("cnn")), ("resnet", family("resnet")), ("mlp 256-256", flat_mlp(32 * 32, 4, [256, 256]))],
    "signals": [("cnn1d", family("cnn1d")), ("mlp 100-100", flat_mlp(40, 10, [100, 100]))],
    "sort": [("transformer", family("transformer"))],
}
TARGETS = {("shapes", "cnn"): 95.0, ("sort", "transformer"): 95.0}  # held-out accuracy, %
BATCHES = (1, 64)


def measure(dataset: str, label: str, build: Builder, threads: int | None) -> tuple[list[Figure], nn.Module, object]:
    """Train one model on the dataset with zoo.train's defaults: held-out accuracy and seconds."""
    data = zoo.datasets.create(dataset, seed=0)
    model = build()
    start, cpu = time.perf_counter(), time.process_time()
    result = zoo.train(model, data, seed=0, device="cpu", threads=threads, progress=False)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    name = f"{dataset}, {label} ({result.recipe['name']} recipe, {result.recipe['epochs']} epochs, {result.threads} thr)"
    accuracy = result.heldout["accuracy"] * 100
    target = TARGETS.get((dataset, label))
    figures = [Figure(f"{name}: held-out accuracy", accuracy, "%", "-" if target is None else f">= {target:g}%",
                      target is None or accuracy >= target)]
    if "sequence_accuracy" in result.heldout:
        figures.append(Figure(f"{name}: held-out whole sequences", result.heldout["sequence_accuracy"] * 100, "%",
                              "-", True))
    figures.append(Figure(f"{name}: seconds", seconds, "s", "-", True))
    figures.append(Figure(f"{name}: CPU seconds (all threads)", cpu, "s", "-", True))  # what load does not inflate
    return figures, model, data


def inference_figures(label: str, model: nn.Module, data: object, repeats: int = 15) -> list[Figure]:
    """The exported model in onnxruntime against torch eager on held-out inputs, one thread each, per batch size."""
    from export import to_onnx
    from export.runtime import OnnxModel

    x = data.test.x[: max(BATCHES)]
    if not x.is_floating_point():  # token ids: both take the one-hot rows (the runtime would encode them per call)
        x = nn.functional.one_hot(x, model.zoo_meta["input_shape"][-1]).float()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            runtime = OnnxModel(to_onnx(model, Path(tmp) / "model.onnx"), threads=1)
        return [_speedup(label, model, runtime, x[:batch].contiguous(), repeats) for batch in BATCHES]
    finally:
        torch.set_num_threads(threads)


def _speedup(label: str, model: nn.Module, runtime: object, x: torch.Tensor, repeats: int) -> Figure:
    """Median seconds per call of torch eager and of OnnxModel.run on the batch ``x``, as a ratio."""
    array = np.ascontiguousarray(x.numpy())
    number = max(1, 200 // len(x))
    with torch.inference_mode():
        torch_s = median_seconds(lambda: model(x), repeats, number)
    onnx_s = median_seconds(lambda: runtime.run(array), repeats, number)
    return Figure(f"{label}, batch {len(x)}, 1 thread: onnxruntime speed-up vs torch eager "
                  f"({onnx_s * 1e6:.0f} us vs {torch_s * 1e6:.0f} us)", torch_s / onnx_s, "x", "-", True)


def figures(threads: int | None = None, only: str | None = None) -> list[Figure]:
    """Every classification figure, with the targets of issue 23 on shapes and sort."""
    rows: list[Figure] = []
    for dataset, runs in RUNS.items():
        if only and dataset != only:
            continue
        measured = [(label, *measure(dataset, label, build, threads)) for label, build in runs]
        for label, found, model, data in measured:
            rows += found
            if label in zoo.list_models():
                rows += inference_figures(label, model, data)
        if dataset == "shapes":
            gap = measured[0][1][0].value - measured[-1][1][0].value
            rows.append(Figure("shapes: cnn minus mlp, held-out", gap, "points", ">= 30", gap >= 30))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, help="torch CPU threads for training (default: zoo.train's choice)")
    parser.add_argument("--only", choices=sorted(RUNS), help="one dataset only")
    args = parser.parse_args()
    print_table(f"classification (torch {torch.__version__})", figures(args.threads, args.only))


if __name__ == "__main__":
    main()
