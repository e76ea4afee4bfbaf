"""Retries, dead letters and workers that die, with the counts the status must show."""

from __future__ import annotations

import json
import os

from app.model import status
from tests.conftest import BOTH_BROKERS
from tests.services import wait_for

pytestmark = BOTH_BROKERS


def dlq(arn: str, count: int) -> dict:
    return {"arn": arn, "max_receive_count": count}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def letters(flask_app, arn: str) -> list[dict]:
    """The dead-letter queue's messages, read back from the broker's own queue (Redis list or SQS)."""
    return flask_app.extensions["batchery"].dead_letters.read(arn)


def test_batch_that_always_fails_is_delivered_max_receive_count_times_then_dead_lettered(
    jobs, worker, flask_app, dead_letter_queue, probe_config
):
    queue = dead_letter_queue(f"failed-{probe_config['tag']}")
    spec = jobs.submit(
        "probe",
        {
            "workers": 2,
            "sqs_dead_letter_queue": dlq(queue, 3),
            "config": probe_config,
            "item_list": {"items": [1, {"fail": "always"}, 3, 4], "batch_size": 1},
        },
    )
    job = jobs.wait_final("probe", spec["job_id"])
    assert job["status"] == status.COMPLETED_WITH_FAILURES
    assert job["batch_metrics"]["succeeded"] == 3
    assert job["batch_metrics"]["failed"] == 3  # three failed attempts of one batch
    assert job["batches_in_queue"] == 0
    found = letters(flask_app, queue)
    assert len(found) == 1
    letter = found[0]
    assert letter["job_id"] == spec["job_id"]
    assert letter["batch_id"] == "1"
    assert letter["payload"] == [{"fail": "always"}]
    assert "probe failure on delivery 3" in letter["error"]
    assert "Traceback" in letter["traceback"]


def test_sys_exit_in_predict_is_a_failed_attempt_not_a_dead_worker(
    jobs, worker, flask_app, dead_letter_queue, r, probe_config
):
    """SystemExit ended the pool process: the batch was retried as a dead worker's delivery (3
    failed attempts of one, a predictor loaded each time) and its message was lost."""
    queue = dead_letter_queue(f"exit-{probe_config['tag']}")
    spec = jobs.submit(
        "probe",
        {
            "workers": 1,
            "sqs_dead_letter_queue": dlq(queue, 2),
            "config": probe_config,
            "item_list": {"items": [1, {"exit": "bad input"}, 3], "batch_size": 1},
        },
    )
    job = jobs.wait_final("probe", spec["job_id"])
    assert job["status"] == status.COMPLETED_WITH_FAILURES
    assert job["batch_metrics"]["failed"] == 2 and job["batch_metrics"]["succeeded"] == 2
    (letter,) = letters(flask_app, queue)
    assert letter["batch_id"] == "1"
    assert letter["error"] == "workers.runtime.PredictorExit: sys.exit('bad input') was called"
    assert 'sys.exit(item["exit"])' in letter["traceback"]  # where the predictor called it
    inits = [json.loads(entry) for entry in r.lrange(f"probe:{probe_config['tag']}:inits", 0, -1)]
    assert all(alive(init["pid"]) for init in inits)  # no process that ran the predictor ended


def test_batch_that_fails_twice_then_succeeds_counts_two_failed_attempts(
    jobs, worker, flask_app, dead_letter_queue, r, probe_config
):
    spec = jobs.submit(
        "probe",
        {
            "workers": 1,
            "sqs_dead_letter_queue": dlq(dead_letter_queue(f"q-{probe_config['tag']}"), 3),
            "config": probe_config,
            "item_list": {"items": [{"fail": 2}, 2], "batch_size": 1},
        },
    )
    job = jobs.wait_final("probe", spec["job_id"])
    assert job["status"] == status.SUCCEEDED
    assert job["batch_metrics"] == {
        "succeeded": 2,
        "failed": 2,
        "avg_time_per_batch": job["batch_metrics"]["avg_time_per_batch"],
        "average_time_per_batch": job["batch_metrics"]["avg_time_per_batch"],
    }
    assert r.hget(f"probe:{probe_config['tag']}:deliveries:{spec['job_id']}", "0") == "3"
    assert letters(flask_app, spec["sqs_dead_letter_queue"]["arn"]) == []


