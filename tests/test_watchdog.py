"""The watchdog: no job stays in status_enqueuing because the process enqueuing it died."""

from __future__ import annotations

import json
import logging
import uuid

import boto3

from app.config import Settings
from app.jobs.services import Services
from app.jobs.submission import ITEMS_STORED, follow
from app.jobs.watchdog import Watchdog
from app.model import status
from app.model.job import build_spec, now
from app.store import keys
from app.store.job_store import Outcome
from tests.services import RedisServer, free_port, wait_for

STALE_SECONDS = Settings().enqueue_lease_seconds  # the tests' API runs with the default lease


def stuck_job(services, api_name: str, config: dict, source: dict | None) -> dict:
    """A job stored as the API stores it, whose enqueuing never started (as if the API died)."""
    api = services.registry.get(api_name)
    spec = build_spec(api, {"workers": 2, "config": config}, services.submitter.queue_url, now())
    services.store.create(spec, api, now(), source)
    return spec


def test_s3_job_whose_enqueuer_vanished_gets_a_new_one(flask_app, jobs, worker, moto, r, probe_config):
    services = flask_app.extensions["batchery"]
    bucket = f"wd-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="in.jsonl", Body=b"".join(b'{"n": %d}\n' % i for i in range(10)))
    source = {
        "kind": "delimited_files",
        "s3_paths": [f"s3://{bucket}/"],
        "includes": [],
        "excludes": [],
        "batch_size": 4,
    }
    spec = stuck_job(services, "minimal", probe_config, source)
    watchdog = Watchdog(services)
    assert watchdog.sweep(now()) == []  # too early to call it lost
    assert spec["job_id"] in watchdog.sweep(now() + STALE_SECONDS + 1)
    job = jobs.wait_final("minimal", spec["job_id"])
    assert job["status"] == status.SUCCEEDED
    payloads = [json.loads(p) for p in r.lrange(f"minimal:{probe_config['tag']}:payloads", 0, -1)]
    assert sorted(v["n"] for batch in payloads for v in batch) == list(range(10))


def test_a_job_with_a_live_enqueuer_is_left_alone(flask_app, probe_config):
    services = flask_app.extensions["batchery"]
    source = {"kind": "delimited_files", "s3_paths": ["s3://b/"], "includes": [], "excludes": [], "batch_size": 1}
    spec = stuck_job(services, "minimal", probe_config, source)
    assert services.store.take_lease(spec["job_id"], "someone-alive")
    assert spec["job_id"] not in Watchdog(services).sweep(now() + STALE_SECONDS + 1)
    services.store.end(spec, status.STOPPED, "", now())


def test_item_list_job_left_enqueuing_by_a_dead_api_process_ends_enqueue_failed(flask_app, jobs, probe_config):
    services = flask_app.extensions["batchery"]
    spec = stuck_job(services, "minimal", probe_config, None)
    assert spec["job_id"] in Watchdog(services).sweep(now() + STALE_SECONDS + 1)
    job = jobs.status("minimal", spec["job_id"])
    assert job["status"] == status.ENQUEUE_FAILED
    assert "API process" in job["message"]


def test_item_list_job_whose_api_process_died_after_storing_every_batch_runs_to_the_end(
    flask_app, jobs, worker, r, probe_config
):
    services = flask_app.extensions["batchery"]
    spec = stuck_job(services, "minimal", probe_config, None)
    entries = [f"{i} {json.dumps([{'n': i}])}" for i in range(5)]
    stored = services.store.append(spec, entries, now(), cursor=json.dumps(ITEMS_STORED))
    follow(services.dispatcher, services.store, spec, Outcome(released=stored.released))
    # ...and the API process died before marking enqueuing done
    assert spec["job_id"] not in Watchdog(services).sweep(now())  # its request may still be going on
    assert jobs.status("minimal", spec["job_id"])["status"] == status.ENQUEUING
    assert spec["job_id"] in Watchdog(services).sweep(now() + STALE_SECONDS + 1)
    job = jobs.wait_final("minimal", spec["job_id"])
    assert job["status"] == status.SUCCEEDED
    assert job["batch_metrics"]["succeeded"] == 5
    payloads = [json.loads(p) for p in r.lrange(f"minimal:{probe_config['tag']}:payloads", 0, -1)]
    assert sorted(v["n"] for batch in payloads for v in batch) == list(range(5))


