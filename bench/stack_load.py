"""The stack as `make up` runs it, against a plain chord on stock Celery (issue 22.5).

    .venv/bin/python bench/stack_load.py [--quick | --full] [--repeat 3] [--set VAR=value ...]

Batchery: `scripts/stack.py up` on free ports, as `make up` runs it (Redis, the local S3, the API
under gunicorn, a worker of 2 processes, the control lane, Flower), with its default settings,
`bench/noop`'s API deployed (BATCHERY_APIS) and nothing else set (`--set` adds settings, e.g. an
earlier default to compare). Cortex's load-test shape scaled: 10 jobs of 1,000 batches of 20
items, `workers` 10, submitted at once over HTTP; time from the first POST until the last job's
`end_time`. Every job must succeed with every batch, its `on_job_complete` run once.

Stock Celery (bench/stock_celery.py): its own redis-server, a `celery worker` of the same
concurrency with Celery's defaults, and Flower on it too; a plain `celery.chord` of the same
batches (each task carries its batch's 20 items) and a body, published by a client process; time
from the first publish until the body ran.

Each run does both, Batchery first; both stacks stay up the whole time (each idle while the other
runs) and each Flower has turned its workers' task events on before the first run. Prints each
run, the medians, the ratio batchery / chord (of the medians, and per run), and the CPU seconds
per 1,000 batches of each stack's parts. --quick: one run (1 to 2 minutes on 2 cores); --full: 10
jobs x 5,000 batches.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import ROOT, cpu_row, cpu_seconds, machine, ratio_row, runs, table, timed_chord, wait_until
from bench.load import run_batchery
from tests.services import VENV_BIN, RedisServer, free_port, free_ports, stop_process

STACK = ROOT / "scripts" / "stack.py"
NOOP_APIS = ROOT / "bench" / "noop" / "cortex.yaml"
EVENTS_ON = "enabled by remote"  # Celery's log line when Flower turns a worker's task events on
UP_TIMEOUT = 180.0


def descendants(pid: int) -> list[int]:
    """A process and all the processes under it."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        out = subprocess.run(["pgrep", "-P", str(current)], capture_output=True, text=True).stdout
        todo += [int(child) for child in out.split()]
    return found


