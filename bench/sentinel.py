"""Redis Sentinel: what `WAIT` costs a batch, and what a failover loses without it and with it.

    .venv/bin/python bench/sentinel.py [--batches 1000] [--repeat 3] [--trials 3] [--only cost loss] [--quick]

Starts a master, a replica and three sentinels (tests/sentinel_cluster.py), then:
- **cost**: one job of `--batches` no-op batches (workers 10) on one Celery worker (prefork, 2
  processes), in three modes, `--repeat` rounds of the three in turn (medians quoted): the job
  store on `redis://` (the master itself: no Sentinel), on `sentinel://` with
  REDIS_SENTINEL_WAIT_MS=0 (no WAIT), and on `sentinel://` with the default WAIT (a batch's
  outcome waits for the replica before its message is acked); batches/s each;
- **loss**: `--trials` times each, a client pushes 256-byte values in pipelines of 50 as fast as
  it can, the master is SIGKILLed after a second, and the list on the new master is compared with the
  writes the client was told were done: without WAIT (acknowledged by the master) and with it
  (acknowledged, then confirmed on a replica by `replicated`); then again with the replica
  stopped (SIGSTOP) for the half second before the kill, a replica lagging behind. Each trial
  has a new deployment.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app import create_app  # noqa: E402
from app.config import Settings  # noqa: E402
from app.model import status  # noqa: E402
from app.store.connection import connect, replicated  # noqa: E402
from tests.sentinel_cluster import MASTER, SentinelCluster  # noqa: E402
from tests.services import RedisServer, Worker, wait_for  # noqa: E402

APIS_FILE = ROOT / "bench" / "noop" / "cortex.yaml"
PIPELINE = 50  # writes a round trip, in the loss trials
VALUE = b"x" * 256  # each write's value: a replica that lags is behind by more than the sockets' buffers
STALL_SECONDS = 0.5  # the replica stopped this long before the master's kill (below down-after-milliseconds)


def job_rate(store_url: str, extra: dict, scratch: RedisServer, batches: int, workdir: Path) -> float:
    """Batches/s of one job of `batches` no-op batches, the job store (and broker) at `store_url`."""
    env = {"REDIS_URL": store_url, "REDIS_SENTINEL_MASTER": MASTER, "BATCHERY_QUEUE": f"bench-{time.time_ns()}"}
    env.update(extra)
    settings = Settings.from_env({**env, "BATCHERY_APIS": str(APIS_FILE)})
    app = create_app({"SETTINGS": settings})
    process_env = {name: value for name, value in os.environ.items() if name not in ("BROKER_URL", "REDIS_URL")}
    process_env.update(env, PYTHONPATH=str(ROOT))
    worker = Worker(process_env, workdir, f"bench-{len(extra)}-{time.time_ns()}", concurrency=2)
    try:
        client = app.test_client()
        body = {"item_list": {"items": list(range(batches)), "batch_size": 1}, "workers": 10}
        body["config"] = {"redis_url": scratch.url}  # the no-op predictor's own records
        started = time.perf_counter()
        answer = client.post("/batch/noop", data=json.dumps(body))
        assert answer.status_code == 200, answer.get_data(as_text=True)
        job_id = answer.get_json()["job_id"]

        def ended() -> dict | None:
            job = client.get(f"/batch/noop?jobID={job_id}").get_json()["job_status"]
            return job if status.is_final(job["status"]) else None

        job = wait_for(ended, timeout=600, interval=0.05, what="the job to end")
        seconds = time.perf_counter() - started
        assert job["status"] == status.SUCCEEDED and job["batch_metrics"]["succeeded"] == batches, job
        return batches / seconds
    finally:
        worker.stop()
        app.extensions["batchery_watchdog"].stop()


def lost_writes(wait: bool, stall: bool, workdir: Path) -> tuple[int, int, float]:
    """(writes the client was told were done, those missing on the new master, the failover's
    seconds) for one SIGKILL of the master mid-writes; with `stall`, the replica is stopped
    (SIGSTOP) for the last STALL_SECONDS before it: a replica that lags, as across a busy network."""
    cluster = SentinelCluster(workdir)
    try:
        client = connect(cluster.url, master=MASTER, wait_ms=1000 if wait else 0, retry=Retry(NoBackoff(), 0))
        done = {"writes": 0}
        stop = threading.Event()

        def write() -> None:
            try:
                while not stop.is_set():
                    pipe = client.pipeline(transaction=False)
                    for _ in range(PIPELINE):
                        pipe.rpush("bench:sentinel:writes", VALUE)
                    pipe.execute()
                    if wait and not replicated(client):
                        continue  # not confirmed on a replica: not counted as kept
                    done["writes"] += PIPELINE
            except redis.RedisError:
                return  # the master is gone

        writer = threading.Thread(target=write)
        writer.start()
        if stall:
            time.sleep(1.0 - STALL_SECONDS)
            cluster.replica.process.send_signal(signal.SIGSTOP)
            time.sleep(STALL_SECONDS)
        else:
            time.sleep(1.0)
        cluster.master.process.kill()
        killed = time.monotonic()
        cluster.replica.process.send_signal(signal.SIGCONT)
        writer.join(30)
        stop.set()
        wait_for(lambda: cluster.master_port() == cluster.replica.port, timeout=60, interval=0.05, what="failover")
        failover = time.monotonic() - killed
        kept = int(cluster.replica.client.llen("bench:sentinel:writes"))
        return done["writes"], max(0, done["writes"] - kept), failover
    finally:
        cluster.stop()


def main(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="batchery-bench-sentinel-"))
    if "cost" in args.only:
        measure_cost(args, workdir)
    if "loss" in args.only:
        measure_loss(args, workdir)
    return 0


def measure_cost(args: argparse.Namespace, workdir: Path) -> None:
    """Print the batches/s of each mode, each round and their medians."""
    cluster = SentinelCluster(workdir / "cost")
    scratch = RedisServer(workdir)
    try:
        modes = [
            ("redis:// (the master, no Sentinel)", cluster.master.url, {}),
            ("sentinel://, REDIS_SENTINEL_WAIT_MS=0", cluster.url, {"REDIS_SENTINEL_WAIT_MS": "0"}),
            ("sentinel://, WAIT (default 1000 ms)", cluster.url, {}),
        ]
        print(f"cost: one job of {args.batches} no-op batches, workers 10, one worker of 2 processes")
        rates: dict[str, list[float]] = {name: [] for name, _, _ in modes}
        for round_number in range(args.repeat):  # the modes in turn, so that the machine's load is shared
            for name, url, extra in modes:
                rates[name].append(job_rate(url, extra, scratch, args.batches, workdir))
                print(f"  round {round_number + 1}: {name:40} {rates[name][-1]:8.0f} batches/s")
        for name, measured in rates.items():
            rate = statistics.median(measured)
            print(f"  median: {name:40} {rate:8.0f} batches/s  ({1000 / rate:.2f} ms a batch)")
    finally:
        scratch.stop()
        cluster.stop()


def measure_loss(args: argparse.Namespace, workdir: Path) -> None:
    """Print the writes done and lost in each trial."""
    print(f"loss: RPUSHes in pipelines of {PIPELINE}, the master SIGKILLed after 1 s; {args.trials} trials each")
    for stall in (False, True):
        for wait in (False, True):
            for trial in range(args.trials):
                writes, lost, failover = lost_writes(wait, stall, workdir / f"loss-{stall}-{wait}-{trial}")
                stalled = f", replica stalled {STALL_SECONDS} s" if stall else ""
                name = ("with WAIT" if wait else "without WAIT") + stalled
                print(f"  {name:36} {writes:7d} writes done, {lost:6d} lost; failover {failover:.1f} s")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=1000, help="batches of the cost job (default 1,000)")
    parser.add_argument("--trials", type=int, default=3, help="failovers with and without WAIT each (default 3)")
    parser.add_argument("--repeat", type=int, default=3, help="jobs in each mode, in turn (medians are quoted)")
    parser.add_argument("--only", nargs="+", choices=("cost", "loss"), default=["cost", "loss"], help="run only these")
    parser.add_argument("--quick", action="store_true", help="200 batches, one job and one trial each")
    args = parser.parse_args(argv)
    if args.quick:
        args.batches, args.trials, args.repeat = 200, 1, 1
    return args


if __name__ == "__main__":
    sys.exit(main(parse_args(sys.argv[1:])))
