"""Faults injected for real: lost messages, a finalizer killed and Redis restarted (these two on both
brokers), a fleet that takes nothing. Every batch must end counted exactly once, and no job may hang."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import signal

import pytest

from app import create_app
from app.config import Settings
from app.jobs.submission import follow
from app.jobs.watchdog import Watchdog
from app.model import status
from app.model.job import build_spec, now
from app.store import keys
from app.store.job_store import JobStore, Outcome
from app.store.joblog import attach_job_log
from app.web.responses import WorkerCountsSchema
from tests.conftest import BOTH_BROKERS, PREDICTORS, Jobs
from tests.services import RedisServer, Worker, wait_for
from tests.shapes import answer_keys

LOST = Settings().lost_seconds
UNPUBLISHED = Settings().unpublished_seconds


@pytest.fixture(autouse=True)
def job_logs_back_to_the_shared_app(flask_app):
    """The apps some tests here build on their own Redis take the process's job log handler (the
    last app built has it); give it back to the shared app for the tests after these."""
    yield
    attach_job_log(flask_app.extensions["batchery"].job_log)


def released_but_never_published(services, config: dict, batches: int, workers: int = 2) -> dict:
    """A job whose first `workers` batches were released by the Lua call, and whose messages were
    never published (as if the releasing process died in between, when the caller publishes; or as
    if the broker lost them, when the store pushes them itself: a store that does not push here)."""
    api = services.registry.get("probe")
    spec = build_spec(api, {"workers": workers, "config": config}, services.submitter.queue_url, now())
    releasing = JobStore(services.redis, services.settings.stalled_seconds)  # publishes nothing itself
    releasing.create(spec, api, now())
    assert len(releasing.append(spec, [f"{i} [{i}]" for i in range(batches)], now()).released) == workers
    assert releasing.enqueued(spec, now()).released == []
    return spec


@BOTH_BROKERS
def test_batches_released_but_never_published_are_published_again_by_the_watchdog(
    flask_app, jobs, worker, r, probe_config
):
    services = flask_app.extensions["batchery"]
    spec = released_but_never_published(services, probe_config, batches=6)
    watchdog = Watchdog(services)
    assert spec["job_id"] not in watchdog.sweep(now())  # too early to call them lost
    assert jobs.status("probe", spec["job_id"])["batch_metrics"]["succeeded"] == 0
    # their releaser never said it published them: lost after UNPUBLISHED seconds, not LOST
    assert spec["job_id"] in watchdog.sweep(now() + UNPUBLISHED + 1)
    # the original message of batch 0 turns up after all: it was superseded, and is skipped
    services.dispatcher.publish_batches(spec["job_id"], ["0 [0]"])
    job = jobs.wait_final("probe", spec["job_id"])
    assert job["status"] == status.SUCCEEDED
    assert job["batch_metrics"]["succeeded"] == 6
    assert job["batch_metrics"]["failed"] == 0
    deliveries = r.hgetall(f"probe:{probe_config['tag']}:deliveries:{spec['job_id']}")
    assert deliveries == {str(i): "1" for i in range(6)}  # every batch ran once
    assert r.lrange(f"probe:{probe_config['tag']}:complete", 0, -1) == [spec["job_id"]]


def test_a_batch_already_delivered_is_not_published_again(flask_app, probe_config):
    services = flask_app.extensions["batchery"]
    spec = released_but_never_published(services, probe_config, batches=4)
    assert services.store.begin(spec, "0", "p", now()).action == "run"  # delivered: the broker owns it
    lost = services.store.republish(spec, now() + LOST, now() + LOST, now() + LOST + 1)
    assert lost == [(1, "1 [1]")]
    # not twice at once
    assert services.store.republish(spec, now() + LOST, now() + LOST, now() + LOST + 1) == []
    assert services.store.begin(spec, "1", "p", now(), generation=0).action == "skip"  # the lost original
    assert services.store.begin(spec, "1", "p", now(), generation=1).action == "run"
    services.store.end(spec, status.STOPPED, "", now())


def test_a_lost_finalizer_is_published_again(flask_app, jobs, worker, r, probe_config):
    services = flask_app.extensions["batchery"]
    store = services.store
    spec = released_but_never_published(services, probe_config, batches=2)
    store.record(spec, "0", "ok", 0.1, "p", now())
    claimed = store.record(spec, "1", "ok", 0.1, "p", now())
    assert claimed.finalize  # ...and its finalizer message is lost with its worker
    watchdog = Watchdog(services)
    assert spec["job_id"] not in watchdog.sweep(now())
    assert jobs.status("probe", spec["job_id"])["status"] == status.RUNNING
    assert spec["job_id"] in watchdog.sweep(now() + UNPUBLISHED + 1)  # never said to be published
    job = jobs.wait_final("probe", spec["job_id"])
    assert job["status"] == status.SUCCEEDED
    assert r.lrange(f"probe:{probe_config['tag']}:complete", 0, -1) == [spec["job_id"]]
    assert spec["job_id"] not in watchdog.sweep(now() + 2 * LOST)  # ended: left alone


def test_a_release_its_publisher_said_it_published_is_called_lost_only_after_the_long_delay(flask_app):
    store = flask_app.extensions["batchery"].store
    spec = released_but_never_published(flask_app.extensions["batchery"], {}, batches=4)
    store.published(spec, ["0 [0]"])  # batch 0's message reached the broker; batch 1's publisher died
    soon, later = now() + UNPUBLISHED + 1, now() + LOST + 1
    assert store.republish(spec, now() - LOST, soon, soon) == [(1, "1 [1]")]
    store.published(spec, ["1 [1]"])  # the watchdog published it again, and says so
    assert store.republish(spec, now() - LOST, soon, soon) == []  # published, maybe waiting in the queue
    assert store.republish(spec, later, later, later) == [(1, "0 [0]"), (2, "1 [1]")]  # never delivered
    store.end(spec, status.STOPPED, "", now())


def test_a_finalizer_its_claimant_said_it_published_is_called_lost_only_after_the_long_delay(flask_app):
    store = flask_app.extensions["batchery"].store
    spec = released_but_never_published(flask_app.extensions["batchery"], {}, batches=2)
    store.record(spec, "0", "ok", 0.1, "p", now())
    assert store.record(spec, "1", "ok", 0.1, "p", now()).finalize
    store.published(spec, [], finalizer=True)
    soon, later = now() + UNPUBLISHED + 1, now() + LOST + 1
    assert not store.reclaim_finalizer(spec, now() - LOST, soon, soon)  # may be waiting in the queue
    assert store.reclaim_finalizer(spec, later, later, later)
    assert store.reclaim_finalizer(spec, later + 1, later + 1, later + 1)  # ...not said to be published again
    store.end(spec, status.SUCCEEDED, "", now())


@contextlib.contextmanager
def own_fleet(settings, worker_env, tmp_path, name: str, lost: float, concurrency: int = 2):
    """An API app and a worker of their own on the queue `name`, with BATCHERY_LOST_SECONDS `lost`
    and the watchdog sweeping every 0.5 s: yields `(jobs, env, worker)`; stops both at the end."""
    quick = dataclasses.replace(settings, queue=name, watchdog_seconds=0.5, lost_seconds=lost)
    env = {**worker_env, "BATCHERY_QUEUE": name, "BATCHERY_LOST_SECONDS": str(lost)}
    app = create_app({"SETTINGS": quick})
    own = Worker(env, tmp_path, name, concurrency=concurrency)
    try:
        yield Jobs(app.test_client()), env, own
    finally:
        app.extensions["batchery_watchdog"].stop()
        own.stop()


def test_a_message_is_called_lost_when_the_queue_delivered_one_released_lost_seconds_after_it(unconsumed):
    """Not by its age: a saturated fleet delivers messages that waited longer than LOST. A queue is
    first in, first out: one released LOST seconds after it delivered means it was lost."""
    store, watchdog, t0 = unconsumed.store, Watchdog(unconsumed), now()
    api = unconsumed.registry.get("probe")
    spec = build_spec(api, {"workers": 3, "config": {}}, unconsumed.submitter.queue_url, t0)
    store.create(spec, api, t0)
    store.append(spec, [f"{i} [{i}]" for i in range(6)], t0)  # batches 0, 1, 2 released at t0
    store.enqueued(spec, t0)
    unconsumed.redis.set(keys.proc_alive("p"), "1")  # the process running them lives
    # the fleet is busy for 5 LOST: batch 0 is delivered only then; 1 and 2 wait behind it
    assert store.begin(spec, "0", "p", t0 + 5 * LOST).action == "run"
    assert spec["job_id"] not in watchdog.sweep(t0 + 5 * LOST + 1)
    # batch 0 ends, releasing batch 3 (5 LOST after 1 and 2), which is delivered: 1 and 2 were lost
    store.record(spec, "0", "ok", 0.1, "p", t0 + 5 * LOST + 2)  # (the store pushes it: a Redis broker)
    assert spec["job_id"] not in watchdog.sweep(t0 + 5 * LOST + 3)
    assert store.begin(spec, "3", "p", t0 + 5 * LOST + 4).action == "run"
    assert spec["job_id"] in watchdog.sweep(t0 + 5 * LOST + 5)
    assert store.begin(spec, "1", "p", t0 + 5 * LOST + 6).action == "skip"  # the lost original turns up
    assert store.begin(spec, "1", "p", t0 + 5 * LOST + 6, generation=1).action == "run"
    store.end(spec, status.STOPPED, "", now())


def test_with_nothing_delivered_for_lost_seconds_a_message_that_old_is_called_lost(unconsumed):
    """The last messages of the queue (none released after them to be delivered), or all of them."""
    store, watchdog, t0 = unconsumed.store, Watchdog(unconsumed), now()
    api = unconsumed.registry.get("probe")
    spec = build_spec(api, {"workers": 2, "config": {}}, unconsumed.submitter.queue_url, t0)
    store.create(spec, api, t0)
    store.append(spec, ["0 [0]", "1 [1]"], t0)
    store.enqueued(spec, t0)
    unconsumed.redis.set(keys.proc_alive("p"), "1")  # the process running batch 0 lives
    assert store.begin(spec, "0", "p", t0 + 1).action == "run"
    assert spec["job_id"] not in watchdog.sweep(t0 + LOST + 0.5)  # older than LOST, but a delivery since
    assert spec["job_id"] in watchdog.sweep(t0 + LOST + 2)  # nothing delivered since t0 + 1
    store.end(spec, status.STOPPED, "", now())


def test_a_batch_running_in_a_process_that_died_is_published_again(unconsumed):
    """A process whose liveness key expired held a delivery: nobody else would requeue it before
    the broker's visibility timeout (an hour on Redis). A live process's batch is left alone."""
    store, watchdog, t0 = unconsumed.store, Watchdog(unconsumed), now()
    api = unconsumed.registry.get("probe")
    spec = build_spec(api, {"workers": 2, "config": {}}, unconsumed.submitter.queue_url, t0)
    store.create(spec, api, t0)
    store.append(spec, ["0 [0]", "1 [1]", "2 [2]"], t0)
    store.enqueued(spec, t0)
    unconsumed.redis.set(keys.proc_alive("live:1:a"), "1")  # as workers/liveness.py keeps it
    assert store.begin(spec, "0", "dead:2:b", t0 + 1).action == "run"
    assert store.begin(spec, "1", "live:1:a", t0 + 1).action == "run"
    assert spec["job_id"] in watchdog.sweep(t0 + 2)
    state = store.state(spec["job_id"], "probe", t0 + 2)
    assert list(state["procs"]) == ["live:1:a"]  # the dead one no longer counts as running
    assert store.revive(spec, "dead:2:b", t0 + 3) == []  # once
    assert store.begin(spec, "0", "live:1:a", t0 + 4).action == "skip"  # its old message, should it come back
    assert store.begin(spec, "0", "live:1:a", t0 + 4, generation=1).action == "run"
    assert store.state(spec["job_id"], "probe", t0 + 4)["failed"] == 1  # the delivery that died
    store.end(spec, status.STOPPED, "", now())


@BOTH_BROKERS
def test_a_whole_worker_killed_mid_job_has_its_batches_run_again_soon(
    settings, worker_env, broker, probe_config, r, tmp_path
):
    """SIGKILL of the worker's main process and its pool (a container's OOM kill, a lost machine):
    no one requeues its messages, which the Redis broker restored only after its visibility
    timeout (an hour), the job shown running meanwhile."""
    with own_fleet(settings, worker_env, tmp_path, f"killed-{broker}-{probe_config['tag']}", lost=4) as fleet:
        jobs, env, first = fleet
        config = {**probe_config, "sleep": 0.5}
        spec = jobs.submit(
            "probe", {"workers": 2, "config": config, "item_list": {"items": list(range(12)), "batch_size": 1}}
        )
        running = f"probe:{probe_config['tag']}:running:{spec['job_id']}"
        wait_for(lambda: int(r.get(running) or 0) >= 1, timeout=60, what="a batch to be running")
        os.killpg(first.process.pid, signal.SIGKILL)
        first.process.wait(30)
        second = Worker(env, tmp_path, f"after-kill-{broker}", concurrency=2)
        try:
            job = jobs.wait_final("probe", spec["job_id"], timeout=120)
        finally:
            second.stop()
    assert job["status"] == status.SUCCEEDED
    assert job["batch_metrics"]["succeeded"] == 12
    assert job["batch_metrics"]["failed"] >= 1  # the deliveries that died with the worker
    assert r.lrange(f"probe:{probe_config['tag']}:complete", 0, -1) == [spec["job_id"]]


@BOTH_BROKERS
def test_batches_published_by_the_process_that_released_them_are_said_published(settings, probe_config):
    """Else the watchdog would publish every batch waiting in a busy queue again after 10 s."""
    # A queue no worker takes from: a worker running the job would be, for a sweep dated 11 s
    # ahead, between claiming its finalizer and saying it published it (as the watchdog should judge).
    idle = dataclasses.replace(settings, queue=f"nobody-consumes-{probe_config['tag']}", watchdog_seconds=0)
    services = create_app({"SETTINGS": idle}).extensions["batchery"]
    r = services.redis
    spec = released_but_never_published(services, probe_config, batches=2)  # both released: no more to come
    assert r.zrange(keys.unpublished(spec["job_id"]), 0, -1) == [b"0", b"1"]
    follow(services.dispatcher, services.store, spec, Outcome(released=["0 [0]", "1 [1]"]))
    assert r.zcard(keys.unpublished(spec["job_id"])) == 0
    assert spec["job_id"] not in Watchdog(services).sweep(now() + UNPUBLISHED + 1)  # not published twice
    services.store.end(spec, status.STOPPED, "", now())


@BOTH_BROKERS
def test_a_pool_process_killed_between_counting_its_batch_and_publishing_loses_nothing(
    settings, worker_env, broker, probe_config, r, tmp_path, caplog
):
    """The process dies holding messages only it knew it had to publish; with LOST set to an hour,
    only the unpublished-release duty can get the job to its end."""
    quick = dataclasses.replace(
        settings, queue=f"dying-{probe_config['tag']}", watchdog_seconds=0.5, unpublished_seconds=2, lost_seconds=3600
    )
    marker = tmp_path / "died"
    env = {**worker_env, "BATCHERY_QUEUE": quick.queue, "BATCHERY_TEST_DIE_MARKER": str(marker)}
    app = create_app({"SETTINGS": quick})
    dying = Worker(env, tmp_path, f"dying-{broker}", concurrency=2, app="tests.dying_publisher")
    try:
        jobs = Jobs(app.test_client())
        body = {"workers": 2, "config": probe_config, "item_list": {"items": list(range(8)), "batch_size": 1}}
        spec = jobs.submit("probe", body)
        job = jobs.wait_final("probe", spec["job_id"], timeout=180)
    finally:
        app.extensions["batchery_watchdog"].stop()
        dying.stop()
    assert marker.exists()  # a pool process did die in the window
    assert job["status"] == status.SUCCEEDED
    assert job["batch_metrics"]["succeeded"] == 8
    deliveries = r.hgetall(f"probe:{probe_config['tag']}:deliveries:{spec['job_id']}")
    assert deliveries == {str(i): "1" for i in range(8)}  # every batch ran, once
    assert r.lrange(f"probe:{probe_config['tag']}:complete", 0, -1) == [spec["job_id"]]
    published_again = [rec.getMessage() for rec in caplog.records if rec.name == "app.jobs.watchdog"]
    assert any("publishing" in line for line in published_again), published_again


def test_one_finalizer_at_a_time_and_a_silent_one_is_taken_over(flask_app):
    store = flask_app.extensions["batchery"].store
    spec = released_but_never_published(flask_app.extensions["batchery"], {}, batches=2)
    t = now()
    assert store.finalizing(spec, "first", t - LOST, t)
    assert not store.finalizing(spec, "second", t + 1 - LOST, t + 1)  # the first beats: it is alive
    assert store.finalizing(spec, "first", t + 2 - LOST, t + 2)  # its heartbeat
    assert not store.finalizing(spec, "second", t + 2 + LOST - 1 - LOST, t + 2 + LOST - 1)
    assert store.finalizing(spec, "second", t + 3 + LOST - LOST, t + 3 + LOST)  # silent for LOST: taken over
    assert not store.finalizing(spec, "first", t + 4 + LOST - LOST, t + 4 + LOST)  # ...and not given back
    assert store.finalizing(spec, "second", t + 3 + 2 * LOST - LOST, t + 3 + 2 * LOST)  # a redelivery of its own
    store.end(spec, status.SUCCEEDED, "", now())
    assert not store.finalizing(spec, "second", now(), now())  # ended: nothing more to finalize


@BOTH_BROKERS
def test_an_on_job_complete_longer_than_the_lost_delay_runs_once(
    settings, worker_env, broker, probe_config, r, tmp_path
):
    """Its heartbeat keeps the watchdog from taking it for a lost finalizer and running a second one
    beside it (it did: the claim time was never renewed)."""
    lost = 4  # its heartbeat every 1 s: a flake would need the thread starved for 4 s
    with own_fleet(settings, worker_env, tmp_path, f"slow-end-{broker}-{probe_config['tag']}", lost) as (jobs, _, _):
        config = {**probe_config, "complete_sleep": 3 * lost}
        spec = jobs.submit("probe", {"workers": 2, "config": config, "item_list": {"items": [1, 2], "batch_size": 1}})
        job = jobs.wait_final("probe", spec["job_id"], timeout=120)
    assert job["status"] == status.SUCCEEDED
    assert r.lrange(f"probe:{probe_config['tag']}:complete", 0, -1) == [spec["job_id"]]


@BOTH_BROKERS
def test_the_worker_running_on_job_complete_is_killed_and_the_finalizer_runs_again(jobs, worker, r, probe_config):
    config = {**probe_config, "complete_kills": True}
    spec = jobs.submit("probe", {"workers": 2, "config": config, "item_list": {"items": [1, 2, 3], "batch_size": 1}})
    job = jobs.wait_final("probe", spec["job_id"])
    assert job["status"] == status.SUCCEEDED
    assert job["batch_metrics"]["succeeded"] == 3
    # at-least-once: the killed call, then the redelivered one; one final status
    assert r.lrange(f"probe:{probe_config['tag']}:complete", 0, -1) == [spec["job_id"]] * 2
    assert jobs.status("probe", spec["job_id"]) == job  # one final status, set once


def test_a_job_no_worker_takes_shows_pending_then_stalled_batches(redis_server, probe_config):
    queue = f"nobody-consumes-{probe_config['tag']}"
    settings = Settings(
        redis_url=redis_server.url,
        apis_file=str(PREDICTORS / "cortex.yaml"),
        queue=queue,
        watchdog_seconds=0,
        stalled_seconds=2,
    )
    app = create_app({"SETTINGS": settings})
    jobs = Jobs(app.test_client())
    spec = jobs.submit(
        "probe", {"workers": 3, "config": probe_config, "item_list": {"items": [1, 2, 3, 4, 5], "batch_size": 1}}
    )
    counts = jobs.status("probe", spec["job_id"])["worker_counts"]
    no_worker_counts = dict.fromkeys(answer_keys(WorkerCountsSchema), 0)
    assert counts == {**no_worker_counts, "pending": 3}
    counts = wait_for(
        lambda: (
            jobs.status("probe", spec["job_id"])["worker_counts"]["stalled"]
            and jobs.status("probe", spec["job_id"])["worker_counts"]
        ),
        timeout=10,
        what="the pending batches to count as stalled",
    )
    assert counts == {**no_worker_counts, "stalled": 3}
    # a delivery that begins is movement: the job is no longer stalled
    assert app.extensions["batchery"].store.begin(spec, "0", "p", now()).action == "run"
    counts = jobs.status("probe", spec["job_id"])["worker_counts"]
    assert (counts["stalled"], counts["pending"], counts["initializing"]) == (0, 2, 1)
    jobs.client.delete(f"/batch/probe?jobID={spec['job_id']}")


@pytest.fixture
def persistent_redis(tmp_path):
    """A redis-server of its own that logs every write to its append-only file before answering."""
    server = RedisServer(tmp_path, {"appendonly": "yes", "appendfsync": "always"})
    yield server
    server.stop()


@pytest.fixture
def persistent_stack(persistent_redis, settings, worker_env, tmp_path, probe_config):
    """A worker and an API of their own on `persistent_redis` (the job store; the broker too, unless SQS)."""
    queue = f"restart-{probe_config['tag']}"
    env = dict(worker_env, REDIS_URL=persistent_redis.url, BATCHERY_QUEUE=queue, BATCHERY_VISIBILITY_TIMEOUT="10")
    worker = Worker(env, tmp_path, "restart", concurrency=4)
    own = dataclasses.replace(
        settings, redis_url=persistent_redis.url, queue=queue, visibility_timeout=10, watchdog_seconds=1, lost_seconds=5
    )
    app = create_app({"SETTINGS": own})
    yield Jobs(app.test_client()), worker
    app.extensions["batchery_watchdog"].stop()  # its Redis is about to go away
    worker.stop()


@BOTH_BROKERS
@pytest.mark.parametrize("hard", [False, True], ids=["sigterm", "sigkill"])
def test_redis_restarted_mid_job_with_append_only_persistence_loses_nothing(
    persistent_redis, persistent_stack, broker, r, probe_config, hard
):
    jobs, worker = persistent_stack
    total = 200
    config = {**probe_config, "sleep": 0.01}  # the probe records in the tests' own Redis, not restarted
    spec = jobs.submit(
        "probe", {"workers": 4, "config": config, "item_list": {"items": list(range(total)), "batch_size": 1}}
    )
    wait_for(
        lambda: jobs.status("probe", spec["job_id"])["batch_metrics"]["succeeded"] >= 30, what="the job to be under way"
    )
    persistent_redis.restart(down=1, hard=hard)
    job = wait_for(
        lambda: _final_or_none(jobs, spec["job_id"]), timeout=120, interval=0.2, what="the job to end after the restart"
    )
    deliveries = r.hgetall(f"probe:{probe_config['tag']}:deliveries:{spec['job_id']}")
    print(
        f"\nredis restart ({'SIGKILL' if hard else 'SIGTERM'}, {broker} broker): {job['status']}, "
        f"{job['batch_metrics']}, "
        f"batches run {len(deliveries)}, duplicates {sum(int(n) - 1 for n in deliveries.values())}"
    )
    failed_for_good = int(persistent_redis.client.hget(f"batchery:job:{spec['job_id']}", "failed_batches"))
    assert job["batch_metrics"]["succeeded"] + failed_for_good == total
    assert job["batches_in_queue"] == 0
    assert r.lrange(f"probe:{probe_config['tag']}:complete", 0, -1) == [spec["job_id"]]
    assert worker.process.poll() is None


@contextlib.contextmanager
def outage_stack(persistent_redis, settings, worker_env, tmp_path, queue: str, concurrency: int):
    """A worker and an API of their own on `persistent_redis`, on `queue`; the worker has no outage
    budget (BATCHERY_STORE_OUTAGE_SECONDS 0), so any outage outlasts it. Yields (jobs, worker)."""
    env = dict(worker_env, REDIS_URL=persistent_redis.url, BATCHERY_QUEUE=queue, BATCHERY_STORE_OUTAGE_SECONDS="0")
    worker = Worker(env, tmp_path, queue, concurrency=concurrency)
    own = dataclasses.replace(settings, redis_url=persistent_redis.url, queue=queue, watchdog_seconds=1, lost_seconds=5)
    app = create_app({"SETTINGS": own})
    try:
        yield Jobs(app.test_client()), worker
    finally:
        app.extensions["batchery_watchdog"].stop()
        worker.stop()


@pytest.mark.parametrize("broker", ["sqs"], indirect=True)
def test_a_store_outage_while_the_predictor_loads_is_a_failed_attempt_not_a_hung_job(
    persistent_redis, settings, worker_env, tmp_path, r, probe_config
):
    """The job store stops while a predictor loads, longer than BATCHERY_STORE_OUTAGE_SECONDS: the
    check before predict (PROCEED) failed, the task with it, and the batch stayed begun in a live
    process that would never run it (its message acked, on SQS): the job never ended."""
    stack = outage_stack(persistent_redis, settings, worker_env, tmp_path, f"load-outage-{probe_config['tag']}", 1)
    with stack as (jobs, worker):
        config = {**probe_config, "init_sleep": 3}  # the probe records in the tests' own Redis, not stopped
        spec = jobs.submit("probe", {"workers": 1, "config": config, "item_list": {"items": [1], "batch_size": 1}})
        wait_for(lambda: r.llen(f"probe:{probe_config['tag']}:inits") == 1, what="the predictor to be loading")
        persistent_redis.restart(down=5)  # it ends loading while the store is down
        job = wait_for(lambda: _final_or_none(jobs, spec["job_id"]), timeout=90, interval=0.2, what="the job to end")
        assert job["status"] == status.SUCCEEDED, job
        assert (job["batch_metrics"]["succeeded"], job["batch_metrics"]["failed"]) == (1, 1)
        assert "recorded once it does" in worker.output()  # the failed attempt, kept while the store was down


@pytest.mark.parametrize(
    ("items", "dead_letters", "failed"),
    [
        pytest.param([1, 2, 3, 4], None, 0, id="succeeded"),
        # a failed attempt with deliveries left: its next delivery, which the task's retry would
        # have published, is published once the outcome is recorded (the job hung, up to an hour)
        pytest.param([{"sleep": 3, "fail": 1}, {"sleep": 3, "fail": 1}, 3, 4], 3, 2, id="retried"),
    ],
)
def test_outcomes_the_store_could_not_take_during_a_long_outage_are_recorded_when_it_is_back(
    persistent_redis, settings, worker_env, tmp_path, r, probe_config, items, dead_letters, failed
):
    """A Redis outage longer than BATCHERY_STORE_OUTAGE_SECONDS failed the tasks whose batches
    ended in it: their outcomes were lost, and the job stayed running, its batches in flight."""
    queue = f"outage-{probe_config['tag']}"
    with outage_stack(persistent_redis, settings, worker_env, tmp_path, queue, 2) as (jobs, worker):
        config = {**probe_config, "sleep": 1.5}  # the probe records in the tests' own Redis, not stopped
        body = {"workers": 2, "config": config, "item_list": {"items": items, "batch_size": 1}}
        if dead_letters:
            arn = f"arn:aws:sqs:us-east-1:123456789012:{queue}-dlq"
            body["sqs_dead_letter_queue"] = {"arn": arn, "max_receive_count": 3}
        spec = jobs.submit("probe", body)
        starts = f"probe:{probe_config['tag']}:starts:{spec['job_id']}"
        wait_for(lambda: r.llen(starts) == 2, what="two batches inside predict")
        persistent_redis.restart(down=5)  # they end while it is down; their outcomes cannot be recorded
        job = wait_for(lambda: _final_or_none(jobs, spec["job_id"]), timeout=90, interval=0.2, what="the job to end")
        assert job["status"] == status.SUCCEEDED, job
        assert job["batch_metrics"]["succeeded"] == 4 and job["batches_in_queue"] == 0
        assert job["batch_metrics"]["failed"] == failed
        assert "recorded once it does" in worker.output()  # the store was down as the batches ended


def _final_or_none(jobs, job_id):
    try:
        job = jobs.status("probe", job_id)
    except AssertionError:  # 503 while Redis is down
        return None
    return job if status.is_final(job["status"]) else None


@BOTH_BROKERS
def test_pool_processes_sigkilled_while_a_job_runs_lose_no_batch(jobs, worker, broker, r, probe_config):
    """Five pool processes SIGKILLed from outside, one after the other, while 120 batches run."""
    total, kills = 120, 5
    config = {**probe_config, "sleep": 0.3}  # busy pool processes: most kills land inside a batch
    spec = jobs.submit(
        "probe", {"workers": 4, "config": config, "item_list": {"items": list(range(total)), "batch_size": 1}}
    )
    job_id = spec["job_id"]
    for _ in range(kills):
        pids = wait_for(lambda: len(worker.children()) == 4 and worker.children(), what="4 pool processes")
        os.kill(random.choice(pids), signal.SIGKILL)
        wait_for(lambda p=set(pids): len(set(worker.children()) - p) == 1, what="the killed process to be replaced")
    job = jobs.wait_final("probe", job_id, timeout=180)
    deliveries = {int(b): int(n) for b, n in r.hgetall(f"probe:{probe_config['tag']}:deliveries:{job_id}").items()}
    failed_for_good = int(r.hget(keys.job(job_id), "failed_batches"))
    duplicates = sum(n - 1 for n in deliveries.values())
    print(
        f"\n{kills} pool processes SIGKILLed ({broker}): {job['status']}, {job['batch_metrics']}, "
        f"failed for good {failed_for_good}, batches run {len(deliveries)}, duplicates {duplicates}"
    )
    assert job["batch_metrics"]["succeeded"] + failed_for_good == total
    assert set(deliveries) == set(range(total))  # every batch ran
    assert job["batches_in_queue"] == 0
    assert r.lrange(f"probe:{probe_config['tag']}:complete", 0, -1) == [job_id]
    assert worker.process.poll() is None


@BOTH_BROKERS
def test_a_queue_waiting_longer_than_the_lost_delay_is_not_taken_for_lost(
    settings, worker_env, broker, probe_config, r, tmp_path, caplog
):
    """A fleet saturated for longer than LOST (10 messages queued before 1 process, 1 s batches,
    LOST 5 s): waiting messages are not taken for lost. They were: each sweep published every one
    older than LOST again (each batch still ran once: the originals were skipped as superseded)."""
    lost = 5  # a delivery every second or so: a flake would need the worker starved for 5 s
    name = f"saturated-{broker}-{probe_config['tag']}"
    with own_fleet(settings, worker_env, tmp_path, name, lost, concurrency=1) as (jobs, _, _):
        config = {**probe_config, "sleep": 1}
        items = list(range(16))
        spec = jobs.submit("probe", {"workers": 10, "config": config, "item_list": {"items": items, "batch_size": 1}})
        job = jobs.wait_final("probe", spec["job_id"], timeout=150)
    assert job["status"] == status.SUCCEEDED
    assert job["batch_metrics"]["succeeded"] == 16
    deliveries = r.hgetall(f"probe:{probe_config['tag']}:deliveries:{spec['job_id']}")
    assert sorted(int(n) for n in deliveries.values()) == [1] * 16
    # no message was published again (it was, every sweep: each waiting one got a copy at the queue's end)
    assert not [record for record in caplog.records if "never delivered" in record.getMessage()]
