"""Each job's log, through the API, and process logs as JSON lines."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys

import pytest
import redis

from app.model import status
from app.model.job import build_spec, now
from app.store import joblog
from app.store.joblog import JobLog
from tests.services import ROOT, free_port, wait_for


def test_a_jobs_log_tells_its_story_and_follows_from_a_line(client, jobs, worker, probe_config):
    spec = jobs.submit(
        "probe",
        {"workers": 1, "config": probe_config, "item_list": {"items": [1, {"fail": "always"}], "batch_size": 1}},
    )
    assert jobs.wait_final("probe", spec["job_id"])["status"] == status.COMPLETED_WITH_FAILURES
    body = client.get(f"/batch/probe/logs?jobID={spec['job_id']}").get_json()
    messages = [line["message"] for line in body["lines"]]
    text = "\n".join(messages)
    for expected in (
        "enqueued 2 items in 2 batches",
        "loading the predictor (probe.py)",
        "predictor ready in",
        "batch 0: started (delivery 1)",
        "probe predicting batch 0",
        "batch 0: succeeded in",
        "batch 1: failed (delivery 1)",
        "running on_job_complete",
        f"job {spec['job_id']} ended: status_completed_with_failures",
    ):
        assert expected in text, f"{expected!r} not in the log:\n{text}"
    ended = [line for line in body["lines"] if " ended: " in line["message"]]
    assert ended == [body["lines"][-1]]  # once, and after on_job_complete's lines
    failed = next(line for line in body["lines"] if line["message"].startswith("batch 1: failed"))
    assert "ValueError: probe failure on delivery 1" in failed["traceback"]
    assert all(line["job_id"] == spec["job_id"] and line["api_name"] == "probe" for line in body["lines"])
    seqs = [line["seq"] for line in body["lines"]]
    assert seqs == sorted(seqs) and body["next"] == seqs[-1]
    later = client.get(f"/batch/probe/logs?jobID={spec['job_id']}&after={seqs[2]}").get_json()
    assert [line["seq"] for line in later["lines"]] == seqs[3:]
    assert later["status"] == status.COMPLETED_WITH_FAILURES


def test_the_log_says_how_a_job_ended_whoever_ended_it(client, flask_app):
    """A stop, a timeout noticed by a reader, an enqueue failure: not only the finalizer's end."""
    services = flask_app.extensions["batchery"]
    api = services.registry.get("minimal")
    t0 = now()
    ends = {
        status.STOPPED: lambda spec: services.store.end(spec, status.STOPPED, "", t0),
        status.TIMED_OUT: lambda spec: services.store.state(spec["job_id"], "minimal", t0 + 2),
        status.ENQUEUE_FAILED: lambda spec: services.store.end(spec, status.ENQUEUE_FAILED, "item 3: bad JSON", t0),
    }
    for final, end in ends.items():
        spec = build_spec(api, {"workers": 1, "timeout": 1, "config": {}}, services.submitter.queue_url, t0)
        services.store.create(spec, api, t0)
        end(spec)
        end(spec)  # a second end, or read, changes nothing: one line
        lines = client.get(f"/batch/minimal/logs?jobID={spec['job_id']}").get_json()["lines"]
        assert len(lines) == 1, lines
        assert lines[0]["message"].startswith(f"job {spec['job_id']} ended: {final}")
        assert lines[0]["job_id"] == spec["job_id"] and lines[0]["api_name"] == "minimal"
        assert lines[0]["time"] >= t0
    assert lines[0]["message"].endswith("ended: status_enqueue_failed (item 3: bad JSON)")


def test_logs_of_an_unknown_job_or_a_bad_after_are_4xx(client):
    assert client.get("/batch/probe/logs?jobID=0000000000000000").status_code == 404
    assert client.get("/batch/probe/logs").status_code == 400


