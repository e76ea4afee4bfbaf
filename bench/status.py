"""Status benchmark: latency of `GET /batch/<api>?jobID=` at a paced rate, flat in the job's size and under load.

    .venv/bin/python bench/status.py [--rate 200] [--seconds 10] [--big 1000000] [--small 1000]
                                     [--repeat 1] [--quick]

Starts its own redis-server, the API under gunicorn (2 workers of 4 threads, as the Procfile) and, for
the second part, one Celery worker (prefork, 2 processes). Requests are paced from client threads
at `--rate` per second (each request on its own slot of the schedule; the latency is measured from
the moment it is sent to the end of the answer).
1. **Flat in the number of batches**: a job of `--small` batches and one of `--big` batches
   (item_list, batch_size 1) are submitted while no worker runs (they stay `status_running` with
   their backlogs full); their statuses are read alternately, at `--rate` in all, for `--seconds`.
   The small job is the baseline: the ratio of the big job's p50 and p99 to it must be ~1.
2. **Under load**: the load benchmark's shape (bench/load.py; 10 jobs x 5,000 batches, workers 10)
   runs on the worker while the statuses of its jobs are read, round robin, at `--rate`, until
   the jobs end. The baseline is part 1's small job (same API, no load): the ratio is printed.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import Stack, machine, median, percentile, runs, table
from bench.load import run_batchery


class Pacer:
    """Reads job statuses at `rate` per second from `threads` threads until stopped (or `seconds`)."""

    def __init__(self, stack: Stack, job_ids: list[str], rate: float, threads: int = 4):
        self.stack, self.job_ids, self.rate, self.threads = stack, job_ids, rate, threads
        self.latencies: dict[str, list[float]] = {job_id: [] for job_id in job_ids}
        self.errors = 0
        self.stopped = threading.Event()
        self.workers: list[threading.Thread] = []
        self.started = self.ended = 0.0

    def start(self) -> Pacer:
        """Start the client threads."""
        self.started = time.perf_counter()
        for n in range(self.threads):
            thread = threading.Thread(target=self._run, args=(n,), daemon=True)
            thread.start()
            self.workers.append(thread)
        return self

    def _run(self, offset: int) -> None:
        session = requests.Session()
        slot = offset
        while not self.stopped.is_set():
            due = self.started + slot / self.rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            job_id = self.job_ids[slot % len(self.job_ids)]
            sent = time.perf_counter()
            try:
                self.stack.status(job_id, session)
                self.latencies[job_id].append(time.perf_counter() - sent)
            except requests.RequestException:
                self.errors += 1
            slot += self.threads

    def stop(self) -> Pacer:
        """Stop the threads and wait for them."""
        self.stopped.set()
        for thread in self.workers:
            thread.join(30)
        self.ended = time.perf_counter()
        return self

    def all(self) -> list[float]:
        """Every latency measured, seconds."""
        return [x for found in self.latencies.values() for x in found]

    def achieved(self) -> float:
        """Requests answered per second."""
        return len(self.all()) / max(1e-9, self.ended - self.started)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def flat(stack: Stack, args: argparse.Namespace) -> dict:
    """Part 1: a small and a big job, no worker running, statuses read alternately."""
    print(f"submitting a job of {args.small:,} batches and one of {args.big:,} (no worker runs) ...", flush=True)
    small = stack.submit({"workers": 10, "item_list": {"items": [0] * args.small, "batch_size": 1}})
    started = time.perf_counter()
    big = stack.submit({"workers": 10, "item_list": {"items": [0] * args.big, "batch_size": 1}})
    submit_big = time.perf_counter() - started
    for job_id, count in ((small["job_id"], args.small), (big["job_id"], args.big)):
        state = stack.status(job_id)
        if state["status"] != "status_running" or state["total_batch_count"] != count:
            raise RuntimeError(f"job {job_id}: {state['status']}, {state['total_batch_count']} batches, not {count}")
    print(f"  the big job's POST took {submit_big:.1f} s; reading statuses for {args.seconds} s ...", flush=True)
    pacer = Pacer(stack, [small["job_id"], big["job_id"]], args.rate).start()
    time.sleep(args.seconds)
    pacer.stop()
    for job_id in (small["job_id"], big["job_id"]):
        stack.http.delete(f"{stack.url}/batch/noop", params={"jobID": job_id}, timeout=60).raise_for_status()
    s, b = pacer.latencies[small["job_id"]], pacer.latencies[big["job_id"]]
    return {
        "small_p50": percentile(s, 50),
        "small_p99": percentile(s, 99),
        "big_p50": percentile(b, 50),
        "big_p99": percentile(b, 99),
        "requests": len(s) + len(b),
        "rate": pacer.achieved(),
        "errors": pacer.errors,
        "submit_big": submit_big,
    }


def loaded(stack: Stack, args: argparse.Namespace) -> dict:
    """Part 2: the load benchmark's shape runs while its jobs' statuses are read."""
    pacers: list[Pacer] = []
    shape = argparse.Namespace(
        jobs=10, items=args.load_items, batch_size=20, workers=10, timeout=args.timeout, quick=args.quick
    )
    result = run_batchery(stack, shape, on_submitted=lambda ids: pacers.append(Pacer(stack, ids, args.rate).start()))
    pacer = pacers[0].stop()
    latencies = pacer.all()
    return {
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "max": max(latencies),
        "requests": len(latencies),
        "rate": pacer.achieved(),
        "errors": pacer.errors,
        "batches_per_s": result["rate"],
        "seconds": result["seconds"],
    }


def main(args: argparse.Namespace) -> int:
    if args.quick:
        args.big, args.seconds, args.load_items, args.repeat = min(args.big, 100_000), 3.0, 4000, 1
    print(f"machine: {machine()}", flush=True)
    flats, loads = [], []
    for attempt in range(1, args.repeat + 1):
        cache = {"BATCHERY_PREDICTOR_CACHE": "10"}  # as bench/load.py: one per job of the load shape
        stack = Stack(processes=1, concurrency=args.concurrency, start_workers=False, worker_env=cache)
        try:
            print(f"run {attempt}/{args.repeat}: flat ...", flush=True)
            flats.append(flat(stack, args))
            f = flats[-1]
            small, big = f"{ms(f['small_p50'])}/{ms(f['small_p99'])}", f"{ms(f['big_p50'])}/{ms(f['big_p99'])}"
            print(f"  p50/p99 ms: small {small}, big {big}", flush=True)
            print(f"run {attempt}/{args.repeat}: under load ...", flush=True)
            stack.start_workers(1, args.concurrency)
            loads.append(loaded(stack, args))
            print(
                f"  p50/p99 {ms(loads[-1]['p50'])}/{ms(loads[-1]['p99'])} ms at {loads[-1]['rate']:.0f} req/s",
                flush=True,
            )
        finally:
            stack.stop()
    report(args, flats, loads)
    return 0


def report(args: argparse.Namespace, flats: list[dict], loads: list[dict]) -> None:
    """Print medians over the runs, and the ratios to the small idle job."""

    def col(rows: list[dict], name: str) -> list[float]:
        return [row[name] * 1000 for row in rows]

    small_p50, small_p99 = median(col(flats, "small_p50")), median(col(flats, "small_p99"))
    rows = [
        ("machine", machine()),
        ("runs", str(args.repeat)),
        (
            "rate asked; achieved, flat / under load",
            f"{args.rate:.0f}/s; {median([f['rate'] for f in flats]):.0f}/s"
            f" / {median([x['rate'] for x in loads]):.0f}/s",
        ),
        (
            f"small job ({args.small:,} batches), idle: p50, p99 ms",
            f"{runs(col(flats, 'small_p50'), '{:.1f}')}, {runs(col(flats, 'small_p99'), '{:.1f}')}",
        ),
        (
            f"big job ({args.big:,} batches), idle: p50, p99 ms",
            f"{runs(col(flats, 'big_p50'), '{:.1f}')}, {runs(col(flats, 'big_p99'), '{:.1f}')}",
        ),
        (
            "ratio big / small: p50, p99",
            f"{median(col(flats, 'big_p50')) / small_p50:.2f}, {median(col(flats, 'big_p99')) / small_p99:.2f}",
        ),
        ("the big job's POST (item_list, batch_size 1)", runs([f["submit_big"] for f in flats], "{:.1f} s")),
        ("under load: p50, p99 ms", f"{runs(col(loads, 'p50'), '{:.1f}')}, {runs(col(loads, 'p99'), '{:.1f}')}"),
        ("under load: max ms", runs(col(loads, "max"), "{:.1f}")),
        (
            "ratio under load / small idle: p50, p99",
            f"{median(col(loads, 'p50')) / small_p50:.2f}, {median(col(loads, 'p99')) / small_p99:.2f}",
        ),
        ("load shape meanwhile: batches/s", runs([x["batches_per_s"] for x in loads])),
        (
            "requests measured (flat; under load); errors",
            f"{sum(f['requests'] for f in flats):,}; {sum(x['requests'] for x in loads):,}; "
            f"{sum(f['errors'] for f in flats + loads)}",
        ),
    ]
    table("status benchmark", rows)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="status requests per second (default 200)")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long part 1 reads (default 10)")
    parser.add_argument("--small", type=int, default=1000, help="batches of the small job (default 1,000)")
    parser.add_argument("--big", type=int, default=1_000_000, help="batches of the big job (default 1,000,000)")
    parser.add_argument("--load-items", type=int, default=100_000, help="items per job of the load shape")
    parser.add_argument("--concurrency", type=int, default=2, help="worker pool processes (default 2)")
    parser.add_argument("--repeat", type=int, default=1, help="runs (medians are quoted)")
    parser.add_argument("--quick", action="store_true", help="a 100,000-batch big job, 3 s, a small load shape")
    parser.add_argument("--timeout", type=float, default=900.0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(parse_args(sys.argv[1:])))
