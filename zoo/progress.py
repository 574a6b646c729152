"""A one-line progress bar with the running loss, drawn on a terminal and nowhere else."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


def wanted(progress: bool | None, stream: TextIO | None = None) -> bool:
    """Whether to draw a bar: as asked, or (None) only when the stream (stderr) is a terminal."""
    if progress is not None:
        return bool(progress)
    isatty = getattr(stream or sys.stderr, "isatty", None)
    return bool(isatty and isatty())


class ProgressBar:
    """`epoch 2/5 [#########...........] 40% loss 1.2345`, redrawn in place at most every `interval` s."""

    def __init__(
        self, total: int, epochs: int, *, stream: TextIO | None = None, interval: float = 0.1, width: int = 24
    ) -> None:
        self.total, self.epochs = total, epochs
        self.stream = stream or sys.stderr
        self.interval, self.width = interval, width
        self._drawn_at = float("-inf")

    def update(self, step: int, epoch: int, loss: Callable[[], float]) -> None:
        """Show `step` of the total in `epoch`; `loss` is only called (a device sync) when redrawing."""
        now = time.monotonic()
        if now - self._drawn_at < self.interval and step < self.total:
            return
        self._drawn_at = now
        filled = self.width * step // max(self.total, 1)
        bar = "#" * filled + "." * (self.width - filled)
        percent = 100 * step // max(self.total, 1)
        self.stream.write(f"\repoch {epoch}/{self.epochs} [{bar}] {percent:3d}% loss {loss():.6g}\x1b[K")
        self.stream.flush()

    def close(self) -> None:
        """End the bar's line so that what follows starts on a fresh one."""
        self.stream.write("\n")
        self.stream.flush()
