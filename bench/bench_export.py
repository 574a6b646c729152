"""Export benchmark: prints a table of ratios measured in one run (nothing is asserted).

    python -m bench.bench_export [--repeat N]

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
from bench.common import Figure, print_table
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


def figures(repeat: int = 5) -> list[Figure]:
    """Export and parity timings of the default MLP, measured in one run."""
    model = zoo.create_model("mlp", in_features=1, out_features=1, hidden=[64, 64], activation="relu", seed=0)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "mlp.onnx"

        def export_and_check() -> None:
            to_onnx(model, path)
            check_parity(model, path, strict=False)

        whole = best_of(repeat, export_and_check)
        parity = best_of(repeat, lambda: check_parity(model, path, strict=False))
        torchscript = best_of(repeat, lambda: to_onnx(model, path))
        dynamo = best_of(max(1, repeat // 2), lambda: to_onnx(model, path, exporter="dynamo"))
    speedup = dynamo / torchscript
    return [
        Figure("full parity check (bound pass + onnxruntime + torch), default MLP", parity, "s", "-", True),
        Figure("export + full parity check", whole, "s", f"< {TARGET_SECONDS:g} s", whole < TARGET_SECONDS),
        Figure("torchscript export alone", torchscript, "s", "-", True),
        Figure("dynamo export alone, same model", dynamo, "s", "-", True),
        Figure("torchscript export speed-up vs dynamo", speedup, "x", f">= {TARGET_SPEEDUP:g}x",
               speedup >= TARGET_SPEEDUP),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    print_table("export", figures(parser.parse_args().repeat))


if __name__ == "__main__":
    main()
