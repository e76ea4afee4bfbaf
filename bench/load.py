"""Load benchmark: Cortex's load-test shape on Batchery, against a plain Celery chord and the raw ceiling.

    .venv/bin/python bench/load.py [--jobs 10] [--items 100000] [--batch-size 20] [--workers 10]
                                   [--concurrency 2] [--predictor-cache N] [--bundle-seconds S]
                                   [--repeat 1] [--quick]
                                   [--only ceiling chord batchery] [--profile DIR] [--timeline DIR]

Starts its own redis-server, one Celery worker (prefork, `--concurrency` processes) running
`bench.worker` (Batchery's tasks and the baselines' tasks: the same processes and settings serve
all three), and the API under gunicorn. Each run then measures, in this order:
- **ceiling** (benchmark 2): the batches' count of no-op tasks (results ignored) published
  beforehand to a queue the worker does not consume, then the worker told to consume it
  (`add_consumer`); time until the queue and the unacked set are empty. What Celery itself does here;
- **chord**: a plain `celery.chord` of the same count of no-op tasks (results stored, as a chord
  needs) and a no-op body, published by a client process as a user's script would; time from the
  first publish until the body ran;
- **batchery** (benchmark 1): `--jobs` jobs submitted at once over HTTP, each `--items` items in
  batches of `--batch-size` on `--workers`; time from the first POST until the last job's
  `end_time`. Every job must end `status_succeeded` with every batch succeeded, and its predictor's
  `on_job_complete` must have run exactly once. The workers keep `--jobs` predictors loaded
  (BATCHERY_PREDICTOR_CACHE), one per job running at once.
Prints batches/s for each, medians over the runs, the ratios, and the CPU time each process used
per 1,000 batches.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (
    CpuMeter,
    Stack,
    celery_app,
    cpu_row,
    machine,
    median,
    ratio_row,
    runs,
    table,
    timed_chord,
    wait_until,
)
from tests.services import VENV_BIN


def unix(iso_time: str) -> float:
    """An RFC 3339 UTC time (as the API prints it) as a unix time."""
    return datetime.fromisoformat(iso_time.replace("Z", "+00:00")).timestamp()


# ---- Batchery ----


def run_batchery(stack: Stack, args: argparse.Namespace, on_submitted=None) -> dict:
    """Submit `args.jobs` jobs at once over HTTP, wait for them all, check them; the figures."""
    body = {"workers": args.workers, "item_list": {"items": list(range(args.items)), "batch_size": args.batch_size}}
    per_job = -(-args.items // args.batch_size)
    started = time.time()
    with ThreadPoolExecutor(args.jobs) as pool:
        specs = list(pool.map(lambda _: stack.submit(body, requests.Session()), range(args.jobs)))
    submitted = time.time()
    job_ids = [spec["job_id"] for spec in specs]
    if on_submitted is not None:
        on_submitted(job_ids)
    finals: dict[str, dict] = {}

    def all_final() -> bool:
        # One job's status a poll, until it ends: the figure is the jobs' own end_time, so polling
        # more often would only take CPU from the workers.
        for job_id in job_ids:
            if job_id not in finals:
                state = stack.status(job_id)
                if state["status"] in ("status_enqueuing", "status_running"):
                    return False
                finals[job_id] = state
        return True

    wait_until(all_final, timeout=args.timeout, interval=0.5, what="every job to end")
    ended = max(unix(state["end_time"]) for state in finals.values())
    problems = []
    for job_id, state in finals.items():
        metrics = state["batch_metrics"]
        completes = int(stack.redis.get(f"bench:complete:{job_id}") or 0)
        if (
            state["status"] != "status_succeeded"
            or metrics["succeeded"] != per_job
            or metrics["failed"] != 0
            or state["total_batch_count"] != per_job
            or completes != 1
        ):
            problems.append(f"{job_id}: {state['status']}, {metrics}, on_job_complete ran {completes} times")
    if problems:
        raise RuntimeError("jobs did not end as expected:\n" + "\n".join(problems))
    total = per_job * args.jobs
    seconds = ended - started
    return {"seconds": seconds, "batches": total, "rate": total / seconds, "submit_seconds": submitted - started}


# ---- plain Celery: the chord and the ceiling ----


def run_chord(stack: Stack, count: int, timeout: float) -> dict:
    """A plain celery.chord of `count` no-op tasks and a no-op body, published by a client process."""
    return timed_chord(__file__, stack.env, stack.redis, count, timeout)


def child_chord(tag: str, count: int) -> None:
    """Publish the chord (as a user's script: `chord(header)(body)`), print when, exit."""
    from celery import chord

    from bench.worker import chord_done, noop

    celery_app().connection_for_write().ensure_connection()
    started = time.time()
    chord(noop.s(i) for i in range(count))(chord_done.s(tag))
    print(json.dumps({"started": started, "published": time.time()}), flush=True)


def run_ceiling(stack: Stack, count: int, timeout: float) -> dict:
    """The worker drains `count` pre-published no-op tasks (results ignored)."""
    celery = celery_app()
    queue = f"{stack.queue}-ceiling"
    published = time.perf_counter()
    with celery.producer_or_acquire() as producer:
        for i in range(count):
            celery.send_task("bench.noop_ignored", args=[i], queue=queue, producer=producer)
    published = time.perf_counter() - published
    if stack.redis.llen(queue) != count:
        raise RuntimeError(f"{stack.redis.llen(queue)} ceiling tasks queued, not {count}")
    started = time.time()
    celery.control.add_consumer(queue)  # no reply: a broadcast waits its whole timeout for replies

    def drained() -> bool:
        return stack.redis.llen(queue) == 0 and stack.redis.hlen("unacked") == 0

    wait_until(drained, timeout=timeout, interval=0.01, what="the ceiling's queue to drain")
    seconds = time.time() - started
    celery.control.cancel_consumer(queue)
    return {"seconds": seconds, "batches": count, "rate": count / seconds, "publish_seconds": published}


# ---- profiling ----


class Profiler:
    """py-spy sampling the worker processes (main and pool) while one benchmark runs, as raw
    collapsed stacks; summarised with bench/profile_summary.py."""

    def __init__(self, stack: Stack, path: Path):
        self.path = path
        pid = stack.workers[0].process.pid
        argv = [str(VENV_BIN / "py-spy"), "record", "--pid", str(pid), "--subprocesses", "--format", "raw"]
        argv += ["--rate", "100", "--gil", "--output", str(path), "--nonblocking"]  # --gil: on-CPU Python
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # py-spy attaches

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        self.process.wait(60)


# ---- the parent ----


def main(args: argparse.Namespace) -> int:
    if args.quick:
        args.items, args.repeat = min(args.items, 4000), min(args.repeat, 1)
    per_job = -(-args.items // args.batch_size)
    total = per_job * args.jobs
    print(f"machine: {machine()}", flush=True)
    print(
        f"shape: {args.jobs} jobs x {args.items:,} items, batch_size {args.batch_size} = {total:,} batches, "
        f"workers {args.workers}; one worker, prefork, concurrency {args.concurrency}",
        flush=True,
    )
    # One cached predictor per job running at once: with fewer, a process that takes the jobs'
    # batches in turn loads a predictor again for nearly every batch (see docs/benchmarks.md).
    cache = args.predictor_cache or args.jobs
    print(f"workers' BATCHERY_PREDICTOR_CACHE={cache}", flush=True)
    worker_env = {"BATCHERY_PREDICTOR_CACHE": str(cache)}
    if args.bundle_seconds is not None:  # 0: one batch a message, as before bundles (the "before" figures)
        worker_env["BATCHERY_BUNDLE_SECONDS"] = str(args.bundle_seconds)
    print(f"workers' BATCHERY_BUNDLE_SECONDS={worker_env.get('BATCHERY_BUNDLE_SECONDS', 'unset (0.05)')}", flush=True)
    if args.timeline:  # bench/timeline.py summarises it
        worker_env["BENCH_TIMELINE_DIR"] = str(Path(args.timeline).resolve())
    stack = Stack(processes=1, concurrency=args.concurrency, worker_env=worker_env)
    results: dict[str, list[dict]] = {"ceiling": [], "chord": [], "batchery": []}
    try:
        for attempt in range(1, args.repeat + 1):
            for name in args.only or ("ceiling", "chord", "batchery"):
                print(f"run {attempt}/{args.repeat}: {name} ...", flush=True)
                profiler = None
                if args.profile and attempt == 1:
                    Path(args.profile).mkdir(parents=True, exist_ok=True)
                    profiler = Profiler(stack, Path(args.profile) / f"{name}.txt")
                meter = CpuMeter(stack)
                meter.start()
                try:
                    if name == "ceiling":
                        result = run_ceiling(stack, total, args.timeout)
                    elif name == "chord":
                        result = run_chord(stack, total, args.timeout)
                    else:
                        result = run_batchery(stack, args)
                finally:
                    if profiler:
                        profiler.stop()
                result["cpu"] = meter.stop()
                results[name].append(result)
                print(f"  {result['seconds']:.1f} s, {result['rate']:.0f} batches/s", flush=True)
                per_1000 = ", ".join(f"{k} {1000 * v / result['batches']:.2f}" for k, v in result["cpu"].items())
                print(f"  CPU s per 1,000 batches: {per_1000}", flush=True)
    finally:
        stack.stop()
    report(args, total, results)
    return 0


def report(args: argparse.Namespace, total: int, results: dict[str, list[dict]]) -> None:
    """Print each benchmark's runs and medians, and the ratios."""
    rows = [("machine", machine()), ("batches per run", f"{total:,}"), ("runs", str(args.repeat))]
    rates = {name: [r["rate"] for r in found] for name, found in results.items() if found}
    for name, found in results.items():
        if found:
            rows.append((f"{name}: seconds, median (runs)", runs([r["seconds"] for r in found], "{:.1f}")))
            rows.append((f"{name}: batches/s, median (runs)", runs(rates[name])))
    if results.get("chord"):
        publish = median([r["publish_seconds"] for r in results["chord"]])
        rows.append(("chord: client publish time, median", f"{publish:.1f} s"))
    if results.get("batchery"):
        submit = median([r["submit_seconds"] for r in results["batchery"]])
        rows.append((f"batchery: {args.jobs} POSTs answered in, median", f"{submit:.2f} s"))
    for name, found in results.items():
        if found:
            rows.append(cpu_row(name, found))
    for other in ("chord", "ceiling"):
        if rates.get("batchery") and rates.get(other):
            rows.append(ratio_row("batchery", rates["batchery"], other, rates[other]))
    table("load benchmark", rows)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=10, help="jobs submitted at once (default 10)")
    parser.add_argument("--items", type=int, default=100_000, help="items per job (default 100,000)")
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--workers", type=int, default=10, help="each job's workers (default 10)")
    parser.add_argument("--concurrency", type=int, default=2, help="worker pool processes (default 2)")
    parser.add_argument(
        "--predictor-cache",
        type=int,
        default=0,
        help="the workers' BATCHERY_PREDICTOR_CACHE (default: --jobs; Batchery's own default is 16)",
    )
    parser.add_argument(
        "--bundle-seconds",
        type=float,
        default=None,
        help="the workers' BATCHERY_BUNDLE_SECONDS (default: unset, 0.05; 0: no bundles, as before them)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs of each benchmark (medians are quoted)")
    parser.add_argument("--quick", action="store_true", help="4,000 items per job (2,000 batches), one run")
    parser.add_argument("--only", nargs="+", choices=("ceiling", "chord", "batchery"), help="run only these")
    parser.add_argument("--profile", default="", help="py-spy the worker into DIR/<benchmark>.txt (first run)")
    parser.add_argument("--timeline", default="", help="record when each task was received and ran into DIR")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up on a benchmark after this long")
    parser.add_argument("--child-chord", default="", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args(sys.argv[1:])
    if arguments.child_chord:
        child_chord(arguments.child_chord, arguments.count)
        sys.exit(0)
    sys.exit(main(arguments))
