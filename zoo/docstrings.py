"""A plugin's one-line description and literal defaults, read from its source without importing it.

`zoo list` must stay fast (no torch import), so it reads docstrings with `ast`: it finds the module
file of `module:attr` on sys.path, and follows `from ... import attr` (and `import *`) to the file
that defines attr, a few hops at most.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import pathlib
from typing import Any

MAX_HOPS = 6


def first_paragraph(doc: str | None) -> str:
    """The first paragraph of a docstring, on one line."""
    return (doc or "").strip().split("\n\n")[0].replace("\n", " ").strip()


def describe(target: str) -> str:
    """The first paragraph of the docstring of `module:attr`, or "" when the source cannot be read."""
    node = _definition(target)
    return first_paragraph(ast.get_docstring(node)) if node is not None else ""


def literal_defaults(target: str) -> dict[str, Any]:
    """The parameter defaults of the function or class `module:attr` that are Python literals (a tuple of
    sizes, None), read from its source; {} when it cannot be read."""
    node = _definition(target)
    if isinstance(node, ast.ClassDef):
        node = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return {}
    args = node.args
    positional = [*args.posonlyargs, *args.args]
    pairs = [*zip(positional[len(positional) - len(args.defaults):], args.defaults),
             *((a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None)]
    found: dict[str, Any] = {}
    for arg, default in pairs:
        try:
            found[arg.arg] = ast.literal_eval(default)
        except ValueError:
            continue  # not a literal (a name, a call): left out
    return found


def _definition(target: str) -> ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef | None:
    """The definition of `module:attr` in its source, or None."""
    module, _, attr = target.partition(":")
    if not attr or "." in attr:
        return None
    return _find(module.strip(), attr.strip(), MAX_HOPS)


def _find(module: str, attr: str, hops: int) -> ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef | None:
    tree = _tree(module)
    if tree is None or hops == 0:
        return None
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == attr:
            return node
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            source = _absolute(module, node)
            for alias in node.names:
                if alias.name == "*" or (alias.asname or alias.name) == attr:
                    found = _find(source, attr if alias.name == "*" else alias.name, hops - 1)
                    if found is not None:
                        return found
    return None


def _absolute(module: str, node: ast.ImportFrom) -> str:
    """The module an ImportFrom in `module` reads from (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    path = _path(module)
    parts = module.split(".")
    package = parts if path is not None and path.name == "__init__.py" else parts[:-1]
    package = package[: len(package) - node.level + 1]
    return ".".join([*package, *([node.module] if node.module else [])])


@functools.cache
def _path(module: str) -> pathlib.Path | None:
    """The source file of `module`, found without importing it or its packages."""
    top, *rest = module.split(".")
    try:
        spec = importlib.util.find_spec(top)  # a top-level name: finding it imports nothing
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if not rest:
        return pathlib.Path(spec.origin) if spec.origin and spec.origin.endswith(".py") else None
    for location in spec.submodule_search_locations or ():
        base = pathlib.Path(location, *rest)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


@functools.cache
def _tree(module: str) -> ast.Module | None:
    path = _path(module)
    if path is None:
        return None
    try:
        return ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None
