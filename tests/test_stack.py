"""The run tooling: docker-compose.yml and the Procfile agree, and scripts/stack.py runs a real stack."""

from __future__ import annotations

import ast
import base64
import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import pytest
import yaml

from tests.services import ROOT, WEB_THREADS, free_ports, procfile, wait_for

STACK = ROOT / "scripts" / "stack.py"
SERVICES = {"redis", "api", "worker", "control", "flower", "s3"}
# compose service -> Procfile entry
COMPOSE_COMMANDS = {"api": "web", "worker": "worker", "control": "control", "flower": "flower"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def shell_command(command) -> str:
    """The shell command a compose `command:` runs, after Compose's own `$$` -> `$` unescaping,
    without its `exec` (the server replaces the shell, so that it is the one `docker stop` signals:
    a shell as a container's first process ignores SIGTERM, and its server was SIGKILLed 10 s on)."""
    if isinstance(command, list):
        assert command[:2] == ["sh", "-c"] and len(command) == 3, command
        command = command[2]
    else:
        assert command.startswith("sh -c "), command
        command = command.removeprefix("sh -c ")
    assert command.startswith("exec "), command
    command = command.removeprefix("exec ")
    # A lone `$` would be substituted by Compose from the host's environment, not by the container's shell.
    assert "$" not in command.replace("$$", ""), f"unescaped $ in {command!r}"
    return command.replace("$$", "$")


def test_procfile_has_the_web_worker_and_flower_commands():
    entries = procfile()
    assert {"web", "worker", "flower"} <= set(entries)
    assert entries["web"].startswith("gunicorn ")
    # the threads the suite's gunicorn runs with (tests/services.py), defaults and all
    assert " ".join(WEB_THREADS).replace(" 4", " ${WEB_THREADS:-4}") in entries["web"]
    assert "'app:create_app()'" in entries["web"]
    assert entries["worker"].startswith("celery -A workers worker")
    assert entries["flower"].startswith("celery -A workers flower")


def test_compose_has_the_five_services(compose):
    assert set(compose["services"]) == SERVICES


@pytest.mark.parametrize("service", sorted(COMPOSE_COMMANDS))
def test_compose_commands_are_the_procfile_commands(compose, service):
    command = shell_command(compose["services"][service]["command"])
    assert command == procfile()[COMPOSE_COMMANDS[service]]


def test_compose_redis_persists_and_is_checked(compose):
    redis = compose["services"]["redis"]
    assert redis["image"].startswith("redis:7")
    command = redis["command"] if isinstance(redis["command"], list) else redis["command"].split()
    assert command[command.index("--appendonly") + 1] == "yes"
    assert "redis-cli" in " ".join(redis["healthcheck"]["test"])
    assert any(volume.endswith(":/data") for volume in redis["volumes"])


def test_compose_worker_scales(compose):
    worker = compose["services"]["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker


def test_compose_api_and_worker_share_the_results_volume(compose):
    for name in ("api", "worker"):
        service = compose["services"][name]
        assert "results:/app/results" in service["volumes"], name
        assert service["environment"]["REDIS_URL"] == "redis://redis:6379/0"
        assert service["image"] == compose["services"]["api"]["image"]  # the image built from . (one build)
    assert compose["services"]["api"]["build"] == "."
    assert "results" in compose["volumes"]
    api = compose["services"]["api"]
    assert "8080:8080" in api["ports"]
    assert "/healthz" in " ".join(api["healthcheck"]["test"])
    assert "5555:5555" in compose["services"]["flower"]["ports"]


@pytest.mark.parametrize("service", sorted(COMPOSE_COMMANDS))
def test_compose_points_the_app_at_the_minio_service(compose, service):
    env = compose["services"][service]["environment"]
    minio = compose["services"]["s3"]
    assert minio["image"].startswith("minio/minio")
    assert "9000:9000" in minio["ports"]
    assert env["AWS_ENDPOINT_URL_S3"] == "http://s3:9000"
    assert env["AWS_ACCESS_KEY_ID"] == minio["environment"]["MINIO_ROOT_USER"]
    assert env["AWS_SECRET_ACCESS_KEY"] == minio["environment"]["MINIO_ROOT_PASSWORD"]
    assert env["AWS_DEFAULT_REGION"] == "us-east-1"


def test_compose_protects_the_api_with_a_token_and_flower_with_basic_auth(compose):
    services = compose["services"]
    assert services["api"]["environment"]["BATCHERY_API_TOKEN"]
    user, _, password = services["flower"]["environment"]["FLOWER_BASIC_AUTH"].partition(":")
    assert user and password
    assert "--basic-auth" in shell_command(services["flower"]["command"])
    text = (ROOT / "docker-compose.yml").read_text()
    assert "local-only default" in text  # says so, next to the values


def test_flower_gets_basic_auth_only_when_it_is_set():
    command = procfile()["flower"]
    run = "printf '%s\\n' " + command  # the words the shell would run
    unset = subprocess.run(["sh", "-c", run], env={"PATH": os.environ["PATH"]}, capture_output=True, text=True)
    assert "--basic-auth" not in unset.stdout
    env = {"PATH": os.environ["PATH"], "FLOWER_BASIC_AUTH": "me:pass word"}
    words = subprocess.run(["sh", "-c", run], env=env, capture_output=True, text=True).stdout.splitlines()
    assert "--basic-auth=me:pass word" in words


def test_dockerfile_default_command_is_the_procfile_web_command():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and "FROM python:3.11-slim" in dockerfile
    cmd = json.loads(re.search(r"^CMD (.*)$", dockerfile, re.M).group(1))
    assert cmd == ["sh", "-c", f"exec {procfile()['web']}"]  # exec: as in docker-compose.yml


# --- scripts/stack.py's settings --------------------------------------------------------------


@pytest.fixture(scope="module")
def stack_module():
    spec = importlib.util.spec_from_file_location("stack", STACK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stack_starts_a_local_s3_with_dummy_credentials(stack_module):
    config = stack_module.Config({"S3_PORT": "9123"})
    assert config.local_s3 and "s3" in stack_module.Stack(config).names()
    assert config.env["AWS_ENDPOINT_URL_S3"] == "http://127.0.0.1:9123"
    assert config.env["AWS_ACCESS_KEY_ID"] == config.env["AWS_SECRET_ACCESS_KEY"] == "local"
    assert config.env["AWS_DEFAULT_REGION"] == "us-east-1"


def test_stack_keeps_the_users_credentials_for_the_local_s3(stack_module):
    mine = {"AWS_ACCESS_KEY_ID": "mine", "AWS_SECRET_ACCESS_KEY": "secret", "AWS_DEFAULT_REGION": "eu-west-3"}
    config = stack_module.Config(mine)
    assert config.local_s3
    assert {name: config.env[name] for name in mine} == mine
    assert config.s3_settings == {"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9000"}  # all that the banner prints


def test_stack_sets_no_aws_credentials_on_the_sqs_broker(stack_module):
    """Variables come first in boto3's chain: the dummy ones hid the user's profile or role from SQS."""
    config = stack_module.Config({"BROKER_URL": "sqs://"})
    assert config.local_s3 and config.env["AWS_ENDPOINT_URL_S3"] == "http://127.0.0.1:9000"
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"} & set(config.env)


def test_stack_masks_the_credentials_of_a_redis_url_it_prints(stack_module):
    assert stack_module.masked("redis://:S3cret@10.0.0.5:6379/0") == "redis://***@10.0.0.5:6379/0"
    assert stack_module.masked("rediss://user:pw@host/1") == "rediss://***@host/1"
    assert stack_module.masked("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(
    "env", [{"AWS_ENDPOINT_URL_S3": "http://minio.internal:9000"}, {"LOCAL_S3": "0"}], ids=["user-s3", "no-s3"]
)
def test_stack_starts_no_s3_when_the_user_has_one_or_wants_none(stack_module, env):
    config = stack_module.Config(env)
    assert not config.local_s3
    assert "s3" not in stack_module.Stack(config).names()
    assert config.env.get("AWS_ENDPOINT_URL_S3") == env.get("AWS_ENDPOINT_URL_S3")
    assert "AWS_ACCESS_KEY_ID" not in config.env


# --- scripts/stack.py on real processes ------------------------------------------------------


def process_alive(pid: int) -> bool:
    """Whether a process runs; a zombie (exited, not yet reaped by its parent) does not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def group_members(pgid: int) -> list[int]:
    """The live processes of a process group (the pool and gunicorn children of a stack process)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[2] == str(pgid) and fields[0] not in "ZX":
                members.append(int(entry.name))
    return members


class LocalStack:
    """`scripts/stack.py` with its own ports and run directory, so it never meets a developer's stack."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.port, self.flower_port, self.redis_port, self.s3_port = free_ports(4)
        self.env = dict(os.environ)
        # The stack decides where Redis and S3 are (the suite's own moto server may be in os.environ).
        unset = ("REDIS_URL", "BROKER_URL", "BATCHERY_APIS", "BATCHERY_QUEUE")
        unset += ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")
        unset += ("LOCAL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
        unset += ("BATCHERY_API_TOKEN", "FLOWER_BASIC_AUTH")  # a test that wants them sets them
        for name in unset:
            self.env.pop(name, None)
        self.env.update(
            BATCHERY_RUN_DIR=str(run_dir),
            PORT=str(self.port),
            FLOWER_PORT=str(self.flower_port),
            REDIS_PORT=str(self.redis_port),
            S3_PORT=str(self.s3_port),
            WEB_CONCURRENCY="1",
            WORKER_CONCURRENCY="2",
            BATCHERY_UP_TIMEOUT="90",
        )
        self.api = f"http://127.0.0.1:{self.port}"
        self.s3_url = f"http://127.0.0.1:{self.s3_port}"

    def s3(self):
        """A boto3 client for the stack's local S3, with the dummy credentials the stack gives its processes."""
        session = boto3.session.Session(
            aws_access_key_id="local", aws_secret_access_key="local", region_name="us-east-1"
        )
        return session.client("s3", endpoint_url=self.s3_url)

    def run(self, command: str, timeout: float = 150) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(STACK), command],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def pids(self) -> dict[str, int]:
        return {path.stem: int(path.read_text()) for path in self.run_dir.glob("*.pid")}

    def get(self, path: str) -> tuple[int, dict]:
        with urllib.request.urlopen(self.api + path, timeout=10) as response:
            return response.status, json.loads(response.read())

    def post(self, path: str, body: bytes) -> tuple[int, dict]:
        request = urllib.request.Request(self.api + path, data=body, method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())

    def wait_final(self, api: str, job_id: str) -> dict:
        def final():
            _, answer = self.get(f"/batch/{api}?jobID={job_id}")
            return answer if answer["job_status"]["status"] not in ("status_enqueuing", "status_running") else None

        return wait_for(final, timeout=60, interval=0.1, what=f"job {job_id} to end")


def remove_results(job_ids) -> None:
    for job_id in job_ids:
        (ROOT / "results" / f"{job_id}.json").unlink(missing_ok=True)
        shutil.rmtree(ROOT / "results" / job_id, ignore_errors=True)


def test_up_runs_a_job_over_http_and_down_stops_every_process(tmp_path):
    stack = LocalStack(tmp_path / "run")
    job_ids = []
    try:
        up = stack.run("up")
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"http://127.0.0.1:{stack.port}" in up.stdout
        assert f"http://127.0.0.1:{stack.flower_port}" in up.stdout
        assert f"export AWS_ENDPOINT_URL_S3={stack.s3_url} AWS_ACCESS_KEY_ID=local" in up.stdout
        pids = stack.pids()
        assert set(pids) == {"redis", "s3", "web", "worker", "control", "flower"}
        members = {pid for pgid in pids.values() for pid in group_members(pgid)}
        assert all(process_alive(pid) for pid in pids.values())

        again = stack.run("up")
        assert again.returncode == 1
        assert "already up" in again.stderr

        code, submitted = stack.post("/batch/sum", (ROOT / "examples" / "sum" / "job.json").read_bytes())
        assert code == 200
        job_id = submitted["job_id"]
        job_ids.append(job_id)

        answer = stack.wait_final("sum", job_id)
        job = answer["job_status"]
        assert job["status"] == "status_succeeded", job
        assert job["job_id"] == job_id
        assert job["total_batch_count"] == 4
        assert job["batches_in_queue"] == 0
        assert job["batch_metrics"]["succeeded"] == 4
        assert job["batch_metrics"]["failed"] == 0
        assert job["batch_metrics"]["avg_time_per_batch"] >= 0
        assert job["end_time"] >= job["start_time"] >= job["created_time"]
        assert answer["endpoint"].endswith("/batch/sum")
        assert answer["api_spec"]["name"] == "sum"
        result = json.loads((ROOT / "results" / f"{job_id}.json").read_text())
        assert result == {"job_id": job_id, "items": 8, "batches": 4, "total": sum(range(1, 25))}

        # S3 inputs: files uploaded to the stack's local S3 reach the workers as items
        s3 = stack.s3()
        s3.create_bucket(Bucket="numbers")
        s3.put_object(Bucket="numbers", Key="in/a.jsonl", Body=b"[1, 2]\n[3]\n")
        s3.put_object(Bucket="numbers", Key="in/deeper/b.jsonl", Body=b"[4, 5, 6]\n")
        s3.put_object(Bucket="numbers", Key="in/notes.txt", Body=b"not JSON")
        lister = {"s3_paths": ["s3://numbers/in/"], "includes": ["**.jsonl"], "batch_size": 2}
        code, submitted = stack.post("/batch/sum", json.dumps({"workers": 2, "delimited_files": lister}).encode())
        assert code == 200
        job_ids.append(submitted["job_id"])
        job = stack.wait_final("sum", submitted["job_id"])["job_status"]
        assert job["status"] == "status_succeeded", job
        assert job["total_batch_count"] == 2
        result = json.loads((ROOT / "results" / f"{submitted['job_id']}.json").read_text())
        assert (result["items"], result["total"]) == (3, 21)

        down = stack.run("down")
        assert down.returncode == 0, down.stdout + down.stderr
        assert not [pid for pid in members | set(pids.values()) if process_alive(pid)]
        assert not list(stack.run_dir.glob("*.pid"))
        assert "not running" in stack.run("down").stdout  # idempotent
    finally:
        stack.run("down")
        remove_results(job_ids)


def test_up_with_a_token_and_flower_auth_guards_the_api_and_flower(tmp_path):
    stack = LocalStack(tmp_path / "run")
    stack.env.update(BATCHERY_API_TOKEN="stack-token", FLOWER_BASIC_AUTH="flo:flower-pass", LOCAL_S3="0")
    job_ids: list[str] = []
    try:
        up = stack.run("up")
        assert up.returncode == 0, up.stdout + up.stderr
        assert "stack-token" not in up.stdout and "flower-pass" not in up.stdout
        assert "Authorization: Bearer $BATCHERY_API_TOKEN" in up.stdout
        assert stack.get("/healthz")[0] == 200  # open: `up` waited on it
        with pytest.raises(urllib.error.HTTPError) as refused:
            stack.get("/batch")
        assert refused.value.code == 401
        request = urllib.request.Request(stack.api + "/batch", headers={"Authorization": "Bearer stack-token"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        flower = f"http://127.0.0.1:{stack.flower_port}/"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(flower, timeout=10)
        assert refused.value.code == 401
        login = base64.b64encode(b"flo:flower-pass").decode()
        request = urllib.request.Request(flower, headers={"Authorization": f"Basic {login}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        # Workers send no task events of their own (BATCHERY_TASK_EVENTS): Flower turns them on,
        # every 5 s from its start; so jobs are run until Flower lists one's batches.
        wait_for(lambda: flower_lists_batches(stack, login, job_ids), timeout=120, interval=1, what="Flower")
    finally:
        stack.run("down")
        remove_results(job_ids)


def flower_lists_batches(stack: LocalStack, login: str, job_ids: list) -> bool:
    """Run a job of the `sum` example to its end; True if Flower's API lists its batches."""
    headers = {"Authorization": "Bearer stack-token", "Content-Type": "application/json"}
    body = (ROOT / "examples" / "sum" / "job.json").read_bytes()
    request = urllib.request.Request(stack.api + "/batch/sum", data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        job_ids.append(json.loads(response.read())["job_id"])
    url = f"http://127.0.0.1:{stack.flower_port}/api/tasks?taskname=batchery.run_batch"
    request = urllib.request.Request(url, headers={"Authorization": f"Basic {login}"})
    deadline = time.monotonic() + 10  # the job's 4 batches take well under a second
    while time.monotonic() < deadline:
        with urllib.request.urlopen(request, timeout=10) as response:
            tasks = json.loads(response.read()).values()
        if batches_flower_shows(tasks, job_ids[-1]) == ["0", "1", "2", "3"]:
            return True
        time.sleep(0.2)
    return False


def batches_flower_shows(tasks, job_id: str) -> list[str]:
    """The batch ids of `job_id` that Flower's tasks ran, sorted: each succeeded run_batch task's
    result lists the batches it ran (one, or several short ones in a bundle)."""
    ran = []
    for task in tasks:
        if job_id in str(task.get("args")) and task.get("state") == "SUCCESS":
            ran += ast.literal_eval(task.get("result") or "[]")  # Flower shows the result as its repr
    return sorted(ran, key=int)


def test_stack_config_sends_the_token_to_the_api(stack_module):
    assert "Authorization" not in stack_module.Config({}).headers()
    config = stack_module.Config({"BATCHERY_API_TOKEN": "t0k"})
    assert config.headers()["Authorization"] == "Bearer t0k"
    assert config.env["BATCHERY_API_TOKEN"] == "t0k"  # passed through to the API


def test_up_refuses_a_port_that_is_taken(tmp_path):
    stack = LocalStack(tmp_path / "run")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", stack.port))
        busy.listen()
        up = stack.run("up")
    assert up.returncode == 1
    assert f"port {stack.port} is taken" in up.stderr
    assert not list(stack.run_dir.glob("*.pid"))


def test_down_stops_a_group_whose_leader_died(tmp_path):
    """gunicorn's workers outlive a SIGKILLed master (and keep its port): `down` must still stop them."""
    stack = LocalStack(tmp_path / "run")
    stack.run_dir.mkdir(parents=True)
    # A group leader that exits at once, leaving a child in its process group (reparented to init).
    leader = subprocess.Popen(
        ["sh", "-c", "sleep 120 & echo $!"], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    orphan = int(leader.stdout.readline())
    leader.wait(10)
    leader.stdout.close()
    try:
        assert process_alive(orphan) and group_members(leader.pid) == [orphan]
        (stack.run_dir / "web.pid").write_text(f"{leader.pid}\n")

        again = stack.run("up")
        assert again.returncode == 1
        assert "already up" in again.stderr

        down = stack.run("down")
        assert down.returncode == 0, down.stdout + down.stderr
        assert "stopped web" in down.stdout
        wait_for(lambda: not process_alive(orphan), timeout=10, what="the orphaned group member to exit")
        assert not list(stack.run_dir.glob("*.pid"))
    finally:
        stack.run("down")  # also whatever an `up` that should have refused started
        with contextlib.suppress(ProcessLookupError):
            os.kill(orphan, signal.SIGKILL)


def test_demo_runs_the_examples_and_stops_the_stack(tmp_path):
    stack = LocalStack(tmp_path / "run")
    demo = None
    try:
        demo = stack.run("demo", timeout=240)
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert "status_succeeded" in demo.stdout
        assert re.search(r"batches 4/4 succeeded, 0 failed attempts", demo.stdout)
        assert '"total": 300' in demo.stdout  # the sum predictor's result file
        assert "demo succeeded" in demo.stdout
        _, _, s3_part = demo.stdout.partition("--- S3 inputs")
        assert s3_part, "the demo skipped its S3 job"
        dry_run = ["s3://batchery-demo/numbers/part-1.jsonl", "s3://batchery-demo/numbers/part-2.jsonl"]
        assert "\n".join([*dry_run, "validations passed"]) in s3_part  # not numbers/README.txt
        assert "status_succeeded" in s3_part
        assert '"items": 7' in s3_part and '"total": 325' in s3_part
        assert not list(stack.run_dir.glob("*.pid"))
    finally:
        stack.run("down")
        if demo is not None:
            remove_results(re.findall(r"submitted a [\w-]+ job: (\w+)", demo.stdout))
