"""Redis Sentinel: `sentinel://` URLs everywhere (app/store/connection.py), and a real failover.

The failover test starts a master, a replica and three sentinels (`redis-server --sentinel`) on
free ports, an API and a worker on `REDIS_URL=sentinel://...` (the broker too), runs a job of slow
batches, SIGKILLs the master mid-job, and checks that the job ends as if nothing happened.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import redis
from redis.sentinel import SentinelConnectionPool

from app import create_app
from app.broker.config import celery_config, public_queue_url
from app.config import Settings
from app.jobs.services import Services
from app.model import status
from app.store import keys
from app.store.connection import SentinelUrl, connect, has_replicas, parse_sentinel_url, replicated
from app.store.held_client import HeldConnectionClient
from tests.conftest import PREDICTORS
from tests.sentinel_cluster import MASTER, SentinelCluster
from tests.services import ROOT, VENV_BIN, Worker, free_port, stop_process, wait_for

WATCHDOG_SECONDS = 1.0


# --- the URL -----------------------------------------------------------------------------------


def test_a_sentinel_url_names_its_sentinels_database_and_the_masters_password():
    parsed = parse_sentinel_url("sentinel://:s3cret@h1:26380;sentinel://h2;sentinel://h3:26382/0")
    assert parsed == SentinelUrl(sentinels=[("h1", 26380), ("h2", 26379), ("h3", 26382)], db=0, password="s3cret")
    assert "s3cret" not in repr(parsed)
    assert parse_sentinel_url("sentinel://u:p%40ss@h1:1/3;sentinel://h2:2/3") == SentinelUrl(
        [("h1", 1), ("h2", 2)], db=3, username="u", password="p@ss"
    )


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("sentinel://", "address 1: no host"),
        ("sentinel://h1:26379;redis://h2:6379", "address 2: every address of a Sentinel URL starts with sentinel://"),
        ("sentinel://h1:port", "address 1: Port could not be cast"),
        ("sentinel://h1:26379/zero", "the database after the / is a number"),
        ("sentinel://h1:26379;sentinel://h2:26379/3", "address 2 gives another database than the first"),
        ("sentinel://:a@h1;sentinel://:b@h2", "address 2 gives another password than the first"),
        ("sentinel://h1:26379?ssl=true", "takes no ?options"),
    ],
)
def test_a_malformed_sentinel_url_says_what_is_wrong(url, said):
    with pytest.raises(ValueError, match="Sentinel URL") as raised:
        parse_sentinel_url(url)
    assert said in str(raised.value)
    with pytest.raises(ValueError, match="Sentinel URL"):
        connect(url)


def test_the_process_stops_at_start_on_a_malformed_sentinel_url():
    with pytest.raises(ValueError, match="address 1: no host"):
        Services.build(Settings(redis_url="sentinel://"))
    with pytest.raises(ValueError, match="address 1: no host"):  # the worker's Celery app, as it is made
        celery_config(Settings(redis_url="redis://127.0.0.1:1/0", broker_url="sentinel://"))


def test_every_kind_of_url_gives_a_client_of_the_class_asked_for():
    url = "sentinel://:pw@127.0.0.1:1/4;sentinel://127.0.0.1:2"
    client = connect(url, master="m", sentinel_password="sp", client_class=HeldConnectionClient, socket_timeout=3)
    assert isinstance(client, HeldConnectionClient) and has_replicas(client)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "m"
    assert pool.connection_kwargs["db"] == 4 and pool.connection_kwargs["password"] == "pw"
    assert pool.connection_kwargs["socket_timeout"] == 3
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [1, 2]
    assert sentinels[0].connection_pool.connection_kwargs["password"] == "sp"
    assert sentinels[0].connection_pool.connection_kwargs["socket_timeout"] == 3
    plain = connect("redis://127.0.0.1:1/2")
    assert not has_replicas(plain) and replicated(plain) is None  # no replica: nothing to wait for
    assert isinstance(connect("unix:///tmp/none.sock"), redis.Redis)


def test_celery_gets_the_master_name_for_a_sentinel_broker_and_result_backend():
    url = "sentinel://127.0.0.1:26379;sentinel://127.0.0.1:26380/0"
    config = celery_config(Settings(redis_url=url, redis_sentinel_master="m", redis_sentinel_password="sp"))
    assert config["broker_url"] == url and config["result_backend"] == url
    assert config["broker_transport_options"] == {
        "visibility_timeout": 3600,
        "master_name": "m",
        "sentinel_kwargs": {"password": "sp"},
    }
    assert config["result_backend_transport_options"] == {"master_name": "m", "sentinel_kwargs": {"password": "sp"}}
    assert public_queue_url(Settings(redis_url=url)) == "sentinel://127.0.0.1:26379/batchery"
    plain = celery_config(Settings())
    assert plain["broker_transport_options"] == {"visibility_timeout": 3600}
    assert plain["result_backend_transport_options"] == {}
    assert "sp" not in repr(Settings(redis_sentinel_password="sp"))


# --- a real Sentinel deployment ------------------------------------------------------------------


@pytest.fixture
def cluster(tmp_path):
    deployment = SentinelCluster(tmp_path)
    yield deployment
    deployment.stop()


def test_a_client_follows_a_failover_and_writes_wait_for_the_replica(cluster):
    # a long WAIT, so that a replica slow to answer on a busy machine still counts
    settings = Settings(redis_url=cluster.url, redis_sentinel_master=MASTER, redis_sentinel_wait_ms=10_000)
    client = Services.build(settings, patient=True).redis  # the worker's: retries through the outage
    assert isinstance(client, HeldConnectionClient)
    client.execute_held("SET", "before", "1")
    assert replicated(client) == 1  # the replica has it
    started = time.perf_counter()
    for _ in range(100):
        replicated(client)
    print(
        f"\nWAIT 1 with its fence write, the replica on this host: {(time.perf_counter() - started) * 10:.2f} ms each"
    )
    # the CLI's `deploy --redis` writes into the job store through the sentinels too
    env = {**os.environ, "REDIS_SENTINEL_MASTER": MASTER}
    deploy = [sys.executable, "-m", "app.cli", "deploy", "--redis-url", cluster.url, str(ROOT / "examples")]
    deployed = subprocess.run(deploy, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert deployed.returncode == 0 and "deployed sum" in deployed.stdout, deployed
    wait_for(lambda: cluster.replica.client.sismember(keys.apis(), "sum"), timeout=30, what="the replica to have it")
    cluster.master.process.kill()
    killed = time.monotonic()
    assert client.execute_held("GET", "before") == b"1"  # held connection: retried onto the new master
    print(f"a held connection answered again {time.monotonic() - killed:.1f} s after the master's SIGKILL")
    assert cluster.master_port() == cluster.replica.port
    assert client.get("before") == b"1"
    # the new master has no replica: one WAIT times out, and writes stop waiting for a while
    client.connection_pool.wait_ms = 1000
    waited = time.monotonic()
    assert replicated(client) == 0
    assert time.monotonic() - waited > 0.9
    waited = time.monotonic()
    assert replicated(client) == 0
    assert time.monotonic() - waited < 0.5
    never = Services.build(Settings(redis_url=cluster.url, redis_sentinel_master=MASTER, redis_sentinel_wait_ms=0))
    assert has_replicas(never.redis) and replicated(never.redis) is None


# --- the failover, mid-job -----------------------------------------------------------------------

BATCHES = 12
BATCH_SECONDS = 0.5


@pytest.fixture
def sentinel_stack(cluster, moto, project_cache, tmp_path):
    """An API (the app, its watchdog sweeping every second), a 2-process worker and Flower, all
    with REDIS_URL (and so the broker) on the cluster's sentinels."""
    queue = f"batchery-sentinel-{uuid.uuid4().hex[:8]}"
    env = {
        "REDIS_URL": cluster.url,
        "REDIS_SENTINEL_MASTER": MASTER,
        "BATCHERY_QUEUE": queue,
        "BATCHERY_WATCHDOG_SECONDS": str(WATCHDOG_SECONDS),
        "BATCHERY_PROJECT_CACHE": str(project_cache),
    }
    settings = Settings.from_env({**env, "BATCHERY_APIS": str(PREDICTORS / "cortex.yaml")})
    app = create_app({"SETTINGS": settings})
    process_env = {name: value for name, value in os.environ.items() if name not in ("BROKER_URL", "REDIS_URL")}
    process_env.update(env, PYTHONPATH=str(ROOT), **moto.env())
    worker = Worker(process_env, tmp_path, "sentinel", concurrency=2)
    flower = Flower(process_env, tmp_path)
    yield app, flower
    flower.stop()
    worker.stop()
    app.extensions["batchery_watchdog"].stop()


