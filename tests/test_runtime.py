"""A predictor class called as Cortex calls it (workers/runtime.py): with the arguments its methods name."""

from __future__ import annotations

import pytest

from workers.namespace import Namespace
from workers.runtime import LoadedClass, Predictor, PredictorError


def loaded(cls: type):
    """A predictor class as load_class gives it, with an empty namespace of modules."""
    return LoadedClass(cls, Namespace(".", {}))


def test_predictor_is_called_with_the_arguments_its_methods_name():
    class Named:
        def __init__(self, config):
            self.config = config

        def predict(self, payload):
            return ("named", payload, self.config)

    class Anything:
        def __init__(self, **kwargs):
            self.seen = kwargs

        def predict(self, **kwargs):
            return kwargs

    assert Predictor(loaded(Named), {"k": 1}, {"job_id": "j"}).predict([1], "7") == ("named", [1], {"k": 1})
    anything = Predictor(loaded(Anything), {"k": 1}, {"job_id": "j"})
    assert anything.instance.seen == {"config": {"k": 1}, "job_spec": {"job_id": "j"}}
    assert anything.predict([1], "7") == {"payload": [1], "batch_id": "7"}


def test_predictor_without_a_predict_method_is_a_predictor_error():
    class NoPredict:
        def __init__(self, config):
            pass

    with pytest.raises(PredictorError, match=r"PythonPredictor\.predict cannot be called"):
        Predictor(loaded(NoPredict), {}, {})
