"""Ownership, not liveness: a batch's delivery belongs to its pool process for as long as that
process lives, as its worker's main process says (workers/liveness.py). A slow owner (a predictor
holding the GIL) or a Redis that lost its liveness keys is never taken for dead; a dead one is.
The whole-worker SIGKILL case is tests/test_faults.py's."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import time

import pytest

from app import create_app
from app.config import Settings
from app.jobs.submission import follow
from app.jobs.watchdog import Watchdog
from app.model import status
from app.model.job import build_spec, now
from app.store import keys, owners
from app.store.joblog import attach_job_log
from tests.conftest import BOTH_BROKERS, Jobs
from tests.services import RedisServer, Worker, wait_for
from workers import liveness

LOST = 2.0  # BATCHERY_LOST_SECONDS of the fleets here: their processes' keys expire this fast


@pytest.fixture(autouse=True)
def job_logs_back_to_the_shared_app(flask_app):
    """The apps built here take the process's job log handler; give it back to the shared app."""
    yield
    attach_job_log(flask_app.extensions["batchery"].job_log)


@contextlib.contextmanager
def fleet(settings: Settings, worker_env: dict, tmp_path, name: str, **overrides):
    """An API app (its watchdog sweeping every 0.5 s) and a worker of 2 pool processes of their own
    on the queue `name`, with BATCHERY_LOST_SECONDS = LOST: yields `(app, jobs, worker)`."""
    quick = dataclasses.replace(settings, queue=name, watchdog_seconds=0.5, lost_seconds=LOST, **overrides)
    env = {**worker_env, "BATCHERY_QUEUE": name, "BATCHERY_LOST_SECONDS": str(LOST)}
    if "redis_url" in overrides:
        env["REDIS_URL"] = overrides["redis_url"]
        env["BATCHERY_STORE_OUTAGE_SECONDS"] = "0"  # a store that does not answer fails the outcome at once
    app = create_app({"SETTINGS": quick})
    worker = Worker(env, tmp_path, name, concurrency=2)
    try:
        yield app, Jobs(app.test_client()), worker
    finally:
        app.extensions["batchery_watchdog"].stop()
        worker.stop()


def job_log(jobs: Jobs, job_id: str) -> list[str]:
    """The messages of a job's log."""
    body = jobs.client.get(f"/batch/probe/logs?jobID={job_id}").get_json()
    return [line["message"] for line in body["lines"]]


@BOTH_BROKERS
def test_a_predictor_holding_the_gil_for_lost_seconds_over_runs_once_and_is_not_dead_lettered(
    settings, worker_env, broker, tmp_path, r, probe_config, dead_letter_queue
):
    """Its process runs no thread for 4 x BATCHERY_LOST_SECONDS; a second message of its batch,
    sent meanwhile (as SQS does once a visibility timeout passes), is dropped, and with a
    max_receive_count of 1 nothing is dead-lettered; on_job_complete runs after the batch ends."""
    hold, tag = int(4 * LOST), probe_config["tag"]
    with fleet(settings, worker_env, tmp_path, f"gil-{broker}-{tag}") as (app, jobs, _):
        arn = dead_letter_queue(f"gil-{tag}")
        body = {
            "workers": 1,
            "sqs_dead_letter_queue": {"arn": arn, "max_receive_count": 1},
            "config": probe_config,
            "item_list": {"items": [{"hold_gil": hold}], "batch_size": 1},
        }
        job_id = jobs.submit("probe", body)["job_id"]
        started = time.time()
        wait_for(lambda: r.llen(f"probe:{tag}:starts:{job_id}") == 1, what="the batch inside predict")
        services = app.extensions["batchery"]
        entry = services.redis.hget(keys.inflight(job_id), "0").decode()
        services.dispatcher.republish_batches(job_id, [(0, entry)])  # its current generation: not superseded
        refused = "another delivery of the batch still runs"
        wait_for(lambda: any(refused in line for line in job_log(jobs, job_id)), what="the second message dropped")
        job = jobs.wait_final("probe", job_id)
        letters = services.dead_letters.read(arn)
        print("\n" + next(line for line in job_log(jobs, job_id) if refused in line))
    released = json.loads(r.lindex(f"probe:{tag}:gil_released:{job_id}", 0))
    completed = json.loads(r.lindex(f"probe:{tag}:complete_at:{job_id}", 0))
    print(
        f"\nGIL held {hold} s with BATCHERY_LOST_SECONDS={LOST:g} ({broker} broker): {job['status']}, "
        f"on_job_complete {completed - released:.2f} s after the GIL was released, job {completed - started:.1f} s"
    )
    assert job["status"] == status.SUCCEEDED, job
    assert job["batch_metrics"]["succeeded"] == 1 and job["batch_metrics"]["failed"] == 0
    assert r.hgetall(f"probe:{tag}:deliveries:{job_id}") == {"0": "1"}  # predict ran once
    assert letters == []
    assert completed > released  # on_job_complete began after the batch ended
    assert r.lrange(f"probe:{tag}:complete", 0, -1) == [job_id]