def test_without_dead_letter_queue_a_failed_batch_is_not_retried(jobs, worker, r, probe_config):
    spec = jobs.submit(
        "probe", {"workers": 1, "config": probe_config, "item_list": {"items": [{"fail": 1}, 2, 3], "batch_size": 1}}
    )
    job = jobs.wait_final("probe", spec["job_id"])
    assert job["status"] == status.COMPLETED_WITH_FAILURES
    assert job["batch_metrics"]["failed"] == 1
    assert job["batch_metrics"]["succeeded"] == 2
    assert r.hget(f"probe:{probe_config['tag']}:deliveries:{spec['job_id']}", "0") == "1"


def test_failures_still_run_on_job_complete_once(jobs, worker, r, probe_config):
    spec = jobs.submit(
        "probe",
        {"workers": 2, "config": probe_config, "item_list": {"items": [{"fail": "always"}] * 3, "batch_size": 1}},
    )
    job = jobs.wait_final("probe", spec["job_id"])
    assert job["status"] == status.COMPLETED_WITH_FAILURES
    assert job["batch_metrics"]["succeeded"] == 0
    assert r.lrange(f"probe:{probe_config['tag']}:complete", 0, -1) == [spec["job_id"]]


def test_delivery_whose_worker_dies_counts_and_the_batch_runs_again(jobs, worker, dead_letter_queue, r, probe_config):
    spec = jobs.submit(
        "probe",
        {
            "workers": 2,
            "sqs_dead_letter_queue": dlq(dead_letter_queue(f"k-{probe_config['tag']}"), 3),
            "config": probe_config,
            "item_list": {"items": [1, {"kill": 1}, 3], "batch_size": 1},
        },
    )
    job = jobs.wait_final("probe", spec["job_id"])
    assert job["status"] == status.SUCCEEDED
    assert job["batch_metrics"]["succeeded"] == 3
    assert job["batch_metrics"]["failed"] == 1  # the delivery that died
    assert r.hget(f"probe:{probe_config['tag']}:deliveries:{spec['job_id']}", "1") == "2"


def test_batch_that_kills_its_worker_every_time_is_dead_lettered_and_the_fleet_survives(
    jobs, worker, flask_app, dead_letter_queue, r, probe_config
):
    queue = dead_letter_queue(f"poison-{probe_config['tag']}")
    spec = jobs.submit(
        "probe",
        {
            "workers": 2,
            "sqs_dead_letter_queue": dlq(queue, 2),
            "config": probe_config,
            "item_list": {"items": [{"kill": "always"}, 2, 3], "batch_size": 1},
        },
    )
    job = jobs.wait_final("probe", spec["job_id"])
    assert job["status"] == status.COMPLETED_WITH_FAILURES
    assert job["batch_metrics"]["succeeded"] == 2
    assert job["batch_metrics"]["failed"] == 2  # both deliveries died
    assert r.hget(f"probe:{probe_config['tag']}:deliveries:{spec['job_id']}", "0") == "2"
    found = letters(flask_app, queue)
    assert [letter["batch_id"] for letter in found] == ["0"]
    assert "died" in found[0]["error"]
    assert worker.process.poll() is None
    after = jobs.submit(
        "probe", {"workers": 2, "item_list": {"items": [1, 2], "batch_size": 1}, "config": probe_config}
    )
    assert jobs.wait_final("probe", after["job_id"])["status"] == status.SUCCEEDED


def test_a_worker_that_died_is_no_longer_counted_as_running(jobs, worker, probe_config):
    spec = jobs.submit(
        "probe",
        {"workers": 1, "config": probe_config, "item_list": {"items": [{"kill": 1}, {"sleep": 2}], "batch_size": 1}},
    )

    def second_batch_running():
        job = jobs.status("probe", spec["job_id"])
        return job if job["batch_metrics"]["succeeded"] == 1 and job["worker_counts"]["running"] else None

    job = wait_for(second_batch_running, what="the batch after the killed one to run")
    assert job["worker_counts"]["running"] == 1
    assert job["worker_counts"]["initializing"] == 0
    assert jobs.wait_final("probe", spec["job_id"])["status"] == status.SUCCEEDED
