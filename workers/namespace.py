"""Each predictor imports its own modules, from the code deployed with it, in a namespace of its own
(and runs in its project folder, with its environment variables).

A worker process runs many APIs' predictors, and `sys.modules` is one per process: with each
predictor's folder on `sys.path`, two APIs whose folders both hold a `helpers.py` shared whichever
a process imported first (results silently wrong for the other API). So a predictor's modules are
imported from its deployed files (app/store/code.py) by a finder that answers only while that predictor
runs, and are kept in its namespace in between: `active()` puts them into `sys.modules` around
each call into the predictor (import, `__init__`, `predict`, `on_job_complete`) and takes them out
after. Calls into predictors never overlap in a pool process (one task at a time).

Names resolve as on Cortex, where the project was on PYTHONPATH, ahead of site-packages: a project
module shadows a package of the same name another API imported (it is set aside during the call),
but not a module the worker itself had imported before any predictor (the standard library,
Batchery, Celery): replacing those under the worker would break it.
"""

from __future__ import annotations

import importlib.abc
import importlib.readers
import importlib.util
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib.machinery import ModuleSpec
from pathlib import Path, PurePosixPath
from types import ModuleType


class Namespace:
    """One predictor's world while it runs: the modules of its deployed project files (by path in
    the project folder) and what was imported from them, the project folder as the working
    directory, and its environment variables."""

    def __init__(
        self, folder: str | Path, sources: dict[str, str], search: Sequence[str] = (), env: dict | None = None
    ):
        self.folder = Path(folder)
        self.sources = sources
        # where module names are looked up: the predictor's folder (its siblings), then the
        # project's root (Cortex's default python_path); folders of the project that the predictor
        # puts on sys.path itself come first (`_bases`)
        self.search = list(dict.fromkeys([*search, "."]))
        self.env = env or {}
        # what the predictor itself set or deleted in os.environ during its calls (None: deleted):
        # kept for its next calls, and out of the worker's (other APIs') environment in between
        self.own_env: dict[str, str | None] = {}
        self.modules: dict[str, ModuleType] = {}
        self._folders = {str(parent) for path in sources for parent in PurePosixPath(path).parents}
        self._tops = {top for base in self.search for top in self._top_level_names(base)}
        self._folder_here = self.folder.is_dir()  # a worker without the project on disk keeps its cwd

    def _top_level_names(self, base: str) -> Iterator[str]:
        """The names importable from a folder of the project: its modules, packages and folders."""
        prefix = "" if base == "." else f"{base}/"
        for relative in self.sources:
            if relative.startswith(prefix):
                yield relative[len(prefix) :].split("/")[0].removesuffix(".py")

    def find(self, fullname: str, path: list[str] | None) -> ModuleSpec | None:
        """The spec of a deployed module or package; None if the project has none by that name."""
        last = fullname.rpartition(".")[2]
        if path is None:
            folders = self._bases()
        else:  # a submodule: only of a package of this project (its __path__ lies in the folder)
            folders = [folder for folder in map(self._relative, path) if folder is not None]
        for folder in folders:
            relative = last if folder == "." else f"{folder}/{last}"
            if f"{relative}/__init__.py" in self.sources:
                return self.spec(fullname, f"{relative}/__init__.py", package=True)
            if f"{relative}.py" in self.sources:
                return self.spec(fullname, f"{relative}.py")
        for folder in folders:  # a folder without __init__.py: a namespace package, as on disk
            relative = last if folder == "." else f"{folder}/{last}"
            if relative in self._folders:
                return self._namespace_spec(fullname, relative)
        return None

    def _bases(self) -> list[str]:
        added = [folder for folder in map(self._relative, sys.path) if folder is not None]
        return list(dict.fromkeys([*added, *self.search]))

    def _relative(self, entry: str) -> str | None:
        """A path as a folder of the project (`.` for its root), or None if outside it."""
        root = str(self.folder)
        if entry == root:
            return "."
        if entry.startswith(root + os.sep):
            return PurePosixPath(*Path(entry[len(root) + 1 :]).parts).as_posix()
        return None

    def spec(self, fullname: str, relative: str, package: bool = False) -> ModuleSpec:
        """The import spec of a deployed file, as module `fullname`."""
        path = self.folder / relative
        locations = [str(path.parent)] if package else None
        loader = _DeployedLoader(self, fullname, str(path), self.sources[relative])
        spec = importlib.util.spec_from_file_location(
            fullname, str(path), loader=loader, submodule_search_locations=locations
        )
        if spec is None:  # only without a loader, and this one always has its own
            raise ImportError(f"no import spec for {relative}", name=fullname)
        return spec

    def _namespace_spec(self, fullname: str, relative: str) -> ModuleSpec:
        spec = ModuleSpec(fullname, _NamespaceLoader(self, fullname), is_package=True)
        spec.submodule_search_locations = [str(self.folder / relative)]
        return spec

    def load(self, fullname: str, relative: str) -> ModuleType:
        """Import a deployed file as module `fullname`, as the import system would (in sys.modules
        while it runs: dataclasses and pickle look it up there); call inside `active()`."""
        spec = self.spec(fullname, relative)
        module = importlib.util.module_from_spec(spec)
        sys.modules[fullname] = module
        try:
            spec.loader.exec_module(module)  # type: ignore[union-attr]  # self.spec always gives its loader
        except BaseException:
            sys.modules.pop(fullname, None)
            raise
        return module

    @contextmanager
    def active(self) -> Iterator[None]:
        """Run a call into the predictor with its modules importable, and only its; in its project
        folder (as Cortex ran it: `open('values.json')` reads the project's) and its environment."""
        global _active
        set_aside = self._set_aside_others()
        for name, module in self.modules.items():
            sys.modules.setdefault(name, module)  # the worker's own module of that name stays
        saved_env = {name: os.environ.get(name) for name in (*self.env, *self.own_env)}
        os.environ.update(self.env)
        _restore(self.own_env)
        before = _environ_snapshot()
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
            self._keep_own_env(before, saved_env)
            _restore(saved_env)
            for name, module in self.modules.items():
                if sys.modules.get(name) is module:
                    del sys.modules[name]
            for name, module in set_aside.items():
                sys.modules.setdefault(name, module)

    def _keep_own_env(self, before: dict[bytes, bytes] | None, saved_env: dict[str, str | None]) -> None:
        """Keep what the call changed in os.environ as the predictor's own (`os.environ["X"] = ...`
        at import time is common in ML code), and add the worker's values of those names to
        `saved_env`, to be put back: on Cortex each API had its process, and its environment."""
        after = _environ_snapshot()
        if before is None or after is None or after == before:  # the common case: ~0.4 µs
            return
        changed = (before.keys() ^ after.keys()) | {k for k in before.keys() & after.keys() if before[k] != after[k]}
        for raw in changed:
            name = os.fsdecode(raw)
            self.own_env[name] = os.environ.get(name)
            if name not in saved_env:
                saved_env[name] = os.fsdecode(before[raw]) if raw in before else None

    def _set_aside_others(self) -> dict[str, ModuleType]:
        """Take out of sys.modules the modules named like this project's that neither it nor the
        worker imported (another API's packages): kept to be put back after the call."""
        taken = {}
        for top in self._tops:
            module = sys.modules.get(top)
            if module is None or top in _worker_modules or module is self.modules.get(top):
                continue
            for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
                taken[name] = sys.modules.pop(name)
        return taken


