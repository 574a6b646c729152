"""Held-out accuracy and seconds of small models trained on the classification sets with `zoo.train`'s
defaults (the classify recipe, the datasets' default sizes): a CNN with global pooling against an MLP on
`shapes` (target: the CNN >= 95% and at least 30 points above the MLP), a Conv1d net against an MLP on
`signals`, and a small transformer encoder on `sort` (target: >= 95% per position).

The models are plain torch here, written out below, so the figures stand without the model families.

Usage: .venv/bin/python -m bench.bench_classify [--threads N] [--only shapes|signals|sort]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import nn

import zoo
from bench.common import Figure, print_table


def cnn(classes: int = 4, widths: tuple[int, ...] = (16, 32, 64)) -> nn.Module:
    """Conv-BN-ReLU blocks with 2x2 max pooling between them, global average pooling, a linear head."""
    layers: list[nn.Module] = []
    channels = 1
    for i, width in enumerate(widths):
        layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        layers += [nn.MaxPool2d(2)] if i < len(widths) - 1 else []
        channels = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes))


def mlp(features: int, classes: int, hidden: tuple[int, ...] = (256, 256)) -> nn.Module:
    """Flatten, then linear layers with ReLU: sees each pixel (sample) at its own position."""
    layers: list[nn.Module] = [nn.Flatten()]
    for width in hidden:
        layers += [nn.Linear(features, width), nn.ReLU()]
        features = width
    return nn.Sequential(*layers, nn.Linear(features, classes))


def cnn1d(classes: int = 10, width: int = 32, length: int = 40) -> nn.Module:
    """Three strided Conv1d layers with ReLU and a linear head over the flattened features (MNIST-1D's CNN)."""
    return nn.Sequential(
        nn.Conv1d(1, width, 5, stride=2, padding=2), nn.ReLU(),
        nn.Conv1d(width, width, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv1d(width, width, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(width * (length // 8), classes),
    )


class Sorter(nn.Module):
    """Token and learned position embeddings, two pre-norm encoder layers, a linear head: (N, L) -> (N, L, classes)."""

    def __init__(self, classes: int = 10, length: int = 8, width: int = 64, heads: int = 4, depth: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(classes, width)
        self.position = nn.Parameter(torch.randn(length, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, classes))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens) + self.position))


# dataset -> (model label, builder) in the order measured
RUNS: dict[str, list[tuple[str, Callable[[], nn.Module]]]] = {
    "shapes": [("cnn, global pooling", cnn), ("mlp 256-256", lambda: mlp(32 * 32, 4))],
    "signals": [("conv1d", cnn1d), ("mlp 100-100", lambda: mlp(40, 10, (100, 100)))],
    "sort": [("transformer, 2 layers", Sorter)],
}


def measure(dataset: str, label: str, build: Callable[[], nn.Module], threads: int | None) -> list[Figure]:
    """Train one model on the dataset with zoo.train's defaults: held-out accuracy and seconds."""
    data = zoo.datasets.create(dataset, seed=0)
    with zoo.seeded(0):
        model = build()
    start, cpu = time.perf_counter(), time.process_time()
    result = zoo.train(model, data, seed=0, device="cpu", threads=threads, progress=False)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    name = f"{dataset}, {label} ({result.recipe['name']} recipe, {result.recipe['epochs']} epochs, {result.threads} thr)"
    figures = [Figure(f"{name}: held-out accuracy", result.heldout["accuracy"] * 100, "%", "-", True)]
    if "sequence_accuracy" in result.heldout:
        figures.append(Figure(f"{name}: held-out whole sequences", result.heldout["sequence_accuracy"] * 100, "%",
                              "-", True))
    figures.append(Figure(f"{name}: seconds", seconds, "s", "-", True))
    figures.append(Figure(f"{name}: CPU seconds (all threads)", cpu, "s", "-", True))  # what load does not inflate
    return figures


def figures(threads: int | None = None, only: str | None = None) -> list[Figure]:
    """Every classification figure, with the targets of issue 23 on shapes and sort."""
    rows: list[Figure] = []
    for dataset, runs in RUNS.items():
        if only and dataset != only:
            continue
        measured = [measure(dataset, label, build, threads) for label, build in runs]
        accuracy = [run[0].value for run in measured]
        if dataset == "shapes":
            measured[0][0].target, measured[0][0].ok = ">= 95%", accuracy[0] >= 95
            gap = accuracy[0] - accuracy[1]
            measured[1].append(Figure("shapes: cnn minus mlp, held-out", gap, "points", ">= 30", gap >= 30))
        if dataset == "sort":
            measured[0][0].target, measured[0][0].ok = ">= 95%", accuracy[0] >= 95
        rows += [figure for run in measured for figure in run]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: zoo.train's choice)")
    parser.add_argument("--only", choices=sorted(RUNS), help="one dataset only")
    args = parser.parse_args()
    print_table(f"classification (torch {torch.__version__})", figures(args.threads, args.only))


if __name__ == "__main__":
    main()
