"""Predictor cache benchmark (issue 22.4): what a user with N jobs running at once gets.

    .venv/bin/python bench/predictor_cache.py [--jobs 1 2 3 5 10 20] [--batches 2000] [--repeat 3]
                                              [--hold-mib 0] [--quick]
                                              [--policy old=BATCHERY_PREDICTOR_CACHE=2 default]

For each policy (a name, then the workers' settings; `default`: Batchery's defaults), starts a
stack (bench/harness.py: redis-server, the API under gunicorn, one Celery worker of 2 pool
processes), then for each N submits N jobs at once, of `--batches` batches of 20 items in all
(workers 10 each), all of one API (`same`) or each of its own API (`different`), and prints for
each: batches/s (first POST to the last job's end_time), predictors made (per pool process, and
per batch), and the pool processes' RSS once the jobs ended (the largest, and the largest peak).
The predictor is bench/noop's: it does nothing, and with `--hold-mib` holds that much memory,
as a model would. Medians over `--repeat` runs.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import ROOT, Stack, machine, median, table, wait_until
from bench.load import unix

APIS = 20  # the most jobs of different APIs a run submits
ITEMS_PER_BATCH = 20
PENDING = ("status_enqueuing", "status_running")


def write_apis(folder: Path) -> Path:
    """A cortex.yaml of APIS copies of the no-op API (noop-0 ... noop-19), beside its predictor."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "bench" / "noop" / "predictor.py", folder / "predictor.py")
    names = ["noop", *(f"noop-{n}" for n in range(APIS))]  # `noop`: the one bench/harness.py waits on
    entries = [
        {"name": name, "kind": "BatchAPI", "predictor": {"type": "python", "path": "predictor.py"}} for name in names
    ]
    (folder / "cortex.yaml").write_text(yaml.safe_dump(entries))
    return folder / "cortex.yaml"


def memory_kib(pid: int) -> dict[str, int]:
    """A process's VmRSS and VmHWM (its peak), KiB; empty if it is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return {line.split(":")[0]: int(line.split()[1]) for line in lines if line.startswith(("VmRSS", "VmHWM"))}


def run(stack: Stack, jobs: int, different: bool, batches: int, hold_mib: int, timeout: float) -> dict:
    """Submit `jobs` jobs at once, wait for them all to succeed; the figures of the run."""
    tag = uuid.uuid4().hex[:8]
    per_job = max(1, batches // jobs)
    config = {"count_inits": tag, "hold_mib": hold_mib}
    body = {
        "workers": 10,
        "config": config,
        "item_list": {"items": list(range(per_job * ITEMS_PER_BATCH)), "batch_size": ITEMS_PER_BATCH},
    }
    apis = [f"noop-{n if different else 0}" for n in range(jobs)]

    def submit(api: str) -> tuple[str, str]:
        response = requests.post(f"{stack.url}/batch/{api}", json=body, timeout=300)
        if response.status_code != 200:
            raise RuntimeError(f"submission refused: {response.status_code} {response.text[:500]}")
        return api, response.json()["job_id"]

    started = time.time()
    with ThreadPoolExecutor(jobs) as pool:
        submitted = list(pool.map(submit, apis))
    finals: dict[str, dict] = {}

    def all_final() -> bool:
        for api, job_id in submitted:
            if job_id not in finals:
                answer = stack.http.get(f"{stack.url}/batch/{api}", params={"jobID": job_id}, timeout=30)
                state = answer.json()["job_status"]
                if state["status"] in PENDING:
                    return False
                finals[job_id] = state
        return True

    wait_until(all_final, timeout=timeout, interval=0.5, what="every job to end")
    bad = [f"{j}: {s['status']} {s['batch_metrics']}" for j, s in finals.items() if s["status"] != "status_succeeded"]
    if bad:
        raise RuntimeError("jobs did not succeed:\n" + "\n".join(bad))
    ended = max(unix(state["end_time"]) for state in finals.values())
    made = {int(pid): int(count) for pid, count in stack.redis.hgetall(f"bench:inits:{tag}").items()}
    pool_pids = stack.workers[0].children()
    memory = [memory_kib(pid) for pid in pool_pids]
    total = per_job * jobs
    return {
        "rate": total / (ended - started),
        "made": sum(made.values()),
        "made_per_process": sum(made.values()) / len(pool_pids),
        "made_per_batch": sum(made.values()) / total,
        "rss_mib": max(m.get("VmRSS", 0) for m in memory) / 1024,
        "peak_mib": max(m.get("VmHWM", 0) for m in memory) / 1024,
    }


def parse_policy(text: str) -> tuple[str, dict[str, str]]:
    """`name[=VAR=value,VAR=value]` as (name, settings); `default`: none set."""
    name, _, rest = text.partition("=")
    settings = dict(pair.split("=", 1) for pair in rest.split(",") if pair) if rest else {}
    return name, settings


def main(args: argparse.Namespace) -> int:
    if args.quick:
        args.repeat, args.batches, args.jobs = 1, min(args.batches, 1000), [1, 10, 20]
    print(f"machine: {machine()}", flush=True)
    print(f"{args.batches:,} batches of {ITEMS_PER_BATCH} items a run, workers 10 a job; one worker, 2 processes")
    folder = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    rows: list[tuple[str, str]] = [("machine", machine()), ("runs", str(args.repeat))]
    try:
        apis_file = write_apis(folder)
        for policy in args.policy:
            name, settings = parse_policy(policy)
            print(f"policy {name}: {settings or 'the defaults'}", flush=True)
            stack = Stack(processes=1, concurrency=2, worker_env={"BATCHERY_APIS": str(apis_file), **settings})
            try:
                for different in (False, True):
                    for jobs in args.jobs:
                        found = []
                        for attempt in range(args.repeat):
                            result = run(stack, jobs, different, args.batches, args.hold_mib, args.timeout)
                            found.append(result)
                            print(
                                f"  {name} {jobs} jobs {'different' if different else 'same'} API(s),"
                                f" run {attempt + 1}: {result}",
                                flush=True,
                            )
                        rows.append(
                            (f"{name}: {jobs} jobs, {'different APIs' if different else 'one API'}", summary(found))
                        )
            finally:
                stack.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    table("predictor cache benchmark: batches/s; predictors made per process, per batch; RSS, peak RSS (MiB)", rows)
    return 0


def summary(found: list[dict]) -> str:
    """The medians of a case's runs, on one line."""

    def m(key: str) -> float:
        return median([r[key] for r in found])

    return (
        f"{m('rate'):5.0f}/s  made {m('made_per_process'):6.1f}/process {m('made_per_batch'):5.3f}/batch"
        f"  RSS {m('rss_mib'):5.0f}  peak {m('peak_mib'):5.0f}"
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2, 3, 5, 10, 20], help="jobs at once (each N)")
    parser.add_argument("--batches", type=int, default=2000, help="batches a run, all its jobs together")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each case (medians are quoted)")
    parser.add_argument("--hold-mib", type=int, default=0, help="memory each predictor holds, MiB")
    parser.add_argument(
        "--policy",
        nargs="+",
        default=["old=BATCHERY_PREDICTOR_CACHE=2", "default"],
        help="name=VAR=value,VAR=value: the workers' settings of each policy compared",
    )
    parser.add_argument("--quick", action="store_true", help="N = 1, 10, 20; 1,000 batches; one run")
    parser.add_argument("--timeout", type=float, default=600.0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(parse_args(sys.argv[1:])))