def _environ_snapshot() -> dict[bytes, bytes] | None:
    """A copy of the process environment as os.environ holds it (its private `_data`, encoded:
    0.1 µs, where `dict(os.environ)` decodes every entry, 25 µs, on every call); None without it."""
    data = getattr(os.environ, "_data", None)
    return data.copy() if isinstance(data, dict) else None


def _restore(saved_env: dict[str, str | None]) -> None:
    for name, value in saved_env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


class _DeployedLoader(importlib.abc.SourceLoader):
    """Loads a module from its deployed source."""

    def __init__(self, namespace: Namespace, fullname: str, path: str, source: str):
        self.namespace, self.fullname, self.path, self.source = namespace, fullname, path, source

    def get_filename(self, fullname: str) -> str:
        return self.path

    def get_data(self, path: str) -> bytes:
        if path == self.path:
            return self.source.encode("utf-8")
        with open(path, "rb") as file:  # a package's data file (pkgutil.get_data), from disk as before
            return file.read()

    def get_resource_reader(self, fullname: str):
        """importlib.resources reads a package's data files from its folder on disk."""
        # FileReader reads only the loader's `path`, which this loader has as a FileLoader would
        return importlib.readers.FileReader(self) if self.is_package(fullname) else None  # type: ignore[arg-type]

    def exec_module(self, module: ModuleType) -> None:
        self.namespace.modules[self.fullname] = module  # taken out of sys.modules when the call ends
        try:
            super().exec_module(module)
        except BaseException:
            del self.namespace.modules[self.fullname]  # as the import system forgets a failed import
            raise


class _NamespaceLoader(importlib.abc.Loader):
    """A project folder without `__init__.py`: a namespace package, kept in the namespace too."""

    def __init__(self, namespace: Namespace, fullname: str):
        self.namespace, self.fullname = namespace, fullname

    def create_module(self, spec: ModuleSpec) -> None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        self.namespace.modules[self.fullname] = module


class _Finder(importlib.abc.MetaPathFinder):
    """Finds the active predictor's deployed modules, before the rest of `sys.meta_path`."""

    def find_spec(self, fullname: str, path=None, target=None) -> ModuleSpec | None:
        namespace = _active
        return namespace.find(fullname, path) if namespace is not None else None


_active: Namespace | None = None
_FINDER = _Finder()
_worker_modules: frozenset[str] = frozenset()  # imported by the worker before any predictor


def install() -> None:
    """Put the finder first in `sys.meta_path`, and note the worker's own modules (once per process)."""
    global _worker_modules
    if _FINDER not in sys.meta_path:
        _worker_modules = frozenset(sys.modules)
        sys.meta_path.insert(0, _FINDER)