class Flower:
    """`celery -A workers flower`, as the Procfile starts it, on a free port."""

    def __init__(self, env: dict, logdir: Path):
        self.port = free_port()
        self.log = (logdir / "flower.log").open("w")
        self.process = subprocess.Popen(
            [str(VENV_BIN / "celery"), "-A", "workers", "flower", f"--port={self.port}", "--address=127.0.0.1"],
            cwd=ROOT,
            env={**env, "FLOWER_UNAUTHENTICATED_API": "true"},  # the test reads its API without a login
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def queue_lengths(self) -> dict | None:
        """Flower's `/api/queues/length` (read from the broker), by queue; None until it answers."""
        if self.process.poll() is not None:
            raise RuntimeError(f"flower exited with {self.process.returncode}: see {self.log.name}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/queues/length", timeout=10) as reply:
                return {queue["name"]: queue["messages"] for queue in json.load(reply)["active_queues"]}
        except OSError:
            return None

    def stop(self) -> None:
        stop_process(self.process, group=True)
        self.log.close()


def test_a_job_survives_the_masters_sigkill(cluster, sentinel_stack, redis_server):
    app, flower = sentinel_stack
    client = app.test_client()
    tag = uuid.uuid4().hex[:8]
    config = {"redis_url": redis_server.url, "tag": tag, "sleep": BATCH_SECONDS}  # the probe's own records
    body = {"item_list": {"items": list(range(BATCHES)), "batch_size": 1}, "workers": 2, "config": config}
    answer = client.post("/batch/probe", data=json.dumps(body))
    assert answer.status_code == 200, answer.get_data(as_text=True)
    job_id = answer.get_json()["job_id"]
    probe = redis_server.client

    def succeeded() -> int | None:
        reply = client.get(f"/batch/probe?jobID={job_id}")
        if reply.status_code != 200:  # 503 while the store has no master
            return None
        return reply.get_json()["job_status"]["batch_metrics"]["succeeded"]

    assert client.get("/healthz").get_json() == {"status": "ok", "redis": "ok", "broker": "ok"}
    wait_for(lambda: (succeeded() or 0) >= 3, timeout=120, what="three batches to succeed")
    before = succeeded()
    cluster.master.process.kill()
    killed = time.monotonic()
    wait_for(lambda: cluster.master_port() == cluster.replica.port, timeout=60, interval=0.1, what="the failover")
    failover = time.monotonic() - killed
    wait_for(lambda: (succeeded() or 0) > before, timeout=120, interval=0.1, what="the job's next progress")
    progress = time.monotonic() - killed
    print(f"\nmaster SIGKILLed with {before}/{BATCHES} batches counted: failover after {failover:.1f} s, ")
    print(f"the job's next counted batch {progress:.1f} s after the kill")

    final = wait_for(lambda: _final(client, job_id), timeout=180, interval=0.2, what="the job to end")
    deliveries = {batch: int(count) for batch, count in probe.hgetall(f"probe:{tag}:deliveries:{job_id}").items()}
    completions = probe.lrange(f"probe:{tag}:complete", 0, -1)
    twice = sorted(batch.decode() for batch, count in deliveries.items() if count > 1)
    print(f"batches run twice: {len(twice)} {twice}; on_job_complete ran {len(completions)} time(s)")
    assert final["status"] == status.SUCCEEDED, final
    assert final["batch_metrics"]["succeeded"] == BATCHES and final["batch_metrics"]["failed"] == 0, final
    assert len(deliveries) == BATCHES
    assert len(completions) >= 1
    # the failover, then a watchdog sweep and a batch's own time; generous: a busy 2-core machine
    assert progress < failover + WATCHDOG_SECONDS + BATCH_SECONDS + 30
    # Flower reads the broker through the sentinels too, before and after the failover
    assert wait_for(flower.queue_lengths, timeout=90, interval=0.5, what="Flower's queue lengths")
    assert keys.replication_fence() in {k.decode() for k in cluster.replica.client.keys("batchery:*")}


def _final(client, job_id: str) -> dict | None:
    reply = client.get(f"/batch/probe?jobID={job_id}")
    if reply.status_code != 200:
        return None
    job = reply.get_json()["job_status"]
    return job if status.is_final(job["status"]) else None
