"""Bundles benchmark: jobs of long and short batches with bundling on (the default) and off, same run.

    .venv/bin/python bench/bundles.py [--repeat 3] [--quick] [--only fairness] [--concurrency 4] [--workers 4]

Starts two stacks (each its own redis-server, the API under gunicorn and one Celery worker, prefork,
`--concurrency` processes, running `bench.worker`): one whose worker bundles as by default
(BATCHERY_BUNDLE_SECONDS unset: 0.05 s), one with BATCHERY_BUNDLE_SECONDS=0 (one batch a message,
as before bundles: the baseline). On each, in turn, one job at a time, `--workers` each:
- **1 s**: 4 x `--workers` batches that sleep 1 s;
- **50 ms**: 80 x `--workers` batches that sleep 50 ms;
- **1 ms**: 1,000 x `--workers` batches that sleep 1 ms (where bundling should show).
Each job's time is from its POST to its `end_time`; the cap is the most batches seen running at
once, from the times each batch's `predict` began and ended (the noop predictor's `record`). Prints
medians over the runs, the ratios bundled / baseline (above 1: faster), and fails if any job ran
more than `workers` batches at once or any batch more than once.

`--only fairness`: on the same two stacks, a 4-batch job submitted while a 100,000-batch job of
1 ms batches (`workers` 10) runs: the time from its POST to its end (a bundle holds a process up
to BATCHERY_BUNDLE_SECONDS, so the huge job's messages ahead of the small one's take longer).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import API_NAME, Stack, machine, median, runs, table, wait_until
from bench.load import unix

SHAPES = {"1 s": (1.0, 4), "50 ms": (0.05, 80), "1 ms": (0.001, 1000)}  # sleep, batches per worker


def most_at_once(stack: Stack, job_id: str) -> tuple[int, int]:
    """The most batches running at once, from the predictor's start and end times, and how many
    batches ran (each start is one run of predict)."""
    starts = [float(e.split()[1]) for e in stack.redis.lrange(f"bench:starts:{job_id}", 0, -1)]
    ends = [float(e.split()[1]) for e in stack.redis.lrange(f"bench:ends:{job_id}", 0, -1)]
    events = sorted([(t, 1) for t in starts] + [(t, -1) for t in ends], key=lambda e: (e[0], e[1]))
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most, len(starts)


def run_job(stack: Stack, sleep: float, batches: int, workers: int, timeout: float) -> dict:
    """One job of `batches` batches sleeping `sleep` s each: its seconds, batches/s and most at once."""
    body = {
        "workers": workers,
        "config": {"sleep": sleep, "record": True},
        "item_list": {"items": list(range(batches)), "batch_size": 1},
    }
    started = time.time()
    job_id = stack.submit(body)["job_id"]
    state = stack.wait_final(job_id, timeout)
    if state["status"] != "status_succeeded" or state["batch_metrics"]["succeeded"] != batches:
        raise RuntimeError(f"job {job_id} ended {state['status']}: {state['batch_metrics']}")
    seconds = unix(state["end_time"]) - started
    most, ran = most_at_once(stack, job_id)
    if ran != batches:
        raise RuntimeError(f"job {job_id}: {ran} runs of predict for {batches} batches")
    bundled = int(stack.redis.hget(f"batchery:job:{job_id}", "bundled") or 0)
    return {"seconds": seconds, "rate": batches / seconds, "most": most, "messages": batches - bundled}


def behind_a_huge_job(stack: Stack, workers: int, timeout: float) -> dict:
    """Fairness: a 4-batch job submitted while a 100,000-batch job of 1 ms batches (`workers` 10)
    runs: the seconds from its POST to its end_time; then the huge job is stopped."""
    huge_body = {
        "workers": 10,
        "config": {"sleep": 0.001},
        "item_list": {"items": list(range(100_000)), "batch_size": 1},
    }
    huge = stack.submit(huge_body)["job_id"]
    wait_until(lambda: stack.status(huge)["batch_metrics"]["succeeded"] >= 1000, timeout, 0.1, "the huge job to run")
    small_body = {"workers": workers, "config": {"sleep": 0.001}, "item_list": {"items": [1, 2, 3, 4], "batch_size": 1}}
    started = time.time()
    small = stack.submit(small_body)["job_id"]
    state = stack.wait_final(small, timeout, interval=0.02)
    stack.http.delete(f"{stack.url}/batch/{API_NAME}", params={"jobID": huge}, timeout=30).raise_for_status()
    return {"seconds": unix(state["end_time"]) - started}


def fairness(args: argparse.Namespace) -> int:
    """The fairness figures alone (`--only fairness`): medians of `--repeat` runs on each stack."""
    print(f"machine: {machine()}", flush=True)
    stacks = {
        "bundled": Stack(processes=1, concurrency=args.concurrency),
        "baseline": Stack(processes=1, concurrency=args.concurrency, worker_env={"BATCHERY_BUNDLE_SECONDS": "0"}),
    }
    found: dict[str, list[float]] = {}
    try:
        for attempt in range(1, args.repeat + 1):
            for name, stack in stacks.items():
                seconds = behind_a_huge_job(stack, args.workers, args.timeout)["seconds"]
                found.setdefault(name, []).append(seconds)
                print(
                    f"run {attempt}/{args.repeat}: {name}: small job ended {seconds:.3f} s after its POST", flush=True
                )
    finally:
        for stack in stacks.values():
            stack.stop()
    rows = [("machine", machine()), ("shape", "a 4-batch job behind a 100,000-batch job of 1 ms batches, workers 10")]
    rows += [(f"{name}: small job's POST to its end, s, median (runs)", runs(v, "{:.3f}")) for name, v in found.items()]
    table("fairness with bundles", rows)
    return 0


def main(args: argparse.Namespace) -> int:
    if args.only == "fairness":
        return fairness(args)
    if args.quick:
        args.repeat = 1
    print(f"machine: {machine()}", flush=True)
    stacks = {
        "bundled": Stack(processes=1, concurrency=args.concurrency),
        "baseline": Stack(processes=1, concurrency=args.concurrency, worker_env={"BATCHERY_BUNDLE_SECONDS": "0"}),
    }
    found: dict[tuple[str, str], list[dict]] = {}
    try:
        for attempt in range(1, args.repeat + 1):
            for shape, (sleep, per_worker) in SHAPES.items():
                for name, stack in stacks.items():
                    result = run_job(stack, sleep, per_worker * args.workers, args.workers, args.timeout)
                    found.setdefault((shape, name), []).append(result)
                    print(f"run {attempt}/{args.repeat}: {shape} batches, {name}: {result}", flush=True)
    finally:
        for stack in stacks.values():
            stack.stop()
    rows = [
        ("machine", machine()),
        ("shape", f"one job at a time, workers {args.workers}, {args.concurrency} pool processes"),
        ("runs", str(args.repeat)),
    ]
    worst = 0
    for shape, (_, per_worker) in SHAPES.items():
        for name in stacks:
            results = found[(shape, name)]
            worst = max(worst, *(r["most"] for r in results))
            rows.append(
                (
                    f"{shape} x {per_worker * args.workers}, {name}: s, median (runs)",
                    runs([r["seconds"] for r in results], "{:.2f}"),
                )
            )
            rows.append(
                (
                    f"{shape}, {name}: messages, most running at once",
                    f"{median([r['messages'] for r in results]):.0f}, {max(r['most'] for r in results)}",
                )
            )
        ratio = median([r["rate"] for r in found[(shape, "bundled")]]) / median(
            [r["rate"] for r in found[(shape, "baseline")]]
        )
        rows.append((f"{shape}: ratio bundled / baseline, batches/s", f"{ratio:.2f}"))
    table("bundles benchmark", rows)
    if worst > args.workers:
        print(f"FAILED: {worst} batches ran at once, over workers {args.workers}")
        return 1
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each job (medians are quoted)")
    parser.add_argument("--quick", action="store_true", help="one run of each (about a minute)")
    parser.add_argument("--only", choices=("fairness",), help="fairness: a small job behind a huge one, alone")
    parser.add_argument("--concurrency", type=int, default=4, help="worker pool processes (default 4)")
    parser.add_argument("--workers", type=int, default=4, help="each job's workers (default 4)")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up on a job after this long")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(parse_args(sys.argv[1:])))
