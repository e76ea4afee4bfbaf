"""Loading a job's predictor with the Cortex signatures, once per worker process per job."""

from __future__ import annotations

import copy
import importlib.util
import inspect
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any


class PredictorError(Exception):
    """The predictor file could not be imported or its class could not be initialised."""


def load_class(path: str, api_id: str) -> type:
    """Import a predictor file and return its `PythonPredictor`; raises PredictorError."""
    module_name = f"batchery_predictor_{api_id}"
    if module_name in sys.modules:
        return sys.modules[module_name].PythonPredictor
    folder = str(Path(path).parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # so the predictor can import the modules beside it, as on Cortex
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        raise PredictorError(f"importing {Path(path).name} failed: {type(err).__name__}: {err}") from err
    sys.modules[module_name] = module
    return module.PythonPredictor


def _accepted(func: Any) -> set[str] | None:
    """The argument names `func` takes (Cortex lets predictors omit any of them); None: any (**kwargs)."""
    params = inspect.signature(func).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return None
    return set(params)


def _call_with(func: Any, available: dict, accepted: set[str] | None) -> Any:
    if accepted is None:
        return func(**available)
    return func(**{name: value for name, value in available.items() if name in accepted})


class Predictor:
    """A user's PythonPredictor instance, called with the Cortex signatures."""

    def __init__(self, cls: type, config: dict, job_spec: dict):
        try:
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
        return _call_with(self.instance.predict, {"payload": payload, "batch_id": batch_id}, self._predict_accepts)

    def on_job_complete(self) -> None:
        """Run `on_job_complete`."""
        self.instance.on_job_complete()


class PredictorCache:
    """The predictors of the latest few jobs this process worked on (loading a model is slow)."""

    def __init__(self, size: int = 2):
        self.size = size
        self._items: OrderedDict[str, Predictor] = OrderedDict()

    def get(self, spec: dict, api: dict) -> Predictor:
        """The job's predictor, built on first use in this process; raises PredictorError."""
        job_id = spec["job_id"]
        if job_id in self._items:
            self._items.move_to_end(job_id)
            return self._items[job_id]
        cls = load_class(api["predictor_file"], api["api_id"])
        job_spec = copy.deepcopy(spec)  # the predictor's own: what it does to it stays with it
        predictor = Predictor(cls, job_spec["config"], job_spec)
        self._items[job_id] = predictor
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return predictor

    def cached(self, job_id: str) -> bool:
        """Whether this process holds the job's predictor."""
        return job_id in self._items

    def evict(self, job_id: str) -> None:
        """Drop a finished job's predictor."""
        self._items.pop(job_id, None)