def test_redis_losing_the_liveness_keys_mid_batch_changes_nothing(settings, worker_env, tmp_path, r, probe_config):
    """The keys are deleted again and again for 2 x BATCHERY_LOST_SECONDS (eight watchdog sweeps):
    the worker's list of its live children still names the process, and the renewer writes the
    keys again (SET, not EXPIRE)."""
    tag = probe_config["tag"]
    with fleet(settings, worker_env, tmp_path, f"lost-keys-{tag}") as (app, jobs, _):
        body = {"workers": 1, "config": probe_config, "item_list": {"items": [{"sleep": 4 * LOST}], "batch_size": 1}}
        job_id = jobs.submit("probe", body)["job_id"]
        wait_for(lambda: r.llen(f"probe:{tag}:starts:{job_id}") == 1, what="the batch inside predict")
        store = app.extensions["batchery"].redis
        deleted, rewritten, until = 0, 0, time.monotonic() + 2 * LOST
        while time.monotonic() < until:  # the fault, injected for a while; not a wait
            found = list(store.scan_iter(match=keys.proc_alive("*")))
            rewritten += bool(found) and deleted > 0
            deleted += store.delete(*found) if found else 0
            time.sleep(0.05)
        job = jobs.wait_final("probe", job_id)
    print(f"\nliveness keys deleted {deleted} times in {2 * LOST:g} s; found written again {rewritten} times")
    assert deleted >= 2 and rewritten >= 1
    assert job["status"] == status.SUCCEEDED, job
    assert job["batch_metrics"]["succeeded"] == 1 and job["batch_metrics"]["failed"] == 0
    assert r.hgetall(f"probe:{tag}:deliveries:{job_id}") == {"0": "1"}  # never published again


@BOTH_BROKERS
def test_on_job_complete_waits_for_a_live_owner_of_a_batch_already_counted(
    settings, worker_env, broker, tmp_path, r, probe_config
):
    """A batch counted by another delivery of it (as one would be whose owner was taken for dead:
    a host cut off from Redis) while its owner still runs it: the finalizer waits for the owner."""
    tag, sleep = probe_config["tag"], 3 * LOST
    with fleet(settings, worker_env, tmp_path, f"owned-final-{broker}-{tag}") as (app, jobs, _):
        body = {"workers": 1, "config": probe_config, "item_list": {"items": [{"sleep": sleep}], "batch_size": 1}}
        job_id = jobs.submit("probe", body)["job_id"]
        wait_for(lambda: r.llen(f"probe:{tag}:starts:{job_id}") == 1, what="the batch inside predict")
        services = app.extensions["batchery"]
        spec = services.store.spec_and_api(job_id)[0]
        counted = services.store.record(spec, "0", "ok", 0.1, "elsewhere:1:other", now())
        assert counted.finalize  # the job's last batch, counted: its finalizer is published
        follow(services.dispatcher, services.store, spec, counted)
        job = jobs.wait_final("probe", job_id)
        lines = job_log(jobs, job_id)
    began = json.loads(r.lindex(f"probe:{tag}:starts:{job_id}", 0))["t"]
    completed = json.loads(r.lindex(f"probe:{tag}:complete_at:{job_id}", 0))
    print(f"\n{broker}: on_job_complete began {completed - began:.2f} s after the batch began (it sleeps {sleep:g} s)")
    assert job["status"] == status.SUCCEEDED, job
    assert completed >= began + sleep  # not before the owner's delivery ended
    assert any("the finalizer waits for a batch still running" in line for line in lines)
    assert r.lrange(f"probe:{tag}:complete", 0, -1) == [job_id]


