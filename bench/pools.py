"""Dedicated pools benchmark: three APIs' jobs at once, on one shared queue and on a pool per API.

    .venv/bin/python bench/pools.py [--repeat 3] [--batches 60] [--quick]

Starts its own redis-server, the API under gunicorn and six Celery workers (prefork, one process
each) running `bench.worker`, and deploys the predictor of bench/slow_init (its `__init__` takes
1 s, like a model load; each batch sleeps 20 ms) as six APIs: `shared-a`, `shared-b`, `shared-c`
on the default queue, and `pool-a`, `pool-b`, `pool-c`, each with a `queue:` of its own. Three
workers serve the default queue: the shared fleet; the three others one pool queue each
(BATCHERY_QUEUES): the dedicated pools, the same number of processes. Both have the default
BATCHERY_PREDICTOR_CACHE (2; `--predictor-cache` sets another). In each round, on the same
processes, one after the other:
- shared queue: one job of each `shared-*` API at once (`--batches` batches, `workers` 2 each);
- dedicated pools: the same three jobs of the `pool-*` APIs
(the first of the two alternates from round to round).
It reports the predictor loads per process (each `__init__` counts itself in Redis) and the wall
time from the first submission to the last job's end; medians of `--repeat` rounds, and the ratio
pools / shared.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.model import status
from bench.harness import ROOT, Stack, machine, median, runs, table, wait_until
from tests.services import Worker

SLOW_INIT = ROOT / "bench" / "slow_init" / "predictor.py"
NOOP = ROOT / "bench" / "noop" / "predictor.py"
LETTERS = ("a", "b", "c")
MODES = {"shared": "shared queue", "pool": "dedicated pools"}  # API name prefix: what it runs on


def write_apis(folder: Path) -> Path:
    """The cortex.yaml of the six slow-init APIs (and `noop`, which the stack's readiness check asks for)."""
    shutil.copy(SLOW_INIT, folder / "slow_init.py")
    shutil.copy(NOOP, folder / "noop.py")
    predictor = {"type": "python", "path": "slow_init.py"}
    apis: list[dict] = [{"name": "noop", "kind": "BatchAPI", "predictor": {"type": "python", "path": "noop.py"}}]
    apis += [{"name": f"shared-{letter}", "kind": "BatchAPI", "predictor": predictor} for letter in LETTERS]
    apis += [
        {"name": f"pool-{letter}", "kind": "BatchAPI", "queue": f"pool-{letter}", "predictor": predictor}
        for letter in LETTERS
    ]
    path = folder / "cortex.yaml"
    path.write_text(yaml.safe_dump(apis))
    return path


def start_workers(stack: Stack) -> None:
    """Three workers of one process on the default queue, and one for each pool's queue, side by side."""
    queues = [stack.queue] * len(LETTERS) + [f"pool-{letter}" for letter in LETTERS]
    with ThreadPoolExecutor(len(queues)) as pool:
        starting = [
            pool.submit(
                Worker,
                {**stack.env, "BATCHERY_QUEUES": queue},
                stack.workdir,
                f"{queue}-{n}-{uuid.uuid4().hex[:4]}",
                concurrency=1,
                app="bench.worker",
            )
            for n, queue in enumerate(queues)
        ]
        for started in starting:
            stack.workers.append(started.result())  # stopped with the stack


def run_round(stack: Stack, mode: str, args: argparse.Namespace) -> dict:
    """One job of each of the mode's three APIs at once: wall time and the predictor loads per process."""
    tag = uuid.uuid4().hex[:8]
    config = {"tag": tag, "redis_url": stack.env["REDIS_URL"], "init_seconds": args.init_seconds, "sleep": args.sleep}
    body = {"workers": 2, "item_list": {"items": list(range(args.batches)), "batch_size": 1}, "config": config}
    started = time.perf_counter()
    jobs = {}
    for letter in LETTERS:
        api = f"{mode}-{letter}"
        response = stack.http.post(f"{stack.url}/batch/{api}", json=body, timeout=60)
        if response.status_code != 200:
            raise RuntimeError(f"submission refused: {response.status_code} {response.text[:500]}")
        jobs[response.json()["job_id"]] = api
    ended = {job_id: wait_final(stack, api, job_id, args.timeout) for job_id, api in jobs.items()}
    wall = time.perf_counter() - started
    for job_id, job in ended.items():
        if job["status"] != status.SUCCEEDED or job["batch_metrics"]["succeeded"] != args.batches:
            raise RuntimeError(f"job {job_id} of {jobs[job_id]} ended {job['status']}: {job['batch_metrics']}")
    completed = int(stack.redis.get(f"bench:pools:complete:{tag}") or 0)
    if completed != len(jobs):
        raise RuntimeError(f"on_job_complete ran {completed} times for {len(jobs)} jobs")
    loads = {field.decode(): int(count) for field, count in stack.redis.hgetall(f"bench:pools:inits:{tag}").items()}
    per_process = Counter()
    apis_per_process: dict[str, set] = {}
    for field, count in loads.items():
        api, pid = field.split()
        per_process[pid] += count
        apis_per_process.setdefault(pid, set()).add(api)
    return {
        "wall": wall,
        "loads": sum(per_process.values()),
        "per_process": sorted(per_process.values(), reverse=True),
        "apis_per_process": sorted(len(apis) for apis in apis_per_process.values()),
    }


def wait_final(stack: Stack, api: str, job_id: str, timeout: float) -> dict:
    """A job's `job_status` once it is final."""

    def final() -> dict | None:
        response = stack.http.get(f"{stack.url}/batch/{api}", params={"jobID": job_id}, timeout=30)
        response.raise_for_status()
        job = response.json()["job_status"]
        return job if status.is_final(job["status"]) else None

    return wait_until(final, timeout, 0.1, f"job {job_id} of {api} to end")


def main(args: argparse.Namespace) -> int:
    print(f"machine: {machine()}", flush=True)
    folder = Path(tempfile.mkdtemp(prefix="batchery-bench-pools-"))
    settings = {"BATCHERY_APIS": str(write_apis(folder)), "BATCHERY_PREDICTOR_CACHE": str(args.predictor_cache)}
    stack = Stack(start_workers=False, worker_env=settings)
    found: dict[str, list[dict]] = {mode: [] for mode in MODES}
    try:
        start_workers(stack)
        for number in range(1, args.repeat + 1):
            order = list(MODES) if number % 2 else list(reversed(MODES))  # neither always goes first
            for mode in order:  # both in each round, on the same processes
                label = MODES[mode]
                result = run_round(stack, mode, args)
                found[mode].append(result)
                print(f"round {number}, {label}: {result}", flush=True)
    finally:
        stack.stop()
        shutil.rmtree(folder, ignore_errors=True)
    print_table(found, args)
    return 0


def print_table(found: dict[str, list[dict]], args: argparse.Namespace) -> None:
    """The figures of both modes, medians of the rounds (each round's in brackets), and the ratio."""
    batches = args.batches * len(LETTERS)
    rows = [
        ("machine", machine()),
        (
            "shape",
            f"3 APIs x 1 job x {args.batches} batches of {args.sleep * 1000:.0f} ms, workers 2 each; "
            f"__init__ {args.init_seconds:g} s; 3 worker processes; BATCHERY_PREDICTOR_CACHE {args.predictor_cache}",
        ),
    ]
    for mode, label in MODES.items():
        results = found[mode]
        rows += [
            (f"{label}: wall time, s", runs([r["wall"] for r in results], "{:.1f}")),
            (f"{label}: predictor loads (of {batches} batches)", runs([r["loads"] for r in results])),
            (f"{label}: loads per process, each round", "; ".join(str(r["per_process"]) for r in results)),
            (f"{label}: APIs loaded per process, each round", "; ".join(str(r["apis_per_process"]) for r in results)),
        ]
    walls = {mode: median([r["wall"] for r in found[mode]]) for mode in MODES}
    rows.append(("wall time ratio pools / shared", f"{walls['pool'] / walls['shared']:.2f}"))
    table("dedicated pools benchmark", rows)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="rounds of both modes (default 3)")
    parser.add_argument("--batches", type=int, default=60, help="batches of each job (default 60)")
    parser.add_argument("--sleep", type=float, default=0.02, help="seconds each batch sleeps (default 0.02)")
    parser.add_argument("--init-seconds", type=float, default=1.0, help="seconds each __init__ takes (default 1)")
    parser.add_argument(
        "--predictor-cache",
        type=int,
        default=2,
        help="BATCHERY_PREDICTOR_CACHE of every worker (default 2, the default)",
    )
    parser.add_argument("--quick", action="store_true", help="one round of 20-batch jobs (CI-sized)")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat, args.batches = 1, 20
    return args


if __name__ == "__main__":
    sys.exit(main(parse_args(sys.argv[1:])))
