"""Shared fixtures: throwaway distributions with real entry points on sys.path."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import zoo

ROOT = Path(__file__).resolve().parents[1]


def write_distribution(
    root: Path,
    name: str,
    entry_points: dict[str, dict[str, str]],
    modules: dict[str, str] | None = None,
    version: str = "1.0",
) -> Path:
    """Write `name-version.dist-info` (METADATA + entry_points.txt) and modules under root."""
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    sections = [
        f"[{group}]\n" + "".join(f"{ep} = {target}\n" for ep, target in eps.items())
        for group, eps in entry_points.items()
    ]
    (info / "entry_points.txt").write_text("\n".join(sections))
    for filename, source in (modules or {}).items():
        (root / filename).write_text(textwrap.dedent(source))
    return root


def builtin_names(registry: zoo.registry.Registry) -> list[str]:
    """The names this checkout's own plugins register (a venv may hold others, e.g. the README's example plugin)."""
    return [name for name, sources in registry.sources() if sources[0].target.startswith("plugins.")]


@pytest.fixture
def third_party(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """Install throwaway distributions for one test: put them on sys.path and reset the registries."""
    counter = iter(range(1000))

    def install(name: str, entry_points: dict[str, dict[str, str]], modules: dict[str, str] | None = None,
                version: str = "1.0") -> Path:
        root = tmp_path / f"site{next(counter)}"
        write_distribution(root, name, entry_points, modules, version)
        monkeypatch.syspath_prepend(str(root))
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
        importlib.invalidate_caches()
        zoo.cache_clear()
        return root

    yield install
    zoo.cache_clear()


def umask() -> int:
    """This process's file-mode creation mask (reading it means setting it: restored at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def run_zoo(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the installed `zoo` command in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "zoo", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """A CLI failure: non-zero exit, one line on stderr mentioning each fragment, no traceback."""
    assert result.returncode != 0, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def reseal(bundle: Path) -> Path:
    """List a bundle's files anew in its manifest, after a test changed them on purpose (to stand for another model)."""
    from export.runtime.integrity import file_table

    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"] = file_table(bundle)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """A one-line CLI error's message, without the command's name (zoo, zoo-onnx-runtime) and its usage hint."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return re.sub(r"^(zoo|zoo-onnx-runtime): error: | \(see '.*--help'\)$", "", lines[0])


@pytest.fixture(scope="session")
def mlp3_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle of an untrained 3-feature, 2-output MLP (tanh), written once per session."""
    from export import write_bundle

    model = zoo.create_model("mlp", in_features=3, out_features=2, hidden=[8], activation="tanh", seed=0)
    return write_bundle(model, tmp_path_factory.mktemp("bundles") / "mlp3")


class OverflowingReLU(nn.Module):
    """ReLU with a float32 kernel defect made to order: a torch defect that is the same on every CPU.

    In float32 eager it computes relu(x * 2**100) / 2**100: exact below 2**28 (scaling by a power of
    two is exact) and +inf from there on, where ReLU is finite. Traced for export, and in float64 (where the
    bound is computed), it is ReLU: the export is right and torch eager is not, as with torch's own
    GELU above 1.7e38 on AVX-512 CPUs, but without depending on the CPU.
    """

    SCALE = 2.0**100

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and not torch.onnx.is_in_onnx_export():
            return torch.relu(x * self.SCALE) / self.SCALE
        return torch.relu(x)


@pytest.fixture
def overflowing_relu() -> Iterator[str]:
    """OverflowingReLU registered in this process for one test, as the activation this returns."""
    name = "overflowing_relu"
    zoo.activations.register(name)(OverflowingReLU)
    yield name
    zoo.activations.unregister(name)
