"""Loading a job's predictor with the Cortex signatures, once per worker process per job."""

from __future__ import annotations

import copy
import gc
import inspect
import logging
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import billiard.common

from app.store import code
from workers import namespace
from workers.lru import Lru
from workers.projects import ProjectCache, ProjectError

log = logging.getLogger(__name__)


class PredictorError(Exception):
    """The predictor file could not be imported or its class could not be initialised."""


class PredictorExit(Exception):
    """The predictor called `sys.exit()`: an error of that call, like any other exception.

    Left as SystemExit it ended the pool process: the batch counted as a dead worker's delivery,
    was retried even without a dead-letter queue (Cortex counts one failed attempt), and its
    message was lost."""


@contextmanager
def _calling(modules: namespace.Namespace) -> Iterator[None]:
    """A call into the predictor: its modules importable, its sys.exit() an exception, SIGTERM's
    default action."""
    with modules.active(), _default_sigterm():
        try:
            yield
        except SystemExit as exit_:
            if billiard.common.terminate_handler_fired():
                raise  # billiard's own: the pool process was told to end (SIGTERM), and it does
            raise PredictorExit(f"sys.exit({exit_.code!r}) was called") from exit_


@contextmanager
def _default_sigterm() -> Iterator[None]:
    """SIGTERM's default action while the predictor runs, where it can start processes.

    A pool process handles SIGTERM in Python (billiard's `_shutdown_cleanup`), and a child forked
    from it inherits that. multiprocessing ends its Pool's workers with SIGTERM, sometimes before
    a worker has run a line: CPython drops a signal caught between fork and the child's first
    line, and the worker lived on, blocked on the pool's queue lock, `with Pool()` waiting for it
    forever (one hang in ~3 runs of 30 forking batches on a busy machine, even with the child
    resetting the handler at fork). With the default action in the kernel, SIGTERM ends it. A
    SIGTERM to the pool process in a call ends it too, as billiard's handler did (unwinding)."""
    try:
        previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    except ValueError:  # not the main thread (tests calling predictors from threads): leave it be
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class LoadedClass:
    """A predictor's `PythonPredictor` class and the namespace its modules live in (and the
    deployed project it runs from, if the workers fetch it: workers/projects.py)."""

    def __init__(self, cls: type, modules: namespace.Namespace, project_id: str | None = None):
        self.cls, self.modules, self.project_id = cls, modules, project_id


# api_id -> its class, imported once per process; the latest few (each redeploy is a new api_id,
# and a module may hold a model: the predictors cached hold their own)
LOADED_APIS = 8
_loaded: Lru[str, LoadedClass] = Lru(LOADED_APIS)


def load_class(
    api: dict, deployed: Callable[[str], dict[str, str] | None], projects: ProjectCache | None = None
) -> LoadedClass:
    """Import an API's predictor from the code deployed with it (`deployed(code_id)`; read from its
    project folder for an API deployed before Batchery kept its code) and return its
    `PythonPredictor`, run from its project as fetched into `projects` when the API has a
    `project_id`; raises PredictorError."""
    api_id = api["api_id"]
    found = _loaded.get(api_id)
    if found is not None:
        return found
    file = Path(api["predictor_file"])
    root = Path(api.get("project_dir") or file.parent)  # older APIs: the predictor's folder
    relative = file.relative_to(root).as_posix()
    project_id = api.get("project_id") if projects is not None else None
    # A project deployed from a folder this host has (the local stack, an image holding it) runs from
    # that folder, as before: the examples write `../results` beside it. One deployed over HTTP, or
    # whose folder is not on this host, runs from its copy fetched into this host's cache.
    if projects is not None and project_id and not root.is_dir():
        root = _fetched(projects, project_id)
    else:
        project_id = None
    sources = (api.get("code_id") and deployed(api["code_id"])) or _read_folder(root)
    # Cortex's predictor.python_path (a folder of the project) is searched first, then the predictor's folder
    search = [*filter(None, [(api.get("predictor") or {}).get("python_path")]), str(Path(relative).parent)]
    modules = namespace.Namespace(root, sources, search, api.get("env") or {})
    namespace.install()
    try:
        with _calling(modules):
            # Cortex's name for it: what a pickle of a class defined there names, whatever the version
            module = modules.load("cortex_predictor", relative)
        cls = module.PythonPredictor
    except Exception as err:
        raise PredictorError(f"importing {file.name} failed: {type(err).__name__}: {err}") from err
    return _loaded.put(api_id, LoadedClass(cls, modules, project_id))


def _fetched(projects: ProjectCache, project_id: str) -> Path:
    try:
        return projects.folder(project_id)
    except ProjectError as err:
        raise PredictorError(str(err)) from err


def loaded_projects() -> set[str]:
    """The deployed projects of the predictor classes this process keeps imported."""
    return {loaded.project_id for loaded in _loaded.values() if loaded.project_id}


def _read_folder(folder: Path) -> dict[str, str]:
    try:
        return code.collect(folder)
    except Exception as err:
        raise PredictorError(str(err)) from err


def _accepted(func: Any) -> set[str] | None:
    """The argument names `func` takes (Cortex lets predictors omit any of them); None: any (**kwargs)."""
    params = inspect.signature(func).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return None
    return set(params)


