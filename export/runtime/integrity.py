"""Tamper evidence: a bundle's manifest lists every other file with its sha256 and size, checked before use.

The listing is generic, a ``files`` table of relative POSIX path -> ``{"sha256", "bytes"}``, so a
file kind added to bundles later is covered without a change here. A bundle is an untrusted file:
symlinks, special files and listed paths that leave the bundle directory are refused, never followed.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
from typing import Any, NamedTuple

MANIFEST = "manifest.json"
SHOWN = 3  # problems named in one line before the rest are counted

# How each kind of damage reads after the path it concerns.
PROBLEMS = {
    "missing": "missing",
    "changed": "changed",
    "unexpected": "unexpected",
    "symlink": "is a symlink",
    "special": "is not a regular file",
    "unreadable": "unreadable",
}


class Damage(NamedTuple):
    """One way the files of a bundle differ from its manifest: a relative path (``/`` for a folder) and a PROBLEMS key."""

    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path} {PROBLEMS[self.problem]}"


def sha256(path: pathlib.Path) -> str:
    """The hex sha256 of a file (OSError when it cannot be read)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_table(root: pathlib.Path) -> dict[str, dict[str, Any]]:
    """Every regular file under ``root`` but the manifest, by relative POSIX path: its sha256 and size in bytes."""
    return {rel: {"sha256": sha256(root / rel), "bytes": (root / rel).stat().st_size}
            for rel, kind in _entries(root).items() if kind == "file"}


def listing_problem(files: Any) -> str | None:
    """Why a manifest's ``files`` value is no table of this bundle's files (e.g. a path leaving it); None if it is one."""
    if not isinstance(files, dict) or not files:
        return f"its 'files' table is missing or empty ({type(files).__name__})"
    for path, entry in files.items():
        if not _inside(path):
            return f"its 'files' table lists {path!r}, which is no relative path inside the bundle"
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
                and re.fullmatch("[0-9a-f]{64}", entry["sha256"]) and type(entry.get("bytes")) is int
                and entry["bytes"] >= 0):
            return f"its 'files' table has no sha256 and size for {path!r} ({entry!r})"
    return None


def damage(root: pathlib.Path, files: dict[str, dict[str, Any]]) -> list[Damage]:
    """How the files under ``root`` differ from the manifest's table ``files``, in path order; empty when intact.

    A folder that is missing or unexpected as a whole is one problem, not one per file in it.
    """
    entries = _entries(root)
    folders = {folder for path in files for folder in _folders_of(path)}
    found: list[Damage] = []
    reported: set[str] = set()
    for rel, kind in entries.items():
        if reported.intersection(_folders_of(rel)):
            continue  # inside a folder already reported
        if kind == "dir":
            problem = None if rel in folders else Damage(rel + "/", "unexpected")
        elif kind != "file":
            problem = Damage(rel, kind)
        else:
            problem = _compare(root, rel, files[rel]) if rel in files else Damage(rel, "unexpected")
        if problem:
            found.append(problem)
            reported.add(rel)
    for rel in files:
        if entries.get(rel) == "file":
            continue
        absent = next((f for f in reversed(_folders_of(rel)) if entries.get(f) != "dir"), rel)
        if absent not in reported:
            found.append(Damage(absent + ("/" if absent != rel else ""), "missing"))
            reported.add(absent)
    return sorted(found)


def some(items: list[str]) -> str:
    """The first few of ``items`` joined, then how many more: 'a, b, c and 4 more'."""
    shown = ", ".join(items[:SHOWN])
    return shown + (f" and {len(items) - SHOWN} more" if len(items) > SHOWN else "")


def _compare(root: pathlib.Path, rel: str, listed: dict[str, Any]) -> Damage | None:
    """A listed regular file against its size and sha256: None when it matches, else changed or unreadable."""
    try:
        if (root / rel).stat().st_size != listed["bytes"] or sha256(root / rel) != listed["sha256"]:
            return Damage(rel, "changed")
    except OSError:
        return Damage(rel, "unreadable")
    return None


def _entries(root: pathlib.Path) -> dict[str, str]:
    """Everything under ``root`` but the manifest, by relative POSIX path, in path order: file, dir, symlink or special.

    Symlinks are reported, never followed, so the walk stays inside ``root``.
    """
    entries: dict[str, str] = {}
    pending = [""]
    while pending:
        folder = pending.pop()
        with os.scandir(root / folder) as listing:
            for entry in listing:
                rel = f"{folder}/{entry.name}" if folder else entry.name
                if rel == MANIFEST:
                    continue
                entries[rel] = _kind(entry)
                if entries[rel] == "dir":
                    pending.append(rel)
    return dict(sorted(entries.items()))


def _kind(entry: os.DirEntry[str]) -> str:
    if entry.is_symlink():
        return "symlink"
    if entry.is_dir(follow_symlinks=False):
        return "dir"
    return "file" if entry.is_file(follow_symlinks=False) else "special"


def _folders_of(rel: str) -> list[str]:
    """The folders ``rel`` lies in, innermost first: 'a/b/c' -> ['a/b', 'a']."""
    return [str(parent) for parent in pathlib.PurePosixPath(rel).parents][:-1]


def _inside(path: Any) -> bool:
    """A relative POSIX path in normal form that stays inside the bundle and is not its manifest."""
    if not isinstance(path, str) or not path or "\\" in path or "\0" in path or path == MANIFEST:
        return False
    pure = pathlib.PurePosixPath(path)
    return str(pure) == path and not pure.is_absolute() and all(part not in ("", ".", "..") for part in pure.parts)
