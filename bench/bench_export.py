"""Export benchmark: prints a table of ratios measured in one run (nothing is asserted).

    python bench/bench_export.py [--repeat N]

Targets: export + full parity check of the default MLP (in 1, out 1, hidden [64, 64], relu) under
1 s as a whole; the torchscript export at least 20x faster than the dynamo export of the same model.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import zoo
from export import check_parity, to_onnx

TARGET_SECONDS = 1.0
TARGET_SPEEDUP = 20.0


def best_of(repeat: int, action: Callable[[], object]) -> float:
    """The fastest of ``repeat`` wall-clock timings (after one warm-up call)."""
    action()
    timings = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        timings.append(time.perf_counter() - start)
    return min(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    model = zoo.create_model("mlp", in_features=1, out_features=1, hidden=[64, 64], activation="relu", seed=0)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "mlp.onnx"
        reports = []

        def export_and_check() -> None:
            to_onnx(model, path)
            reports.append(check_parity(model, path, strict=False))

        whole = best_of(args.repeat, export_and_check)
        torchscript = best_of(args.repeat, lambda: to_onnx(model, path))
        parity = best_of(args.repeat, lambda: check_parity(model, path, strict=False))
        dynamo = best_of(max(1, args.repeat // 2), lambda: to_onnx(model, path, exporter="dynamo", opset=18))
    rows = [
        ("torchscript export", torchscript, "", ""),
        ("full parity check", parity, "", ""),
        ("export + parity", whole, f"< {TARGET_SECONDS:g} s", f"{TARGET_SECONDS / whole:.1f}x under"),
        ("dynamo export", dynamo, f">= {TARGET_SPEEDUP:g}x torchscript", f"{dynamo / torchscript:.1f}x"),
    ]
    print(f"{'measurement':<22} {'seconds':>8}  {'target':<24} ratio")
    for name, seconds, target, ratio in rows:
        print(f"{name:<22} {seconds:8.3f}  {target:<24} {ratio}")
    verdict = "met" if whole < TARGET_SECONDS and dynamo / torchscript >= TARGET_SPEEDUP else "NOT met"
    print(f"targets {verdict}; parity of the default MLP: {reports[-1].summary()}")


if __name__ == "__main__":
    main()
