"""Soak: thousands of small jobs with a short retention, and Redis `used_memory` once they expired.

Before retention a fleet's Redis grew with every job it ran. This runs the real stack (redis-server,
one Celery worker, the API under gunicorn with its watchdog), warms it up (a few jobs that run and
expire, so the scripts Redis caches and the broker's own keys are in the baseline), then submits
`--jobs` one-batch jobs with `BATCHERY_JOB_RETENTION_SECONDS=--retention`, samples `used_memory`
while they run, waits until every one of them expired and its tombstone was forgotten (another
retention period), deletes the counters the bench's predictor writes itself (`bench:complete:<job_id>`,
one per job: not Batchery's data), and prints `used_memory` before, at the peak and after, whether it came back
within 10% of the start, and any key left that names one of the jobs.

    .venv/bin/python bench/retention.py [--jobs 3000] [--retention 5] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.store import keys
from bench.harness import Stack, machine, monotonic, table, wait_until

BODY = {"workers": 1, "item_list": {"items": [1], "batch_size": 1}}
TOLERANCE = 0.10  # used_memory back within 10% of the start


class MemorySampler(threading.Thread):
    """Redis `used_memory`, sampled every 0.2 s: the peak."""

    def __init__(self, stack: Stack):
        super().__init__(daemon=True)
        self.stack, self.peak, self.stopped = stack, 0, threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.2):
            self.peak = max(self.peak, used_memory(self.stack))


def used_memory(stack: Stack) -> int:
    """Bytes Redis has allocated now (INFO memory `used_memory`)."""
    return int(stack.redis.info("memory")["used_memory"])


def submit_all(stack: Stack, count: int, threads: int = 8) -> list[str]:
    """Submit `count` one-batch jobs from `threads` HTTP sessions; their ids."""
    local = threading.local()

    def one(_: int) -> str:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        return stack.submit(BODY, local.session)["job_id"]

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(count)))


def all_ended(stack: Stack, job_ids: list[str]) -> bool:
    """Whether every job has ended (read in one pipeline): it has an end time, or it expired already
    (its hash is gone)."""
    pipe = stack.redis.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hmget(keys.job(job_id), "end", "spec")
    return all(end or not spec for end, spec in pipe.execute())


def all_forgotten(stack: Stack) -> bool:
    """Whether no ended job waits to expire and no tombstone is left."""
    return stack.redis.zcard(keys.retention_ended()) == 0 and stack.redis.zcard(keys.retention_expired()) == 0


def keys_left(stack: Stack, job_ids: list[str]) -> int:
    """Keys of the job store that name one of the jobs (a full SCAN: a benchmark, not a request)."""
    wanted = set(job_ids)
    found = 0
    for key in stack.redis.scan_iter(match=f"{keys.PREFIX}:job:*", count=10_000):
        if key.decode().split(":")[2] in wanted:
            found += 1
    return found


def drop_predictor_counters(stack: Stack, job_ids: list[str]) -> int:
    """Delete the counters the bench's predictor writes in its `on_job_complete` (bench:complete:<job_id>:
    the predictor's own data, not Batchery's); how many jobs had one (each ran it once)."""
    pipe = stack.redis.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.delete(f"bench:complete:{job_id}")
    return sum(pipe.execute())


def run_jobs(stack: Stack, count: int, timeout: float) -> list[str]:
    """Submit `count` jobs and wait for all of them to end."""
    job_ids = submit_all(stack, count)
    wait_until(lambda: all_ended(stack, job_ids), timeout=timeout, interval=0.5, what=f"{count} jobs to end")
    return job_ids


def wait_forgotten(stack: Stack, timeout: float) -> None:
    """Wait until every ended job expired and its tombstone was forgotten."""
    wait_until(lambda: all_forgotten(stack), timeout=timeout, interval=0.5, what="every job to expire")


def main(args: argparse.Namespace) -> int:
    env = {"BATCHERY_JOB_RETENTION_SECONDS": str(args.retention), "BATCHERY_WATCHDOG_SECONDS": "1"}
    stack = Stack(processes=1, concurrency=2, api_workers=2, worker_env=env)
    try:
        warm_up = run_jobs(stack, 20, timeout=120)  # the scripts cached, the broker's keys made
        wait_forgotten(stack, timeout=args.retention * 2 + 120)
        drop_predictor_counters(stack, warm_up)
        before = used_memory(stack)
        sampler = MemorySampler(stack)
        sampler.start()
        started = monotonic()
        job_ids = run_jobs(stack, args.jobs, timeout=args.timeout)
        ran = monotonic() - started
        peak = max(sampler.peak, used_memory(stack))
        wait_forgotten(stack, timeout=args.retention * 2 + args.timeout)
        sampler.stopped.set()
        completed = drop_predictor_counters(stack, job_ids)
        time.sleep(1)  # a last watchdog sweep after the tombstones went (nothing else is waited for)
        after = used_memory(stack)
        left = keys_left(stack, job_ids)
    finally:
        stack.stop()
    back = abs(after - before) <= TOLERANCE * before
    table(
        f"{args.jobs} one-batch jobs, BATCHERY_JOB_RETENTION_SECONDS={args.retention}, 1 worker (-c 2)",
        [
            ("machine", machine()),
            ("jobs ran in", f"{ran:.1f} s ({args.jobs / ran:.0f} jobs/s)"),
            ("used_memory before", f"{before:,} bytes"),
            ("used_memory at the peak", f"{peak:,} bytes (+{peak - before:,})"),
            ("used_memory after expiry", f"{after:,} bytes ({(after - before) / before:+.1%} of before)"),
            ("back within 10% of the start", "yes" if back else "NO"),
            ("on_job_complete ran (the predictor's counters)", f"{completed} of {args.jobs} jobs"),
            ("keys left naming one of the jobs", str(left)),
        ],
    )
    return 0 if back and left == 0 else 1


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=3000, help="one-batch jobs to run (default 3000)")
    parser.add_argument("--retention", type=int, default=5, help="BATCHERY_JOB_RETENTION_SECONDS (default 5)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the jobs to end")
    parser.add_argument("--quick", action="store_true", help="200 jobs (CI-sized)")
    args = parser.parse_args(argv)
    if args.quick:
        args.jobs = 200
    return args


if __name__ == "__main__":
    sys.exit(main(parse_args(sys.argv[1:])))
