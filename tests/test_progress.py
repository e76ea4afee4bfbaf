"""`job_status.progress` (app/model/progress.py): batches done of the total, the rate over the last
30 s and the time left at it, kept at a constant cost in the job store, and shown by `--watch`."""

from __future__ import annotations

import re

import pytest
import redis
from rich.progress import Progress

from app.cli import EtaColumn, RateColumn, bar_fields, rate_text
from app.model import progress, status
from app.model.job import build_spec, job_status
from app.store import keys
from app.store.job_store import JobStore
from tests.conftest import BOTH_BROKERS
from tests.services import RedisServer, wait_for
from tests.test_cli import Cli

API = {"name": "api", "api_id": "x", "predictor": {"config": {}}}
T0 = 1_700_000_000.0  # a whole second: the arithmetic below reads plainly


# --- the arithmetic ----------------------------------------------------------------------------


def test_the_rate_counts_the_last_30_seconds_and_ignores_older_buckets():
    ends = {int(T0) - 40: 500, int(T0) - 30: 7} | {int(T0) - back: 2 for back in range(30)}  # 2 a second
    assert progress.batches_per_second(ends, T0 + 0.5, started=T0 - 3600) == pytest.approx(60 / 29.5)
    assert progress.batches_per_second(ends, T0 + 40, started=T0 - 3600) == 0.0  # none in the last 30 s


def test_a_young_job_s_rate_counts_from_its_start_and_one_early_batch_is_not_a_huge_rate():
    ends = {int(T0) + 1: 4, int(T0) + 3: 6}
    assert progress.batches_per_second(ends, T0 + 5.0, started=T0) == pytest.approx(2.0)
    assert progress.batches_per_second({int(T0): 1}, T0 + 0.01, started=T0) == 1.0  # over a second at least


def test_the_eta_is_the_remaining_batches_at_the_rate_rounded_up():
    assert progress.eta_seconds(remaining=10, rate=4.0) == 3
    assert progress.eta_seconds(remaining=10, rate=5.0) == 2
    assert progress.eta_seconds(remaining=10, rate=0.0) is None  # no rate yet
    assert progress.eta_seconds(remaining=0, rate=0.0) == 0  # all ended, the finalizer runs


def test_the_buckets_are_read_from_the_ends_fields_of_the_job_hash():
    job_hash = {"spec": "{}", "succeeded": "3", "ends:4": f"{int(T0) + 4} 2", "ends:31": f"{int(T0) - 1} 1"}
    assert progress.ends_by_second(job_hash) == {int(T0) + 4: 2, int(T0) - 1: 1}


def state(code: str, **values) -> dict:
    """A job's state as the store reads it: 100 batches, 40 done (1 failed for good), 20 of them in the
    last 10 s, read at T0."""
    spec = build_spec(API, {"workers": 2, "config": {}}, "redis://h/q", T0 - 10)
    ends = {int(T0) - back: 2 for back in range(10)}
    base = {"spec": spec, "status": code, "total": 100, "succeeded": 39, "failed": 1, "failed_batches": 1}
    base |= {"time_sum": 1.0, "start": T0 - 10, "end": 0.0, "ends": ends, "read_time": T0, "worker_counts": {}}
    return base | values


def test_a_running_job_s_progress_has_its_rate_and_the_time_left():
    assert job_status(state(status.RUNNING))["progress"] == {
        "done": 40,
        "total": 100,
        "batches_per_second": 2.0,
        "eta_seconds": 30,
    }


def test_a_running_job_with_no_batch_ended_in_30_s_has_rate_0_and_no_eta():
    assert job_status(state(status.RUNNING, read_time=T0 + 31))["progress"] == {
        "done": 40,
        "total": 100,
        "batches_per_second": 0.0,
        "eta_seconds": None,
    }


