"""Data-parallel training under torchrun: one process per rank, DistributedDataParallel, same numbers.

`zoo.train` joins a process group when it runs in a process that torchrun (or any launcher that
sets the ``env://`` variables RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) started with WORLD_SIZE
above 1: gloo on CPU, NCCL on CUDA (one GPU per local rank). Every rank draws the same seeded
dataset and keeps its contiguous share of each global batch, so the global batch is one process's.

The loss of a batch is made the single-process mean: each rank sums its elements' losses and
divides by the element count of the whole global batch; DDP's gradient all-reduce averages over
ranks, so each rank back-propagates that share times the world size, and the loss value every rank
hands its optimiser is the all-reduced sum. L-BFGS's line search therefore sees the same global
loss and gradient on every rank, and the ranks stay in step. The only difference from one process
is the order of summation (float rounding).

Collective failures (a rank that died, an unreachable rendezvous, a launcher's SIGTERM after
another rank failed) become one DistributedError line. `ZOO_DIST_TIMEOUT` (seconds, default 120)
bounds the rendezvous and every collective.

A torch 2.13 bug makes a rank's normal end unsafe: DistributedDataParallel keeps its gloo process
group (and the group's worker threads) alive after destroy_process_group, and a worker that frees
the state of a gradient all-reduce issued inside backward needs the GIL for a saved Python object.
When that happens while the interpreter finalizes, the process aborts ("terminate called without
an active exception", SIGABRT): 5 in 349 two-rank `zoo train` runs on a loaded 2-core machine.
`zoo train` ranks therefore end through `leave`: flush, then os._exit, with no finalization to
race (pytorch#179291 tried to fix it inside torch and was abandoned). A script of your own that
calls `zoo.train` under torchrun can end the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import re
import signal
import sys
from collections.abc import Iterator
from typing import Any, NoReturn

import torch
from torch import nn

from zoo.errors import BadArgumentsError, DistributedError

__all__ = ["Group", "is_main", "join", "joined", "launched", "leave", "timeout"]

TIMEOUT_VARIABLE = "ZOO_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 120.0
GLOO_ERROR = "/gloo/"  # gloo's failures are plain RuntimeErrors that name its source file: [.../gloo/transport/...]
_joined = False  # whether this process has ever joined a process group (see `leave`)


def launched() -> bool:
    """Whether this process is one rank of several (WORLD_SIZE > 1, as torchrun sets it)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError as exc:
        raise DistributedError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from exc


def is_main() -> bool:
    """True on rank 0 and in a single process: the one that writes files and prints."""
    return not launched() or os.environ.get("RANK", "0") == "0"


def timeout() -> float:
    """Seconds allowed for the rendezvous and for each collective (ZOO_DIST_TIMEOUT, default 120)."""
    value = os.environ.get(TIMEOUT_VARIABLE, str(DEFAULT_TIMEOUT))
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise DistributedError(f"{TIMEOUT_VARIABLE}={value!r} must be a positive number of seconds")
    return seconds


@dataclasses.dataclass(frozen=True)
class Group:
    """This process's place in the process group, and the device it trains on."""

    rank: int
    world_size: int
    backend: str
    device: torch.device

    def describe(self) -> str:
        """`rank 1 of 2 (gloo)`, the prefix of every error this group raises."""
        return f"rank {self.rank} of {self.world_size} ({self.backend})"

    def check_rows(self, rows: int) -> None:
        """Every rank needs at least one row of the dataset (raised alike on every rank, before any collective)."""
        if rows < self.world_size:
            raise BadArgumentsError(
                f"cannot share {rows} rows among {self.world_size} processes: start at most {rows} "
                "(torchrun --nproc-per-node) or use a larger dataset"
            )

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model inside DistributedDataParallel (parameters broadcast from rank 0, gradients averaged)."""
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        with self.guard("starting DistributedDataParallel"):
            return DistributedDataParallel(model, device_ids=ids)

    def batch_loss(self, wrapped: nn.Module, criterion: nn.Module) -> Any:
        """A `(xb, yb) -> (loss to back-propagate, global mean loss)` for a global batch: this rank's share."""
        summed = type(criterion)(reduction="sum")

        def loss(xb: torch.Tensor, yb: torch.Tensor, same_shape: Any) -> tuple[torch.Tensor, torch.Tensor]:
            begin, end = _share(len(xb), self.rank, self.world_size)
            xs, ys = xb[begin:end], yb[begin:end]
            share = summed(same_shape(wrapped(xs), ys), ys) / yb.numel()
            value = share.detach().clone()
            torch.distributed.all_reduce(value)  # the sum of the shares: the full batch's mean loss
            return share * self.world_size, value  # DDP divides the summed gradients by world_size

        return loss

    @contextlib.contextmanager
    def guard(self, doing: str) -> Iterator[None]:
        """Turn a collective's failure (a DistError, or gloo's RuntimeError) into one DistributedError line."""
        try:
            yield
        except RuntimeError as exc:
            if not isinstance(exc, torch.distributed.DistError) and GLOO_ERROR not in str(exc):
                raise
            raise DistributedError(
                f"{self.describe()} failed {doing}: another rank died or cannot be reached "
                f"({_first_sentence(exc)})"
            ) from exc


