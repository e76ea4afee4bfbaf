"""A fleet of hosts on one machine: one Redis, two API processes (real gunicorn) and worker "hosts"
(separate `celery worker` processes, each with its own `--hostname` and concurrency: 1, 2 and 2),
all on one queue. What the batches themselves record (tests/predictors/timeline.py: start, end,
host, pid) shows that each job's `workers` cap holds across the fleet and that two jobs share it,
that a host stopped with SIGTERM mid-job (Celery's warm shutdown) loses nothing and counts no
failed attempt, and that a host added mid-job takes batches as soon as it is ready.

The stopped and the added host run on both brokers (a second fleet on SQS, a moto server): a
stopping worker hands its messages back through the broker. The cap and the sharing are the job
store's release window, the same on both: they run on the Redis broker only.

Two dedicated pools join the Redis fleet (hosts with BATCHERY_QUEUES=pool-a or pool-b, for the
timeline predictor deployed again as timeline-a and timeline-b with `queue:`): each pool runs only
its own API's batches, and each job's predictor is loaded once per process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
import requests

from app.model import status
from tests.conftest import PREDICTORS
from tests.services import ROOT, Gunicorn, RedisServer, Worker, wait_for

API = "timeline"  # tests/predictors/timeline.yaml
HOSTS = {"h1": 1, "h2": 2, "h3": 2}  # worker hosts and their pool processes: 5 in all
ADDED_HOST = ("h4", 2)  # the host the third test adds mid-job
ADDED_HOST_BOUND = 5.0  # seconds from the added host's ready line to its first batch (measured: see docs)


@dataclass
class Fleet:
    """The fleet's processes and where its batches record what they did."""

    redis: redis.Redis
    env: dict
    logdir: Path
    apis: list[Gunicorn]
    hosts: dict[str, Worker] = field(default_factory=dict)

    @property
    def broker(self) -> str:
        """`redis` or `sqs`."""
        return "sqs" if self.env.get("BROKER_URL", "").startswith("sqs://") else "redis"

    def submit(self, api: Gunicorn, body: dict) -> str:
        """Submit a job through one API process; its id."""
        response = requests.post(f"{api.url}/batch/{API}", json=body, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()["job_id"]

    def wait_final(self, api: Gunicorn, job_id: str, timeout: float = 120) -> dict:
        """The job's status, asked of `api`, once it is final."""
        return wait_for(
            lambda: (job := job_status(api, job_id)) and status.is_final(job["status"]) and job,
            timeout=timeout,
            interval=0.2,
            what=f"job {job_id} to end",
        )

    def start_host(self, name: str, concurrency: int, **env: str) -> Worker:
        """A worker host of the fleet, once ready; `env` adds to or overrides the fleet's settings
        (e.g. BATCHERY_QUEUES for a host of a dedicated pool)."""
        settings = {**host_env(self.env, self.logdir, name), **env}
        self.hosts[name] = Worker(settings, self.logdir, name, concurrency=concurrency)
        return self.hosts[name]


def fleet_env(redis_url: str, workdir: Path) -> dict:
    """What every process of the fleet runs with: the same Redis, the same queue, the `timeline`
    API deployed by each API process at start."""
    env = dict(os.environ)
    env.pop("BROKER_URL", None)
    env.update(
        REDIS_URL=redis_url,
        BATCHERY_QUEUE=f"fleet-{uuid.uuid4().hex[:8]}",
        BATCHERY_APIS=str(PREDICTORS / "timeline.yaml"),
        PYTHONPATH=str(ROOT),
    )
    return env


def host_env(env: dict, workdir: Path, name: str) -> dict:
    """A host's settings: the fleet's, with a project cache of its own (a host of its own would
    fetch and unpack the deployed project itself)."""
    return {**env, "BATCHERY_PROJECT_CACHE": str(workdir / f"projects-{name}")}


@contextlib.contextmanager
def started_fleet(workdir: Path, broker_env: dict) -> Iterator[Fleet]:
    """One Redis, two API processes and three worker hosts, started side by side; all stopped after.
    `broker_env` picks the broker (none: the Redis broker)."""
    with contextlib.ExitStack() as stack:
        server = RedisServer(workdir)
        stack.callback(server.stop)
        env = {**fleet_env(server.url, workdir), **broker_env}
        (workdir / "api-a").mkdir()
        (workdir / "api-b").mkdir()
        the_fleet = Fleet(redis.Redis.from_url(server.url, decode_responses=True), env, workdir, apis=[])
        with ThreadPoolExecutor(len(HOSTS) + 2) as pool:
            apis = [pool.submit(Gunicorn, env, workdir / name) for name in ("api-a", "api-b")]
            hosts = {
                name: pool.submit(Worker, host_env(env, workdir, name), workdir, name, concurrency=concurrency)
                for name, concurrency in HOSTS.items()
            }
        # stopped at the end (also when another one failed to start), with the hosts added since
        started = [future.result() for future in [*apis, *hosts.values()] if future.exception() is None]
        stack.callback(lambda: stop_side_by_side([*started, *the_fleet.hosts.values()]))
        the_fleet.apis = [future.result() for future in apis]
        the_fleet.hosts = {name: future.result() for name, future in hosts.items()}
        yield the_fleet


def stop_side_by_side(processes: list[Gunicorn | Worker]) -> None:
    """Stop processes at the same time (a worker on SQS takes seconds to stop); each once."""
    unique = list({id(process): process for process in processes}.values())
    with ThreadPoolExecutor(len(unique) or 1) as pool:
        for stopping in [pool.submit(process.stop) for process in unique]:
            stopping.result()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Iterator[Fleet]:
    """The fleet on the Redis broker (the job store's Redis)."""
    with started_fleet(tmp_path_factory.mktemp("fleet"), {}) as the_fleet:
        yield the_fleet


@pytest.fixture(scope="module")
def sqs_fleet(tmp_path_factory, moto) -> Iterator[Fleet]:
    """The fleet on the SQS broker (a moto server); Redis is then the job store only."""
    broker_env = {**moto.env(), "BROKER_URL": "sqs://", "BATCHERY_SQS_QUEUE_PREFIX": f"fleet-{uuid.uuid4().hex[:8]}-"}
    with started_fleet(tmp_path_factory.mktemp("sqs-fleet"), broker_env) as the_fleet:
        yield the_fleet


def job_status(api: Gunicorn, job_id: str) -> dict:
    """A job's `job_status`, as one API process answers it."""
    response = requests.get(f"{api.url}/batch/{API}", params={"jobID": job_id}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["job_status"]


def records(fleet: Fleet, tag: str, kind: str, job_id: str | None = None) -> list[dict]:
    """What the batches recorded under `tag` (`started`, `runs` or `inits`), of one job or all."""
    found = [json.loads(raw) for raw in fleet.redis.lrange(f"timeline:{tag}:{kind}", 0, -1)]
    return [record for record in found if job_id is None or record["job"] == job_id]


def body(tag: str, redis_url: str, batches: int, workers: int, **config: object) -> dict:
    """A submission of `batches` one-item batches for the `timeline` API."""
    return {
        "workers": workers,
        "item_list": {"items": list(range(batches)), "batch_size": 1},
        "config": {"redis_url": redis_url, "tag": tag, **config},
    }


def peak(runs: list[dict]) -> int:
    """The most runs in progress at one moment (a run ending at the moment another starts is over)."""
    events = sorted([(run["start"], 1) for run in runs] + [(run["end"], -1) for run in runs])
    running = highest = 0
    for _, change in events:
        running += change
        highest = max(highest, running)
    return highest


def mean_running(runs: list[dict], since: float, until: float) -> float:
    """How many runs were in progress on average between two moments."""
    busy = sum(max(0.0, min(run["end"], until) - max(run["start"], since)) for run in runs)
    return busy / (until - since)


def host_of(record: dict) -> str:
    """The fleet's name of the host a record came from (`h1` of Celery's `h1@machine`)."""
    return record["host"].partition("@")[0]


def ready_time(worker: Worker) -> float:
    """When the worker logged that it is ready (epoch seconds, from its JSON log line)."""
    for line in worker.output().splitlines():
        if " ready." in line:
            stamp = json.loads(line)["time"]  # e.g. 2026-12-07T04:26:19.123Z
            return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
    raise AssertionError(f"no ready line in the log of {worker.log_path.name}")


def test_each_jobs_workers_cap_holds_across_the_fleet_and_two_jobs_share_it(fleet):
    tag = uuid.uuid4().hex[:8]
    url = fleet.env["REDIS_URL"]
    batches = 12
    api_a, api_b = fleet.apis
    jobs = [fleet.submit(api, body(tag, url, batches, workers=2, sleep=0.5)) for api in (api_a, api_b)]
    for job_id, api in zip(jobs, (api_b, api_a), strict=True):  # each job waited for through the other API
        job = fleet.wait_final(api, job_id)
        assert job["status"] == status.SUCCEEDED, job
        assert job["batch_metrics"]["succeeded"] == batches and job["batch_metrics"]["failed"] == 0

    runs = {job_id: records(fleet, tag, "runs", job_id) for job_id in jobs}
    every = [run for job_runs in runs.values() for run in job_runs]
    # both jobs in progress at once: from the later first start to the earlier last end
    since = max(min(run["start"] for run in job_runs) for job_runs in runs.values())
    until = min(max(run["end"] for run in job_runs) for job_runs in runs.values())
    shares = {job_id: mean_running(job_runs, since, until) for job_id, job_runs in runs.items()}
    per_host = {name: sum(host_of(run) == name for run in every) for name in HOSTS}
    print(
        f"\nfleet: peak running per job {[peak(job_runs) for job_runs in runs.values()]} (cap 2), "
        f"both jobs together {peak(every)} of 5 processes; both running for {until - since:.2f} s, "
        f"running on average {[round(share, 2) for share in shares.values()]}; batches per host {per_host}"
    )
    for job_id, job_runs in runs.items():
        assert sorted(int(run["batch"]) for run in job_runs) == list(range(batches))
        assert peak(job_runs) == 2, f"job {job_id}: {peak(job_runs)} batches at once with workers 2"
    assert until > since, "the two jobs never ran at the same time"
    for job_id, share in shares.items():  # neither starves while both run: each near its cap of 2
        assert share >= 1.0, f"job {job_id} ran {share:.2f} batches on average while both ran"
    assert sum(count > 0 for count in per_host.values()) >= 2  # 4 batches at once: more than one host


def test_two_jobs_wanting_more_than_the_whole_fleet_share_it(fleet):
    tag = uuid.uuid4().hex[:8]
    url = fleet.env["REDIS_URL"]
    batches, processes = 20, sum(HOSTS.values())
    # each job's cap is the whole fleet: the second job's batches queue behind the first one's
    jobs = [fleet.submit(api, body(tag, url, batches, workers=processes, sleep=0.4)) for api in fleet.apis]
    for job_id in jobs:
        assert fleet.wait_final(fleet.apis[0], job_id)["status"] == status.SUCCEEDED
    runs = {job_id: records(fleet, tag, "runs", job_id) for job_id in jobs}
    since = max(min(run["start"] for run in job_runs) for job_runs in runs.values())
    until = min(max(run["end"] for run in job_runs) for job_runs in runs.values())
    shares = [mean_running(job_runs, since, until) for job_runs in runs.values()]
    print(
        f"\nfleet: two jobs of workers {processes} on {processes} processes: both running for "
        f"{until - since:.2f} s, running on average {[round(share, 2) for share in shares]} (an even share: 2.5)"
    )
    assert until > since, "the two jobs never ran at the same time"
    # the first job does not keep the fleet: each ends up with about half of it while both run
    assert min(shares) >= 1.0, f"while both ran, the jobs had {shares} batches running on average"


def test_both_api_processes_answer_a_jobs_status_identically(fleet):
    tag = uuid.uuid4().hex[:8]
    api_a, api_b = fleet.apis
    job_id = fleet.submit(api_a, body(tag, fleet.env["REDIS_URL"], 6, workers=2, hold=True))
    # held inside predict: nothing moves while both API processes are asked
    wait_for(lambda: len(records(fleet, tag, "started", job_id)) == 2, timeout=60, what="2 batches to start")
    running = [job_status(api, job_id) for api in fleet.apis]
    assert running[0]["status"] == status.RUNNING
    assert running[0] == running[1]
    fleet.redis.set(f"timeline:{tag}:release", 1)
    ended = fleet.wait_final(api_b, job_id)
    assert ended["status"] == status.SUCCEEDED
    assert job_status(api_a, job_id) == ended
    listed = [requests.get(f"{api.url}/batch/{API}", timeout=30).json() for api in fleet.apis]
    for answer, api in zip(listed, fleet.apis, strict=True):  # the one field that differs: whom was asked
        assert answer.pop("endpoint") == f"{api.url}/batch/{API}"
    assert listed[0] == listed[1]
    assert job_id in [job["job_id"] for job in listed[0]["batch_job_statuses"]]


# Two dedicated pools, hosts added to the fleet: a queue each (tests/predictors/timeline.yaml deploys
# the timeline predictor as timeline-a on pool-a and timeline-b on pool-b), as BATCHERY_QUEUES names it.
POOLS = {"pool-a": "timeline-a", "pool-b": "timeline-b"}  # queue: the API whose jobs run on it
POOL_HOSTS = {"pa1": ("pool-a", 1), "pa2": ("pool-a", 1), "pb1": ("pool-b", 2)}  # host: queue, processes


def submit_to(api: Gunicorn, name: str, body: dict) -> dict:
    """Submit a job of the API `name` through one API process; its spec."""
    response = requests.post(f"{api.url}/batch/{name}", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def final_status_of(api: Gunicorn, name: str, job_id: str) -> dict:
    """A job of the API `name`, asked of `api`, once it is final."""

    def final() -> dict | None:
        response = requests.get(f"{api.url}/batch/{name}", params={"jobID": job_id}, timeout=30)
        assert response.status_code == 200, response.text
        job = response.json()["job_status"]
        return job if status.is_final(job["status"]) else None

    return wait_for(final, timeout=120, interval=0.2, what=f"job {job_id} of {name} to end")


def test_two_pools_run_only_their_own_apis_batches_and_load_each_predictor_once_per_process(fleet):
    with ThreadPoolExecutor(len(POOL_HOSTS)) as pool:  # the pools' hosts, started side by side
        starting = [
            pool.submit(fleet.start_host, host, concurrency, BATCHERY_QUEUES=queue)
            for host, (queue, concurrency) in POOL_HOSTS.items()
        ]
        for started in starting:
            started.result()
    tag = uuid.uuid4().hex[:8]
    batches = 8
    # two jobs of each API at once, through both API processes: 4 jobs, each process's cache (2) holds its pool's 2
    submitted = [
        (queue, name, submit_to(api, name, body(tag, fleet.env["REDIS_URL"], batches, workers=2, sleep=0.2)))
        for queue, name in POOLS.items()
        for api in fleet.apis
    ]
    jobs = {spec["job_id"]: queue for queue, _, spec in submitted}
    for queue, name, spec in submitted:
        assert spec["queue"] == queue, spec
        job = final_status_of(fleet.apis[0], name, spec["job_id"])
        assert job["status"] == status.SUCCEEDED, job
        assert job["batch_metrics"]["succeeded"] == batches and job["batch_metrics"]["failed"] == 0

    hosts_of = {queue: {host for host, (served, _) in POOL_HOSTS.items() if served == queue} for queue in POOLS}
    runs = {job_id: records(fleet, tag, "runs", job_id) for job_id in jobs}
    inits = {  # per job: how many times each (host, pid) created its predictor
        job_id: Counter((host_of(load), load["pid"]) for load in records(fleet, tag, "inits", job_id))
        for job_id in jobs
    }
    per_host = Counter(host_of(run) for job_runs in runs.values() for run in job_runs)
    print(
        f"\nfleet, two pools: batches per host {dict(sorted(per_host.items()))} "
        f"(pool-a: {sorted(hosts_of['pool-a'])}, pool-b: {sorted(hosts_of['pool-b'])}); predictor loads per job and "
        f"process {[sorted(loads.values()) for loads in inits.values()]}"
    )
    for job_id, queue in jobs.items():
        assert sorted(int(run["batch"]) for run in runs[job_id]) == list(range(batches))
        ran_on = {host_of(run) for run in runs[job_id]}
        assert ran_on <= hosts_of[queue], f"job {job_id} of {queue} ran batches on {ran_on}"
        loaded_on = {host for host, _ in inits[job_id]}
        assert loaded_on <= hosts_of[queue], f"job {job_id} of {queue} loaded its predictor on {loaded_on}"
        # once per process: no process of the pool loaded the job's predictor twice
        assert set(inits[job_id].values()) == {1}, f"job {job_id}: loads per (host, pid) {dict(inits[job_id])}"
    assert sorted(fleet.redis.lrange(f"timeline:{tag}:complete", 0, -1)) == sorted(jobs)  # each finalizer once
    for queue in POOLS:  # each pool ran batches, on each of its hosts
        assert hosts_of[queue] <= set(per_host), f"a host of {queue} ran no batch: {per_host}"


# stops a host and adds one: the last test of each fleet
@pytest.mark.parametrize("fleet_on", ["fleet", "sqs_fleet"], ids=["redis", "sqs"])
def test_a_host_stopped_with_sigterm_mid_job_loses_nothing_and_a_host_added_takes_batches_at_once(request, fleet_on):
    fleet = request.getfixturevalue(fleet_on)
    tag = uuid.uuid4().hex[:8]
    batches, processes = 30, sum(HOSTS.values())
    api_a, api_b = fleet.apis
    # `workers` above the fleet's processes: messages always wait in the broker for a free process
    job_id = fleet.submit(api_b, body(tag, fleet.env["REDIS_URL"], batches, workers=8, hold=True, sleep=0.2))
    started = wait_for(
        lambda: len(found := records(fleet, tag, "started", job_id)) == processes and found,
        timeout=60,
        what="every process of the fleet to hold a batch",
    )
    counts = job_status(api_a, job_id)["worker_counts"]  # processes of every host, messages waiting
    assert (counts["running"], counts["pending"]) == (processes, 8 - processes), counts
    stopped = fleet.hosts["h2"]
    held_by_stopped = sorted(run["batch"] for run in started if host_of(run) == "h2")
    assert len(held_by_stopped) == HOSTS["h2"]

    os.kill(stopped.process.pid, signal.SIGTERM)  # the main process only: Celery's warm shutdown
    term_time = time.time()
    name, concurrency = ADDED_HOST
    added = fleet.start_host(name, concurrency)
    ready = ready_time(added)
    first = wait_for(
        lambda: [run for run in records(fleet, tag, "started", job_id) if host_of(run) == name],
        timeout=60,
        what=f"host {name} to start a batch",
    )
    delay = min(run["start"] for run in first) - ready
    wait_for(
        lambda: len([run for run in records(fleet, tag, "started", job_id) if host_of(run) == name]) == concurrency,
        timeout=60,
        what=f"both processes of host {name} to start a batch",
    )
    assert stopped.process.poll() is None, "the stopped host exited before its running batches ended"
    counts = job_status(api_b, job_id)["worker_counts"]  # h2's two still running, h4's two with them
    assert (counts["running"], counts["pending"]) == (processes + concurrency, 8 - processes - concurrency), counts

    fleet.redis.set(f"timeline:{tag}:release", 1)
    release_time = time.time()
    wait_for(lambda: stopped.process.poll() is not None, timeout=60, interval=0.1, what="host h2 to exit")
    exit_time = time.time()
    job = fleet.wait_final(api_a, job_id)
    runs = records(fleet, tag, "runs", job_id)
    per_host = {host: sum(host_of(run) == host for run in runs) for host in [*HOSTS, name]}
    print(
        f"\nfleet ({fleet.broker} broker): host {name} ready to its first batch {delay:.2f} s "
        f"(bound {ADDED_HOST_BOUND} s); "
        f"host h2 ran its batches {release_time - term_time:.2f} s after SIGTERM until they were released, "
        f"then exited in {exit_time - release_time:.2f} s; batches per host {per_host}"
    )
    assert stopped.process.returncode == 0
    assert job["status"] == status.SUCCEEDED, job
    assert job["batch_metrics"]["succeeded"] == batches
    assert job["batch_metrics"]["failed"] == 0  # no delivery died with the stopped host
    assert sorted(int(run["batch"]) for run in runs) == list(range(batches))  # each batch ran once
    assert len(records(fleet, tag, "started", job_id)) == batches  # and began once
    finished_by_stopped = sorted(run["batch"] for run in runs if host_of(run) == "h2")
    assert finished_by_stopped == held_by_stopped  # the batches it ran at SIGTERM ended there, none after
    assert all(run["end"] > term_time for run in runs if host_of(run) == "h2")
    assert fleet.redis.lrange(f"timeline:{tag}:complete", 0, -1) == [job_id]
    assert 0 <= delay < ADDED_HOST_BOUND, f"host {name} took its first batch {delay:.2f} s after it was ready"
