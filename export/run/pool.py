"""Local worker processes for `zoo run --jobs N`: one task at a time per worker, results as they finish.

A worker that dies (a plugin's segfault, out of memory) costs only the task it was running, which
comes back as a `WorkerDied`; the worker is replaced and the other tasks are unaffected. Workers
ignore SIGINT: the parent handles Ctrl-C and stops them, so an interrupt is seen in one place.

Where the platform has it (Linux), workers fork from a multiprocessing forkserver that imported
`PRELOAD` once, so N workers pay torch's and onnx's import time once instead of N times; it runs
no torch op, so no thread pool is forked. Elsewhere they are spawned. Either way a worker takes the
parent's current sys.path and environment, so plugins installed after the server started are seen.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

Item = TypeVar("Item")

# What every zoo task imports. torch._dynamo is private, and only imported: torch imports it lazily
# on the first optimizer step and the first TorchDispatchMode call (1.3 s), in every worker.
PRELOAD = ("torch", "torch._dynamo", "onnx", "onnxruntime", "export.run.row", "export.bundle", "export.parity.check")


def context() -> multiprocessing.context.BaseContext:
    """The forkserver (with PRELOAD) where the platform has one, else spawn; never plain fork of a torch process."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    server = multiprocessing.get_context("forkserver")
    server.set_forkserver_preload(list(PRELOAD))
    return server


def warm_up() -> None:
    """Start the forkserver now, so it imports PRELOAD while this process does its own start-up."""
    if context().get_start_method() == "forkserver":
        multiprocessing.forkserver.ensure_running()


class WorkerDied(Exception):
    """The worker process running a task died; `exitcode` is its exit status (negative: the signal)."""

    def __init__(self, exitcode: int | None, detail: str | None = None) -> None:
        self.exitcode = exitcode
        super().__init__(detail or f"the worker process died running this row (exit code {exitcode}); "
                                   "a plugin crashed or ran out of memory")


def _worker(conn: Any, fn: Callable[..., Any], options: dict[str, Any], environ: dict[str, str]) -> None:
    """A worker process: run fn on the items it receives until it receives None."""
    os.environ.clear()  # a forkserver's child has the server's environment; sys.path multiprocessing sets
    os.environ.update(environ)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit)  # stopped by the parent: unwind, so temporary directories go
    while (item := conn.recv()) is not None:
        conn.send(fn(item, **options))


def _exit(signum: int, frame: object) -> None:
    sys.exit(128 + signum)


def imap_unordered(fn: Callable[..., Any], items: Sequence[Item], *, workers: int,
                   options: dict[str, Any] | None = None) -> Iterator[tuple[Item, Any]]:
    """Yield (item, fn(item, **options)) as tasks finish in `workers` worker processes.

    The result is a WorkerDied when the process running the item died. Closing the iterator (or an
    exception in the caller, such as KeyboardInterrupt) stops every worker.
    """
    from multiprocessing.connection import wait

    workers_from = context()
    options = options or {}

    def start() -> tuple[Any, Any]:
        parent, child = workers_from.Pipe()
        process = workers_from.Process(target=_worker, args=(child, fn, options, dict(os.environ)),
                                       daemon=True)
        process.start()
        child.close()
        return parent, process

    queue = list(items)[::-1]
    idle = [start() for _ in range(min(workers, len(queue)))]
    busy: dict[Any, tuple[Any, Item]] = {}  # connection -> (process, item it runs)
    try:
        while queue or busy:
            while idle and queue:
                conn, process = idle.pop()
                busy[conn] = (process, queue.pop())
                conn.send(busy[conn][1])
            for conn in wait(list(busy)):  # a result, or end of file when the worker died
                process, item = busy.pop(conn)
                try:
                    result = conn.recv()
                    idle.append((conn, process))
                except EOFError:
                    process.join()
                    result = WorkerDied(process.exitcode)
                    if queue:
                        idle.append(start())
                yield item, result
    finally:
        for conn, process in [*idle, *((conn, process) for conn, (process, _) in busy.items())]:
            process.terminate()  # idle workers wait in recv(); after Ctrl-C busy ones must not go on
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
            conn.close()