def cpu_of(groups: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds used so far by each group's processes and their descendants."""
    return {name: sum(cpu_seconds(p) for pid in pids for p in descendants(pid)) for name, pids in groups.items()}


def wait_for_line(path: Path, text: str, what: str) -> None:
    """Wait until a log file has `text` in it."""

    def seen() -> bool:
        return path.exists() and text in path.read_text(errors="replace")

    wait_until(seen, timeout=UP_TIMEOUT, interval=0.2, what=what)


class MakeUpStack:
    """`scripts/stack.py up` with its own ports and run directory (never a developer's stack)."""

    api_name = "noop"

    def __init__(self, workdir: Path, settings: dict[str, str]):
        self.run_dir = workdir / "run"
        port, flower_port, redis_port, s3_port = free_ports(4)
        self.env = dict(os.environ)
        for name in ("REDIS_URL", "BROKER_URL", "BATCHERY_QUEUE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            self.env.pop(name, None)
        self.env.update(
            BATCHERY_RUN_DIR=str(self.run_dir),
            PORT=str(port),
            FLOWER_PORT=str(flower_port),
            REDIS_PORT=str(redis_port),
            S3_PORT=str(s3_port),
            BATCHERY_APIS=str(NOOP_APIS),
            BATCHERY_UP_TIMEOUT=str(int(UP_TIMEOUT)),
            **settings,
        )
        self.url = f"http://127.0.0.1:{port}"
        self.http = requests.Session()
        up = self._stack("up")
        if up.returncode != 0:
            self._stack("down")
            raise RuntimeError(f"stack.py up failed:\n{up.stdout}\n{up.stderr}")
        self.redis = redis.Redis(port=redis_port)

    def _stack(self, command: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, str(STACK), command]
        return subprocess.run(argv, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=UP_TIMEOUT + 60)

    def events_on(self) -> None:
        """Wait until Flower has turned the worker's task events on."""
        wait_for_line(self.run_dir / "worker.log", EVENTS_ON, "Flower to turn the Batchery worker's events on")

    def groups(self) -> dict[str, list[int]]:
        """The stack's processes by part (each pid file names a process group's leader)."""
        pids = {path.stem: int(path.read_text().split()[0]) for path in self.run_dir.glob("*.pid")}
        return {name: [pid] for name, pid in sorted(pids.items())}

    def submit(self, body: dict, session: requests.Session | None = None) -> dict:
        """POST a job; its spec."""
        response = (session or self.http).post(f"{self.url}/batch/{self.api_name}", json=body, timeout=300)
        if response.status_code != 200:
            raise RuntimeError(f"submission refused: {response.status_code} {response.text[:500]}")
        return response.json()

    def status(self, job_id: str, session: requests.Session | None = None) -> dict:
        """GET a job's status (`job_status`)."""
        url = f"{self.url}/batch/{self.api_name}"
        response = (session or self.http).get(url, params={"jobID": job_id}, timeout=30)
        response.raise_for_status()
        return response.json()["job_status"]

    def stop(self) -> None:
        """`stack.py down`."""
        self._stack("down")


class StockCelery:
    """A redis-server, a stock `celery worker` of bench/stock_celery.py and Flower on it."""

    def __init__(self, workdir: Path, concurrency: int):
        self.workdir = workdir
        self.processes: list[subprocess.Popen] = []
        self.logs: list = []
        self.redis_server = RedisServer(workdir)
        self.redis = self.redis_server.client
        self.env = dict(os.environ, STOCK_REDIS_URL=self.redis_server.url, PYTHONPATH=str(ROOT))
        try:
            celery = [str(VENV_BIN / "celery"), "-A", "bench.stock_celery"]
            self.worker = self._start(
                "worker", [*celery, "worker", "--loglevel", "INFO", "--concurrency", str(concurrency)]
            )
            wait_for_line(workdir / "worker.log", " ready.", "the stock worker to be ready")
            flower_port = free_port()
            self.flower = self._start("flower", [*celery, "flower", "--address=127.0.0.1", f"--port={flower_port}"])
            wait_until(lambda: _http_ok(f"http://127.0.0.1:{flower_port}/"), UP_TIMEOUT, 0.2, "the stock Flower")
        except BaseException:
            self.stop()
            raise

    def _start(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = (self.workdir / f"{name}.log").open("w")
        self.logs.append(log)
        process = subprocess.Popen(
            argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.processes.append(process)
        return process

    def events_on(self) -> None:
        """Wait until Flower has turned the worker's task events on."""
        wait_for_line(self.workdir / "worker.log", EVENTS_ON, "Flower to turn the stock worker's events on")

    def groups(self) -> dict[str, list[int]]:
        """The baseline's processes by part."""
        return {"redis": [self.redis_server.process.pid], "worker": [self.worker.pid], "flower": [self.flower.pid]}

    def stop(self) -> None:
        """Stop every process started."""
        for process in reversed(self.processes):
            stop_process(process, group=True)
        for log in self.logs:
            log.close()
        self.redis_server.stop()


def _http_ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def run_stock_chord(stock: StockCelery, count: int, batch_size: int, timeout: float) -> dict:
    """A plain celery.chord of `count` batches and a body, published by a client process."""
    return timed_chord(__file__, stock.env, stock.redis, count, timeout, "--batch-size", str(batch_size))


def child_chord(tag: str, count: int, batch_size: int) -> None:
    """Publish the chord as a user's script would (`chord(header)(body)`), print when, exit."""
    from celery import chord

    from bench.stock_celery import app, batch, done

    app.connection_for_write().ensure_connection()
    started = time.time()
    chord(batch.s(list(range(n * batch_size, (n + 1) * batch_size))) for n in range(count))(done.s(tag))
    print(json.dumps({"started": started, "published": time.time()}), flush=True)


def measured(name: str, stack, results: list[dict], work) -> None:
    """Run `work()`, adding its figures and the stack's CPU seconds to `results`; print them."""
    before = cpu_of(stack.groups())
    result = work()
    after = cpu_of(stack.groups())
    result["cpu"] = {part: after[part] - before.get(part, 0.0) for part in after}
    results.append(result)
    per_1000 = ", ".join(f"{part} {1000 * s / result['batches']:.2f}" for part, s in result["cpu"].items())
    print(
        f"  {name}: {result['seconds']:.1f} s, {result['rate']:.0f} batches/s; CPU s per 1,000: {per_1000}", flush=True
    )


def main(args: argparse.Namespace) -> int:
    if args.full:
        args.batches = 5000
    if args.quick:
        args.repeat = 1
    settings = dict(pair.split("=", 1) for pair in args.set)
    total = args.jobs * args.batches
    print(f"machine: {machine()}", flush=True)
    print(
        f"shape: {args.jobs} jobs x {args.batches:,} batches of {args.batch_size} items = {total:,} batches, "
        f"workers {args.workers}; settings: {settings or 'the defaults'}",
        flush=True,
    )
    workdir = Path(tempfile.mkdtemp(prefix="bench-stack-load-"))
    (workdir / "stock").mkdir()
    results: dict[str, list[dict]] = {"batchery": [], "chord": []}
    shape = argparse.Namespace(
        jobs=args.jobs,
        items=args.batches * args.batch_size,
        batch_size=args.batch_size,
        workers=args.workers,
        timeout=args.timeout,
    )
    stack = stock = None
    try:
        stack = MakeUpStack(workdir, settings)
        stock = StockCelery(workdir / "stock", args.concurrency)
        stack.events_on()
        stock.events_on()
        for attempt in range(1, args.repeat + 1):
            print(f"run {attempt}/{args.repeat}", flush=True)
            measured("batchery (make up)", stack, results["batchery"], lambda: run_batchery(stack, shape))
            measured(
                "chord (stock Celery)",
                stock,
                results["chord"],
                lambda: run_stock_chord(stock, total, args.batch_size, args.timeout),
            )
    finally:
        if stack is not None:
            stack.stop()
        if stock is not None:
            stock.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    report(args, total, settings, results)
    return 0


def report(args: argparse.Namespace, total: int, settings: dict, results: dict[str, list[dict]]) -> None:
    """Print each side's runs and medians, the ratio and the CPU per part."""
    rows = [("machine", machine()), ("batches per run", f"{total:,}"), ("runs", str(args.repeat))]
    rows.append(("Batchery's settings", ", ".join(f"{k}={v}" for k, v in settings.items()) or "the defaults"))
    rates = {name: [r["rate"] for r in found] for name, found in results.items()}
    for name, found in results.items():
        rows.append((f"{name}: seconds, median (runs)", runs([r["seconds"] for r in found], "{:.1f}")))
        rows.append((f"{name}: batches/s, median (runs)", runs(rates[name])))
    rows += [cpu_row(name, found) for name, found in results.items()]
    rows.append(ratio_row("batchery", rates["batchery"], "stock chord", rates["chord"]))
    table("the stack as `make up` runs it, against a plain chord on stock Celery (both with Flower)", rows)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=10, help="jobs submitted at once (default 10)")
    parser.add_argument("--batches", type=int, default=1000, help="batches a job (default 1,000)")
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--workers", type=int, default=10, help="each job's workers (default 10)")
    parser.add_argument("--concurrency", type=int, default=2, help="the stock worker's processes (make up's: 2)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each (medians are quoted)")
    parser.add_argument("--quick", action="store_true", help="one run")
    parser.add_argument("--full", action="store_true", help="10 jobs x 5,000 batches")
    parser.add_argument("--set", nargs="*", default=[], metavar="VAR=value", help="Batchery settings for the stack")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--child-chord", default="", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args(sys.argv[1:])
    if arguments.child_chord:
        child_chord(arguments.child_chord, arguments.count, arguments.batch_size)
        sys.exit(0)
    sys.exit(main(arguments))