def test_an_ended_job_has_eta_0_and_the_rate_of_its_last_30_s():
    ended = job_status(state(status.SUCCEEDED, succeeded=99, end=T0, read_time=T0 + 3600))["progress"]
    assert ended == {"done": 100, "total": 100, "batches_per_second": 2.0, "eta_seconds": 0}
    stopped = job_status(state(status.STOPPED, end=T0 + 100, read_time=T0 + 3600))["progress"]
    assert (stopped["done"], stopped["batches_per_second"], stopped["eta_seconds"]) == (40, 0.0, 0)


def test_a_job_in_progress_that_starts_no_batch_has_rate_0_and_no_eta():
    """A paused job (`status_paused`, another part of the issue) is neither advancing nor final."""
    paused = job_status(state("status_paused"))["progress"]
    assert (paused["batches_per_second"], paused["eta_seconds"]) == (0.0, None)


# --- the ring of buckets in the job store ------------------------------------------------------


@pytest.fixture
def store(tmp_path):
    server = RedisServer(tmp_path)
    yield JobStore(redis.Redis.from_url(server.url))
    server.stop()


def new_job(store: JobStore, batches: int) -> dict:
    """A job of `batches` batches, all of them in flight (workers = batches)."""
    spec = build_spec(API, {"workers": batches, "config": {}}, "redis://h/q", T0)
    store.create(spec, API, T0)
    store.append(spec, [f"{i} [{i}]" for i in range(batches)], T0)
    store.enqueued(spec, T0)
    return spec


def test_record_counts_each_batch_that_ends_in_the_bucket_of_its_second(store):
    spec = new_job(store, 10)
    store.record(spec, "0", "ok", 0.1, "p", T0 + 1.2)
    store.record(spec, "1", "dead", 0.1, "p", T0 + 1.7)  # failed for good: it ended too
    store.record(spec, "2", "retry", 0.1, "p", T0 + 1.8)  # runs again: not ended
    store.record(spec, "0", "ok", 0.1, "p", T0 + 1.9)  # a second delivery of an ended batch
    store.record(spec, "3", "ok", 0.1, "p", T0 + 2.5)
    found = store.state(spec["job_id"], "api", T0 + 3.0)
    assert found["ends"] == {int(T0) + 1: 2, int(T0) + 2: 1}
    assert job_status(found)["progress"] == {"done": 3, "total": 10, "batches_per_second": 1.0, "eta_seconds": 7}
    # a slot is reused SLOTS seconds later: its old second's count is dropped, not added to
    store.record(spec, "4", "ok", 0.1, "p", T0 + 1 + progress.SLOTS + 0.5)
    assert store.state(spec["job_id"], "api", T0 + 40)["ends"] == {int(T0) + 2: 1, int(T0) + 1 + progress.SLOTS: 1}


def commands_for_status(store: JobStore, spec: dict, at: float) -> tuple[dict, dict]:
    """The Redis commands one status read costs (from INFO commandstats), and the progress it reads."""
    store.redis.config_resetstat()
    found = store.state(spec["job_id"], spec["api_name"], at)
    stats = store.redis.info("commandstats")
    calls = {name: value["calls"] for name, value in stats.items() if name not in ("cmdstat_config", "cmdstat_info")}
    return calls, job_status(found)["progress"]


def test_the_status_read_costs_the_same_for_10_batches_and_10_000_with_the_ring_full(store):
    """The big job's batches end over 1,000 seconds, a bucket each: the job hash keeps SLOTS of them."""
    small, large = new_job(store, 10), new_job(store, 10_000)
    fields_before = store.redis.hlen(keys.job(large["job_id"]))
    for n in range(5):
        store.record(small, str(n), "ok", 0.1, "p", T0 + n)
    pipe = store.redis.pipeline(transaction=False)
    for n in range(1000):
        store.record_call(large, str(n), "ok", 0.1, "p", T0 + n).run(pipe)
    pipe.execute()
    store.state(small["job_id"], "api", T0 + 1000)  # loads the READ script: not part of a read's cost
    big_cost, big = commands_for_status(store, large, T0 + 1000)
    small_cost, _ = commands_for_status(store, small, T0 + 1000)
    assert big_cost == small_cost
    assert not {"cmdstat_lrange", "cmdstat_scan", "cmdstat_hscan", "cmdstat_keys"} & set(big_cost)
    assert store.redis.hlen(keys.job(large["job_id"])) == fields_before + progress.SLOTS
    # the last 29 whole seconds had a batch each
    assert big == {"done": 1000, "total": 10_000, "batches_per_second": 1.0, "eta_seconds": 9000}


