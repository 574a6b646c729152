"""Deployment: `OnnxModel.run` against torch eager at batch 1, and `import export.runtime` against `import torch`."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from bench.common import Figure, median_seconds, print_table, python_seconds


def latency_figures(repeats: int = 21, number: int = 200) -> list[Figure]:
    """Per-call latency of the default MLP at batch 1, one thread each, measured in one run."""
    import numpy as np
    import torch

    import zoo
    from export import to_onnx
    from export.runtime import OnnxModel

    model = zoo.create_model("mlp", seed=0).eval()
    x = np.random.default_rng(0).standard_normal((1, 1)).astype(np.float32)
    tx = torch.from_numpy(x)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            runtime = OnnxModel(to_onnx(model, Path(tmp) / "mlp.onnx"), threads=1)
        with torch.inference_mode():
            torch_s = median_seconds(lambda: model(tx), repeats, number)
        onnx_s = median_seconds(lambda: runtime.run(x), repeats, number)
    finally:
        torch.set_num_threads(threads)
    ratio = torch_s / onnx_s
    return [
        Figure("torch eager mlp(batch 1), 1 thread", torch_s * 1e6, "us", "-", True),
        Figure("OnnxModel.run mlp(batch 1), 1 thread (public onnxruntime API)", onnx_s * 1e6, "us", "-", True),
        Figure("OnnxModel.run speed-up vs torch eager", ratio, "x", ">= 3x", ratio >= 3),
    ]


def import_figures(repeats: int = 7) -> list[Figure]:
    """Whole-process `python -c "import export.runtime"` against `python -c "import torch"`."""
    torch_s = python_seconds("import torch", repeats)
    runtime_s = python_seconds("import export.runtime", repeats)
    ratio = torch_s / runtime_s
    return [
        Figure("python -c 'import torch'", torch_s, "s", "-", True),
        Figure("python -c 'import export.runtime'", runtime_s, "s", "-", True),
        Figure("import export.runtime speed-up vs import torch", ratio, "x", ">= 4x", ratio >= 4),
    ]


def figures() -> list[Figure]:
    """Every runtime figure, measured in one run."""
    return latency_figures() + import_figures()


if __name__ == "__main__":
    print_table("torch-free runtime (" + sys.version.split()[0] + ")", figures())
