"""`POST /batch/<api>/<job_id>/retry`: a new job of the batches that failed for good (and, asked
for, of those never run), with their items, ids and order, on real workers."""

from __future__ import annotations

import json
import uuid

import boto3
import pytest

from app.client import BatcheryAPIError, Client
from app.model import status
from app.store import keys
from app.store.retries import RetryStore
from app.web import responses
from tests.conftest import PREDICTORS
from tests.services import wait_for
from tests.test_cli import Cli, one_error_line


@pytest.fixture(scope="module", autouse=True)
def ledger_api(flask_app):
    """The `ledger` test API (tests/predictors/ledger.yaml), deployed for this module's tests."""
    flask_app.extensions["batchery"].registry.deploy_file(PREDICTORS / "ledger.yaml")


ITEMS = ["a", "b", "fail-c", "d", "e", "f", "fail-g", "h"]  # batches of 2: 1 and 3 fail


def seen(r, config: dict, job_id: str) -> list[list]:
    """The `[batch_id, payload]` of each delivery the ledger predictor saw, in the order it saw them."""
    return [json.loads(line) for line in r.lrange(f"ledger:{config['tag']}:seen:{job_id}", 0, -1)]


def completed_with(r, config: dict, job_id: str) -> dict:
    """What the job's on_job_complete(self, job) was given."""
    found = wait_for(lambda: r.get(f"ledger:{config['tag']}:complete:{job_id}"), what="on_job_complete")
    return json.loads(found)


def retry(client, job_id: str, body: dict | None = None, api: str = "ledger"):
    return client.post(f"/batch/{api}/{job_id}/retry", data=json.dumps({} if body is None else body))


@pytest.mark.parametrize("broker", ["redis", "sqs"], indirect=True)
def test_a_retry_runs_exactly_the_failed_batches_and_a_retry_of_it_with_overrides_heals_them(
    jobs, worker, r, probe_config, client
):
    config = probe_config
    parent = jobs.submit("ledger", {"workers": 2, "config": config, "item_list": {"items": ITEMS, "batch_size": 2}})
    ended = jobs.wait_final("ledger", parent["job_id"])
    assert ended["status"] == status.COMPLETED_WITH_FAILURES

    # on_job_complete(self, job) saw the job as it ended: its status, final counts and failed ids
    job = completed_with(r, config, parent["job_id"])
    assert job["status"] == status.COMPLETED_WITH_FAILURES and job["job_id"] == parent["job_id"]
    assert job["batch_metrics"]["succeeded"] == 2 and job["batch_metrics"]["failed"] == 2
    assert (job["failed_batch_ids"], job["failed_batch_ids_truncated"]) == (["1", "3"], False)
    assert job["batches_in_queue"] == 0 and "worker_counts" not in job and job["end_time"]
    assert RetryStore(r).failed_ids(parent["job_id"], limit=1) == (["1"], True)  # cut at the limit, and said

    answer = retry(client, parent["job_id"])
    assert answer.status_code == 200, answer.get_data(as_text=True)
    child = answer.get_json()
    assert child["parent_job_id"] == parent["job_id"] and child["job_id"] != parent["job_id"]
    assert (child["workers"], child["timeout"], child["config"]["tag"]) == (2, None, config["tag"])
    child_ended = jobs.wait_final("ledger", child["job_id"])
    assert child_ended["status"] == status.COMPLETED_WITH_FAILURES  # the same items fail again
    assert child_ended["total_batch_count"] == 2 and child_ended["parent_job_id"] == parent["job_id"]
    # exactly the failed batches, their ids and items, in the parent's order (workers 2: either first)
    assert sorted(seen(r, config, child["job_id"])) == [["1", ["fail-c", "d"]], ["3", ["fail-g", "h"]]]
    assert jobs.status("ledger", parent["job_id"])["retry_job_ids"] == [child["job_id"]]
    # the answers fit their documented schemas (unknown fields refused): parent_job_id, retry_job_ids
    responses.JobSpecSchema().load(child)
    responses.JobStatusResponseSchema().load(client.get(f"/batch/ledger?jobID={parent['job_id']}").get_json())
    responses.JobStatusResponseSchema().load(client.get(f"/batch/ledger?jobID={child['job_id']}").get_json())

    # a retry of the retry, its settings overridden: one batch at a time, healed by its config
    answer = retry(client, child["job_id"], {"workers": 1, "timeout": 600, "config": {"heal": True}})
    assert answer.status_code == 200, answer.get_data(as_text=True)
    grandchild = answer.get_json()
    assert (grandchild["workers"], grandchild["timeout"], grandchild["parent_job_id"]) == (1, 600, child["job_id"])
    assert grandchild["config"] == dict(config, heal=True)  # merged over the parent's config, as its job wins
    assert jobs.wait_final("ledger", grandchild["job_id"])["status"] == status.SUCCEEDED
    assert seen(r, config, grandchild["job_id"]) == [["1", ["fail-c", "d"]], ["3", ["fail-g", "h"]]]  # in order
    assert completed_with(r, config, grandchild["job_id"])["failed_batch_ids"] == []
    assert jobs.status("ledger", child["job_id"])["retry_job_ids"] == [grandchild["job_id"]]
    assert "retry_job_ids" not in jobs.status("ledger", grandchild["job_id"])

    # a job that ended before its failed batches were kept says so, and where they still are
    r.delete(keys.failed_batches(child["job_id"]))
    assert retry(client, child["job_id"]).get_json()["message"] == (
        f"job {child['job_id']} has nothing to retry: its 2 batches that failed for good were not kept "
        "(it ended before this version of Batchery); replay them from its dead letters"
    )

    # retried twice: both retries listed, oldest first
    again = retry(client, parent["job_id"]).get_json()
    assert jobs.status("ledger", parent["job_id"])["retry_job_ids"] == [child["job_id"], again["job_id"]]
    jobs.wait_final("ledger", again["job_id"])


