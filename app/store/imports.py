"""What a predictor imports that nothing will provide: found at deploy, from its source alone.

Cortex's `python_path` unset, or a module left out of the project, used to deploy fine and then fail
every batch with `No module named ...`. The API never imports user code (its packages may exist on
the workers only, a GPU library say), so this reads the predictor file's module-level imports with
`ast` and names each module that is neither in the project (at its root, beside the predictor, or in
`python_path`), nor in the standard library, nor installed where the API runs. That is a warning,
not an error: the workers may have a package the API's host lacks.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import PurePosixPath


def unresolved(source: str, project_files: set[str], search: list[str]) -> Iterator[tuple[int, str]]:
    """(line, module) of each module-level import of the predictor `source` that nothing provides:
    not a project module under `search` (folders of the project, "" for its root), not the
    standard library, not installed here."""
    for line, module in _imported(source):
        if not (_in_project(module, project_files, search) or _available(module)):
            yield line, module


def _imported(source: str) -> Iterator[tuple[int, str]]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return  # the deploy reports it, naming the line
    for node in tree.body:  # module level only: an import in a try or a function may be optional
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.partition(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module.partition(".")[0]


def _in_project(module: str, project_files: set[str], search: list[str]) -> bool:
    for folder in search:
        base = PurePosixPath(folder) / module if folder else PurePosixPath(module)
        prefix = f"{base.as_posix()}/"
        if f"{base.as_posix()}.py" in project_files or any(path.startswith(prefix) for path in project_files):
            return True
    return False


def _available(module: str) -> bool:
    if module in sys.stdlib_module_names or module in sys.builtin_module_names:
        return True
    try:
        return importlib.util.find_spec(module) is not None  # a top-level name: nothing is imported
    except (ImportError, ValueError):
        return False
