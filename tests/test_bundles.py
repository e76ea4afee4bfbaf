"""Bundles (issue 22): a message runs its batch, then the job's next ones while they are short,
each its own delivery. Every guarantee holds per batch: the `workers` cap, a stop, a pause or a
timeout mid-bundle, a process killed mid-bundle, a failed batch retried on its own."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
import redis

from app import create_app
from app.model import status, wire
from app.model.job import build_spec
from app.store import keys
from app.store.job_store import JobStore, Outcome
from tests.conftest import BOTH_BROKERS, Jobs
from tests.services import RedisServer, Worker, wait_for

# The store's check comes right before predict, which notes the time first thing (tests/test_pause.py).
CHECK_TO_CALL = 0.25
API = {"name": "api", "api_id": "x", "predictor": {"config": {}}}


# ---- the store on its own: RECORD takes the bundle's next batch, BEGIN finds what a message carried


@pytest.fixture
def store(tmp_path):
    server = RedisServer(tmp_path)
    yield JobStore(redis.Redis.from_url(server.url))
    server.stop()


def new_job(store: JobStore, batches: int, workers: int) -> dict:
    spec = build_spec(API, {"workers": workers, "config": {}}, "redis://h/q", 1000.0)
    store.create(spec, API, 1000.0)
    store.append(spec, [f"{i} [{i}]" for i in range(batches)], 1000.0)
    store.enqueued(spec, 1000.0)
    return spec


def test_recording_a_batch_takes_the_next_one_in_its_slot_and_releases_nothing_more(store):
    spec = new_job(store, 6, workers=2)  # batches 0 and 1 released
    assert store.begin(spec, "0", "p", 1001.0, ready=True).action == "run"
    outcome = store.record(spec, "0", "ok", 0.01, "p", 1001.0)  # no bundle: as before
    assert (outcome.released, outcome.next_entry) == (["2 [2]"], "")
    assert store.begin(spec, "2", "p", 1001.0, ready=True).action == "run"
    call = store.record_call(spec, "2", "ok", 0.01, "p", 1001.0, head="2")
    taken = Outcome.parse_bundled(call.run(store.redis))
    assert (taken.next_entry, taken.released) == ("3 [3]", [])  # 2's slot went to 3, in this process
    inflight = store.redis.hkeys(keys.inflight(spec["job_id"]))
    assert sorted(inflight) == [b"1", b"3"]  # still `workers` in flight
    assert store.redis.hget(keys.procs(spec["job_id"]), "p") == b"running 3"
    assert store.redis.hget(keys.deliveries(spec["job_id"]), "3") == b"1"  # its delivery is counted
    # a failed attempt takes nothing: the batch is retried on its own
    call = store.record_call(spec, "3", "retry", 0.0, "p", 1001.0, head="2")
    assert Outcome.parse_bundled(call.run(store.redis)).next_entry == ""


def test_a_record_sent_again_after_its_reply_was_lost_gives_back_the_batch_it_took(store):
    """Redis went away as it answered: the client (or the worker's kept outcomes) sends RECORD
    again. The batch the first call took was never run: it goes back and is released on its own,
    not left owned by a live process that does not run it (its job never ended: a CI failure)."""
    spec = new_job(store, 6, workers=2)  # batches 0 and 1 released
    job_id = spec["job_id"]
    store.begin(spec, "0", "p", 1001.0, ready=True)
    call = store.record_call(spec, "0", "ok", 0.01, "p", 1001.0, head="0")
    assert Outcome.parse_bundled(call.run(store.redis)).next_entry == "2 [2]"  # its reply is lost
    again = Outcome.parse_bundled(call.run(store.redis))
    assert (again.next_entry, again.released) == ("", ["2 [2]"])  # given back, and released in a message
    assert store.redis.hget(keys.procs(job_id), "p") is None
    assert store.redis.hmget(keys.deliveries(job_id), "2", "2:o") == [None, None]
    assert sorted(store.redis.hkeys(keys.inflight(job_id))) == [b"1", b"2"]  # still `workers` in flight
    job = store.state(job_id, "api", 1001.0)
    assert (job["succeeded"], job["failed"]) == (1, 0)
    assert store.redis.hmget(keys.job(job_id), "released", "bundled") == [b"3", b"0"]
    assert Outcome.parse_bundled(call.run(store.redis)).released == []  # a third time: nothing more
    delivery = store.begin(spec, "2", "q", 1002.0, ready=True)
    assert (delivery.action, delivery.number) == ("run", 1)  # its first delivery, in any process
    # the outcome kept while the store was down is recorded with take=False: it takes nothing
    store.begin(spec, "1", "p", 1002.0, ready=True)
    late = store.record_call(spec, "1", "ok", 0.01, "p", 1002.0, head="1", take=False)
    assert Outcome.parse_bundled(late.run(store.redis)) == Outcome(released=["3 [3]"], next_entry="")


def test_a_bundle_takes_nothing_once_its_job_is_paused_stopped_or_past_its_deadline(store):
    spec = new_job(store, 20, workers=1)
    store.begin(spec, "0", "p", 1001.0, ready=True)
    store.pause(spec, 1001.0)
    paused = Outcome.parse_bundled(store.record_call(spec, "0", "ok", 0.01, "p", 1001.0, head="0").run(store.redis))
    assert paused.next_entry == ""
    store.resume(spec, 1001.0)
    store.begin(spec, "1", "p", 1001.0, ready=True)
    store.end(spec, status.STOPPED, "", 1001.0)
    stopped = Outcome.parse_bundled(store.record_call(spec, "1", "ok", 0.01, "p", 1001.0, head="1").run(store.redis))
    assert stopped.next_entry == ""
    late = build_spec(API, {"workers": 1, "config": {}, "timeout": 5}, "redis://h/q", 1000.0)
    store.create(late, API, 1000.0)
    store.append(late, [f"{i} [{i}]" for i in range(5)], 1000.0)
    store.enqueued(late, 1000.0)
    store.begin(late, "0", "p", 1001.0, ready=True)
    timed_out = store.record_call(late, "0", "ok", 0.01, "p", 1006.0, head="0").run(store.redis)
    assert Outcome.parse_bundled(timed_out).next_entry == ""
    assert store.state(late["job_id"], "api", 1006.0)["status"] == status.TIMED_OUT


def test_a_bundles_message_delivered_again_runs_the_batch_it_carried(store):
    spec = new_job(store, 5, workers=1)
    store.begin(spec, "0", "p", 1001.0, ready=True)
    Outcome.parse_bundled(store.record_call(spec, "0", "ok", 0.01, "p", 1001.0, head="0").run(store.redis))
    # process p dies running batch 1 (taken after 0); the broker delivers batch 0's message again
    again = store.begin(spec, "0", "q", 1002.0, ready=True)
    assert (again.action, again.number, again.carried) == ("run", 2, ("1", 0, "[1]"))
    job = store.state(spec["job_id"], "api", 1002.0)
    assert job["failed"] == 1  # the delivery that died with p
    store.record(spec, "1", "ok", 0.01, "q", 1002.0)
    # once the batch it carried has ended, the message is a duplicate
    assert store.begin(spec, "0", "r", 1003.0, ready=True).reason == "duplicate"


# ---- real workers: a fleet of its own, whose bundles are as long as the backlog allows


@pytest.fixture(scope="module")
def bundling(broker, settings, worker_env, tmp_path_factory):
    """An API app and a worker of 3 processes on a queue of their own, the worker bundling up to
    5 s of batches (so that a job's short batches travel in a few messages): yields `Jobs`."""
    name = f"bundles-{broker}-{time.time_ns() % 10**9}"
    quick = dataclasses.replace(settings, queue=name, watchdog_seconds=0.5, lost_seconds=5)
    env = {**worker_env, "BATCHERY_QUEUE": name, "BATCHERY_LOST_SECONDS": "5", "BATCHERY_BUNDLE_SECONDS": "5"}
    app = create_app({"SETTINGS": quick})
    own = Worker(env, tmp_path_factory.mktemp("bundle-logs"), name, concurrency=3)
    try:
        yield Jobs(app.test_client())
    finally:
        app.extensions["batchery_watchdog"].stop()
        own.stop()


def submit(jobs: Jobs, probe_config: dict, items: list, workers: int, **extra) -> str:
    body = {"workers": workers, "config": probe_config, "item_list": {"items": items, "batch_size": 1}, **extra}
    return jobs.submit("probe", body)["job_id"]


def probe(r, probe_config: dict, what: str, job_id: str) -> str:
    return f"probe:{probe_config['tag']}:{what}:{job_id}"


def starts(r, probe_config: dict, job_id: str) -> list[float]:
    return [json.loads(s)["t"] for s in r.lrange(probe(r, probe_config, "starts", job_id), 0, -1)]


def runs(r, probe_config: dict, job_id: str) -> dict[int, int]:
    """Batch id -> how many times predict ran it."""
    return {int(b): int(n) for b, n in r.hgetall(probe(r, probe_config, "deliveries", job_id)).items()}


def bundled(r, job_id: str) -> int:
    """The job's batches that travelled in another batch's message."""
    return int(r.hget(keys.job(job_id), "bundled") or 0)


def log_lines(jobs: Jobs, job_id: str) -> list[str]:
    return [line["message"] for line in jobs.client.get(f"/batch/probe/logs?jobID={job_id}").get_json()["lines"]]


def settled(r, job_id: str) -> bool:
    """Every batch released has come back: run to its end, failed for good, or skipped."""
    released, succeeded, failed, skipped = r.hmget(
        keys.job(job_id), "released", "succeeded", "failed_batches", "skipped"
    )
    return int(released) == int(succeeded) + int(failed) + int(skipped)


def call_mid_bundle(jobs: Jobs, r, probe_config: dict, total: int, method: str, path: str) -> tuple[str, float]:
    """Submit a job of `total` 2-ms batches (`workers` 2) and, once bundles run, make the call
    (`path` with {} for the job id); the job id and when the call returned."""
    job_id = submit(jobs, {**probe_config, "sleep": 0.002}, list(range(total)), workers=2)
    wait_for(lambda: bundled(r, job_id) >= 20, what="batches to run in bundles")
    response = getattr(jobs.client, method)(path.format(job_id))
    returned_at = time.time()
    assert response.status_code == 200, response.get_json()
    return job_id, returned_at


@BOTH_BROKERS
def test_short_batches_travel_in_bundles_under_the_same_workers_cap(bundling, r, probe_config):
    total, workers = 150, 2
    job_id = submit(bundling, probe_config, list(range(total)), workers)
    job = bundling.wait_final("probe", job_id)
    assert job["status"] == status.SUCCEEDED
    assert (job["batch_metrics"]["succeeded"], job["batch_metrics"]["failed"]) == (total, 0)
    assert runs(r, probe_config, job_id) == {i: 1 for i in range(total)}  # each batch once
    assert bundled(r, job_id) > total // 2  # far fewer messages than batches
    assert int(r.get(probe(r, probe_config, "max", job_id))) <= workers  # 3 processes, cap 2
    started = [line for line in log_lines(bundling, job_id) if ": started (delivery" in line]
    assert len(started) == total  # a line per batch, as before


@BOTH_BROKERS
def test_with_the_default_setting_1s_batches_are_not_bundled(jobs, worker, r, probe_config):
    job_id = submit(jobs, {**probe_config, "sleep": 1}, list(range(4)), workers=4)
    job = jobs.wait_final("probe", job_id)
    assert (job["status"], job["batch_metrics"]["succeeded"]) == (status.SUCCEEDED, 4)
    assert bundled(r, job_id) == 0


@BOTH_BROKERS
def test_a_process_killed_mid_bundle_runs_no_recorded_batch_again(bundling, broker, r, probe_config):
    """Batch 5 SIGKILLs its process on its first delivery, in the bundle of batch 0's message."""
    total = 12
    items = [{"kill": 1} if i == 5 else i for i in range(total)]
    job_id = submit(bundling, probe_config, items, workers=1)
    job = bundling.wait_final("probe", job_id, timeout=180)
    assert job["status"] == status.SUCCEEDED
    assert job["batch_metrics"]["succeeded"] == total
    assert job["batch_metrics"]["failed"] == 1  # the delivery that died with its process
    assert runs(r, probe_config, job_id) == {i: 2 if i == 5 else 1 for i in range(total)}
    # batch 0's message came back at once (Redis), and ran the batch it carried, then the rest; on
    # SQS it comes back when its visibility ends, after the watchdog published batch 5 again
    if broker == "redis":
        assert "batch 5: runs in the message of batch 0, delivered again" in log_lines(bundling, job_id)
    assert r.lrange(f"probe:{probe_config['tag']}:complete", 0, -1) == [job_id]


@BOTH_BROKERS
def test_a_failed_batch_of_a_bundle_is_retried_on_its_own(bundling, r, probe_config, dead_letter_queue):
    total = 10
    items = [{"fail": 1} if i == 3 else i for i in range(total)]
    dlq = {"arn": dead_letter_queue(f"bundle-dlq-{probe_config['tag']}"), "max_receive_count": 2}
    job_id = submit(bundling, probe_config, items, workers=1, sqs_dead_letter_queue=dlq)
    job = bundling.wait_final("probe", job_id)
    assert job["status"] == status.SUCCEEDED
    assert (job["batch_metrics"]["succeeded"], job["batch_metrics"]["failed"]) == (total, 1)
    assert runs(r, probe_config, job_id) == {i: 2 if i == 3 else 1 for i in range(total)}
    lines = log_lines(bundling, job_id)
    assert "batch 3: started (delivery 2)" in lines
    # in a message of its own: not in batch 0's again, which its bundle came in
    assert not [line for line in lines if "runs in the message of" in line]


@BOTH_BROKERS
def test_nothing_starts_after_a_stop_mid_bundle(bundling, r, probe_config):
    total = 4000
    job_id, stopped_at = call_mid_bundle(bundling, r, probe_config, total, "delete", "/batch/probe?jobID={}")
    wait_for(lambda: settled(r, job_id), what="batches in flight to come back")
    started = starts(r, probe_config, job_id)
    assert max(started) < stopped_at + CHECK_TO_CALL
    ran = runs(r, probe_config, job_id)
    assert len(started) == len(ran) < total and set(ran.values()) == {1}
    job = bundling.status("probe", job_id)
    assert job["status"] == status.STOPPED
    assert job["batch_metrics"]["succeeded"] == len(ran)  # every batch that started is counted


@BOTH_BROKERS
def test_a_pause_mid_bundle_starts_nothing_and_the_resume_runs_every_batch_once(bundling, r, probe_config):
    total = 3000
    job_id, paused_at = call_mid_bundle(bundling, r, probe_config, total, "post", "/batch/probe/{}/pause")
    wait_for(lambda: bundling.status("probe", job_id)["worker_counts"]["running"] == 0, what="batches to end")
    started = starts(r, probe_config, job_id)
    assert max(started) < paused_at + CHECK_TO_CALL
    assert len(started) < total
    assert bundling.client.post(f"/batch/probe/{job_id}/resume").status_code == 200
    job = bundling.wait_final("probe", job_id)
    assert (job["status"], job["batch_metrics"]["succeeded"], job["batch_metrics"]["failed"]) == (
        status.SUCCEEDED,
        total,
        0,
    )
    assert runs(r, probe_config, job_id) == {i: 1 for i in range(total)}


@BOTH_BROKERS
def test_nothing_starts_after_the_timeout_mid_bundle(bundling, r, probe_config):
    total = 5000
    job_id = submit(bundling, {**probe_config, "sleep": 0.002}, list(range(total)), workers=2, timeout=2)
    deadline = float(r.hget(keys.job(job_id), "deadline"))
    job = bundling.wait_final("probe", job_id)
    assert job["status"] == status.TIMED_OUT
    wait_for(lambda: settled(r, job_id), what="batches in flight to come back")
    started = starts(r, probe_config, job_id)
    assert bundled(r, job_id) > 0
    assert max(started) < deadline + CHECK_TO_CALL
    ran = runs(r, probe_config, job_id)
    assert len(ran) < total and set(ran.values()) == {1}


def test_a_batch_too_large_for_a_bundle_is_left_for_a_message_of_its_own(store):
    spec = build_spec(API, {"workers": 1, "config": {}}, "redis://h/q", 1000.0)
    store.create(spec, API, 1000.0)
    big = json.dumps(["x" * wire.BUNDLED_ENTRY_BYTES])
    store.append(spec, ["0 [0]", f"1 {big}", "2 [2]"], 1000.0)
    store.enqueued(spec, 1000.0)
    store.begin(spec, "0", "p", 1001.0, ready=True)
    outcome = Outcome.parse_bundled(store.record_call(spec, "0", "ok", 0.01, "p", 1001.0, head="0").run(store.redis))
    # not taken: released instead, as a message of its own (on SQS, one over the queue's limit fails for good)
    assert outcome.next_entry == ""
    assert [entry.split(" ")[0] for entry in outcome.released] == ["1"]  # for the caller to publish
    assert store.redis.hkeys(keys.inflight(spec["job_id"])) == [b"1"]


def test_an_oom_kill_or_a_revoke_of_a_bundles_message_counts_the_batch_it_carried(store):
    spec = build_spec(API, {"workers": 1, "config": {}}, "redis://h/q", 1000.0)
    store.create(spec, API, 1000.0)
    store.append(spec, ["0 [0]", "1 [1]", "2 [2]"], 1000.0)
    store.enqueued(spec, 1000.0)
    store.begin(spec, "0", "p", 1001.0, ready=True)
    store.record_call(spec, "0", "ok", 0.01, "p", 1001.0, head="0").run(store.redis)  # batch 1 handed over
    # the message names batch 0; the process was running batch 1
    assert store.mark_oom(spec["job_id"], "0", 1002.0, 0)
    assert store.redis.hget(keys.deliveries(spec["job_id"]), "1:oom") == b"1"
    revoked = store.revoked(spec, "0", 0, True, 1002.0)
    assert (revoked.action, revoked.entry) == ("failed", "1 [1]")  # no attempt left: no dead-letter queue