def test_include_unfinished_retries_what_a_stopped_job_never_ran_and_what_failed(jobs, worker, r, probe_config, client):
    """Stopped with batches 0 and 1 inside predict: 0 then succeeds and 1 fails (both counted late),
    2 to 4 never left the backlog."""
    config = probe_config
    items = ["hold", "hold-fail", "c", "d", "e"]
    parent = jobs.submit("ledger", {"workers": 2, "config": config, "item_list": {"items": items, "batch_size": 1}})
    wait_for(lambda: len(seen(r, config, parent["job_id"])) == 2, what="batches 0 and 1 inside predict")
    assert client.delete(f"/batch/ledger?jobID={parent['job_id']}").status_code == 200
    r.set(f"ledger:{config['tag']}:release", 1)
    metrics = wait_for(
        lambda: (m := jobs.status("ledger", parent["job_id"])["batch_metrics"])["succeeded"] + m["failed"] == 2 and m,
        what="the late outcomes of batches 0 and 1",
    )
    assert (metrics["succeeded"], metrics["failed"]) == (1, 1)

    failed_only = retry(client, parent["job_id"]).get_json()
    assert jobs.wait_final("ledger", failed_only["job_id"])["total_batch_count"] == 1
    assert seen(r, config, failed_only["job_id"]) == [["1", ["hold-fail"]]]

    child = retry(client, parent["job_id"], {"include": "unfinished", "config": {"heal": True}}).get_json()
    assert jobs.wait_final("ledger", child["job_id"])["status"] == status.SUCCEEDED
    assert sorted(seen(r, config, child["job_id"])) == [["1", ["hold-fail"]], ["2", ["c"]], ["3", ["d"]], ["4", ["e"]]]


def test_include_unfinished_retries_what_a_timed_out_job_never_ran(jobs, worker, r, probe_config, client):
    """Timed out with batch 0 inside predict (it succeeds later) and 1 and 2 still in the backlog
    (3 s: time enough for batch 0 to start on a busy machine, where it waits to be released)."""
    config = probe_config
    body = {"workers": 1, "timeout": 3, "config": config, "item_list": {"items": ["hold", "b", "c"], "batch_size": 1}}
    parent = jobs.submit("ledger", body)
    wait_for(lambda: seen(r, config, parent["job_id"]), what="batch 0 inside predict")
    assert jobs.wait_final("ledger", parent["job_id"])["status"] == status.TIMED_OUT
    r.set(f"ledger:{config['tag']}:release", 1)
    wait_for(lambda: jobs.status("ledger", parent["job_id"])["batch_metrics"]["succeeded"] == 1, what="batch 0's end")
    nothing = retry(client, parent["job_id"]).get_json()["message"]
    assert nothing.endswith(
        'no batch that failed for good; to run the batches it never ran, send {"include": "unfinished"}'
    )
    child = retry(client, parent["job_id"], {"include": "unfinished", "timeout": None}).get_json()
    assert child["timeout"] is None
    assert jobs.wait_final("ledger", child["job_id"])["status"] == status.SUCCEEDED
    assert seen(r, config, child["job_id"]) == [["1", ["b"]], ["2", ["c"]]]


