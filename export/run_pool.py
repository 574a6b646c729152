"""Local worker processes for `zoo run --jobs N`: one task at a time per worker, results as they finish.

A worker that dies (a plugin's segfault, out of memory) costs only the task it was running, which
comes back as a `WorkerDied`; the worker is replaced and the other tasks are unaffected. Workers
ignore SIGINT: the parent handles Ctrl-C and stops them, so an interrupt is seen in one place.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

Item = TypeVar("Item")


class WorkerDied(Exception):
    """The worker process running a task died; `exitcode` is its exit status (negative: the signal)."""

    def __init__(self, exitcode: int | None, detail: str | None = None) -> None:
        self.exitcode = exitcode
        super().__init__(detail or f"the worker process died running this row (exit code {exitcode}); "
                                   "a plugin crashed or ran out of memory")


def _worker(conn: Any, fn: Callable[..., Any], options: dict[str, Any]) -> None:
    """A worker process: run fn on the items it receives until it receives None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit)  # stopped by the parent: unwind, so temporary directories go
    while (item := conn.recv()) is not None:
        conn.send(fn(item, **options))


def _exit(signum: int, frame: object) -> None:
    sys.exit(128 + signum)


def imap_unordered(fn: Callable[..., Any], items: Sequence[Item], *, workers: int,
                   options: dict[str, Any] | None = None) -> Iterator[tuple[Item, Any]]:
    """Yield (item, fn(item, **options)) as tasks finish in `workers` spawned processes.

    The result is a WorkerDied when the process running the item died. Closing the iterator (or an
    exception in the caller, such as KeyboardInterrupt) stops every worker.
    """
    import multiprocessing
    from multiprocessing.connection import wait

    context = multiprocessing.get_context("spawn")  # forking a process that has loaded torch is unsafe
    options = options or {}

    def start() -> tuple[Any, Any]:
        parent, child = context.Pipe()
        process = context.Process(target=_worker, args=(child, fn, options), daemon=True)
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
