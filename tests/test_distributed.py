"""Data-parallel training under torchrun: 2 gloo processes on CPU give the single-process result."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, run_zoo
from torch import nn

import export
import plugins
import zoo
from zoo.options import train_from_options


def train_json(tmp_path: Path, name: str, *launcher: str, device: str = "cpu", model: str = "linear_regression",
               options: tuple[str, ...] = ()) -> dict:
    result = subprocess.run(
        [sys.executable, *launcher, "-m", "zoo", "train", model, *options, "--json", "--device", device,
         "-o", str(tmp_path / name)],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-8000:]  # the failing rank's own message comes before the launcher's traceback
    return json.loads(result.stdout)


TWO_GLOO_RANKS = ("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2")


def one_process(model: str) -> tuple[nn.Module, zoo.TrainResult]:
    """What `OMP_NUM_THREADS=1 zoo train MODEL --device cpu` trains, here in this process."""
    return train_from_options(model, device="cpu", threads=1, progress=False)


def test_two_gloo_ranks_train_the_linear_regression_one_process_trains(tmp_path: Path) -> None:
    """A convex problem with one minimum: the same loss to 1e-6 and the same weights to 1e-4 (README)."""
    one, result = one_process("linear_regression")
    two = train_json(tmp_path, "two.pt", *TWO_GLOO_RANKS)
    assert (result.world_size, two["world_size"], two["backend"]) == (1, 2, "gloo")
    assert two["final_loss"] == pytest.approx(result.final_loss, rel=1e-6)
    trained = zoo.load_checkpoint(tmp_path / "two.pt")
    for key, value in one.state_dict().items():  # up to float rounding of the sharded sums (L-BFGS amplifies it)
        torch.testing.assert_close(trained.state_dict()[key], value, rtol=1e-4, atol=1e-3)
    assert trained.zoo_training["world_size"] == 2


def test_two_gloo_ranks_train_the_default_mlp_as_well_not_to_the_same_weights(tmp_path: Path) -> None:
    """L-BFGS amplifies the rounding of the split gradient sums: other weights, a final loss within 2% (README)."""
    _, result = one_process("mlp")
    two = train_json(tmp_path, "mlp.pt", *TWO_GLOO_RANKS, model="mlp")
    assert (two["world_size"], two["recipe"], two["dataset"]) == (2, result.recipe, result.dataset)
    assert two["final_loss"] == pytest.approx(result.final_loss, rel=0.02)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs: NCCL runs one rank per GPU")
def test_two_nccl_ranks_on_two_gpus_train_what_one_gpu_trains(tmp_path: Path) -> None:
    one = train_json(tmp_path, "one.pt", device="cuda")
    two = train_json(tmp_path, "two.pt", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                     device="cuda")
    assert (two["world_size"], two["backend"], two["device"][:4]) == (2, "nccl", "cuda")
    assert two["final_loss"] == pytest.approx(one["final_loss"], rel=1e-5)


# A throwaway plugin: an activation that kills rank 1 mid-training, and a dataset of two rows.
FAILING_PARTS = """
import dataclasses, os
import torch
from torch import nn


class Dying(nn.Module):
    '''ReLU, except that rank 1 of a torchrun job dies (exit 7) on its third forward pass.'''

    calls = 0

    def forward(self, x):
        Dying.calls += 1
        if os.environ.get("RANK") == "1" and Dying.calls == 3:
            os._exit(7)
        return torch.relu(x)


@dataclasses.dataclass(frozen=True)
class Rows:
    name: str
    x: torch.Tensor
    y: torch.Tensor
    task: str
    params: dict


def two_rows(seed=0, device="cpu"):
    '''Two rows of y = x.'''
    x = torch.tensor([[0.0], [1.0]], device=device)
    return Rows("two_rows", x, x.clone(), "regression", {"seed": seed})
