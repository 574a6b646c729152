"""`zoo list` and `zoo --help` read metadata only: whole-process time against `import torch`."""

from __future__ import annotations

import sys
from pathlib import Path

from bench.common import Figure, print_table, process_seconds, python_seconds


def figures(repeats: int = 11) -> list[Figure]:
    """Measure the listing commands and `import torch` in one run."""
    zoo_cmd = [str(Path(sys.executable).with_name("zoo"))]  # the script this interpreter installed
    torch_s = python_seconds("import torch", repeats)
    rows = []
    for args in (["list"], ["--help"]):
        seconds = process_seconds(zoo_cmd + args, repeats)
        label = f"zoo {' '.join(args)}"
        rows.append(Figure(f"{label}: whole process", seconds, "s", "<= 0.25 s median", seconds <= 0.25))
        ratio = torch_s / seconds
        rows.append(Figure(f"{label}: speed-up vs import torch ({torch_s:.2f} s)", ratio, "x", ">= 8x", ratio >= 8))
    return rows


if __name__ == "__main__":
    print_table("registry listing (" + sys.version.split()[0] + ")", figures())
