"""How often a two-rank `zoo train` under torchrun fails, with several jobs at once loading the cores.

The gloo abort at exit (zoo.distributed's docstring) shows only under load: 5 in 349 runs before
ranks ended through `leave`, 0 in 480 after, with 3 jobs at once on 2 cores.

Usage: .venv/bin/python -m bench.torchrun_exits [--runs 160] [--jobs 3]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

TRAIN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "zoo", "train", "linear_regression", "--json", "--device", "cpu"]


def one_run(folder: Path, index: int) -> str | None:
    """The first line of a failed run's stderr, or None when it passed."""
    result = subprocess.run([*TRAIN, "-o", str(folder / f"m{index}.pt")], capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, timeout=300, check=False,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    return None if result.returncode == 0 else (result.stderr.strip().splitlines() or ["(no stderr)"])[0]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=160, help="runs per job (default 160)")
    parser.add_argument("--jobs", type=int, default=3, help="jobs at once (default 3)")
    args = parser.parse_args(argv)
    total = args.runs * args.jobs
    with tempfile.TemporaryDirectory() as tmp, concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        failures = [line for line in pool.map(lambda i: one_run(Path(tmp), i), range(total)) if line]
    print(f"torchrun 2 gloo ranks, {args.jobs} jobs at once: {len(failures)} of {total} runs failed")
    for line in sorted(set(failures)):
        print(f"  {failures.count(line)} x {line}")


if __name__ == "__main__":
    main()