def test_with_redis_down_the_watchdog_warns_in_one_line_and_stops_when_told(caplog):
    services = Services.build(
        Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", apis_file="", watchdog_seconds=0)
    )
    watchdog = Watchdog(services)
    with caplog.at_level(logging.WARNING, logger="app.jobs.watchdog"):
        thread = watchdog.start(0.05)
        wait_for(lambda: caplog.records, timeout=30, what="the watchdog's warning")
        watchdog.stop()
        thread.join(30)
    assert not thread.is_alive()
    record = caplog.records[0]
    assert record.getMessage().startswith("watchdog sweep skipped: the job store does not answer")
    assert record.exc_info is None  # no traceback each sweep for as long as Redis is down


def test_jobs_on_another_queue_are_left_to_their_own_fleet(flask_app, probe_config):
    """Another fleet sharing this Redis: what this watchdog publishes would go to the wrong queue."""
    services = flask_app.extensions["batchery"]
    api = services.registry.get("minimal")
    spec = build_spec(api, {"workers": 2, "config": probe_config}, "redis://other-host/other-queue", now())
    services.store.create(spec, api, now())  # enqueuing, its enqueuer lost: this fleet's would be acted on
    assert spec["job_id"] not in Watchdog(services).sweep(now() + STALE_SECONDS + 1)
    assert services.store.state(spec["job_id"], "minimal", now())["status"] == status.ENQUEUING
    services.store.end(spec, status.STOPPED, "", now())


def test_a_fleet_taking_its_sweep_turn_leaves_another_fleet_its_own(tmp_path):
    """One sweep per fleet at a time, not per Redis: two fleets whose watchdogs shared one turn
    left one fleet's lost batches to a watchdog that never got it (a test app left running did).
    On a Redis of its own: on the shared one, the queues other tests' workers serve become
    homeless when their fleet's watchdog stops, and any process then takes their turn."""
    server = RedisServer(tmp_path)

    def fleet() -> Services:
        queue = f"fleet-{uuid.uuid4().hex[:8]}"
        return Services.build(Settings(redis_url=server.url, apis_file="", queue=queue, watchdog_seconds=0))

    try:
        this_fleet, other_fleet = fleet(), fleet()
        this, other = Watchdog(this_fleet), Watchdog(other_fleet)
        assert other.sweep_in_turn(60)  # the other fleet swept: its turn is held for 54 s
        assert this.sweep_in_turn(60)  # ...and this fleet's watchdog sweeps all the same
        assert not Watchdog(this_fleet).sweep_in_turn(60)  # a second process of this fleet waits its turn
    finally:
        server.stop()


def test_a_job_the_sweep_fails_on_does_not_stop_it_for_the_others(flask_app, jobs, probe_config, monkeypatch, caplog):
    """One job's error (a batch its broker refuses, a bug) aborted the whole sweep, every time: no
    other job of the fleet was recovered any more."""
    services = flask_app.extensions["batchery"]
    failing, other = (stuck_job(services, "minimal", probe_config, None) for _ in range(2))
    enqueue_state = services.store.enqueue_state

    def broken_for_one(job_id: str):
        if job_id == failing["job_id"]:
            raise RuntimeError("this job cannot be checked")
        return enqueue_state(job_id)

    monkeypatch.setattr(services.store, "enqueue_state", broken_for_one)
    with caplog.at_level(logging.ERROR, logger="app.jobs.watchdog"):
        acted = Watchdog(services).sweep(now() + STALE_SECONDS + 1)
    assert other["job_id"] in acted and failing["job_id"] not in acted
    assert jobs.status("minimal", other["job_id"])["status"] == status.ENQUEUE_FAILED
    assert f"watchdog: job {failing['job_id']} could not be checked" in caplog.text
    services.store.end(failing, status.STOPPED, "", now())


def test_apis_redis_lost_are_deployed_again_by_the_next_sweep_and_a_redeploy_is_kept(flask_app, client, r):
    """A Redis restarted empty: every request answered 404 "not deployed (deployed: none)" until
    the API processes restarted, while /healthz said ok."""
    watchdog = flask_app.extensions["batchery_watchdog"]
    r.delete(keys.api("minimal"))  # (the app's own watchdog thread may restore it any time from now)
    r.srem(keys.apis(), "minimal")
    probe = json.loads(r.hget(keys.api("probe"), "spec"))
    r.hset(keys.api("probe"), "spec", json.dumps(dict(probe, api_id="deployed-since")))  # `batchery deploy`
    try:
        watchdog.sweep(now())
        assert client.get("/batch/minimal").status_code == 200
        assert "minimal" in r.smembers(keys.apis())
        assert json.loads(r.hget(keys.api("probe"), "spec"))["api_id"] == "deployed-since"  # not overwritten
    finally:
        r.hset(keys.api("probe"), "spec", json.dumps(probe))
