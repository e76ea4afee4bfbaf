"""A batch's task revoked by an operator (Flower, `celery control revoke`) is a failed attempt, said
in the job's log: it runs again if the job's policy allows, else it fails for good, at once.

Before, the job went on running with the batch in flight until the watchdog took its message for
lost (BATCHERY_LOST_SECONDS, two minutes), then ran it again, with nothing in the job's log."""

from __future__ import annotations

import json
import time

from app.model import status
from app.model.wire import batch_task_id
from tests.services import wait_for

SETTLE = 60  # seconds: the job ends well within it; before, it waited for the watchdog (120 s)


def revoke(flask_app, task_id: str, terminate: bool = False) -> None:
    """`celery control revoke <task_id> [--terminate]`, as Flower sends it."""
    flask_app.extensions["batchery"].dispatcher.celery.control.revoke(task_id, terminate=terminate)


def log_messages(client, job_id: str) -> list[str]:
    return [line["message"] for line in client.get(f"/batch/probe/logs?jobID={job_id}").get_json()["lines"]]


def test_a_batch_revoked_before_it_started_runs_again_when_attempts_are_left(
    flask_app, client, jobs, worker, r, probe_config, dead_letter_queue
):
    body = {
        "workers": 1,  # batch 1 is released once batch 0 (3 s) ends: its revoke arrives first
        "config": probe_config,
        "item_list": {"items": [{"sleep": 3}, 1], "batch_size": 1},
        "sqs_dead_letter_queue": {"arn": dead_letter_queue(f"revoke-{probe_config['tag']}"), "max_receive_count": 2},
    }
    spec = jobs.submit("probe", body)
    revoke(flask_app, batch_task_id(spec["job_id"], "1"))
    started = time.monotonic()
    job = jobs.wait_final("probe", spec["job_id"], timeout=SETTLE)
    print(f"\nrevoked before it started, attempts left: {job['status']} {time.monotonic() - started:.1f}s later")
    assert job["status"] == status.SUCCEEDED, job
    assert job["batch_metrics"] == {**job["batch_metrics"], "succeeded": 2, "failed": 1}
    deliveries = r.hgetall(f"probe:{probe_config['tag']}:deliveries:{spec['job_id']}")
    assert deliveries == {"0": "1", "1": "1"}  # batch 1 ran once: its second message
    said = [m for m in log_messages(client, spec["job_id"]) if "revoked" in m]
    assert said == [
        "batch 1: its task was revoked before it started (Flower or `celery control revoke`):"
        " attempt 1 counted as failed; it runs again"
    ]


def test_a_batch_terminated_while_it_ran_without_attempts_left_fails_for_good_at_once(
    flask_app, client, jobs, worker, r, probe_config
):
    body = {"workers": 2, "config": probe_config, "item_list": {"items": [{"sleep": 120}, 1], "batch_size": 1}}
    spec = jobs.submit("probe", body)
    starts = f"probe:{probe_config['tag']}:starts:{spec['job_id']}"
    wait_for(
        lambda: any(json.loads(s)["batch"] == "0" for s in r.lrange(starts, 0, -1)), what="batch 0 inside predict"
    )
    revoke(flask_app, batch_task_id(spec["job_id"], "0"), terminate=True)
    started = time.monotonic()
    job = jobs.wait_final("probe", spec["job_id"], timeout=SETTLE)
    print(f"\nterminated while it ran, no attempt left: {job['status']} {time.monotonic() - started:.1f}s later")
    assert job["status"] == status.COMPLETED_WITH_FAILURES, job
    assert job["batch_metrics"] == {**job["batch_metrics"], "succeeded": 1, "failed": 1}
    assert not (job.get("worker_counts") or {}).get("running")
    said = [m for m in log_messages(client, spec["job_id"]) if "revoked" in m]
    assert said == [
        "batch 0: its task was revoked while it ran, its process terminated (signal 15) (Flower or"
        " `celery control revoke`): attempt 1 counted as failed; no attempt left: failed for good"
    ]
