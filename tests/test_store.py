"""The job store on its own Redis: costs and counting rules that do not need workers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from app.config import Settings
from app.jobs import enqueuer as enqueuer_module
from app.jobs.submission import ITEMS_STORED, known_total
from app.model import status
from app.model.job import build_spec
from app.store import keys
from app.store.job_store import JobStore
from app.store.joblog import JobLog
from tests.services import RedisServer

ROOT = Path(__file__).resolve().parent.parent

API = {"name": "api", "api_id": "x", "predictor": {"config": {}}}


@pytest.fixture
def store(tmp_path):
    server = RedisServer(tmp_path)
    yield JobStore(redis.Redis.from_url(server.url))
    server.stop()


def new_job(store: JobStore, batches: int, workers: int = 2) -> dict:
    spec = build_spec(API, {"workers": workers, "config": {}}, "redis://h/q", 1000.0)
    store.create(spec, API, 1000.0)
    for start in range(0, batches, 50_000):
        store.append(spec, [f"{i} [{i}]" for i in range(start, min(start + 50_000, batches))], 1000.0)
    store.enqueued(spec, 1000.0)
    return spec


def commands_for_status(store: JobStore, spec: dict) -> dict:
    store.redis.config_resetstat()
    store.state(spec["job_id"], spec["api_name"], 1001.0)
    stats = store.redis.info("commandstats")
    return {name: value["calls"] for name, value in stats.items() if name not in ("cmdstat_config", "cmdstat_info")}


def test_status_costs_the_same_for_10_batches_and_1_000_000(store):
    small, large = new_job(store, 10), new_job(store, 1_000_000)
    assert store.state(large["job_id"], "api", 1001.0)["total"] == 1_000_000
    commands = commands_for_status(store, large)
    assert commands == commands_for_status(store, small)
    assert not {"cmdstat_lrange", "cmdstat_scan", "cmdstat_hscan", "cmdstat_keys"} & set(commands)


def test_release_never_puts_more_than_workers_in_flight(store):
    spec = new_job(store, 10, workers=3)
    assert store.redis.hlen(f"batchery:job:{spec['job_id']}:inflight") == 3
    outcome = store.record(spec, "0", "ok", 0.1, "p", 1001.0)
    assert outcome.released == ["3 [3]"]
    assert store.redis.hlen(f"batchery:job:{spec['job_id']}:inflight") == 3


def test_a_duplicate_outcome_is_not_counted_twice(store):
    spec = new_job(store, 2, workers=2)
    assert store.begin(spec, "0", "p1", 1001.0).action == "run"
    assert store.begin(spec, "0", "p2", 1001.0).action == "run"  # redelivered while the first still runs
    store.record(spec, "0", "ok", 0.1, "p1", 1001.0)
    store.record(spec, "0", "ok", 0.1, "p2", 1001.0)
    state = store.state(spec["job_id"], "api", 1001.0)
    assert state["succeeded"] == 1


def test_a_process_with_its_predictor_loaded_runs_at_once_and_a_stopped_job_starts_nothing(store):
    spec = new_job(store, 3, workers=3)
    assert store.begin(spec, "0", "p1", 1001.0).action == "run"  # loading: initializing, then PROCEED
    assert store.begin(spec, "1", "p2", 1001.0, ready=True).action == "run"  # loaded: BEGIN was the last check
    counts = store.state(spec["job_id"], "api", 1001.0)["worker_counts"]
    assert (counts["initializing"], counts["running"], counts["pending"]) == (1, 1, 1)
    assert store.end(spec, status.STOPPED, "", 1002.0)
    assert store.begin(spec, "2", "p1", 1003.0, ready=True).action == "skip"


def test_the_last_outcome_claims_the_finalizer_exactly_once(store):
    spec = new_job(store, 2, workers=2)
    first = store.record(spec, "0", "ok", 0.1, "p", 1001.0)
    last = store.record(spec, "1", "failed", 0.0, "p", 1001.0)
    again = store.record(spec, "1", "failed", 0.0, "p", 1001.0)
    assert (first.finalize, last.finalize, again.finalize) == (False, True, False)
    assert store.end(spec, status.COMPLETED_WITH_FAILURES, "", 1002.0)
    assert not store.end(spec, status.SUCCEEDED, "", 1003.0)  # the first final status stays
    assert store.state(spec["job_id"], "api", 1004.0)["status"] == status.COMPLETED_WITH_FAILURES


def test_jobs_per_status_move_with_each_status_change(store):
    spec = build_spec(API, {"workers": 1, "config": {}}, "redis://h/q", 1000.0)
    store.create(spec, API, 1000.0)
    assert store.status_counts(["api"]) == {"api": {status.ENQUEUING: 1}}
    store.append(spec, ["0 [0]"], 1000.0)
    store.enqueued(spec, 1000.0)
    second = new_job(store, 1)
    assert store.status_counts(["api", "other"]) == {"api": {status.RUNNING: 2}, "other": {}}
    store.record(spec, "0", "ok", 0.1, "p", 1001.0)
    assert store.end(spec, status.SUCCEEDED, "", 1001.0)
    assert store.end(second, status.STOPPED, "", 1001.0)
    assert not store.end(second, status.TIMED_OUT, "", 1002.0)  # a final status is not moved again
    assert store.status_counts(["api"]) == {"api": {status.SUCCEEDED: 1, status.STOPPED: 1}}


def test_states_reads_many_jobs_in_one_pipeline(store):
    first, second = new_job(store, 3), new_job(store, 5)
    ids = {first["job_id"], second["job_id"]}
    capped = store.job_ids_by_api(["api"], recent=1, active_limit=1)["api"]
    assert len(capped) == 1 and set(capped) < ids  # both were created at the same time: either
    assert set(store.job_ids_by_api(["api"], recent=5)["api"]) == ids
    states = store.states([(first["job_id"], "api"), ("nope", "api"), (second["job_id"], "api")], 1001.0)
    assert [s and s["total"] for s in states] == [3, None, 5]
    assert states[0] == store.state(first["job_id"], "api", 1001.0)


def test_oom_kills_are_counted_only_for_batches_in_flight_and_make_the_dead_batch_oom(store):
    spec = build_spec(API, {"workers": 2, "config": {}}, "redis://h/q", 1000.0)
    spec["sqs_dead_letter_queue"] = {"arn": "arn:aws:sqs:us-east-1:1:dlq", "max_receive_count": 2}
    store.create(spec, API, 1000.0)
    store.append(spec, ["0 [0]", "1 [1]", "2 [2]"], 1000.0)
    store.enqueued(spec, 1000.0)
    job_id = spec["job_id"]
    assert not store.mark_oom(job_id, "2", 1001.0)  # not released yet
    assert not store.mark_oom("no-such-job", "0", 1001.0)
    assert store.begin(spec, "0", "p1", 1001.0).action == "run"
    assert store.mark_oom(job_id, "0", 1001.0)  # p1 killed for memory
    assert store.begin(spec, "0", "p2", 1002.0).action == "run"  # p2 dies too, a plain SIGKILL
    dead = store.begin(spec, "0", "p3", 1003.0)
    assert (dead.action, dead.number, dead.oom_kills) == ("dead", 3, 1)
    store.record(spec, "0", "oom", 0.0, "p3", 1003.0)
    state = store.state(job_id, "api", 1003.0)
    assert (state["failed"], state["failed_batches"], state["oom_batches"], state["oom_batch"]) == (2, 1, 1, "0")
    assert not store.mark_oom(job_id, "0", 1004.0)  # the batch ended: nothing left to label
    store.end(spec, status.STOPPED, "", 1005.0)
    assert not store.mark_oom(job_id, "1", 1006.0)  # the job ended: no key recreated
    assert not store.redis.exists(f"batchery:job:{job_id}:deliveries")


def test_a_timeout_noticed_late_ended_the_job_at_its_deadline(store):
    """Whoever notices it (a status read, the watchdog's sweep), the job ended at its deadline:
    its end_time was the moment a reader came, up to a sweep (10 s) late."""
    spec = build_spec(API, {"workers": 1, "timeout": 2, "config": {}}, "redis://h/q", 1000.0)
    store.create(spec, API, 1000.0)
    store.append(spec, ["0 [0]"], 1000.0)
    store.enqueued(spec, 1000.0)
    state = store.state(spec["job_id"], spec["api_name"], 1009.5)
    assert state["status"] == status.TIMED_OUT
    assert state["end"] == 1002.0
    assert store.state(spec["job_id"], spec["api_name"], 1030.0)["end"] == 1002.0


def test_a_listing_shows_every_job_in_progress_then_recent_finished_ones(store):
    """`recent` counts finished jobs: newer jobs in progress took places from them (3 running, 47
    finished listed for 50)."""

    def job_at(t: float) -> dict:
        spec = build_spec(API, {"workers": 1, "config": {}}, "redis://h/q", t)
        store.create(spec, API, t)
        store.append(spec, ["0 [0]"], t)
        store.enqueued(spec, t)
        return spec

    oldest_running = job_at(1000.0)  # older than every finished job below: listed all the same
    finished = [job_at(1001.0 + i) for i in range(6)]
    for spec in finished:
        assert store.end(spec, status.STOPPED, "", 1100.0)
    newer_running = [job_at(1010.0), job_at(1011.0)]
    listed = store.job_ids(API["name"], recent=4)
    running = [spec["job_id"] for spec in (*reversed(newer_running), oldest_running)]
    assert listed == running + [spec["job_id"] for spec in reversed(finished)][:4]


def test_an_enqueuer_failing_in_a_way_no_rule_foresaw_ends_the_job_on_its_third_attempt(store, monkeypatch):
    """Each failure used to be retried by the watchdog for ever: the job stayed enqueuing, saying nothing."""
    def broken_source(source, cursor):
        raise RuntimeError("a bug in a source")
        yield  # a generator, as source_batches is

    monkeypatch.setattr(enqueuer_module, "source_batches", broken_source)
    spec = build_spec(API, {"workers": 1, "config": {}}, "redis://h/q", 1000.0)
    store.create(spec, API, 1000.0, source={"kind": "delimited_files", "objects": []})
    enqueuer = enqueuer_module.Enqueuer(store, dispatcher=None)  # nothing is released before the failure
    for attempt in range(1, enqueuer_module.UNEXPECTED_FAILURES):
        with pytest.raises(RuntimeError, match="a bug in a source"):  # raised again: retried
            enqueuer.run(spec["job_id"], token=f"t{attempt}")
        assert store.state(spec["job_id"], "api", 1001.0)["status"] == status.ENQUEUING
        store.redis.delete(keys.enqueuer(spec["job_id"]))  # the lease expires
    assert enqueuer.run(spec["job_id"], token="last") == "done"
    state = store.state(spec["job_id"], "api", 1002.0)
    assert state["status"] == status.UNEXPECTED_ERROR
    assert state["message"] == "enqueuing failed 3 times: RuntimeError: a bug in a source"


def test_after_the_end_a_batch_in_flight_then_counts_once_and_no_other_counts(store):
    """Late outcomes skipped the in-flight check once a job ended: a batch delivered twice at once
    (its live process taken for dead) counted twice, and succeeded read 3 of 2 batches."""
    spec = new_job(store, 4, workers=2)  # batches 0 and 1 in flight
    store.record(spec, "0", "ok", 0.1, "p", 1001.0)  # releases batch 2
    assert store.end(spec, status.STOPPED, "", 1002.0)  # batches 1 and 2 in flight
    for _ in range(2):  # two deliveries of batch 1 that were inside predict at the stop
        store.record(spec, "1", "ok", 0.1, "p", 1003.0)
    store.record(spec, "2", "retry", 0.0, "p", 1003.0)  # failed, and will not run again
    store.record(spec, "3", "ok", 0.1, "p", 1003.0)  # never released: no delivery of it ran
    state = store.state(spec["job_id"], "api", 1004.0)
    assert (state["succeeded"], state["failed"], state["failed_batches"]) == (2, 1, 1)
    assert state["status"] == status.STOPPED


def test_an_outcome_for_a_job_the_store_does_not_have_writes_nothing(store):
    """After a Redis that lost its data, late outcomes made a hash of counters alone: its id then
    answered 500 (no spec) for ever."""
    spec = build_spec(API, {"workers": 1, "config": {}}, "redis://h/q", 1000.0)
    store.record(spec, "0", "ok", 0.1, "p", 1001.0)
    assert store.redis.keys(f"*{spec['job_id']}*") == []
    store.redis.hset(keys.job(spec["job_id"]), mapping={"succeeded": 4, "time_sum": 8.0})  # an older version's
    assert store.state(spec["job_id"], "api", 1002.0) is None


def test_the_lease_and_the_log_length_come_from_the_settings(store):
    env = {"BATCHERY_ENQUEUE_LEASE": "4", "BATCHERY_JOB_LOG_LINES": "3", "BATCHERY_LOG_FORMAT": "text"}
    settings = Settings.from_env(env)
    assert (settings.enqueue_lease_seconds, settings.job_log_lines, settings.log_format) == (4.0, 3, "text")
    limited = JobStore(store.redis, lease_seconds=settings.enqueue_lease_seconds, job_log_lines=settings.job_log_lines)
    spec = new_job(limited, 2)
    assert limited.take_lease(spec["job_id"], "me")
    assert 3000 < limited.redis.pttl(keys.enqueuer(spec["job_id"])) <= 4000
    JobLog(limited.redis, settings.job_log_lines).write_lines(spec["job_id"], [{"n": n} for n in range(5)])
    assert limited.redis.llen(keys.job_log(spec["job_id"])) == 3
    limited.end(spec, status.STOPPED, "", 1001.0)  # the store's own line: the log keeps 3 still
    assert [line.get("n") for line in JobLog(limited.redis).read(spec["job_id"])] == [3, 4, None]


def test_no_store_module_reads_the_environment():
    for path in (ROOT / "app" / "store").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "os.environ" not in text and "getenv(" not in text, path.name  # Settings reads it, once


def test_an_item_list_jobs_count_is_known_once_its_batches_are_stored(store):
    """A batch of an item_list job can begin before the job leaves enqueuing (the append that
    stores its batches releases them): its predictor's `total_batch_count` is already final then."""
    spec = build_spec(API, {"workers": 2, "config": {}}, "redis://h/q", 1000.0)
    store.create(spec, API, 1000.0)
    store.append(spec, ["0 [0]", "1 [1]"], 1000.0, cursor=json.dumps(ITEMS_STORED))
    state = store.state(spec["job_id"], spec["api_name"], 1000.5)
    assert state["status"] == status.ENQUEUING
    assert known_total(store, spec["job_id"], state) == 2


def test_an_s3_jobs_count_is_unknown_while_it_enqueues(store):
    spec = build_spec(API, {"workers": 2, "config": {}}, "redis://h/q", 1000.0)
    store.create(spec, API, 1000.0, {"kind": "file_path_lister", "s3_paths": ["s3://b/"]})
    store.append(spec, ["0 [0]"], 1000.0, cursor=json.dumps({"key": "a"}))
    state = store.state(spec["job_id"], spec["api_name"], 1000.5)
    assert known_total(store, spec["job_id"], state) is None
    store.enqueued(spec, 1001.0)
    assert known_total(store, spec["job_id"], store.state(spec["job_id"], spec["api_name"], 1001.5)) == 1


def test_a_begin_sent_again_after_its_reply_was_lost_is_the_same_delivery(store):
    """Redis went away as it answered BEGIN, and the client sent it again: the delivery the first
    call began is this process's own, not one that died. Counted as a second delivery, a batch
    with max_receive_count 1 was dead-lettered though it never ran."""
    spec = build_spec(API, {"workers": 1, "config": {}}, "redis://h/q", 1000.0)
    spec["sqs_dead_letter_queue"] = {"arn": "arn:aws:sqs:us-east-1:1:dlq", "max_receive_count": 1}
    store.create(spec, API, 1000.0)
    store.append(spec, ["0 [0]"], 1000.0)
    store.enqueued(spec, 1000.0)
    first = store.begin(spec, "0", "p", 1001.0, ready=True)
    again = store.begin(spec, "0", "p", 1001.0, ready=True)
    assert (first.action, first.number) == (again.action, again.number) == ("run", 1)
    assert store.state(spec["job_id"], "api", 1001.0)["failed"] == 0
    # another process's delivery of it, once p is gone (not alive), is a second one: p's died
    assert store.begin(spec, "0", "q", 1002.0, ready=True).action == "dead"


class RepliesLost(redis.Redis):
    """A client that carries out each script call twice and answers the second reply: what
    redis-py's retry does when the connection drops after Redis ran a call, before its reply."""

    def evalsha(self, sha, numkeys, *keys_and_args):  # type: ignore[override]
        super().evalsha(sha, numkeys, *keys_and_args)
        return super().evalsha(sha, numkeys, *keys_and_args)


def test_an_append_sent_again_after_its_reply_was_lost_appends_nothing_twice(store):
    """Each batch ran twice and the job counted twice its batches (total_batch_count) when an
    enqueuer's or the API's APPEND was sent again by the client's retry."""
    twice = JobStore(RepliesLost(connection_pool=store.redis.connection_pool))
    spec = build_spec(API, {"workers": 2, "config": {}}, "redis://h/q", 1000.0)
    twice.create(spec, API, 1000.0)
    appended = twice.append(spec, [f"{i} [{i}]" for i in range(1500)], 1000.0)  # two calls: 1,000 and 500
    assert appended.accepted
    twice.enqueued(spec, 1000.0)
    job_id = spec["job_id"]
    assert store.redis.hget(keys.job(job_id), "total") == b"1500"
    assert store.redis.llen(keys.backlog(job_id)) + store.redis.hlen(keys.inflight(job_id)) == 1500
    assert store.state(job_id, "api", 1001.0)["total"] == 1500


def test_a_failed_attempt_recorded_twice_after_a_lost_reply_counts_once(store):
    spec = new_job(store, 1, workers=1)
    twice = JobStore(RepliesLost(connection_pool=store.redis.connection_pool))
    store.begin(spec, "0", "p", 1001.0, ready=True)
    assert twice.record(spec, "0", "retry", 0.0, "p", 1001.0).released == []
    assert store.state(spec["job_id"], "api", 1001.0)["failed"] == 1
    assert store.begin(spec, "0", "q", 1002.0, ready=True).number == 2  # the retry's delivery: no death counted
    assert store.state(spec["job_id"], "api", 1002.0)["failed"] == 1
