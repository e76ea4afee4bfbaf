"""`on_job_complete(self, job)`: given the job's final status, shaped as GET's `job_status`, with the
ids of its batches that failed for good; a Cortex `on_job_complete(self)` runs as before."""

from __future__ import annotations

import json

import pytest

from app.jobs.completion import completed_job
from app.model import status
from app.store import keys
from app.store.retries import RetryStore
from tests.conftest import PREDICTORS
from tests.services import wait_for
from workers.namespace import Namespace
from workers.runtime import LoadedClass, Predictor


@pytest.fixture(scope="module", autouse=True)
def ledger_api(flask_app):
    """The `ledger` test API (tests/predictors/ledger.yaml), deployed for this module's tests."""
    flask_app.extensions["batchery"].registry.deploy_file(PREDICTORS / "ledger.yaml")


EXTRA = {"failed_batch_ids", "failed_batch_ids_truncated"}


def test_on_job_complete_with_a_parameter_gets_the_final_status_and_the_failed_batch_ids(jobs, worker, r, probe_config):
    items = ["a", "fail-b", "c", "d", "fail-e", "f", "g", "h", "i", "j", "fail-k", "l"]  # batches 1, 4 and 10 fail
    spec = jobs.submit("ledger", {"workers": 3, "config": probe_config, "item_list": {"items": items, "batch_size": 1}})
    ended = jobs.wait_final("ledger", spec["job_id"])
    found = wait_for(lambda: r.get(f"ledger:{probe_config['tag']}:complete:{spec['job_id']}"), what="on_job_complete")
    job = json.loads(found)
    # sorted by batch number, not as text ("10" after "4"), and not cut
    assert (job["failed_batch_ids"], job["failed_batch_ids_truncated"]) == (["1", "4", "10"], False)
    # as GET answers it once the job ended: the status it was about to be given, the final counts
    assert set(job) - EXTRA == set(ended)
    assert job["status"] == ended["status"] == status.COMPLETED_WITH_FAILURES
    assert (
        job["batch_metrics"]
        == ended["batch_metrics"]
        == {
            "succeeded": 9,
            "failed": 3,
            "avg_time_per_batch": pytest.approx(ended["batch_metrics"]["avg_time_per_batch"]),
            "average_time_per_batch": pytest.approx(ended["batch_metrics"]["average_time_per_batch"]),
        }
    )
    assert (job["total_batch_count"], job["batches_in_queue"]) == (12, 0)


def test_a_cortex_on_job_complete_without_a_parameter_still_runs(jobs, worker, r, probe_config):
    body = {"workers": 1, "config": probe_config, "item_list": {"items": [1, {"fail": "always"}], "batch_size": 1}}
    spec = jobs.submit("probe", body)
    assert jobs.wait_final("probe", spec["job_id"])["status"] == status.COMPLETED_WITH_FAILURES
    assert r.lrange(f"probe:{probe_config['tag']}:complete", 0, -1) == [spec["job_id"]]


def test_the_failed_batch_ids_are_cut_at_the_limit_and_say_so(r):
    job_id = "0000000000000cut"
    r.zadd(keys.failed_batches(job_id), {f"{n} [{n}]": n for n in range(5)})
    state = {
        "spec": {"job_id": job_id, "api_name": "x", "created_time": "2026-01-01T00:00:00Z"},
        "status": status.RUNNING,
        "total": 9,
        "succeeded": 4,
        "failed": 5,
        "failed_batches": 5,
        "time_sum": 0.0,
        "start": 0,
    }
    try:
        job = completed_job(state, status.COMPLETED_WITH_FAILURES, "", RetryStore(r), at=1.0, limit=3)
        assert (job["failed_batch_ids"], job["failed_batch_ids_truncated"]) == (["0", "1", "2"], True)
        assert job["status"] == status.COMPLETED_WITH_FAILURES and "worker_counts" not in job
        job = completed_job(state, status.COMPLETED_WITH_FAILURES, "", RetryStore(r), at=1.0, limit=5)
        assert job["failed_batch_ids_truncated"] is False
    finally:
        r.delete(keys.failed_batches(job_id))


def predictor(cls: type) -> Predictor:
    return Predictor(LoadedClass(cls, Namespace(".", {})), {}, {"job_id": "j"})


def test_on_job_complete_is_given_the_job_only_if_it_takes_a_parameter():
    given = []

    class Cortex:
        def predict(self, payload):
            pass

        def on_job_complete(self):
            given.append("nothing")

    class Named(Cortex):
        def on_job_complete(self, job):
            given.append(job)

    class Varargs(Cortex):
        def on_job_complete(self, *args):
            given.append(args)

    class KeywordsOnly(Cortex):
        def on_job_complete(self, **kwargs):
            given.append(kwargs)

    def never() -> dict:
        raise AssertionError("the job is built only for an on_job_complete that takes it")

    predictor(Cortex).on_job_complete(never)
    predictor(Named).on_job_complete(lambda: {"job_id": "j"})
    predictor(Varargs).on_job_complete(lambda: {"job_id": "v"})
    predictor(KeywordsOnly).on_job_complete(never)
    assert given == ["nothing", {"job_id": "j"}, ({"job_id": "v"},), {}]
