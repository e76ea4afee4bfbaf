"""Bounded-window benchmark: a `workers: 1000000` job in the broker, and the next job after stopping it.

    .venv/bin/python bench/window.py [--batches 20000] [--bound 1000] [--done 1000]

Starts its own redis-server, the API under gunicorn and one Celery worker (prefork, 2 processes)
running `bench.worker`, with BATCHERY_MAX_IN_BROKER = `--bound`. Then, on that stack and on a
second one with the bound out of the way (BATCHERY_MAX_IN_BROKER above the job's `workers`: the
behaviour before the bound, the baseline):
- a no-op job of `--batches` batches of one item with `workers` 1,000,000; the broker queue's
  length (LLEN) is sampled until `--done` batches ended: the longest seen;
- the job is stopped (`DELETE`), the messages left in the broker counted, and a 4-batch job is
  submitted at once: the time from its submission to its first batch's end (the stopped job's
  messages ahead of it are skipped first).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import API_NAME, Stack, machine, table, wait_until

HUGE = 1_000_000


def trial(bound: int, args: argparse.Namespace) -> dict:
    """One stack with BATCHERY_MAX_IN_BROKER = `bound`: the figures of one huge job and the next one."""
    stack = Stack(processes=1, concurrency=2, worker_env={"BATCHERY_MAX_IN_BROKER": str(bound)})
    try:
        items = {"items": list(range(args.batches)), "batch_size": 1}
        started = time.perf_counter()
        job_id = stack.submit({"workers": HUGE, "item_list": items})["job_id"]
        submit_seconds = time.perf_counter() - started
        longest = 0
        deadline = time.perf_counter() + args.timeout
        while stack.status(job_id)["batch_metrics"]["succeeded"] < args.done:
            longest = max(longest, int(stack.redis.llen(stack.queue)))
            if time.perf_counter() > deadline:
                raise RuntimeError(f"fewer than {args.done} batches ended within {args.timeout:g}s")
            time.sleep(0.02)
        stack.http.delete(f"{stack.url}/batch/{API_NAME}", params={"jobID": job_id}, timeout=30).raise_for_status()
        left = int(stack.redis.llen(stack.queue))
        used = int(stack.redis.info("memory")["used_memory"])
        sent = time.perf_counter()
        after = stack.submit({"workers": 2, "item_list": {"items": [1, 2, 3, 4], "batch_size": 1}})["job_id"]
        wait_until(lambda: stack.status(after)["batch_metrics"]["succeeded"] >= 1, args.timeout, 0.05, "the next job")
        return {
            "submit": submit_seconds,
            "longest": longest,
            "left": left,
            "memory": used,
            "next": time.perf_counter() - sent,
        }
    finally:
        stack.stop()


def main(args: argparse.Namespace) -> int:
    print(f"machine: {machine()}", flush=True)
    found = {}
    for name, bound in (("bounded", args.bound), ("baseline", HUGE + 1)):
        print(f"{name}: BATCHERY_MAX_IN_BROKER={bound} ...", flush=True)
        found[name] = trial(bound, args)
        print(f"  {found[name]}", flush=True)
    rows = [("machine", machine()), ("shape", f"{args.batches:,} no-op batches, workers {HUGE:,}")]
    for name, label in (("bounded", f"bound {args.bound:,}"), ("baseline", "no bound (before)")):
        result = found[name]
        rows += [
            (f"{label}: submission answered in, s", f"{result['submit']:.2f}"),
            (f"{label}: broker queue, longest seen", f"{result['longest']:,}"),
            (f"{label}: left in the broker by the stop", f"{result['left']:,}"),
            (f"{label}: Redis used_memory after the stop, MB", f"{result['memory'] / 1e6:.1f}"),
            (f"{label}: next job's first batch ended after, s", f"{result['next']:.2f}"),
        ]
    table("bounded window benchmark", rows)
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=20000, help="batches of the huge job (default 20,000)")
    parser.add_argument("--bound", type=int, default=1000, help="BATCHERY_MAX_IN_BROKER (default 1,000)")
    parser.add_argument("--done", type=int, default=1000, help="batches ended before the stop (default 1,000)")
    parser.add_argument("--timeout", type=float, default=300.0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(parse_args(sys.argv[1:])))
