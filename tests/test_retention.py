"""Retention: an ended job, with all it left in Redis, expires BATCHERY_JOB_RETENTION_SECONDS after its end;
its id then answers 404 saying so, it leaves the listings, and code no deployed API nor kept job runs is
removed. A job in progress keeps every key without a TTL. The tests run an API with a retention of 5 s
on the shared worker, and run the retention sweep themselves (the watchdog runs the same call)."""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import uuid

import pytest
import redis

from app import create_app
from app.jobs import retention
from app.jobs.watchdog import Watchdog
from app.model import status
from app.model.job import build_spec, now
from app.store import keys
from app.store.registry import Registry, read_deployments
from tests.conftest import Jobs
from tests.services import wait_for

RETENTION = 5  # seconds: long enough for a busy machine to look at the keys before they expire
API = "probe"


@pytest.fixture(scope="module")
def short_app(settings):
    """An API process whose jobs are kept RETENTION seconds once ended; its webhooks fail fast and are retried."""
    kept = dataclasses.replace(
        settings, job_retention_seconds=RETENTION, webhook_secret="s3cret", webhook_backoff_seconds=0.2
    )
    app = create_app({"SETTINGS": kept})
    yield app
    for name in ("batchery_watchdog", "batchery_webhooks"):
        app.extensions[name].stop()


@pytest.fixture
def short(short_app) -> Jobs:
    return Jobs(short_app.test_client())


@pytest.fixture
def services(short_app):
    return short_app.extensions["batchery"]


def job_keys_left(client: redis.Redis, job_id: str) -> list[str]:
    """Every Batchery key whose name holds the job's id."""
    return sorted(key.decode() for key in client.scan_iter(match=f"{keys.PREFIX}:*{job_id}*", count=1000))


def sweep_until_gone(services, job_ids: list[str], timeout: float = 60) -> None:
    """Run the watchdog's sweep (the retention sweep is part of it) until none of the jobs has a key
    left (their TTLs passed) nor a note waiting for the sweep."""
    watchdog = Watchdog(services)

    def gone() -> bool:
        watchdog.sweep(now())
        # the keys expire by themselves; the sweep after it (a note left until then) takes the rest
        notes = [note.decode() for note in services.redis.zrange(keys.retention_ended(), 0, -1)]
        noted = any(f'"{job_id}"' in note for note in notes for job_id in job_ids)
        return not noted and not any(job_keys_left(services.redis, job_id) for job_id in job_ids)

    wait_for(gone, timeout=timeout, interval=0.2, what="the jobs' keys to expire")


def test_every_key_family_of_a_job_is_in_job_keys():
    """A key family of a job added to app/store/keys.py without expiry fails here: `job_keys` lists
    what end_job expires and the sweep deletes."""
    listed = set(keys.job_keys("JOB"))
    for name, function in inspect.getmembers(keys, inspect.isfunction):
        if "job_id" in inspect.signature(function).parameters and name != "job_keys":
            assert function("JOB") in listed, f"keys.{name} is a key of a job, not in keys.job_keys"
    assert all(key.startswith(keys.job("JOB")) for key in listed)  # end_job names them from the job's key


@pytest.mark.parametrize(
    ("seconds", "words"),
    [(1209600, "14 days"), (86400, "1 day"), (7200, "2 hours"), (60, "1 minute"), (90, "90 seconds"), (1, "1 second")],
)
def test_the_retention_is_said_in_words(seconds, words):
    assert retention._duration(seconds) == words