def _share(rows: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows [begin, end) of a batch that `rank` takes: contiguous, sizes differing by at most one (as tensor_split)."""
    base, extra = divmod(rows, world_size)
    begin = rank * base + min(rank, extra)
    return begin, begin + base + (rank < extra)


@contextlib.contextmanager
def join(device: torch.device) -> Iterator[Group]:
    """Join (or reuse) the process group for training on `device`; leave it when this call created it.

    CUDA ranks take the GPU of their LOCAL_RANK. Raises DistributedError when the rendezvous cannot
    be reached within the timeout, and (while inside) when the launcher stops this rank.
    """
    dist = torch.distributed
    if not dist.is_available():
        raise DistributedError(f"torch {torch.__version__} was built without torch.distributed")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    created = not dist.is_initialized()
    if created:
        _init(device)
    group = Group(dist.get_rank(), dist.get_world_size(), str(dist.get_backend()), device)
    try:
        with _stopped_by_launcher(group):
            yield group
    finally:
        if created:
            dist.destroy_process_group()


def joined() -> bool:
    """Whether this process has joined a process group, so that its worker threads may outlive it."""
    return _joined


def leave(code: int) -> NoReturn:
    """End this process with `code` after flushing, skipping the interpreter's finalization (module doc)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe has nothing left to flush
            stream.flush()
    os._exit(code)


def _init(device: torch.device) -> None:
    global _joined
    backend = "nccl" if device.type == "cuda" else "gloo"
    seconds = timeout()
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    rank = f"rank {os.environ.get('RANK', '?')} of {os.environ.get('WORLD_SIZE', '?')}"
    try:
        torch.distributed.init_process_group(backend, timeout=datetime.timedelta(seconds=seconds),
                                             device_id=device if device.type == "cuda" else None)
    except ValueError as exc:  # a missing env:// variable
        raise DistributedError(f"{rank}: cannot join a process group: {_first_line(exc)}; start it with torchrun") from exc
    except (torch.distributed.DistError, RuntimeError) as exc:  # the store's timeout is a DistStoreError
        raise DistributedError(
            f"{rank} could not reach the rendezvous at {where} within {seconds:g} s ({TIMEOUT_VARIABLE}): "
            f"{_first_line(exc)}"
        ) from exc
    _joined = True


@contextlib.contextmanager
def _stopped_by_launcher(group: Group) -> Iterator[None]:
    """torchrun ends the other ranks with SIGTERM when one fails: say so in one line instead of vanishing."""
    def stop(signum: int, frame: Any) -> None:
        raise DistributedError(f"{group.describe()} was stopped by its launcher (signal {signum}): another rank failed")

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: leave signals to whoever owns them
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _first_sentence(exc: BaseException) -> str:
    """`Connection closed by peer [127.0.0.1]:3500` of `[.../pair.cc:553] Connection closed by peer ... . This is ...`."""
    line = re.sub(r"^\[[^\]]*\.(?:cc|cpp|h):\d+\]\s*", "", _first_line(exc))
    return line.split(". ")[0].rstrip(".")


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines or [type(exc).__name__])[0][:300]
