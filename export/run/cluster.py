"""Tasks on a Dask distributed cluster: `zoo run --cluster` and `python -m export.parity.matrix --cluster`.

``connect("local", workers=N)`` starts a ``LocalCluster`` on this machine (N processes, one thread
each); any other address (``tcp://host:8786``) connects to a running scheduler. ``imap_unordered``
submits one task per item and yields the results as they finish. Results come back to the client,
so workers need no filesystem shared with it, only the same zoo and plugins installed.

A worker that dies running a task costs the task one retry on another worker; a second death
makes the task a `WorkerDied`, never the end of the run. For a cluster started here that is set
(``distributed.scheduler.allowed-failures = 1``, and ``worker-saturation = 1.0`` so a worker holds
one task at a time and its death is charged to that task alone); a running scheduler uses its own.
dask is an optional extra: without it, `connect` raises ClusterError saying what to install.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from export.run import pool as run_pool
from export.run.pool import WorkerDied
from zoo.errors import ZooError

Item = TypeVar("Item")
LOCAL = "local"
CONNECT_TIMEOUT = 5.0  # seconds to reach a scheduler and find a worker: an unreachable one fails fast
ALLOWED_FAILURES = 1  # worker deaths a task survives (one retry), for clusters started here
INSTALL_HINT = "pip install 'zoo-onnx[dask]'"


class ClusterError(ZooError):
    """No cluster to run on: dask is not installed, or the scheduler cannot be reached or has no workers."""


@dataclasses.dataclass
class Cluster:
    """A connected Dask client and what the report records of it."""

    client: Any
    address: str  # the scheduler's address
    workers: int
    local: bool  # a LocalCluster started by this process

    def settings(self) -> dict[str, Any]:
        """The cluster as report settings: scheduler address, worker count, and whether it was started here."""
        return {"address": self.address, "workers": self.workers, "local": self.local}

    def imap_unordered(self, fn: Callable[..., Any], items: Sequence[Item], *,
                       options: dict[str, Any] | None = None) -> Iterator[tuple[Item, Any]]:
        """Yield (item, fn(item, **options)) as tasks finish; an exception a task ended with is its result.

        A task whose workers died is a WorkerDied; closing the iterator (or KeyboardInterrupt in
        the caller) cancels the tasks not yet finished.
        """
        from distributed import KilledWorker, as_completed

        futures = {self.client.submit(fn, item, **(options or {}), pure=False): item for item in items}
        try:
            for future in as_completed(futures, loop=self.client.loop):
                try:
                    result = future.result()
                except KilledWorker:
                    result = WorkerDied(None, "the Dask worker running this row died, and so did the one it was "
                                              "retried on; a plugin crashed or ran out of memory")
                except Exception as exc:  # noqa: BLE001 - the task's own error, e.g. a result that cannot be unpickled
                    result = exc
                yield futures[future], result
        finally:
            self.client.cancel(list(futures))


@contextlib.contextmanager
def connect(address: str, *, workers: int | None = None, timeout: float = CONNECT_TIMEOUT) -> Iterator[Cluster]:
    """A Cluster at `address` ("local": a LocalCluster of `workers` processes here), closed afterwards.

    Raises ClusterError without dask, or when the scheduler is not reached within `timeout` seconds
    or has no worker.
    """
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise ClusterError(f"--cluster needs dask.distributed, which is not installed: {INSTALL_HINT}") from exc
    with contextlib.ExitStack() as stack:
        if address == LOCAL:
            # one task per worker at a time, so a worker's death counts against the row it was running only
            with dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES,
                                  "distributed.scheduler.worker-saturation": 1.0}):
                local = stack.enter_context(LocalCluster(
                    n_workers=workers or 1, threads_per_worker=1, processes=True, dashboard_address=None,
                    silence_logs=logging.CRITICAL,  # a dead worker is reported in its row, not logged
                ))
            target: Any = local
        else:
            target = address
        try:
            client = stack.enter_context(Client(target, timeout=timeout, set_as_default=False))
            client.wait_for_workers(1, timeout=timeout)
        except (OSError, ValueError, TypeError) as exc:  # distributed's TimeoutError is an OSError
            raise ClusterError(f"cannot use the Dask scheduler at {address}: {_reason(exc, timeout)}") from exc
        yield Cluster(client, client.scheduler.address, len(client.nthreads()), address == LOCAL)


def _reason(exc: BaseException, timeout: float) -> str:
    message = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, TimeoutError) or "timed out" in message.lower():
        return f"not reached within {timeout:g} s, or it has no worker (is `dask scheduler` running there?)"
    return message


def tasks(fn: Callable[..., Any], items: Sequence[Item], *, jobs: int, stack: contextlib.ExitStack,
          address: str | None = None, options: dict[str, Any] | None = None,
          ) -> tuple[Iterator[tuple[Item, Any]], Cluster | None]:
    """(item, fn(item, **options)) as they finish: on the Dask cluster at `address` (with `jobs` workers
    when "local"), else in `jobs` worker processes (run_pool), or in this process for jobs=1; and the cluster used.

    A task's exception (or WorkerDied) is its result. The cluster stays open until `stack` closes.
    """
    if address:
        cluster = stack.enter_context(connect(address, workers=jobs))
        return cluster.imap_unordered(fn, items, options=options), cluster
    if jobs > 1:
        return run_pool.imap_unordered(fn, items, workers=jobs, options=options), None
    return ((item, fn(item, **(options or {}))) for item in items), None
