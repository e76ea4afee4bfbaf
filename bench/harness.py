"""What the benchmarks share: a stack of real processes (redis-server, Celery workers, the API under
gunicorn), an HTTP client for the API, the machine's description and the printed table."""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.services import VENV_BIN, WEB_THREADS, RedisServer, Worker, free_port, stop_process, wait_for  # noqa: E402

API_NAME = "noop"
APIS_FILE = ROOT / "bench" / "noop" / "cortex.yaml"


class Stack:
    """redis-server, `processes` Celery workers (prefork, `concurrency` each) running bench.worker,
    and the API under gunicorn, all on free ports; `stop()` ends them all."""

    def __init__(
        self,
        processes: int = 1,
        concurrency: int = 2,
        api_workers: int = 2,
        start_workers: bool = True,
        worker_env: dict | None = None,
    ):
        self.workdir = Path(tempfile.mkdtemp(prefix="batchery-bench-"))
        self.queue = f"bench-{uuid.uuid4().hex[:8]}"
        self.workers: list[Worker] = []
        self.api: subprocess.Popen | None = None
        self.redis_server = RedisServer(self.workdir)
        self.redis = self.redis_server.client
        self.env = dict(
            os.environ,
            REDIS_URL=self.redis_server.url,
            BATCHERY_QUEUE=self.queue,
            BATCHERY_APIS=str(APIS_FILE),
            PYTHONPATH=str(ROOT),
        )
        self.env.pop("BROKER_URL", None)
        self.env.update(worker_env or {})
        os.environ.update({k: self.env[k] for k in ("REDIS_URL", "BATCHERY_QUEUE", "BATCHERY_APIS")})
        try:
            self._start_api(api_workers)
            if start_workers:
                self.start_workers(processes, concurrency)
        except BaseException:
            self.stop()
            raise

    def start_workers(self, processes: int = 1, concurrency: int = 2) -> None:
        """Start the Celery worker processes and wait until they are ready."""
        for n in range(processes):
            name = f"bench{n}-{uuid.uuid4().hex[:4]}"
            self.workers.append(Worker(self.env, self.workdir, name, concurrency=concurrency, app="bench.worker"))

    def _start_api(self, api_workers: int) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.api_log = (self.workdir / "api.log").open("w")
        # As the Procfile runs it (threaded workers, access log on), logging to a file.
        args = [str(VENV_BIN / "gunicorn"), "--workers", str(api_workers), *WEB_THREADS, "--bind", f"127.0.0.1:{port}"]
        args += ["--access-logfile", "-", "app:create_app()"]
        self.api = subprocess.Popen(
            args, cwd=ROOT, env=self.env, stdout=self.api_log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.http = requests.Session()

        def up() -> bool:
            if self.api.poll() is not None:
                raise RuntimeError(f"gunicorn exited:\n{(self.workdir / 'api.log').read_text()}")
            try:
                return self.http.get(f"{self.url}/batch/{API_NAME}", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_for(up, timeout=60, interval=0.1, what="the API to answer")

    def submit(self, body: dict, session: requests.Session | None = None) -> dict:
        """POST a job; its spec."""
        response = (session or requests).post(f"{self.url}/batch/{API_NAME}", json=body, timeout=300)
        if response.status_code != 200:
            raise RuntimeError(f"submission refused: {response.status_code} {response.text[:500]}")
        return response.json()

    def status(self, job_id: str, session: requests.Session | None = None) -> dict:
        """GET a job's status (`job_status`)."""
        response = (session or self.http).get(f"{self.url}/batch/{API_NAME}", params={"jobID": job_id}, timeout=30)
        response.raise_for_status()
        return response.json()["job_status"]

    def wait_final(self, job_id: str, timeout: float, interval: float = 0.2) -> dict:
        """GET a job's status until it has ended; that status. Raises AssertionError past `timeout`."""
        state: dict = {}

        def ended() -> bool:
            state.update(self.status(job_id))
            return state["status"] not in ("status_enqueuing", "status_running")

        wait_until(ended, timeout=timeout, interval=interval, what=f"job {job_id} to end")
        return state

    def stop(self) -> None:
        """Stop every process started, and remove the work directory."""
        for worker in self.workers:
            worker.stop()
        if self.api is not None:
            stop_process(self.api, group=True)
            self.api_log.close()
        self.redis_server.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def worker_pids(self) -> list[int]:
        """The pids of the worker main processes and their pool processes."""
        return [pid for w in self.workers for pid in (w.process.pid, *w.children())]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far, seconds (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The pids of a process's children."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(child) for child in out.split()]


class CpuMeter:
    """CPU seconds used by each part of the stack between `start()` and `stop()`."""

    def __init__(self, stack: Stack):
        self.stack = stack
        self.before: dict[str, dict[int, float]] = {}

    def _groups(self) -> dict[str, list[int]]:
        worker_main = [w.process.pid for w in self.stack.workers]
        return {
            "worker main": worker_main,
            "worker pool": [child for pid in worker_main for child in children(pid)],
            "redis-server": [self.stack.redis_server.process.pid],
            "api (gunicorn)": [self.stack.api.pid, *children(self.stack.api.pid)] if self.stack.api else [],
            "bench client": [os.getpid()],
        }

    def _sample(self) -> dict[str, dict[int, float]]:
        return {name: {pid: cpu_seconds(pid) for pid in pids} for name, pids in self._groups().items()}

    def start(self) -> None:
        """Remember the CPU times now."""
        self.before = self._sample()

    def stop(self) -> dict[str, float]:
        """CPU seconds each part used since `start()`."""
        after = self._sample()
        return {
            name: sum(t - self.before.get(name, {}).get(pid, 0.0) for pid, t in pids.items())
            for name, pids in after.items()
        }


def celery_app():
    """The bench's Celery app (Batchery's settings), configured from the stack's environment."""
    from bench.worker import celery

    return celery


def machine() -> str:
    """nproc, CPU model, RAM, Python and Redis versions, on one line."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
        ram = f"{mem_kib / 1024 / 1024:.0f} GiB RAM"
    except OSError:
        ram = "RAM unknown"
    redis_version = "?"
    try:
        out = subprocess.run([_redis_binary(), "--version"], capture_output=True, text=True).stdout
        redis_version = next((part[2:] for part in out.split() if part.startswith("v=")), "?")
    except OSError:
        pass
    return f"nproc {os.cpu_count()}, {cpu}, {ram}, Python {platform.python_version()}, Redis {redis_version}"


def _redis_binary() -> str:
    from tests.services import redis_server_binary

    return redis_server_binary()


def median(values: Sequence[float]) -> float:
    """The median (of an odd or even count)."""
    return statistics.median(values)


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (nearest rank) of `values`."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def runs(values: Sequence[float], fmt: str = "{:.0f}") -> str:
    """`median (a, b, c)` for a list of per-run figures."""
    return f"{fmt.format(median(values))} ({', '.join(fmt.format(v) for v in values)})"


def cpu_row(name: str, found: list[dict]) -> tuple[str, str]:
    """The row of CPU seconds per 1,000 batches, by part (median of the runs in `found`)."""
    parts = {part: median([1000 * r["cpu"][part] / r["batches"] for r in found]) for part in found[0]["cpu"]}
    return f"{name}: CPU s per 1,000 batches", ", ".join(f"{k} {v:.2f}" for k, v in parts.items())


def ratio_row(name: str, rates: list[float], baseline: str, baseline_rates: list[float]) -> tuple[str, str]:
    """The row of `name`'s rate over a baseline's: the ratio of the medians, then run by run."""
    ratio = median(rates) / median(baseline_rates)
    each = ", ".join(f"{a / b:.2f}" for a, b in zip(rates, baseline_rates, strict=False))
    return f"ratio {name} / {baseline} (of medians; per run)", f"{ratio:.2f}; {each}"


def table(title: str, rows: list[tuple[str, str]]) -> None:
    """Print a two-column table."""
    width = max(len(name) for name, _ in rows)
    print()
    print(title)
    print("-" * (width + 60))
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print("-" * (width + 60))


def wait_until(condition, timeout: float, interval: float = 0.05, what: str = "") -> object:
    """`wait_for`, re-exported for the benches."""
    return wait_for(condition, timeout=timeout, interval=interval, what=what)


def monotonic() -> float:
    """time.perf_counter, for the benches' own timings."""
    return time.perf_counter()


def timed_chord(script: str, env: dict, client, count: int, timeout: float, *args: str) -> dict:
    """Run `script --child-chord <tag> --count <count> *args`, a client process publishing a plain
    celery.chord as a user's script would, and wait for the chord's body to record its results in
    `bench:chord:<tag>`: the seconds from the first publish to the body, the batches and the rate.
    Raises RuntimeError if the client fails or the body got another count of results."""
    tag = uuid.uuid4().hex[:8]
    argv = [sys.executable, script, "--child-chord", tag, "--count", str(count), *args]
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    out, _ = process.communicate(timeout=timeout)
    if process.returncode != 0:
        raise RuntimeError(f"the chord client failed ({process.returncode})")
    published = json.loads(out.strip().splitlines()[-1])
    key = f"bench:chord:{tag}"
    wait_until(lambda: client.exists(key), timeout=timeout, interval=0.05, what="the chord's body to run")
    done = client.hgetall(key)
    if int(done[b"results"]) != count:
        raise RuntimeError(f"the chord body got {done[b'results']} results, not {count}")
    seconds = float(done[b"time"]) - published["started"]
    result = {"seconds": seconds, "batches": count, "rate": count / seconds}
    if "published" in published:
        result["publish_seconds"] = published["published"] - published["started"]
    return result
