"""Each predictor imports its own modules, from the code deployed with it, in a namespace of its own
(and runs in its project folder, with its environment variables).

A worker process runs many APIs' predictors, and `sys.modules` is one per process: with each
predictor's folder on `sys.path`, two APIs whose folders both hold a `helpers.py` shared whichever
a process imported first (results silently wrong for the other API). So a predictor's modules are
imported from its deployed files (app/code.py) by a finder that answers only while that predictor
runs, and are kept in its namespace in between: `active()` puts them into `sys.modules` around
each call into the predictor (import, `__init__`, `predict`, `on_job_complete`) and takes them out
after. Calls into predictors never overlap in a pool process (one task at a time).

A module already imported by something else (the standard library, a package from site-packages,
Batchery itself) is not shadowed by a file of the same name beside the predictor, as it was not
with the folder on `sys.path` either.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType


class Namespace:
    """One predictor's world while it runs: the modules of its deployed project files (by path in
    the project folder) and what was imported from them, the project folder as the working
    directory, and its environment variables."""

    def __init__(self, folder: str | Path, sources: dict[str, str], search: list[str] = (), env: dict | None = None):
        self.folder = Path(folder)
        self.sources = sources
        # where module names are looked up: the predictor's folder (its siblings), then the
        # project's root (Cortex's default python_path)
        self.search = list(dict.fromkeys([*search, "."]))
        self.env = env or {}
        self.modules: dict[str, ModuleType] = {}
        self._folder_here = self.folder.is_dir()  # a worker without the project on disk keeps its cwd

    def file_of(self, fullname: str) -> tuple[str, bool] | None:
        """The deployed file a module name imports, and whether it is a package; None if none."""
        name = fullname.replace(".", "/")
        for base in self.search:
            relative = name if base == "." else f"{base}/{name}"
            if f"{relative}/__init__.py" in self.sources:
                return f"{relative}/__init__.py", True
            if f"{relative}.py" in self.sources:
                return f"{relative}.py", False
        return None

    def spec(self, fullname: str, relative: str, package: bool = False) -> ModuleSpec:
        """The import spec of a deployed file, as module `fullname`."""
        path = self.folder / relative
        locations = [str(path.parent)] if package else None
        loader = _DeployedLoader(self, fullname, str(path), self.sources[relative])
        return importlib.util.spec_from_file_location(
            fullname, str(path), loader=loader, submodule_search_locations=locations
        )

    @contextmanager
    def active(self) -> Iterator[None]:
        """Run a call into the predictor with its modules importable, and only its; in its project
        folder (as Cortex ran it: `open('values.json')` reads the project's) and its environment."""
        global _active
        for name, module in self.modules.items():
            sys.modules.setdefault(name, module)  # a module imported by something else keeps its name
        saved_env = {name: os.environ.get(name) for name in self.env}
        os.environ.update(self.env)
        saved_cwd = os.getcwd() if self._folder_here else None
        if saved_cwd is not None:
            os.chdir(self.folder)
        _active = self
        try:
            yield
        finally:
            _active = None
            if saved_cwd is not None:
                os.chdir(saved_cwd)
            _restore(saved_env)
            for name, module in self.modules.items():
                if sys.modules.get(name) is module:
                    del sys.modules[name]


def _restore(saved_env: dict[str, str | None]) -> None:
    for name, value in saved_env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


class _DeployedLoader(importlib.abc.SourceLoader):
    """Loads a module from its deployed source; tracebacks show its lines (`get_source`)."""

    def __init__(self, namespace: Namespace, fullname: str, path: str, source: str):
        self.namespace, self.fullname, self.path, self.source = namespace, fullname, path, source

    def get_filename(self, fullname: str) -> str:
        return self.path

    def get_data(self, path: str) -> bytes:
        if path == self.path:
            return self.source.encode("utf-8")
        with open(path, "rb") as file:  # a package's data file (pkgutil.get_data), from disk as before
            return file.read()

    def exec_module(self, module: ModuleType) -> None:
        self.namespace.modules[self.fullname] = module  # taken out of sys.modules when the call ends
        try:
            super().exec_module(module)
        except BaseException:
            del self.namespace.modules[self.fullname]  # as the import system forgets a failed import
            raise


class _Finder(importlib.abc.MetaPathFinder):
    """Finds the active predictor's deployed modules, before the rest of `sys.meta_path`."""

    def find_spec(self, fullname: str, path=None, target=None) -> ModuleSpec | None:
        namespace = _active
        found = namespace.file_of(fullname) if namespace is not None else None
        return namespace.spec(fullname, *found) if found else None


_active: Namespace | None = None
_FINDER = _Finder()


def install() -> None:
    """Put the finder first in `sys.meta_path` (once per process)."""
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
