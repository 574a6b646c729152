"""Output files: checked before any work, written atomically, missing parent directories created.

Every command that writes a file (train, export, predict, plot, run) creates the missing parent
directories of its output, and removes them again when the write fails.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pathlib
import tempfile
from collections.abc import Iterator, Sequence

from zoo.errors import OutputError


def check_output(
    path: str | os.PathLike[str], *, suffixes: Sequence[str] = (), what: str = "file", directory: bool = False
) -> pathlib.Path:
    """Fail (OutputError) before any work on an output path that cannot be written; return it as a Path.

    `suffixes` are the ones `what` may end in (e.g. (".pt", ".pth") for "a checkpoint"); a file
    output (not `directory`) may not be an existing directory. Missing parent directories are fine:
    they are created when the output is written. Writability is tested by creating and removing a
    temporary entry in the nearest existing directory.
    """
    path = pathlib.Path(path)
    if not directory and path.is_dir():
        raise OutputError(f"cannot write {path}: it is a directory; give a file name")
    if suffixes and path.suffix.lower() not in suffixes:
        raise OutputError(
            f"cannot write {path}: {what} file ends in {' or '.join(suffixes)} "
            f"(e.g. {path.with_suffix(suffixes[0]).name})"
        )
    existing = next((parent for parent in path.parents if parent.exists()), path.parents[-1])
    if not existing.is_dir():
        raise OutputError(f"cannot write {path}: {existing} is a file, not a directory")
    try:
        if existing == path.parent:
            with tempfile.TemporaryFile(dir=existing):
                pass
        else:
            os.rmdir(tempfile.mkdtemp(dir=existing))
    except OSError as exc:
        raise OutputError(f"cannot write {path}: cannot create files in {existing} ({exc.strerror})") from exc
    return path


@contextlib.contextmanager
def parents_made(path: str | os.PathLike[str]) -> Iterator[pathlib.Path]:
    """Create the missing parent directories of `path` for a block; remove the ones made if it fails."""
    path = pathlib.Path(path)
    missing = [parent for parent in path.parents if not parent.exists()]
    for parent in reversed(missing):
        parent.mkdir()
    try:
        yield path
    except BaseException:
        for parent in missing:
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise


def write_atomic(path: str | os.PathLike[str], data: bytes) -> pathlib.Path:
    """Write bytes to a temp file beside ``path`` with the usual permissions, then rename it over.

    Missing parent directories are created. An OSError names ``path``, never the temporary file.
    """
    path = pathlib.Path(path)
    try:
        with parents_made(path):
            descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            try:
                os.fchmod(descriptor, default_mode())
                with os.fdopen(descriptor, "wb") as handle:
                    handle.write(data)
                os.replace(temporary, path)
            except BaseException:
                pathlib.Path(temporary).unlink(missing_ok=True)
                raise
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, os.fspath(path)) from exc
    return path


@functools.cache
def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; restored at once
    os.umask(mask)
    return mask


def default_mode(*, directory: bool = False) -> int:
    """The permissions ``open``/``mkdir`` would give (mkstemp/mkdtemp make private 0600/0700 ones)."""
    return (0o777 if directory else 0o666) & ~_umask()
