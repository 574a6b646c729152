"""Whole-zoo and scale-out speed, measured in one run: `zoo run` against its 60 s target, `zoo train`'s
default threads against its best thread count (target <= 1.2x), rows per second in this process,
a process pool and a 2-worker Dask LocalCluster, and a wide MLP trained by one process and by 2
gloo ranks under torchrun.

Usage: .venv/bin/python -m bench.bench_scale [--repeats 3] [--skip-cluster] [--skip-ddp]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

import zoo
from bench.common import Figure, print_table

ZOO = [sys.executable, "-m", "zoo"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
ROWS = "mlp-[a-g]*"  # a share of the zoo for the rows-per-second figures
WIDE = ["mlp", "--hidden", "512,512", "--dataset", "nonlinear:n=200000", "--recipe", "notes", "--epochs", "1",
        "--batch-size", "10000"]


def _run(argv: Sequence[str], env: dict[str, str] | None = None, *, ok: Sequence[int] = (0,)) -> tuple[float, str]:
    """Wall seconds of a whole process and its stdout; fails loudly when its exit status is not in ``ok``."""
    start = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(env or {})},
                            stdin=subprocess.DEVNULL, check=False)
    seconds = time.perf_counter() - start
    if result.returncode not in ok:
        raise SystemExit(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()[-500:]}")
    return seconds, result.stdout


def whole_zoo() -> list[Figure]:
    """`zoo run` with its defaults, how many rows pass, and where its time goes (report.json's per-row seconds)."""
    with tempfile.TemporaryDirectory() as out:
        seconds, _ = _run([*ZOO, "run", "-o", out, "--quiet"], ok=(0, 1))  # 1: a row failed, the report says which
        report = json.loads((Path(out) / "report.json").read_text())
    stages: dict[str, float] = {}
    for row in report["models"]:
        for stage, value in row.get("seconds", {}).items():
            if stage != "total":
                stages[stage] = stages.get(stage, 0.0) + value
    rows = len(report["models"])
    passed = sum(row["ok"] for row in report["models"])
    figures = [Figure(f"zoo run, whole zoo ({rows} rows, default jobs): whole process", seconds, "s", "<= 60 s",
                      seconds <= 60),
               Figure("zoo run: rows that pass", passed, f"of {rows}", "all", passed == rows)]
    figures += [Figure(f"zoo run: {stage}, summed over rows", value, "s", "-", True)
                for stage, value in sorted(stages.items())]
    return figures


def train_threads(repeats: int) -> list[Figure]:
    """zoo.train's default threads for the default mlp against each thread count this machine has."""
    data = zoo.datasets.create("nonlinear", seed=0)
    counts = sorted({1, os.cpu_count() or 1, torch.get_num_threads()})

    def seconds(threads: int | None) -> float:
        times = []
        for _ in range(repeats):
            model = zoo.create_model("mlp", seed=0)
            times.append(zoo.train(model, data, threads=threads, progress=False).seconds)
        return statistics.median(times)

    measured = {threads: seconds(threads) for threads in counts}
    default = seconds(None)
    best = min(measured, key=measured.__getitem__)
    ratio = default / measured[best]
    return [
        *(Figure(f"zoo train mlp (defaults), {n} thread{'s' * (n > 1)}", t, "s", "-", True)
          for n, t in measured.items()),
        Figure("zoo train mlp, default threads", default, "s", "-", True),
        Figure(f"zoo train mlp: default threads / best ({best})", ratio, "x", "<= 1.2x", ratio <= 1.2),
    ]


def rows_per_second() -> list[Figure]:
    """A share of the zoo's rows in this process, in a 2-process pool, and on a 2-worker LocalCluster."""
    ways = {"in this process (-j 1)": ["-j", "1"], "2 worker processes (-j 2)": ["-j", "2"],
            "Dask LocalCluster, 2 workers": ["-j", "2", "--cluster", "local"]}
    figures, rates = [], {}
    for label, flags in ways.items():
        with tempfile.TemporaryDirectory() as out:
            seconds, _ = _run([*ZOO, "run", "-o", out, "--quiet", "--only", ROWS, *flags])
            rows = len(json.loads((Path(out) / "report.json").read_text())["models"])
        rates[label] = rows / seconds
        figures.append(Figure(f"zoo run --only '{ROWS}' ({rows} rows), {label}", rates[label], "rows/s", "-", True))
    first = next(iter(rates.values()))
    figures += [Figure(f"rows/s, {label} / -j 1", rate / first, "x", "-", True)
                for label, rate in list(rates.items())[1:]]
    return figures


def data_parallel() -> list[Figure]:
    """A wide MLP (2 x 512 hidden, 200,000 rows, batches of 10,000): one process against 2 gloo ranks."""
    one, _ = _run([*ZOO, "train", *WIDE, "--json"])
    two, _ = _run([*TORCHRUN, "--nproc-per-node", "2", "-m", "zoo", "train", *WIDE, "--json"],
                  env={"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // 2))})
    return [
        Figure("wide mlp, 1 process: whole process", one, "s", "-", True),
        Figure("wide mlp, torchrun 2 gloo ranks: whole process", two, "s", "-", True),
        Figure("wide mlp: 1 process / 2 ranks", one / two, "x", "-", True),
    ]


def figures(repeats: int = 3, cluster: bool = True, ddp: bool = True) -> list[Figure]:
    """Every figure of this module."""
    found = [*whole_zoo(), *train_threads(repeats)]
    if cluster:
        found += rows_per_second()
    if ddp:
        found += data_parallel()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-cluster", action="store_true", help="Leave out the Dask LocalCluster figures.")
    parser.add_argument("--skip-ddp", action="store_true", help="Leave out the torchrun figures.")
    args = parser.parse_args()
    print_table("zoo scale-out benchmarks", figures(args.repeats, not args.skip_cluster, not args.skip_ddp))


if __name__ == "__main__":
    main()
