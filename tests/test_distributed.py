"""Data-parallel training under torchrun: 2 gloo processes on CPU give the single-process result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import zoo


def train_json(tmp_path: Path, name: str, *launcher: str) -> dict:
    result = subprocess.run(
        [sys.executable, *launcher, "-m", "zoo", "train", "linear_regression", "--json", "-o", str(tmp_path / name)],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def test_two_gloo_ranks_train_what_one_process_trains(tmp_path: Path) -> None:
    one = train_json(tmp_path, "one.pt")
    two = train_json(tmp_path, "two.pt", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2")
    assert (one["world_size"], two["world_size"], two["backend"]) == (1, 2, "gloo")
    assert two["final_loss"] == pytest.approx(one["final_loss"], rel=1e-6)
    a = zoo.load_checkpoint(tmp_path / "one.pt").state_dict()
    b = zoo.load_checkpoint(tmp_path / "two.pt").state_dict()
    for key in a:  # the same minimum, up to float rounding of the sharded sums (L-BFGS amplifies it)
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-3)
    assert zoo.load_checkpoint(tmp_path / "two.pt").zoo_training["world_size"] == 2
