"""Wall-clock seconds of named stages, so reports can show where the time goes."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator


@contextlib.contextmanager
def timed(timings: dict[str, float] | None, stage: str) -> Iterator[None]:
    """Record the wall seconds of a block in ``timings[stage]`` (also when it raises; nothing for None)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        if timings is not None:
            timings[stage] = round(time.perf_counter() - started, 3)
