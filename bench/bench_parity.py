"""The cost of the parity check at scale: seconds, peak memory, per probe row and per parameter.

Each check runs in a fresh process (``python -m bench.bench_parity CHILD SPEC``), so its peak resident
memory is its own. The 784-1024-1024-10 MLP is issue 21's yardstick: before the two tiers its check
took 24 s and 4.5 GB there (65 s and 4.3 GB on this 2-core machine, shared, with the same code).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Figure

GIB = 2**30
# (label, model name, keyword arguments, seconds target or None)
CHECKS = (
    ("784-1024-1024-10 gelu MLP", "mlp", {"in_features": 784, "out_features": 10, "hidden": [1024, 1024],
                                          "activation": "gelu"}, 24.0),
)


def figures() -> list[Figure]:
    """One set of figures per check in CHECKS."""
    found = []
    for label, name, kwargs, seconds in CHECKS:
        cost = _measure(name, kwargs)
        found += [
            Figure(f"parity check, {label}: whole check", cost["seconds"], "s",
                   f"<= {seconds:g} s" if seconds else "-", seconds is None or cost["seconds"] <= seconds),
            Figure(f"parity check, {label}: peak memory", cost["peak"] / GIB, "GiB", "<= 2 GiB", cost["peak"] <= 2 * GIB),
            Figure(f"parity check, {label}: per probe row", 1e6 * cost["seconds"] / cost["rows"], "us", "-", True),
            Figure(f"parity check, {label}: per probe element", 1e9 * cost["seconds"] / cost["elements"], "ns", "-", True),
            Figure(f"parity check, {label}: per row x parameter",
                   1e9 * cost["seconds"] / cost["rows"] / cost["parameters"], "ns", "-", True),
        ]
    return found


def _measure(name: str, kwargs: dict) -> dict:
    spec = json.dumps({"name": name, "kwargs": kwargs})
    result = subprocess.run([sys.executable, "-m", "bench.bench_parity", spec], capture_output=True, text=True,
                            check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def _child(spec: str) -> None:
    """Export the model, time its check_parity, print the figures as one JSON line."""
    import zoo
    from export import check_parity, to_onnx

    asked = json.loads(spec)
    model = zoo.create_model(asked["name"], seed=0, **asked["kwargs"])
    with tempfile.TemporaryDirectory(prefix="zoo-bench-") as directory:
        path = to_onnx(model, Path(directory) / "model.onnx")
        start = time.perf_counter()
        report = check_parity(model, path, strict=False, explain=False)
        seconds = time.perf_counter() - start
    print(json.dumps({
        "seconds": seconds, "rows": report.rows, "elements": report.rows * model.zoo_meta["input_shape"][0],
        "parameters": sum(p.numel() for p in model.parameters()), "ok": report.ok,
        "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }))


if __name__ == "__main__":
    _child(sys.argv[1])
