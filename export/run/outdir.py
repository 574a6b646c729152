"""The output folder of a `zoo run`: an earlier run's output is replaced only when asked, nothing else ever is.

A non-empty folder is refused. With `force`, a folder is cleared only when it holds an earlier run
(its report.json) and nothing else than what that run wrote, so a mistyped `-o` (a home directory,
a source tree) is refused even then. Checked before torch loads; cleared only once every setting
checked out, just before the first row is stored. Needs no torch.
"""

from __future__ import annotations

import json
import pathlib
import shutil
from typing import Any

from zoo.errors import ZooError
from zoo.files import check_output

REPORT = "report.json"
MODELS = "models"


class OutputDirError(ZooError):
    """The output folder holds something a run may not replace: an earlier run without force, or anything else."""


def check_out_dir(out: pathlib.Path, *, force: bool) -> bool:
    """Refuse (OutputDirError) an output folder a run may not write into; return whether it must be cleared first."""
    check_output(out, what="a folder", directory=True)
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"{out} is a file; give a folder for the run's output")
    if not out.is_dir() or not any(out.iterdir()):
        return False
    report = _earlier_report(out)
    if report is None:
        raise OutputDirError(f"{out} is not empty and holds no zoo run (no {REPORT}); choose another folder with -o"
                             + (" (--force replaces only an earlier zoo run)" if force else ""))
    if not force:
        raise OutputDirError(f"{out} holds an earlier zoo run; pass --force to replace it, "
                             "or choose another folder with -o")
    foreign = sorted(entry.name for entry in out.iterdir() if entry.name not in _written_by(report))
    if foreign:
        raise OutputDirError(f"{out} also holds {', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}, "
                             "which no zoo run writes; --force replaces only an earlier run: move "
                             f"{'it' if len(foreign) == 1 else 'them'} or choose another folder with -o")
    return True


def clear_run(out: pathlib.Path) -> None:
    """Remove what an earlier run wrote to `out` (checked by check_out_dir); its report goes last.

    Interrupted half-way, the folder still holds the report, so `--force` clears the rest next time.
    """
    written = _written_by(_earlier_report(out) or {})
    entries = sorted((entry for entry in out.iterdir() if entry.name in written), key=lambda e: e.name == REPORT)
    try:
        for entry in entries:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink(missing_ok=True)
    except OSError as exc:
        raise OutputDirError(f"cannot clear the earlier run in {out}: {exc.strerror or exc}") from exc


def _earlier_report(out: pathlib.Path) -> dict[str, Any] | None:
    """The report.json of an earlier zoo run in `out`, or None when there is none."""
    try:
        report = json.loads((out / REPORT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    is_run = isinstance(report, dict) and {"zoo_version", "settings", "models"} <= report.keys()
    return report if is_run else None


def _written_by(report: dict[str, Any]) -> set[str]:
    """The entries of the output folder that the run of `report` wrote."""
    pictures = report.get("pictures")
    names = [name for name in pictures if isinstance(name, str)] if isinstance(pictures, list) else []
    return {REPORT, "report.md", MODELS, *(name for name in names if name.endswith(".png"))}
