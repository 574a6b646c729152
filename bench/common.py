"""Shared benchmark helpers: process timing, medians, and the figures table."""

from __future__ import annotations

import dataclasses
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence


@dataclasses.dataclass
class Figure:
    """One benchmark figure: what was measured, its value, and the target it is held to."""

    name: str
    value: float
    unit: str
    target: str
    ok: bool

    def row(self) -> list[str]:
        """The figure as table cells."""
        shown = f"{self.value:.3g} {self.unit}".strip()
        return [self.name, shown, self.target, "ok" if self.ok else "MISSED"]


def process_seconds(argv: Sequence[str], repeats: int = 7) -> float:
    """Median wall time of running a whole process, start to exit."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def python_seconds(code: str, repeats: int = 7) -> float:
    """Median wall time of `python -c CODE` in this interpreter."""
    return process_seconds([sys.executable, "-c", code], repeats)


def median_seconds(fn: Callable[[], object], repeats: int = 7, number: int = 1) -> float:
    """Median wall time of `number` calls of fn, per call."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - start) / number)
    return statistics.median(times)


def print_table(title: str, figures: Sequence[Figure]) -> None:
    """Print figures as an aligned table."""
    rows = [["figure", "measured", "target", ""]] + [f.row() for f in figures]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    print(f"\n{title}")
    for r in rows:
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
