"""Stop benchmark: time from `DELETE` to the last batch of the job ending, with 1 s batches.

    .venv/bin/python bench/stop.py [--batches 40] [--workers 2] [--sleep 1.0] [--repeat 3] [--quick]

Starts its own redis-server, the API under gunicorn and one Celery worker (prefork, 2 processes)
running `bench.worker`. Each trial:
- **batchery**: a job of `--batches` batches of one item on `--workers`, its predictor sleeping
  `--sleep` s per batch and pushing each batch's start and end times to Redis (the no-op
  predictor's `record` config). Once a few batches have ended, a moment into the next ones
  (a different offset each trial), `DELETE /batch/<api>?jobID=`; then wait until every batch that
  started has ended. Stop latency: from sending the DELETE to the last batch's end. Also counted:
  batches that started after the DELETE was sent and after it was answered (should be 0), and the
  job must read `status_stopped` with no `on_job_complete`.
- **baseline**: plain Celery, the same count of the same 1 s tasks published as a group (results
  ignored) on the same worker, stopped the Celery way: `control.revoke` of all their ids at the same
  offset. Same measures.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import API_NAME, Stack, celery_app, machine, median, runs, table, wait_until


def times(stack: Stack, key: str) -> list[float]:
    """The unix times recorded in a `"<batch_id> <time>"` list."""
    return [float(raw.split()[1]) for raw in stack.redis.lrange(key, 0, -1)]


def settle(stack: Stack, tag: str, timeout: float) -> tuple[list[float], list[float]]:
    """Wait until every batch that started has ended (and nothing moved for a while); (starts, ends)."""
    last = (-1, -1)
    quiet_since = time.perf_counter()
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        now = (stack.redis.llen(f"bench:starts:{tag}"), stack.redis.llen(f"bench:ends:{tag}"))
        if now != last:
            last, quiet_since = now, time.perf_counter()
        elif now[0] == now[1] and time.perf_counter() - quiet_since > 2.5:
            break
        time.sleep(0.05)
    return times(stack, f"bench:starts:{tag}"), times(stack, f"bench:ends:{tag}")


def wait_for_ends(stack: Stack, tag: str, count: int, offset: float, timeout: float) -> None:
    """Wait until `count` batches ended, then `offset` seconds into the batches running then."""
    wait_until(lambda: stack.redis.llen(f"bench:ends:{tag}") >= count, timeout, 0.01, "batches to end")
    last_end = max(times(stack, f"bench:ends:{tag}"))
    time.sleep(max(0.0, last_end + offset - time.time()))


def trial_batchery(stack: Stack, args: argparse.Namespace, offset: float) -> dict:
    """A job of 1 s batches, DELETEd while running."""
    body = {
        "workers": args.workers,
        "config": {"sleep": args.sleep, "record": True},
        "item_list": {"items": list(range(args.batches)), "batch_size": 1},
    }
    job_id = stack.submit(body)["job_id"]
    wait_for_ends(stack, job_id, args.workers * 2, offset, args.timeout)
    sent = time.time()
    response = stack.http.delete(f"{stack.url}/batch/{API_NAME}", params={"jobID": job_id}, timeout=30)
    answered = time.time()
    response.raise_for_status()
    starts, ends = settle(stack, job_id, args.timeout)
    state = stack.status(job_id)
    completes = int(stack.redis.get(f"bench:complete:{job_id}") or 0)
    if state["status"] != "status_stopped" or completes:
        raise RuntimeError(f"job {job_id}: {state['status']}, on_job_complete ran {completes} times")
    return measures(sent, answered, starts, ends, args)


def trial_celery(stack: Stack, args: argparse.Namespace, offset: float) -> dict:
    """The same 1 s tasks as a plain Celery group, stopped with `revoke`."""
    from celery import group

    from bench.worker import sleep

    tag = f"celery-{uuid.uuid4().hex[:8]}"
    result = group(sleep.s(tag, str(i), args.sleep) for i in range(args.batches)).apply_async()
    ids = [child.id for child in result.results]
    wait_for_ends(stack, tag, args.workers * 2, offset, args.timeout)
    sent = time.time()
    celery_app().control.revoke(ids)
    answered = time.time()
    starts, ends = settle(stack, tag, args.timeout)
    return measures(sent, answered, starts, ends, args)


def measures(sent: float, answered: float, starts: list[float], ends: list[float], args: argparse.Namespace) -> dict:
    """Stop latency and the batches started after the stop, from the recorded times; `ideal`: what
    remained of the batches running at the stop (no stop can end them sooner)."""
    return {
        "latency": max(ends) - sent,
        "ideal": max(t for t in starts if t <= sent) + args.sleep - sent,
        "stop_call": answered - sent,
        "started_after_sent": sum(t > sent for t in starts),
        "started_after_answered": sum(t > answered for t in starts),
        "running_at_stop": sum(t <= sent for t in starts) - sum(t <= sent for t in ends),
        "ran": len(starts),
    }


def main(args: argparse.Namespace) -> int:
    if args.quick:
        args.repeat, args.batches = 1, min(args.batches, 12)
    print(f"machine: {machine()}", flush=True)
    stack = Stack(processes=1, concurrency=args.concurrency)
    results: dict[str, list[dict]] = {"batchery": [], "celery": []}
    try:
        for attempt in range(args.repeat):
            offset = args.sleep * (0.2 + 0.6 * attempt / max(1, args.repeat - 1))  # 0.2 .. 0.8 into a batch
            for name, trial in (("batchery", trial_batchery), ("celery", trial_celery)):
                print(f"trial {attempt + 1}/{args.repeat}: {name}, stop {offset:.2f} s into a batch ...", flush=True)
                found = trial(stack, args, offset)
                results[name].append(found)
                print(
                    f"  last batch ended {found['latency']:.3f} s after the stop; "
                    f"{found['started_after_sent']} started after it",
                    flush=True,
                )
    finally:
        stack.stop()
    report(args, results)
    return 0


def report(args: argparse.Namespace, results: dict[str, list[dict]]) -> None:
    """Print the medians and the ratio."""
    rows = [
        ("machine", machine()),
        ("shape", f"{args.batches} batches of {args.sleep:g} s on workers {args.workers}, {args.repeat} trials"),
    ]
    for name, label in (("batchery", "batchery (DELETE)"), ("celery", "plain Celery (revoke)")):
        found = results[name]
        rows += [
            (f"{label}: stop -> last batch ends, s", runs([r["latency"] for r in found], "{:.3f}")),
            (f"{label}: of which the running batches' rest, s", runs([r["ideal"] for r in found], "{:.3f}")),
            (f"{label}: overhead beyond it, ms", runs([1000 * (r["latency"] - r["ideal"]) for r in found], "{:.0f}")),
            (f"{label}: the stop call took, s", runs([r["stop_call"] for r in found], "{:.3f}")),
            (f"{label}: running at the stop", runs([r["running_at_stop"] for r in found])),
            (f"{label}: started after the stop was sent", runs([r["started_after_sent"] for r in found])),
            (f"{label}: started after it was answered", runs([r["started_after_answered"] for r in found])),
        ]
    ratio = median([r["latency"] for r in results["batchery"]]) / median([r["latency"] for r in results["celery"]])
    rows.append(("ratio batchery / celery stop latency (medians)", f"{ratio:.2f}"))
    table("stop benchmark", rows)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=40, help="batches in the job (default 40)")
    parser.add_argument("--workers", type=int, default=2, help="the job's workers (default 2)")
    parser.add_argument("--sleep", type=float, default=1.0, help="seconds per batch (default 1)")
    parser.add_argument("--concurrency", type=int, default=2, help="worker pool processes (default 2)")
    parser.add_argument("--repeat", type=int, default=3, help="trials (medians are quoted)")
    parser.add_argument("--quick", action="store_true", help="one trial of 12 batches")
    parser.add_argument("--timeout", type=float, default=120.0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(parse_args(sys.argv[1:])))