def _takes_an_argument(func: Any) -> bool:
    """Whether `func` (a bound method) takes a positional argument; False if it cannot be inspected."""
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.VAR_POSITIONAL,
    )
    return any(p.kind in positional for p in params)


def _call_with(func: Any, available: dict, accepted: set[str] | None) -> Any:
    if accepted is None:
        return func(**available)
    return func(**{name: value for name, value in available.items() if name in accepted})


class Predictor:
    """A user's PythonPredictor instance, called with the Cortex signatures."""

    def __init__(self, loaded: LoadedClass, config: dict, job_spec: dict):
        self.modules = loaded.modules
        self.project_id = loaded.project_id
        cls = loaded.cls
        try:
            with _calling(self.modules):
                self.instance = _call_with(cls, {"config": config, "job_spec": job_spec}, _accepted(cls))
        except Exception as err:
            raise PredictorError(f"PythonPredictor.__init__ raised {type(err).__name__}: {err}") from err
        # read once: inspect.signature on every batch was ~5% of a pool process's CPU (bench/load.py)
        try:
            self._predict_accepts = _accepted(self.instance.predict)
        except (AttributeError, TypeError, ValueError) as err:
            raise PredictorError(f"PythonPredictor.predict cannot be called: {type(err).__name__}: {err}") from err

    def predict(self, payload: Any, batch_id: str) -> Any:
        """Run `predict` on one batch."""
        with _calling(self.modules):
            return _call_with(self.instance.predict, {"payload": payload, "batch_id": batch_id}, self._predict_accepts)

    def on_job_complete(self, job: Callable[[], dict] = dict) -> None:
        """Run `on_job_complete`: given the job's final status (`job()`, built only then) if it
        takes a parameter, as `predict` may take `batch_id`; without one, as on Cortex."""
        method = self.instance.on_job_complete
        arguments = [job()] if _takes_an_argument(method) else []  # read before the user's code runs
        with _calling(self.modules):
            method(*arguments)


def process_rss() -> int:
    """This process's resident memory now, bytes (Linux's /proc/self/statm); 0 where it cannot be read."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


class PredictorCache:
    """The predictors of the latest jobs this process worked on (loading a model is slow): at most
    `size`; and when the process's RSS is over `memory_bytes` (0: no limit) once a predictor is made,
    the others are dropped, least recently used first, until it is under or only that one is left
    (a big model is not kept many times over; README, "The predictor cache")."""

    def __init__(
        self,
        size: int = 16,
        deployed: Callable[[str], dict[str, str] | None] = lambda api_id: None,
        projects: ProjectCache | None = None,
        memory_bytes: int = 0,
        rss: Callable[[], int] = process_rss,
    ):
        self.deployed = deployed  # code_id -> the code deployed (the registry's)
        self.projects = projects  # where the deployed projects are fetched to (None: run from project_dir)
        self.memory_bytes = memory_bytes
        self.rss = rss  # the process's resident memory now (a test gives its own)
        self._items: Lru[str, Predictor] = Lru(size)

    @property
    def size(self) -> int:
        """How many jobs' predictors the cache keeps, at most."""
        return self._items.size

    def get(self, spec: dict, api: dict, more: Callable[[], dict] = dict) -> Predictor:
        """The job's predictor, built on first use in this process, its `job_spec` the job's spec
        and the fields `more()` adds; raises PredictorError."""
        job_id = spec["job_id"]
        found = self._items.get(job_id)
        if found is not None:
            return found
        loaded = load_class(api, self.deployed, self.projects)
        job_spec = {**copy.deepcopy(spec), **more()}  # the predictor's own: what it does to it stays with it
        predictor = self._items.put(job_id, Predictor(loaded, job_spec["config"], job_spec))
        self._keep_within_memory()
        self._release_projects()
        return predictor

    def _keep_within_memory(self) -> None:
        """Drop the least recently used predictors, the newest excepted, while the process's RSS is
        over the budget. Checked only when a predictor is made: reading RSS costs a file read, and a
        process's memory grows most when a model loads."""
        if not self.memory_bytes:
            return
        while len(self._items) > 1 and (rss := self.rss()) > self.memory_bytes:
            dropped = self._items.pop_oldest()
            # the predictor's memory back before RSS is read again (a model may sit in a reference cycle)
            gc.collect()
            log.info(
                "dropped job %s's predictor: this process's RSS, %d MiB, is over"
                " BATCHERY_PREDICTOR_MEMORY_BYTES (%d MiB)",
                dropped,
                rss >> 20,
                self.memory_bytes >> 20,
            )

    def cached(self, job_id: str) -> bool:
        """Whether this process holds the job's predictor."""
        return job_id in self._items

    def kept(self) -> list[str]:
        """The jobs whose predictors this process holds, least recently used first."""
        return list(self._items.keys())

    def evict(self, job_id: str) -> None:
        """Drop a finished job's predictor."""
        self._items.pop(job_id)
        self._release_projects()

    def _release_projects(self) -> None:
        """Let the cleanup have the project versions no predictor of this process runs from."""
        if self.projects is not None:
            mine = {predictor.project_id for predictor in self._items.values() if predictor.project_id}
            self.projects.release(mine | loaded_projects())