def test_an_ended_job_expires_whole_leaves_the_listings_and_answers_404(
    short, services, worker, probe_config
):
    r = services.redis
    dlq = f"ret-{uuid.uuid4().hex[:8]}"
    body = {
        "workers": 2,
        "item_list": {"items": [1, {"fail": "always"}, 3], "batch_size": 1},
        "config": probe_config,
        "sqs_dead_letter_queue": {"arn": f"arn:aws:sqs:us-east-1:123456789012:{dlq}", "max_receive_count": 1},
        "output": {"store": "redis"},
        "webhook": {"url": "http://127.0.0.1:1/hook"},  # refused: the sender writes its body, tries again
    }
    idempotency_key = f"ret-{uuid.uuid4()}"
    posted = short.client.post(f"/batch/{API}", data=json.dumps(body), headers={"Idempotency-Key": idempotency_key})
    assert posted.status_code == 200, posted.get_json()
    job_id = posted.get_json()["job_id"]
    assert short.wait_final(API, job_id)["status"] == status.COMPLETED_WITH_FAILURES
    record = keys.idempotency(API, hashlib.sha256(idempotency_key.encode()).hexdigest())

    left = job_keys_left(r, job_id)
    families = {key.removeprefix(keys.job(job_id)) for key in left}
    # what the job left: its record, log, failed batch, output, throughput, dead-letter note, webhook body
    assert {"", ":log", ":log:seq", ":failed", ":output", ":throughput", ":batch_errors"} <= families, left
    ttls = {key: r.ttl(key) for key in left}  # -2: expired already; -1 (kept for ever) is what must not be
    assert all(-1 != ttl <= RETENTION for key, ttl in ttls.items() if not key.endswith(":webhook:lock")), ttls
    assert -1 != r.ttl(record) <= RETENTION  # the Idempotency-Key record goes with the job, not a day later
    assert r.llen(keys.dead_letters(dlq)) == 1
    assert job_id.encode() in r.zrange(keys.api_jobs(API), 0, -1)

    sweep_until_gone(services, [job_id])
    assert job_keys_left(r, job_id) == []
    assert not r.exists(record)
    assert r.llen(keys.dead_letters(dlq)) == 0  # its dead letter went with it
    assert r.zscore(keys.webhook_outbox(), job_id) is None
    assert r.zscore(keys.api_jobs(API), job_id) is None
    listed = short.client.get(f"/batch/{API}").get_json()["batch_job_statuses"]
    assert job_id not in [answer["job_id"] for answer in listed]

    answer = short.client.get(f"/batch/{API}?jobID={job_id}")
    assert answer.status_code == 404
    message = answer.get_json()["message"]
    assert message.startswith(f"job {job_id} expired on 20") and message.endswith(
        ": ended jobs are kept BATCHERY_JOB_RETENTION_SECONDS (5 seconds)"
    ), message
    print(f"\n{message}")
    unknown = short.client.get(f"/batch/{API}?jobID=00000000-0000-0000-0000-000000000000")
    assert unknown.get_json()["message"] == f"job 00000000-0000-0000-0000-000000000000 does not exist for api {API}"
    retried = short.client.post(f"/batch/{API}/{job_id}/retry", data="{}")
    assert retried.status_code == 404 and "expired on" in retried.get_json()["message"]

    # the key answers with a new job now: its record went with the expired one
    again = short.client.post(f"/batch/{API}", data=json.dumps(body), headers={"Idempotency-Key": idempotency_key})
    assert again.status_code == 200 and "Idempotent-Replayed" not in again.headers
    assert again.get_json()["job_id"] != job_id
    short.wait_final(API, again.get_json()["job_id"])


def test_a_running_job_keys_have_no_ttl_until_it_ends(short, services, worker, probe_config):
    r = services.redis
    body = {"workers": 1, "item_list": {"items": [{"sleep": 30}, 2], "batch_size": 1}, "config": probe_config}
    job_id = short.submit(API, body)["job_id"]
    wait_for(lambda: short.status(API, job_id)["worker_counts"]["running"] == 1, timeout=60, what="its batch to run")
    left = job_keys_left(r, job_id)
    assert {keys.job(job_id), keys.backlog(job_id), keys.inflight(job_id), keys.job_log(job_id)} <= set(left), left
    assert {key: r.ttl(key) for key in left} == dict.fromkeys(left, -1)
    assert short.client.delete(f"/batch/{API}?jobID={job_id}").status_code == 200
    ended = job_keys_left(r, job_id)
    assert ended and all(-1 != r.ttl(key) <= RETENTION for key in ended), {key: r.ttl(key) for key in ended}


def test_code_is_removed_once_no_deployed_api_nor_kept_job_runs_it(services, tmp_path):
    r, registry = services.redis, Registry(services.redis)
    name = f"ret-{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "cortex.yaml").write_text(f"- name: {name}\n  kind: BatchAPI\n  predictor:\n    path: p.py\n")
    (folder / "p.py").write_text("class PythonPredictor:\n    def predict(self, payload):\n        return 1\n")
    (first,) = [d.spec for d in registry.deploy(read_deployments(folder / "cortex.yaml"))]
    old = keys.code_keys(first)
    assert len(old) == 2 and all(r.exists(key) for key in old)
    spec = build_spec(first, {"workers": 1, "config": {}}, "q", now())
    services.store.create(spec, first, now())  # a job runs the first version

    (folder / "p.py").write_text("class PythonPredictor:\n    def predict(self, payload):\n        return 2\n")
    (second,) = [d.spec for d in registry.deploy(read_deployments(folder / "cortex.yaml"))]
    new = keys.code_keys(second)
    assert set(new).isdisjoint(old)
    later = now() + 60  # past the grace period of the first version (seen deployed until the redeploy)
    retention.sweep(services, later)
    assert all(r.exists(key) for key in old + new), "the first version is kept: a kept job runs it"

    services.store.end(spec, status.STOPPED, "", now())  # kept RETENTION seconds from now (`later` is after)
    assert all(r.exists(key) for key in old), "an ended job is kept, and its code with it"
    retention.sweep(services, later)
    assert not any(r.exists(key) for key in old), "no deployed API nor kept job runs the first version"
    assert all(r.exists(key) for key in new), "the deployed version is kept"
    registry.undeploy(name)


def test_fifty_small_jobs_leave_nothing_once_expired(short, services, worker, probe_config):
    """The soak benchmark (bench/retention.py) in small: every key of 50 one-batch jobs is gone."""
    body = {"workers": 1, "item_list": {"items": [1], "batch_size": 1}, "config": probe_config}
    job_ids = [short.submit(API, body)["job_id"] for _ in range(50)]
    for job_id in job_ids:
        short.wait_final(API, job_id)
    sweep_until_gone(services, job_ids)
    r = services.redis
    members = set(r.zrange(keys.api_jobs(API), 0, -1))
    assert not members & {job_id.encode() for job_id in job_ids}
    assert not any(job_id in note.decode() for note in r.zrange(keys.retention_ended(), 0, -1) for job_id in job_ids)