def test_the_log_keeps_only_its_last_lines(redis_server):
    log = JobLog(redis.Redis.from_url(redis_server.url), max_lines=5)
    for n in range(12):
        log.write("bounded-job", {"message": f"line {n}"})
    lines = log.read("bounded-job")
    assert [line["message"] for line in lines] == [f"line {n}" for n in range(7, 12)]
    assert [line["seq"] for line in lines] == list(range(8, 13))


def test_worker_process_logs_are_json_lines_with_the_job(jobs, worker, probe_config):
    spec = jobs.submit("probe", {"workers": 1, "config": probe_config, "item_list": {"items": [1], "batch_size": 1}})
    jobs.wait_final("probe", spec["job_id"])
    mine = []
    for raw in worker.output().splitlines():
        if raw.startswith("{"):
            line = json.loads(raw)
            if line.get("job_id") == spec["job_id"]:
                mine.append(line)
    assert any(line["message"].startswith("batch 0: succeeded") for line in mine)
    assert all(line["api_name"] == "probe" and line["level"] and line["time"].endswith("Z") for line in mine)


def test_what_a_predictor_prints_is_in_its_job_log_and_the_process_log_stays_json(client, jobs, worker, probe_config):
    """print() went to the worker's output raw: not in the job's log, and not a JSON line."""
    config = dict(probe_config, prints=True)
    spec = jobs.submit("probe", {"workers": 1, "config": config, "item_list": {"items": [1, 2], "batch_size": 1}})
    assert jobs.wait_final("probe", spec["job_id"])["status"] == status.SUCCEEDED
    lines = client.get(f"/batch/probe/logs?jobID={spec['job_id']}").get_json()["lines"]
    printed = sorted((line["logger"], line["level"], line["message"]) for line in lines if "probe" in line["message"])
    assert [entry for entry in printed if entry[0] in ("stdout", "stderr")] == [
        ("stderr", "warning", "probe warns on stderr"),
        ("stderr", "warning", "probe warns on stderr"),
        ("stdout", "info", "probe prints batch 0"),
        ("stdout", "info", "probe prints batch 1"),
    ]
    raw = [text for text in worker.output().splitlines() if "probe prints" in text or "probe warns" in text]
    # the worker is shared: other tests' jobs print too (the dashboard's), each line with its own job
    parsed = [json.loads(text) for text in raw]  # every line JSON
    assert all(line.get("job_id") for line in parsed)
    assert len([line for line in parsed if line["job_id"] == spec["job_id"]]) == 4


def test_logged_lines_log_each_line_once_it_ends(caplog):
    from workers.stdio import LoggedLines

    stream = LoggedLines(logging.getLogger("printed"), logging.INFO, io.StringIO())
    with caplog.at_level(logging.INFO, logger="printed"):
        print("a", "b", file=stream)  # four writes: a, the separator, b, the end
        print("no end yet", end="", file=stream)
        assert [record.getMessage() for record in caplog.records] == ["a b"]
        print("; ended", file=stream)
        print("\n\nthree\r\nlines\nin one", file=stream)  # blank lines are not logged; \r\n ends a line
        stream.write("a progress bar 50%\r")
        stream.flush()  # a line begun is logged when flushed
    assert [record.getMessage() for record in caplog.records] == [
        "a b",
        "no end yet; ended",
        "three",
        "lines",
        "in one",
        "a progress bar 50%",
    ]


@pytest.fixture
def background_log(redis_server):
    """A job log written from the background, as workers do, and a logger whose lines go to it."""
    log = JobLog(redis.Redis.from_url(redis_server.url))
    handler = joblog.JobLogHandler(log, background=True)
    logger = logging.getLogger("background-test")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # the shared app's own job-log handler on the root logger would copy them too
    yield log, logger
    logger.removeHandler(handler)


def test_lines_written_in_the_background_are_in_redis_in_order_when_the_task_ends(background_log):
    log, logger = background_log
    with joblog.for_job("api", "background-job"):
        for n in range(50):
            logger.info("line %d", n)
    # for_job waited for the writer: every line is there, numbered in the order logged
    lines = log.read("background-job")
    assert [line["message"] for line in lines] == [f"line {n}" for n in range(50)]
    assert [line["seq"] for line in lines] == list(range(1, 51))


