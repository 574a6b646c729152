"""Atomic file writes: a temporary file beside the target, renamed over it, nothing left on failure."""

from __future__ import annotations

import functools
import os
import pathlib
import tempfile


def write_atomic(path: str | os.PathLike[str], data: bytes) -> pathlib.Path:
    """Write bytes to a temp file beside ``path`` with the usual permissions, then rename it over."""
    path = pathlib.Path(path)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(descriptor, default_mode())
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        pathlib.Path(temporary).unlink(missing_ok=True)
        raise
    return path


@functools.cache
def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; restored at once
    os.umask(mask)
    return mask


def default_mode(*, directory: bool = False) -> int:
    """The permissions ``open``/``mkdir`` would give (mkstemp/mkdtemp make private 0600/0700 ones)."""
    return (0o777 if directory else 0o666) & ~_umask()
