"""`python -m bench` (`make bench`): every figure the README quotes, measured in one run, as one table."""

from __future__ import annotations

import platform
import sys

import torch

from bench import (
    bench_classify,
    bench_export,
    bench_parity,
    bench_registry,
    bench_runtime,
    bench_scale,
    bench_train,
)
from bench.common import print_table


def main() -> None:
    """Run every benchmark and print the figures table."""
    figures = [
        *bench_registry.figures(),
        *bench_train.figures(),
        *bench_classify.figures(),
        *bench_export.figures(),
        *bench_parity.figures(),
        *bench_runtime.figures(),
        *bench_scale.figures(),
    ]
    title = f"zoo benchmarks (python {sys.version.split()[0]}, torch {torch.__version__}, {platform.machine()})"
    print_table(title, figures)
    missed = [f.name for f in figures if not f.ok]
    print(f"\n{len(figures) - len(missed)}/{len(figures)} figures meet their targets")
    if missed:
        print("missed: " + "; ".join(missed))


if __name__ == "__main__":
    main()