def test_a_line_logged_while_a_long_task_runs_reaches_redis_before_the_task_ends(background_log):
    log, logger = background_log
    with joblog.for_job("api", "long-job"):
        logger.info("still loading the model")
        # the task is still running: the writer thread, not the task's end, wrote it
        lines = wait_for(lambda: log.read("long-job"), timeout=10, what="the line to reach Redis")
        assert [line["message"] for line in lines] == ["still loading the model"]


def test_a_huge_line_is_cut_in_the_job_log(background_log):
    """A print(payload) of 256 KiB batches put whole lines into the shared Redis, up to 10,000 a job."""
    log, logger = background_log
    with joblog.for_job("api", "huge-line-job"):
        logger.info("x" * 100_000)
        try:
            raise ValueError("y" * 100_000)
        except ValueError:
            logger.exception("failed")
    short, failed = log.read("huge-line-job")
    assert (
        short["message"]
        == "x" * joblog.MAX_MESSAGE_CHARS
        + f"... ({100_000 - joblog.MAX_MESSAGE_CHARS} more characters in the worker's process log)"
    )
    assert len(failed["traceback"]) < joblog.MAX_TRACEBACK_CHARS + 100
    assert failed["traceback"].rstrip().endswith("y" * 100)  # its end: what was raised


def test_lines_of_threads_a_task_started_are_in_its_job_log_in_a_worker(background_log, monkeypatch):
    """A new thread does not inherit the task's context: its lines were in no job's log."""
    import threading

    log, logger = background_log
    monkeypatch.setattr(joblog, "_adopt_threads", True)  # as in a worker's pool process (workers/celery_app.py)
    with joblog.for_job("api", "thread-job"):
        thread = threading.Thread(target=lambda: logger.warning("from a thread of the predictor"))
        thread.start()
        thread.join()
    assert [line["message"] for line in log.read("thread-job")] == ["from a thread of the predictor"]


def test_logged_lines_hand_raw_bytes_and_reconfigure_to_the_original_stream():
    from workers.stdio import LoggedLines

    original = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    stream = LoggedLines(logging.getLogger("printed"), logging.INFO, original)
    stream.buffer.write(b"raw bytes")
    stream.reconfigure(line_buffering=True)  # libraries call it on sys.stdout: no AttributeError
    assert original.buffer.getvalue() == b"raw bytes"


WORKER_LOGGING_WITH_REDIS_DOWN = """
import logging, sys, time
import redis
from app.store import joblog
from workers import stdio

from redis.backoff import NoBackoff
from redis.retry import Retry

# no retries: each write fails at once, as the audit's worker's did while its Redis was down
job_log = joblog.JobLog(redis.Redis(host="127.0.0.1", port={port}, retry=Retry(NoBackoff(), 0)))
# as a worker's pool process is set up (workers/celery_app.py)
joblog.configure_process_logging(job_log, "INFO", background=True, stream=stdio.unwrapped(sys.stderr))
stdio.redirect()
joblog.adopt_task_threads()
with joblog.for_job("api", "job1"):
    logging.getLogger("user").warning("a line for the job log")
    time.sleep(3 * joblog.TICK_SECONDS + 1)
"""


def test_lines_lost_with_redis_down_are_said_once_not_turned_into_more_lines(tmp_path):
    """The writer said so on sys.stderr, which a worker logs into the job log: each failure queued
    another line, at full speed (100 MB of worker log in minutes of a Redis outage)."""
    port = free_port()  # nothing listens
    done = subprocess.run(
        [sys.executable, "-c", WORKER_LOGGING_WITH_REDIS_DOWN.format(port=port)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    said = [line for line in done.stderr.splitlines() if "not written" in line]
    assert len(said) == 1, done.stderr[-2000:]
    assert json.loads(said[0])["logger"] == "app.store.joblog"