def test_a_live_owner_keeps_its_batch_and_holds_back_the_finalizer(unconsumed):
    """The store's rules, step by step: a second delivery of an owned batch is refused and not
    counted; either liveness key keeps the owner alive; the finalizer waits for a live owner's
    delivery even after the batch was counted (by another delivery of it, which ended first)."""
    store, client, t0 = unconsumed.store, unconsumed.redis, now()
    api = unconsumed.registry.get("probe")
    spec = build_spec(api, {"workers": 2, "config": {}}, unconsumed.submitter.queue_url, t0)
    store.create(spec, api, t0)
    store.append(spec, ["0 [0]", "1 [1]"], t0)
    store.enqueued(spec, t0)
    owner, other = "host-a:11:tok", "host-b:22:tok"
    client.set(keys.proc_alive(owner), "1", px=60_000)
    assert store.begin(spec, "0", owner, t0 + 1).action == "run"
    refused = store.begin(spec, "0", other, t0 + 2)
    assert (refused.action, refused.reason, refused.owner) == ("skip", "owned", owner)
    # its key lost, its worker's list of live children still names it: alive
    client.delete(keys.proc_alive(owner))
    client.set(keys.worker_children("host-a:tok"), "10 11 12", px=60_000)
    assert owners.dead(client, [owner, other]) == {other}
    assert store.begin(spec, "0", other, t0 + 3).reason == "owned"
    assert spec["job_id"] not in Watchdog(unconsumed).sweep(t0 + 4)
    assert store.state(spec["job_id"], "probe", t0 + 4)["failed"] == 0  # refusals are not attempts
    # another delivery of batch 0 counted it (its owner was taken for dead: a host cut off, say)
    store.record(spec, "0", "ok", 0.1, other, t0 + 5)
    assert store.begin(spec, "1", other, t0 + 5).action == "run"
    assert store.record(spec, "1", "ok", 0.1, other, t0 + 6).finalize
    waiting = store.start_finalizing(spec, "finalizer-1", t0 + 6 - LOST, t0 + 6)
    assert not waiting.run and waiting.wait == f"{owner} (initializing 0)"
    client.delete(keys.worker_children("host-a:tok"))  # its worker died: nothing says it lives
    assert store.start_finalizing(spec, "finalizer-1", t0 + 7 - LOST, t0 + 7).run
    store.end(spec, status.STOPPED, "", now())


def test_a_pool_process_that_dies_holding_an_outcome_the_store_did_not_take_loses_nothing(
    settings, worker_env, tmp_path, r, probe_config
):
    """Issue 21.6. Redis stops while two batches run; each pool process keeps its batch's outcome
    to record it when the store is back (workers/late_outcomes.py), and is SIGKILLed before then.
    The batches run again: their processes are gone from their worker's list and their keys
    expired, so the watchdog publishes them again (the deliveries that died count as failed)."""
    tag = probe_config["tag"]
    server = RedisServer(tmp_path, {"appendonly": "yes", "appendfsync": "always"})  # the job store and broker
    try:
        with fleet(settings, worker_env, tmp_path, f"outage-{tag}", redis_url=server.url) as (_, jobs, worker):
            config = {**probe_config, "sleep": 4}  # the probe records in the tests' own Redis, not stopped
            body = {"workers": 2, "config": config, "item_list": {"items": [0, 1], "batch_size": 1}}
            job_id = jobs.submit("probe", body)["job_id"]
            wait_for(lambda: r.llen(f"probe:{tag}:starts:{job_id}") == 2, what="both batches inside predict")
            server.stop()
            kept = "recorded once it does"
            wait_for(lambda: worker.output().count(kept) >= 2, what="both outcomes kept for later")
            pool = worker.children()
            for pid in pool:
                os.kill(pid, signal.SIGKILL)
            server._start()  # the same port and data: the job and its batches in flight are back
            job = wait_for(lambda: _final_or_none(jobs, job_id), timeout=120, interval=0.2, what="the job to end")
            print(
                f"\nkilled pool processes {pool} holding 2 outcomes; the job: {job['status']}, {job['batch_metrics']}"
            )
    finally:
        server.stop()
    assert job["status"] == status.SUCCEEDED, job
    assert job["batch_metrics"]["succeeded"] == 2
    assert job["batch_metrics"]["failed"] == 2  # the two deliveries whose outcomes died with their processes
    assert r.hgetall(f"probe:{tag}:deliveries:{job_id}") == {"0": "2", "1": "2"}  # each ran again, once
    assert r.lrange(f"probe:{tag}:complete", 0, -1) == [job_id]


def _final_or_none(jobs: Jobs, job_id: str) -> dict | None:
    try:
        job = jobs.status("probe", job_id)
    except AssertionError:  # 503 while Redis is down
        return None
    return job if status.is_final(job["status"]) else None


def test_the_renewer_names_only_live_pool_processes_and_never_a_lost_one_again(redis_server):
    """The main process's side, on a real Redis: a zombie (a dead child not yet reaped) is not
    renewed, and a child Celery reported lost has its key deleted and never written again."""
    client = redis_server.client
    zombie = subprocess.Popen(["true"])
    wait_for(lambda: not liveness.running(zombie.pid), what="the child to exit (a zombie until reaped)")
    pool = [os.getpid(), zombie.pid]
    renewer = liveness.Renewer(client, ttl=60, children=lambda: pool)
    renewer.beat()
    me, gone = liveness.name_of(os.getpid()), liveness.name_of(zombie.pid)
    assert client.exists(keys.proc_alive(me)) and not client.exists(keys.proc_alive(gone))
    assert client.get(keys.worker_children(liveness.worker_name())) == str(os.getpid()).encode()
    renewer.lost(os.getpid())  # as BatchRequest.on_failure says, before Celery requeues the message
    renewer.beat()
    assert not client.exists(keys.proc_alive(me))
    assert owners.dead(client, [me, gone]) == {me, gone}
    zombie.wait()