# --- on real workers ---------------------------------------------------------------------------


def slow_job(probe_config: dict, batches: int = 12, seconds: float = 0.5) -> dict:
    """A job of `batches` batches of `seconds` each, two at a time: it runs for a few seconds."""
    return {
        "workers": 2,
        "item_list": {"items": list(range(batches)), "batch_size": 1},
        "config": dict(probe_config, sleep=seconds),
    }


@BOTH_BROKERS
def test_a_running_job_shows_done_growing_a_rate_and_an_eta_then_eta_0_at_the_end(jobs, worker, probe_config):
    spec = jobs.submit("probe", slow_job(probe_config))
    seen: list[dict] = []

    def under_way_twice() -> bool:
        job = jobs.status("probe", spec["job_id"])
        if job["status"] == status.RUNNING and 0 < job["progress"]["done"] < 12:
            seen.append(job["progress"])
        return len({p["done"] for p in seen}) >= 2 or status.is_final(job["status"])

    wait_for(under_way_twice, timeout=120, interval=0.05, what="two readings of the job under way")
    assert len({p["done"] for p in seen}) >= 2, seen
    assert [p["done"] for p in seen] == sorted(p["done"] for p in seen)  # it only grows
    for reading in seen:
        assert reading["total"] == 12
        assert reading["batches_per_second"] > 0
        assert isinstance(reading["eta_seconds"], int) and 1 <= reading["eta_seconds"] <= 600, reading

    ended = jobs.wait_final("probe", spec["job_id"], timeout=120)["progress"]
    assert ended["done"] == ended["total"] == 12 and ended["eta_seconds"] == 0
    assert ended["batches_per_second"] > 0  # the rate of its last 30 s


@pytest.fixture
def cli(live_url, worker, tmp_path, redis_server) -> Cli:
    return Cli(live_url, tmp_path, redis_server.url)


def test_watch_shows_the_rate_the_api_measures(cli, probe_config):
    job_id = cli.submit(slow_job(probe_config, batches=6, seconds=0.2))
    watched = cli("get", "probe", job_id, "--watch", "--interval", "0.1")
    assert watched.returncode == 0, watched.stdout + watched.stderr
    final = cli.json("get", "probe", job_id)["job_status"]["progress"]
    shown = re.search(r"6/6 batches (\S+) batches/s ended", watched.stderr)
    assert shown, watched.stderr
    assert shown[1] == rate_text(final["batches_per_second"])


def rendered(job: dict) -> tuple[str, str]:
    """The rate and ETA columns of the --watch bar for a job status."""
    bar = Progress()
    task_id = bar.add_task(**bar_fields(job))
    task = bar.tasks[task_id]
    return str(RateColumn().render(task)), str(EtaColumn().render(task))


def test_the_watch_bar_shows_the_progress_the_api_answers():
    running = {"status": status.RUNNING, "progress": {"done": 5, "total": 12, "batches_per_second": 0.0333}}
    assert rendered(running | {"progress": running["progress"] | {"eta_seconds": 211}}) == (
        "0.033 batches/s",
        "ETA 3m31s",
    )
    assert rendered(running | {"progress": running["progress"] | {"eta_seconds": None}})[1] == "ETA -:--"
    assert rendered(running | {"progress": running["progress"] | {"eta_seconds": 0}})[1] == "ETA 0s"  # finalizing
    ended = {"status": status.SUCCEEDED, "progress": {"done": 12, "total": 12, "batches_per_second": 161.63}}
    assert rendered(ended | {"progress": ended["progress"] | {"eta_seconds": 0}}) == ("161.6 batches/s", "ended")
