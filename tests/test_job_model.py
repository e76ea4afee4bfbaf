"""The job spec and its status view (app/model/job.py): config merging, job ids, retry limits, the status shape."""

from __future__ import annotations

import json

import pytest

from app.model import status
from app.model.job import DELIVERIES_WITHOUT_DLQ, build_spec, deep_merge, job_status, new_job_id, retry_limits
from app.web.responses import JobStatusSchema, WorkerCountsSchema
from tests.shapes import answer_keys, null_until_known_keys


def test_deep_merge_merges_nested_mappings_and_the_override_wins():
    base = {"model": "resnet", "nested": {"keep": "api", "override": "api", "deeper": {"a": 1}}, "list": [1, 2]}
    override = {"nested": {"override": "job", "deeper": {"b": 2}, "new": "job"}, "list": [3], "extra": 1}
    assert deep_merge(base, override) == {
        "model": "resnet",
        "nested": {"keep": "api", "override": "job", "deeper": {"a": 1, "b": 2}, "new": "job"},
        "list": [3],
        "extra": 1,
    }


def test_deep_merge_a_non_mapping_replaces_a_mapping_and_back():
    assert deep_merge({"a": {"b": 1}}, {"a": 5}) == {"a": 5}
    assert deep_merge({"a": 5}, {"a": {"b": 1}}) == {"a": {"b": 1}}
    assert deep_merge({"a": {"b": 1}}, {"a": None}) == {"a": None}


def test_deep_merge_does_not_mutate_or_alias_its_inputs():
    base = {"nested": {"keep": "api", "list": [1]}}
    override = {"nested": {"new": {"deep": [2]}}}
    base_copy, override_copy = json.loads(json.dumps(base)), json.loads(json.dumps(override))
    merged = deep_merge(base, override)
    merged["nested"]["list"].append(99)
    merged["nested"]["new"]["deep"].append(99)
    merged["nested"]["keep"] = "changed"
    assert base == base_copy
    assert override == override_copy


def test_new_job_id_is_16_hex_digits():
    job_id = new_job_id(1_700_000_000.123456)
    assert len(job_id) == 16
    int(job_id, 16)
    assert job_id == job_id.lower()


def test_new_job_ids_sort_by_creation_time():
    times = [1_600_000_000.0 + step * 0.001 for step in range(0, 50)] + [1_700_000_000.0, 2_000_000_000.0]
    ids = [new_job_id(t) for t in times]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_new_job_ids_at_the_same_instant_differ():
    ids = {new_job_id(1_700_000_000.0) for _ in range(50)}
    assert len(ids) > 1  # 3 random hex digits: 50 draws all alike is practically impossible


def test_retry_limits_with_a_dead_letter_queue_are_its_max_receive_count():
    spec = {"sqs_dead_letter_queue": {"arn": "arn:aws:sqs:us-west-2:123456789:failed", "max_receive_count": 4}}
    assert retry_limits(spec) == (4, 4)


def test_retry_limits_without_a_dead_letter_queue_never_retry_a_raising_predict():
    assert retry_limits({}) == (DELIVERIES_WITHOUT_DLQ, 1)
    assert retry_limits({"sqs_dead_letter_queue": None}) == (DELIVERIES_WITHOUT_DLQ, 1)
    assert DELIVERIES_WITHOUT_DLQ >= 2  # a delivery lost with its worker is delivered again


def stored_state(job_status_code: str, **counts) -> dict:
    """A job's state as the store reads it: 4 batches, none done, unless `counts` says otherwise."""
    api = {"name": "sum", "api_id": "a1", "predictor": {"config": {}}}
    spec = build_spec(api, {"workers": 2, "config": {}}, "redis://host:6379/0/batchery", 1_700_000_000.0)
    state = {"spec": spec, "status": job_status_code, "total": 4, "succeeded": 0, "failed": 0, "failed_batches": 0}
    worker_counts = dict.fromkeys(answer_keys(WorkerCountsSchema), 0)
    return {**state, "time_sum": 0.0, "worker_counts": worker_counts, "start": None, "end": None, **counts}


def test_a_job_status_has_null_for_what_cortex_always_sent_and_has_no_value_yet():
    view = job_status(stored_state(status.ENQUEUING))
    null_until_known = null_until_known_keys(JobStatusSchema)  # timeout, sqs_dead_letter_queue, start_time
    assert {key: view[key] for key in null_until_known} == dict.fromkeys(null_until_known)
    assert view["batch_metrics"] == {"succeeded": 0, "failed": 0, "average_time_per_batch": None}
    assert "end_time" not in view  # the reference page's optional ones are left out


def test_a_job_status_of_a_job_stored_before_timeout_was_kept_still_has_it():
    state = stored_state(status.RUNNING, start=1_700_000_001.0)
    del state["spec"]["timeout"], state["spec"]["sqs_dead_letter_queue"]
    view = job_status(state)
    assert (view["timeout"], view["sqs_dead_letter_queue"], view["start_time"]) == (
        None,
        None,
        "2023-11-14T22:13:21Z",
    )


def test_the_average_time_per_batch_has_both_names_once_a_batch_succeeded():
    metrics = job_status(stored_state(status.RUNNING, succeeded=2, time_sum=3.0))["batch_metrics"]
    assert metrics == {"succeeded": 2, "failed": 0, "avg_time_per_batch": 1.5, "average_time_per_batch": 1.5}


@pytest.mark.parametrize("code", [status.STOPPED, status.TIMED_OUT, status.WORKER_ERROR, status.ENQUEUE_FAILED])
def test_an_ended_job_has_no_batches_in_queue_as_on_cortex(code):
    assert job_status(stored_state(code, succeeded=1, end=1_700_000_009.0))["batches_in_queue"] == 0
    assert job_status(stored_state(status.RUNNING, succeeded=1))["batches_in_queue"] == 3
