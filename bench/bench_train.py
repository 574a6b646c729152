"""Training speed, measured in one run: `zoo.train` against a minimal hand-written loop on the notes'
workload (linear_regression, batch 100, 500 steps; target ratio <= 1.2x), and how many steps and
seconds the default recipe needs to reach the least-squares criteria of issue 3.

Usage: .venv/bin/python bench/bench_train.py [--repeats 7] [--device cpu] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from torch import nn

import zoo

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


def notes_workload(repeats: int, device: str) -> None:
    data = zoo.datasets.create("linear", seed=0, device=device)
    steps = 5 * len(data) // 100
    times: dict[str, list[float]] = {"zoo.train": [], "hand loop": []}
    same = True
    for _ in range(repeats):  # interleaved, so drifts in machine load hit both alike
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
    print(f"notes workload: linear_regression, batch 100, {steps} steps, device {device}, median of {repeats}")
    print(f"  {'loop':<10} {'us/step':>9} {'min us/step':>12}")
    for name, values in times.items():
        print(f"  {name:<10} {per_step[name]:>9.1f} {min(values) / steps * 1e6:>12.1f}")
    print(f"  ratio zoo.train / hand loop: {per_step['zoo.train'] / per_step['hand loop']:.3f}x (target <= 1.2x)")
    print(f"  bit-identical parameters: {'yes' if same else 'NO'}")


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
    return model, result, len(calls) - 2  # the shape check and the final evaluation are not training


def default_to_ols(device: str) -> None:
    data = zoo.datasets.create("linear", seed=0, device=device)
    target = ols(data)
    print(f"\ndefault recipe until |w-w_ols|<0.01, |b-b_ols|<0.05, mse<=1.01*mse_ols (OLS w={target[0]:.5f} "
          f"b={target[1]:.5f} mse={target[2]:.5f}), device {device}")
    print(f"  {'layer':<14} {'steps':>5} {'gradient evals':>14} {'seconds':>8} {'w':>9} {'b':>9} {'mse':>9}")
    for layer in LAYERS:
        for steps in range(1, 11):
            model, result, evals = train_counting(layer, data, steps, device)
            if meets_ols(model, result, target):
                break
        status = "" if meets_ols(model, result, target) else "  (not reached in 10 steps)"
        print(f"  {layer:<14} {steps:>5} {evals:>14} {result.seconds:>8.3f} {model.weight.item():>9.5f} "
              f"{model.bias.item():>9.5f} {result.final_loss:>9.5f}{status}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warm = zoo.create_model("linear_regression", layer="einsum_linear", seed=0)
    zoo.train(warm, zoo.datasets.create("linear", seed=0, device=args.device), device=args.device, progress=False)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    notes_workload(args.repeats, args.device)
    default_to_ols(args.device)


if __name__ == "__main__":
    main()