def test_the_refusals_say_what_is_wrong(jobs, worker, r, probe_config, client):
    config = probe_config
    held = jobs.submit("ledger", {"workers": 1, "config": config, "item_list": {"items": ["hold"], "batch_size": 1}})
    try:
        wait_for(lambda: seen(r, config, held["job_id"]), what="the batch inside predict")
        answer = retry(client, held["job_id"])
        assert answer.status_code == 400
        assert answer.get_json()["message"].startswith(f"job {held['job_id']} is still in progress (status_running)")
    finally:
        r.set(f"ledger:{config['tag']}:release", 1)
    assert jobs.wait_final("ledger", held["job_id"])["status"] == status.SUCCEEDED
    answer = retry(client, held["job_id"])
    assert answer.status_code == 400
    assert answer.get_json()["message"] == (
        f"job {held['job_id']} has nothing to retry: it ended status_succeeded with no batch that failed for good"
    )
    nothing = retry(client, held["job_id"], {"include": "unfinished"}).get_json()["message"]
    assert nothing.endswith("it ended status_succeeded, and every one of its batches succeeded")

    refused = {
        "": "the request body is empty: send a JSON object ({} retries the failed batches)",
        "[]": "the request body must be a JSON object: {} to retry the failed batches as they were",
        '{"include": "all"}': "include: must be failed or unfinished",
        '{"workers": 0}': "workers: must be at least 1",
        '{"timeout": "10"}': "timeout: not a valid integer",
        '{"sqs_dead_letter_queue": {"arn": ""}}': "sqs_dead_letter_queue.arn: must not be empty; "
        "sqs_dead_letter_queue.max_receive_count: missing data for required field",
        '{"worker": 2}': "worker: unknown field (check its spelling against the job submission reference)",
    }
    for body, message in refused.items():
        answer = client.post(f"/batch/ledger/{held['job_id']}/retry", data=body)
        assert (answer.status_code, answer.get_json()["message"]) == (400, message), body
    assert retry(client, "0000000000000abc").status_code == 404
    assert retry(client, held["job_id"], api="minimal").get_json()["message"] == (
        f"job {held['job_id']} does not exist for api minimal"
    )
    assert retry(client, held["job_id"], api="nope").status_code == 404
    query = client.post(f"/batch/ledger/{held['job_id']}/retry?dryRun=true", data="{}")
    assert query.status_code == 400 and "unknown query parameter 'dryRun'" in query.get_json()["message"]


def test_a_retry_of_an_s3_job_runs_its_failed_batches_of_paths(jobs, worker, r, probe_config, client, moto):
    config = probe_config
    bucket = f"bucket-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    names = ["a.json", "b.json", "c-fail.json", "d.json", "e.json"]
    for name in names:
        s3.put_object(Bucket=bucket, Key=f"in/{name}", Body=b"{}")
    lister = {"s3_paths": [f"s3://{bucket}/in/"], "batch_size": 2}
    parent = jobs.submit("ledger", {"workers": 2, "config": config, "file_path_lister": lister})
    assert jobs.wait_final("ledger", parent["job_id"])["status"] == status.COMPLETED_WITH_FAILURES
    child = retry(client, parent["job_id"], {"config": {"heal": True}}).get_json()
    assert jobs.wait_final("ledger", child["job_id"])["status"] == status.SUCCEEDED
    assert seen(r, config, child["job_id"]) == [["1", [f"s3://{bucket}/in/c-fail.json", f"s3://{bucket}/in/d.json"]]]


def test_the_cli_and_the_client_retry_a_job(live_url, worker, tmp_path, redis_server, r, probe_config):
    cli = Cli(live_url, tmp_path, redis_server.url)
    client = Client(live_url)
    config = probe_config
    parent = client.submit("ledger", {"workers": 2, "config": config, "item_list": {"items": ITEMS, "batch_size": 2}})
    client.wait("ledger", parent["job_id"], timeout=120)

    done = cli("retry", "ledger", parent["job_id"], "--workers", "1", "--timeout", "300")
    assert done.returncode == 0, done.stderr
    child_id = done.stdout.strip()
    child = client.wait("ledger", child_id, timeout=120)
    assert (child["parent_job_id"], child["workers"], child["timeout"], child["total_batch_count"]) == (
        parent["job_id"],
        1,
        300,
        2,
    )

    healed = client.retry("ledger", child_id, include="unfinished", config={"heal": True})
    assert healed["parent_job_id"] == child_id
    assert client.wait("ledger", healed["job_id"], timeout=120)["status"] == status.SUCCEEDED
    with pytest.raises(BatcheryAPIError) as refused:
        client.retry("ledger", healed["job_id"])
    assert refused.value.status == 400 and "has nothing to retry" in refused.value.message

    nothing = cli("retry", "ledger", healed["job_id"], "--include", "unfinished")
    assert one_error_line(nothing).startswith(f"error: job {healed['job_id']} has nothing to retry")


def test_a_retry_of_a_delimited_files_job_reads_its_failed_byte_ranges_again(jobs, worker, r, probe_config, client):
    config = probe_config
    bucket = f"bucket-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="in/values.jsonl", Body=b'"a"\n"b"\n"c-fail"\n"d"\n"e"\n')
    source = {"s3_paths": [f"s3://{bucket}/in/"], "batch_size": 2}
    parent = jobs.submit("ledger", {"workers": 2, "config": config, "delimited_files": source})
    assert jobs.wait_final("ledger", parent["job_id"])["status"] == status.COMPLETED_WITH_FAILURES
    child = retry(client, parent["job_id"], {"config": {"heal": True}}).get_json()
    assert jobs.wait_final("ledger", child["job_id"])["status"] == status.SUCCEEDED
    assert seen(r, config, child["job_id"]) == [["1", ["c-fail", "d"]]]  # its values, read from its byte range