"""
FRAME = re.compile(r'^\s*File "([^"]+)", line \d+', re.MULTILINE)
# Our packages' real directories: a checkout (or a venv inside it) may itself sit in a folder named zoo.
OURS = tuple(Path(package.__file__).resolve().parent for package in (zoo, plugins, export))


def our_frames(stderr: str) -> list[str]:
    """The files of the traceback frames in ``stderr`` that are ours (torchrun's own report may have a traceback)."""
    return [file for file in FRAME.findall(stderr) if any(Path(file).resolve().is_relative_to(d) for d in OURS)]


@pytest.fixture
def failing_parts(third_party) -> None:
    third_party("zoo-failing", {"zoo.activations": {"dying": "failing_parts:Dying"},
                                "zoo.datasets": {"two_rows": "failing_parts:two_rows"}},
                {"failing_parts.py": FAILING_PARTS})


def torchrun_zoo(tmp_path: Path, ranks: int, *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """`torchrun --standalone --nproc-per-node RANKS -m zoo train ARGS -o tmp/out/m.pt` and its ranks' error lines."""
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
         "-m", "zoo", "train", *args, "-o", str(tmp_path / "out" / "m.pt")],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1", "ZOO_DIST_TIMEOUT": "30"},
    )
    assert not our_frames(result.stderr), result.stderr[-3000:]
    assert not (tmp_path / "out").exists(), list((tmp_path / "out").iterdir())
    return result, [line for line in result.stderr.splitlines() if line.startswith("zoo: error:")]


def test_a_rank_that_dies_ends_the_other_with_one_line_and_no_checkpoint(failing_parts, tmp_path: Path) -> None:
    result, errors = torchrun_zoo(tmp_path, 2, "mlp", "--activation", "dying", "--hidden", "4")
    assert result.returncode != 0
    assert len(errors) == 1, result.stderr[-3000:]  # rank 1 died without a word; rank 0 says what happened
    assert errors[0].startswith("zoo: error: rank 0 of 2 (gloo)"), errors
    assert "another rank" in errors[0], errors  # it died (a collective failed) or failed (torchrun stopped us)


def test_more_ranks_than_rows_is_refused_on_every_rank(failing_parts, tmp_path: Path) -> None:
    result, errors = torchrun_zoo(tmp_path, 3, "linear_regression", "--dataset", "two_rows")
    assert result.returncode != 0
    refused = [line for line in errors if "cannot share 2 rows among 3 processes" in line]
    stopped = [line for line in errors if "stopped by its launcher" in line]
    assert refused and len(refused) + len(stopped) == len(errors) == 3, result.stderr[-3000:]


def test_an_unreachable_rendezvous_is_one_line_within_the_timeout(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "ZOO_DIST_TIMEOUT": "2"}
    result = run_zoo("train", "linear_regression", "-o", str(tmp_path / "out" / "m.pt"), env=env, timeout=120)
    assert_one_line_error(result, "rank 1 of 2 could not reach the rendezvous", f"127.0.0.1:{port}", "within 2 s",
                          "ZOO_DIST_TIMEOUT")
    assert not (tmp_path / "out").exists()


# A throwaway plugin whose import registers an exit handler: it runs only if the interpreter finalizes.
FINALIZING_PARTS = """
import atexit, os
import torch
from torch import nn


def _mark():
    with open(os.environ["ZOO_TEST_FINALIZED"], "a") as marks:
        marks.write(os.environ.get("RANK", "alone") + "\\n")


atexit.register(_mark)


class Marking(nn.Module):
    '''ReLU, from a module that notes when its process finalizes.'''

    def forward(self, x):
        return torch.relu(x)
"""


MARKING = ("--activation", "marking", "--hidden", "4")


@pytest.fixture
def finalizing_parts(third_party, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The marking activation, and the file its processes note their finalization in."""
    third_party("zoo-finalizing", {"zoo.activations": {"marking": "finalizing_parts:Marking"}},
                {"finalizing_parts.py": FINALIZING_PARTS})
    marks = tmp_path / "finalized.txt"
    monkeypatch.setenv("ZOO_TEST_FINALIZED", str(marks))
    return marks


def test_ranks_end_without_the_finalization_where_gloo_workers_abort(finalizing_parts: Path, tmp_path: Path) -> None:
    """torch 2.13's DDP leaves gloo workers that may free a backward's all-reduce, needing the GIL, as the
    interpreter finalizes (SIGABRT); each rank flushes and ends before that (zoo.distributed.leave)."""
    two = train_json(tmp_path, "two.pt", *TWO_GLOO_RANKS, model="mlp", options=MARKING)
    assert (two["world_size"], two["model"]["name"]) == (2, "mlp")  # rank 0's whole report came through the pipe
    assert not finalizing_parts.exists(), finalizing_parts.read_text()


def test_one_process_still_finalizes(finalizing_parts: Path, tmp_path: Path) -> None:
    one = train_json(tmp_path, "one.pt", model="mlp", options=MARKING)
    assert one["world_size"] == 1
    assert finalizing_parts.read_text() == "alone\n"
