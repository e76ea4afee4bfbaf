"""The `batchery` command as a subprocess, against the API served over real HTTP and real workers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from app.client import Client
from app.model import status
from app.store import keys
from app.store.joblog import JobLog
from tests.services import ROOT, VENV_BIN, free_port

JOB_ID = re.compile(r"^[0-9a-f]{16}$")


class Cli:
    """Runs `python -m app.cli` (what the `batchery` entry point calls) with BATCHERY_URL set."""

    def __init__(self, url: str, tmp_path: Path, redis_url: str):
        self.url = url
        self.tmp_path = tmp_path
        self.env = dict(os.environ, BATCHERY_URL=url, REDIS_URL=redis_url, COLUMNS="200")

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "app.cli", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def json(self, *args: str) -> dict | list:
        done = self("-o", "json", *args)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def json_lines(self, *args: str) -> list[str]:
        """The lines a `-o json` command prints (one JSON value a line, as `logs` prints them)."""
        done = self("-o", "json", *args)
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()

    def job_file(self, body: dict) -> str:
        path = self.tmp_path / f"job-{len(list(self.tmp_path.glob('job-*.json')))}.json"
        path.write_text(json.dumps(body))
        return str(path)

    def submit(self, body: dict) -> str:
        done = self("submit", "probe", self.job_file(body))
        assert done.returncode == 0, done.stderr
        job_id = done.stdout.strip()
        assert JOB_ID.match(job_id), done.stdout
        return job_id


@pytest.fixture
def cli(live_url, worker, tmp_path, redis_server) -> Cli:
    return Cli(live_url, tmp_path, redis_server.url)


def body(probe_config: dict, items: list, workers: int = 2) -> dict:
    return {"workers": workers, "item_list": {"items": items, "batch_size": 1}, "config": probe_config}


def long_job(probe_config: dict) -> dict:
    """A job that runs for 40 s unless stopped; stopped, it frees its worker process within 0.2 s."""
    return body(dict(probe_config, sleep=0.2), list(range(200)), workers=1)


def one_error_line(done: subprocess.CompletedProcess) -> str:
    """The single `error: ...` line a failed command prints on stderr (exit code 1)."""
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def test_submit_prints_the_job_id_and_watch_exits_0_when_it_succeeds(cli, probe_config):
    job_id = cli.submit(body(dict(probe_config, sleep=0.05), list(range(12))))

    watched = cli("get", "probe", job_id, "--watch", "--interval", "0.1")
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert f"job {job_id} status_succeeded: 12/12 batches succeeded, 0 failed attempts" in watched.stdout
    assert "12/12" in watched.stderr and "batches/s" in watched.stderr  # the progress bar

    job = cli.json("get", "probe", job_id)["job_status"]
    assert (job["status"], job["batch_metrics"]["succeeded"]) == (status.SUCCEEDED, 12)


def test_watch_exits_1_when_the_job_completes_with_failures(cli, probe_config):
    job_id = cli.submit(body(probe_config, [1, {"fail": "always"}, 3]))
    watched = cli("get", "probe", job_id, "--watch", "--interval", "0.1")
    assert watched.returncode == 1, watched.stdout + watched.stderr
    assert f"job {job_id} status_completed_with_failures: 2/3 batches succeeded, 1 failed attempts" in watched.stdout

    as_json = cli("-o", "json", "get", "probe", job_id, "--watch")  # for scripts: the final answer, same exit code
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout)["job_status"]["status"] == status.COMPLETED_WITH_FAILURES


def test_get_lists_the_apis_with_running_jobs_and_the_latest_job(cli, probe_config):
    job_id = cli.submit(long_job(probe_config))
    try:
        apis = {entry["name"]: entry for entry in cli.json("get")["apis"]}
        assert apis["probe"]["running_jobs"] >= 1
        assert apis["probe"]["latest_job"]["job_id"] == job_id

        table = cli("get")
        assert table.returncode == 0, table.stderr
        assert table.stdout.split()[:4] == ["api", "running", "jobs", "latest"]
        probe_row = next(line for line in table.stdout.splitlines() if line.split()[:1] == ["probe"])
        assert job_id in probe_row and re.search(r"\b(running|enqueuing)\b", probe_row)
        assert any(line.split()[:1] == ["minimal"] for line in table.stdout.splitlines())
    finally:
        Client(cli.url).stop_job("probe", job_id)


def test_get_api_shows_a_table_of_its_jobs(cli, probe_config):
    job_id = cli.submit(body(probe_config, [1, {"fail": "always"}]))
    Client(cli.url).wait("probe", job_id, timeout=60, poll=0.05)

    listing = cli.json("get", "probe")
    assert job_id in [job["job_id"] for job in listing["batch_job_statuses"]]

    table = cli("get", "probe")
    assert table.returncode == 0, table.stderr
    header = table.stdout.splitlines()[0].split()
    assert header == ["job", "id", "status", "progress", "failed", "attempts", "start", "time", "duration"]
    row = next(line for line in table.stdout.splitlines() if line.startswith(job_id)).split()
    assert row[1:5] == ["completed", "with", "failures", "1/2"]
    assert row[5] == "1"  # failed attempts
    assert re.match(r"\d{4}-\d\d-\d\d", row[6])
    assert f"endpoint: {cli.url}/batch/probe" in table.stdout


def test_get_job_shows_its_stats_worker_counts_endpoint_and_spec(cli, probe_config):
    job_id = cli.submit(long_job(probe_config))
    try:
        running = cli("get", "probe", job_id)
        assert running.returncode == 0, running.stderr
        assert f"job id: {job_id}" in running.stdout
        assert re.search(r"^status: (running|enqueuing)$", running.stdout, re.M)
        assert "batch stats" in running.stdout and "avg time per batch" in running.stdout
        assert "worker counts" in running.stdout and "initializing" in running.stdout
        assert f"endpoint: {cli.url}/batch/probe" in running.stdout
        spec = json.loads(running.stdout.split("job spec:", 1)[1])
        assert spec["workers"] == 1 and spec["config"]["tag"] == probe_config["tag"]
    finally:
        stopped = cli("delete", "probe", job_id)
    assert (stopped.returncode, stopped.stdout) == (0, f"stopped job {job_id}\n")

    after = cli("get", "probe", job_id)
    assert "status: stopped" in after.stdout and "worker counts" not in after.stdout
    assert re.search(r"^end time: \d{4}-", after.stdout, re.M)


def test_delete_of_an_ended_job_is_one_error_line(cli, probe_config):
    job_id = cli.submit(body(probe_config, [1]))
    Client(cli.url).wait("probe", job_id, timeout=60, poll=0.05)
    line = one_error_line(cli("delete", "probe", job_id))
    assert line == f"error: job {job_id} is not running: it already ended with status_succeeded"


def test_delete_json_prints_the_api_answer(cli, probe_config):
    job_id = cli.submit(long_job(probe_config))
    assert cli.json("delete", "probe", job_id) == {"message": f"stopped job {job_id}"}


def test_options_may_follow_the_command(cli, probe_config):
    job_id = cli.submit(body(probe_config, [1]))
    done = cli("submit", "probe", cli.job_file(body(probe_config, [1])), "-o", "json", "--url", cli.url)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["api_name"] == "probe"
    shown = cli("get", "probe", job_id, "--output", "json")
    assert json.loads(shown.stdout)["job_status"]["job_id"] == job_id


def test_submit_dry_run_prints_the_text_answer(cli, probe_config):
    done = cli("submit", "probe", cli.job_file(body(probe_config, [1])), "--dry-run")
    assert (done.returncode, done.stdout) == (0, "validations passed\n")


def test_api_errors_are_one_line_and_exit_1(cli, probe_config):
    line = one_error_line(cli("get", "nope"))
    assert line.startswith("error: api nope is not deployed (deployed: ") and "probe" in line
    assert one_error_line(cli("submit", "nope", cli.job_file(body(probe_config, [1])))).startswith(
        "error: api nope is not deployed"
    )
    assert one_error_line(cli("get", "probe", "nosuchjob")) == "error: job nosuchjob does not exist for api probe"
    invalid = cli("submit", "probe", cli.job_file({"workers": 0, "item_list": {"items": [1], "batch_size": 1}}))
    assert one_error_line(invalid).startswith("error: workers: must be at least 1")


def test_a_job_file_that_is_not_a_json_object_is_one_error_line(cli, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert one_error_line(cli("submit", "probe", str(bad))).startswith(f"error: {bad} is not JSON: ")
    bad.write_text("[1, 2]")
    line = one_error_line(cli("submit", "probe", str(bad)))
    assert line == f"error: {bad} must hold a JSON object (the job), not list"


def test_an_unreachable_api_says_where_and_how_to_start_it(cli):
    url = f"http://127.0.0.1:{free_port()}"
    line = one_error_line(cli("--url", url, "get"))
    assert f"cannot reach the Batchery API at {url}: connection refused" in line
    assert "make up" in line


def test_deploy_stores_the_apis_of_a_cortex_yaml(cli, tmp_path, r):
    name = f"cli-{os.urandom(3).hex()}"
    (tmp_path / "predictor.py").write_text("class PythonPredictor:\n    def predict(self, payload):\n        pass\n")
    (tmp_path / "cortex.yaml").write_text(
        f"- name: {name}\n  kind: BatchAPI\n  predictor:\n    type: python\n    path: predictor.py\n"
    )
    try:
        done = cli("deploy", str(tmp_path / "cortex.yaml"))
        assert done.returncode == 0, done.stderr
        match = re.fullmatch(rf"deployed {name} \(api_id ([0-9a-f]{{20}})\)\n", done.stdout)
        assert match, done.stdout
        # The API reads the registry from Redis: the new API is listed at once, with no jobs yet.
        entry = {entry["name"]: entry for entry in cli.json("get")["apis"]}[name]
        assert (entry["running_jobs"], entry["latest_job"]) == (0, None)
        assert cli.json("get", name)["spec"]["api_id"] == match.group(1)
        row = next(line for line in cli("get").stdout.splitlines() if line.split()[:1] == [name])
        assert row.split() == [name, "0", "-", "-"]
    finally:
        r.delete(keys.api(name))
        r.srem(keys.apis(), name)


def test_deploy_errors_are_one_line(cli, tmp_path):
    (tmp_path / "cortex.yaml").write_text("- name: broken\n  kind: BatchAPI\n  predictor:\n    path: missing.py\n")
    line = one_error_line(cli("deploy", str(tmp_path / "cortex.yaml")))
    assert line == "error: API broken: predictor.path missing.py does not exist"

    unreachable = f"redis://127.0.0.1:{free_port()}/0"
    (tmp_path / "ok.py").write_text("class PythonPredictor:\n    pass\n")
    (tmp_path / "ok.yaml").write_text("- name: ok\n  kind: BatchAPI\n  predictor:\n    path: ok.py\n")
    line = one_error_line(cli("deploy", str(tmp_path / "ok.yaml"), "--redis-url", unreachable))
    assert line.startswith(f"error: cannot reach the job store at {unreachable}: ")


def test_deploy_without_redis_url_follows_redis_port_as_make_up_does(cli, tmp_path):
    """`REDIS_PORT=... make up` put Redis elsewhere, and deploy still went to 6379 (another stack's)."""
    (tmp_path / "ok.py").write_text("class PythonPredictor:\n    pass\n")
    (tmp_path / "ok.yaml").write_text("- name: ok\n  kind: BatchAPI\n  predictor:\n    path: ok.py\n")
    port = free_port()  # nothing listens: the error names where it went
    env = {name: value for name, value in cli.env.items() if name != "REDIS_URL"}
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "deploy", str(tmp_path / "ok.yaml"), "--redis"],
        cwd=ROOT,
        env=dict(env, REDIS_PORT=str(port)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert one_error_line(done).startswith(f"error: cannot reach the job store at redis://127.0.0.1:{port}/0: ")


def test_watch_needs_a_job(cli):
    assert one_error_line(cli("get", "probe", "--watch")).startswith("error: --watch needs an API and a JOB")


def test_the_installed_batchery_command_runs_the_cli():
    """`make install` installs the project (pip install -e .), which puts `batchery` in .venv/bin."""
    command = VENV_BIN / "batchery"
    assert command.exists(), f"{command} is not installed: run make install (pip install -e . --no-deps)"
    done = subprocess.run([str(command), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "Usage: batchery" in done.stdout


def test_logs_prints_the_jobs_story_and_follow_ends_with_the_job(cli, probe_config):
    job_id = cli.submit(body(dict(probe_config, sleep=0.3), [1, {"fail": "always"}, 3], workers=1))
    followed = cli("logs", "probe", job_id, "--follow", "--interval", "0.2")
    assert followed.returncode == 0, followed.stderr
    assert "enqueued 3 items in 3 batches" in followed.stdout
    assert "batch 1: failed (delivery 1)" in followed.stdout
    assert "ValueError: probe failure on delivery 1" in followed.stdout  # the traceback
    assert f"job {job_id} ended: status_completed_with_failures" in followed.stdout
    lines = [json.loads(raw) for raw in cli("-o", "json", "logs", "probe", job_id).stdout.splitlines()]
    assert [line["seq"] for line in lines] == list(range(1, len(lines) + 1))
    assert one_error_line(cli("logs", "probe", "0000000000000000")).startswith("error: job 0000000000000000")


def test_logs_without_follow_prints_every_page_of_a_long_log(cli, probe_config, redis_server):
    """The API sends a job's log a page (1,000 lines) at a time; the CLI reads every page."""
    job_id = cli.submit(body(probe_config, [1], workers=1))
    assert cli("get", "probe", job_id, "--watch", "--interval", "0.1").returncode == 0
    extra = 2500  # the job's own lines, then these: three pages and a bit
    line = {"time": 1764990000.5, "level": "info", "logger": "test", "process": "test:1"}
    JobLog(redis.Redis.from_url(redis_server.url)).write_lines(
        job_id, [dict(line, message=f"extra line {n}") for n in range(extra)]
    )

    lines = [json.loads(raw) for raw in cli.json_lines("logs", "probe", job_id)]
    assert len(lines) > extra and [line["seq"] for line in lines] == list(range(1, len(lines) + 1))
    assert lines[-1]["message"] == f"extra line {extra - 1}"

    text = cli("logs", "probe", job_id)
    assert text.returncode == 0, text.stderr
    assert text.stdout.count("extra line ") == extra and text.stdout.rstrip().endswith(f"extra line {extra - 1}")
