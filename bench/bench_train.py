"""Training speed, measured in one run: `zoo.train` against a minimal hand-written loop on the notes'
workload (linear_regression, batch 100, 500 steps; target ratio <= 1.2x), and how many steps and
seconds the default recipe needs to reach the least-squares criteria of issue 3.

Usage: .venv/bin/python -m bench.bench_train [--repeats 7] [--device cpu] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from torch import nn

import zoo
from bench.common import Figure, print_table

LAYERS = ("einsum_linear", "param_linear", "linear")


def hand_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """The notes' arithmetic, written the shortest way: Adam(0.1, wd 0.1), batches of 100 in order, 5 epochs."""
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1, weight_decay=0.1)
    loss_fn = nn.MSELoss()
    for _ in range(5):
        for start in range(0, len(x), 100):
            optimizer.zero_grad()
            loss = loss_fn(model(x[start : start + 100]), y[start : start + 100])
            loss.backward()
            optimizer.step()
    return loss.item()


def notes_workload(repeats: int, device: str) -> list[Figure]:
    """zoo.train against the hand loop, interleaved so that drifts in machine load hit both alike."""
    data = zoo.datasets.create("linear", seed=0, device=device)
    steps = 5 * len(data) // 100
    times: dict[str, list[float]] = {"zoo.train": [], "hand loop": []}
    same = True
    for _ in range(repeats):
        ours = zoo.create_model("linear_regression", seed=0).to(device)
        start = time.perf_counter()
        zoo.train(ours, data, recipe="notes", device=device, progress=False)
        times["zoo.train"].append(time.perf_counter() - start)
        theirs = zoo.create_model("linear_regression", seed=0).to(device)
        start = time.perf_counter()
        hand_loop(theirs, data.x, data.y)
        times["hand loop"].append(time.perf_counter() - start)
        same &= all(torch.equal(a, b) for a, b in zip(ours.parameters(), theirs.parameters()))
    per_step = {name: statistics.median(values) / steps * 1e6 for name, values in times.items()}
    ratio = per_step["zoo.train"] / per_step["hand loop"]
    label = f"notes workload ({steps} steps of 100, {device})"
    return [
        Figure(f"{label}: zoo.train per step", per_step["zoo.train"], "us", "-", True),
        Figure(f"{label}: hand loop per step", per_step["hand loop"], "us", "-", True),
        Figure(f"{label}: zoo.train / hand loop", ratio, "x", "<= 1.2x", ratio <= 1.2),
        Figure(f"{label}: same parameters as the hand loop", float(same), "", "bit-identical", same),
    ]


def ols(data: Any) -> tuple[float, float, float]:
    design = torch.cat([data.x, torch.ones_like(data.x)], dim=1).double()
    solution = torch.linalg.lstsq(design, data.y.double()).solution
    mse = ((design @ solution - data.y.double()) ** 2).mean().item()
    return solution[0, 0].item(), solution[1, 0].item(), mse


def meets_ols(model: nn.Module, result: zoo.TrainResult, target: tuple[float, float, float]) -> bool:
    w_ols, b_ols, mse_ols = target
    w, b = model.weight.item(), model.bias.item()
    return abs(w - w_ols) < 0.01 and abs(b - b_ols) < 0.05 and result.final_loss <= 1.01 * mse_ols


def train_counting(layer: str, data: Any, steps: int, device: str) -> tuple[nn.Module, zoo.TrainResult, int]:
    """Train with the default recipe for `steps` steps, counting the full-data gradient evaluations."""
    model = zoo.create_model("linear_regression", layer=layer, seed=0)
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    result = zoo.train(model, data, epochs=steps, device=device, progress=False)
    return model, result, len(calls) - 1 - len(result.history)  # the shape check and each epoch's evaluation


def default_to_ols(device: str) -> list[Figure]:
    """Steps and seconds the default recipe needs to meet issue 3's least-squares criteria."""
    data = zoo.datasets.create("linear", seed=0, device=device)
    target = ols(data)
    rows = []
    for layer in LAYERS:
        for steps in range(1, 11):
            model, result, evals = train_counting(layer, data, steps, device)
            if meets_ols(model, result, target):
                break
        met = meets_ols(model, result, target)
        label = f"default recipe to OLS, {layer}"
        rows.append(Figure(f"{label}: steps ({evals} gradient evaluations)", steps, "", "reach OLS", met))
        rows.append(Figure(f"{label}: seconds", result.seconds, "s", "-", met))
    return rows


def figures(repeats: int = 7, device: str = "cpu") -> list[Figure]:
    """Every training figure, measured in one run."""
    warm = zoo.create_model("linear_regression", layer="einsum_linear", seed=0)
    zoo.train(warm, zoo.datasets.create("linear", seed=0, device=device), device=device, progress=False)
    return notes_workload(repeats, device) + default_to_ols(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print_table(f"training (torch {torch.__version__}, {torch.get_num_threads()} threads)",
                figures(args.repeats, args.device))


if __name__ == "__main__":
    main()
