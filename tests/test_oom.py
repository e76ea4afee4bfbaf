"""Pool processes killed by the kernel's OOM killer, for real: a worker in a memory cgroup with a
limit, and a probe batch that allocates far more than it. A plain SIGKILL in the same setup is
not taken for an OOM kill."""

from __future__ import annotations

import dataclasses

import pytest

from app import create_app
from app.model import status
from tests.cgroups import MemoryCgroup
from tests.conftest import Jobs
from tests.services import Worker
from workers.oom import OomCounter, counter_file, is_sigkill, read_oom_kills

LIMIT_MIB = 400  # a worker with 2 pool processes takes well under this; the probe's hog takes 1 GiB


@pytest.fixture(scope="module")
def cgroup():
    group = MemoryCgroup(LIMIT_MIB)
    yield group
    group.remove()


@pytest.fixture(scope="module")
def oom_stack(cgroup, settings, worker_env, tmp_path_factory):
    """A worker of its own inside the cgroup, on a queue of its own, and an API publishing to it."""
    queue = f"{settings.queue}-oom"
    worker = Worker(
        dict(worker_env, BATCHERY_QUEUE=queue),
        tmp_path_factory.mktemp("oom"),
        "oom",
        concurrency=2,
        wrapper=cgroup.wrapper(),
    )
    try:
        assert worker.process.pid in cgroup.pids()
        assert set(worker.children()) <= set(cgroup.pids())
        yield Jobs(create_app({"SETTINGS": dataclasses.replace(settings, queue=queue)}).test_client()), worker
    finally:
        worker.stop()


def dlq(name: str, count: int) -> dict:
    return {"arn": f"arn:aws:sqs:us-east-1:123456789012:{name}", "max_receive_count": count}


def letters(flask_app, arn: str) -> list[dict]:
    return flask_app.extensions["batchery"].dead_letters.read(arn)


def test_a_batch_killed_for_memory_every_time_ends_the_job_worker_oom(oom_stack, cgroup, flask_app, probe_config):
    jobs, worker = oom_stack
    kills_before = cgroup.oom_kills()
    queue = dlq(f"oom-{probe_config['tag']}", 2)
    spec = jobs.submit(
        "probe",
        {
            "workers": 2,
            "sqs_dead_letter_queue": queue,
            "config": probe_config,
            "item_list": {"items": [1, {"oom": "always"}, 3], "batch_size": 1},
        },
    )
    job = jobs.wait_final("probe", spec["job_id"], timeout=180)
    assert job["status"] == status.WORKER_OOM, job
    assert "batch 1 " in job["message"]
    assert "killed the worker running it for memory" in job["message"]
    assert "smaller batch_size" in job["message"] and "more memory" in job["message"]
    assert job["batch_metrics"]["succeeded"] == 2
    assert job["batch_metrics"]["failed"] == 2  # both deliveries of batch 1 died
    assert cgroup.oom_kills() - kills_before == 2  # the kernel really killed both
    found = letters(flask_app, queue["arn"])
    assert [letter["batch_id"] for letter in found] == ["1"]
    assert "killed for memory" in found[0]["error"]
    assert "2 of its 2 deliveries" in found[0]["error"]
    assert worker.process.poll() is None  # the worker's main process survived; it forked new children


def test_a_plain_sigkill_in_the_same_cgroup_is_not_an_oom(oom_stack, cgroup, flask_app, probe_config):
    jobs, _ = oom_stack
    kills_before = cgroup.oom_kills()
    queue = dlq(f"kill-{probe_config['tag']}", 2)
    spec = jobs.submit(
        "probe",
        {
            "workers": 2,
            "sqs_dead_letter_queue": queue,
            "config": probe_config,
            "item_list": {"items": [{"kill": "always"}, 2], "batch_size": 1},
        },
    )
    job = jobs.wait_final("probe", spec["job_id"], timeout=180)
    assert job["status"] == status.COMPLETED_WITH_FAILURES, job
    assert "message" not in job
    assert job["batch_metrics"]["failed"] == 2
    assert cgroup.oom_kills() == kills_before
    found = letters(flask_app, queue["arn"])
    assert [letter["batch_id"] for letter in found] == ["0"]
    assert "died" in found[0]["error"] and "memory" not in found[0]["error"]


def test_a_batch_killed_for_memory_once_then_succeeding_ends_succeeded(oom_stack, cgroup, r, probe_config):
    jobs, _ = oom_stack
    kills_before = cgroup.oom_kills()
    spec = jobs.submit(
        "probe",
        {
            "workers": 2,
            "sqs_dead_letter_queue": dlq(f"once-{probe_config['tag']}", 3),
            "config": probe_config,
            "item_list": {"items": [{"oom": 1}, 2], "batch_size": 1},
        },
    )
    job = jobs.wait_final("probe", spec["job_id"], timeout=180)
    assert job["status"] == status.SUCCEEDED, job
    assert job["batch_metrics"]["succeeded"] == 2
    assert job["batch_metrics"]["failed"] == 1  # the delivery the kernel killed
    assert cgroup.oom_kills() - kills_before == 1
    assert r.hget(f"probe:{probe_config['tag']}:deliveries:{spec['job_id']}", "0") == "2"


def test_without_dead_letter_queue_a_batch_killed_for_memory_three_times_ends_worker_oom(oom_stack, probe_config):
    jobs, _ = oom_stack
    config = dict(probe_config, complete_raises=True)  # worker_error too: worker_oom is stronger
    spec = jobs.submit(
        "probe", {"workers": 1, "config": config, "item_list": {"items": [{"oom": "always"}], "batch_size": 1}}
    )
    job = jobs.wait_final("probe", spec["job_id"], timeout=180)
    assert job["status"] == status.WORKER_OOM, job
    assert job["batch_metrics"] == {"succeeded": 0, "failed": 3, "average_time_per_batch": None}
    assert job["message"].startswith("batch 0 failed for good")
    assert job["message"].endswith("; on_job_complete raised RuntimeError: on_job_complete exploded")


def test_the_worker_reads_the_oom_counter_of_its_own_memory_cgroup(oom_stack, cgroup):
    _, worker = oom_stack
    path, kind = counter_file(worker.process.pid)
    assert (path, kind) == (cgroup.counter, f"cgroup {cgroup.version}")
    assert f"OOM kills are read from {path} ({kind})" in worker.output()  # found at start


def test_each_oom_kill_is_given_to_one_lost_delivery_at_most(tmp_path):
    events = tmp_path / "memory.oom_control"
    events.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    counter = OomCounter(events, "cgroup v1")
    assert read_oom_kills(events) == 3
    first, second = counter.read(), counter.read()  # two batches arrive
    assert not counter.claim(first)  # lost with no OOM kill since its batch arrived: a plain SIGKILL
    events.write_text("oom_kill 4\n")
    late = counter.read()
    assert counter.claim(first)  # the one OOM kill in its window...
    assert not counter.claim(second)  # ...is not given to a second delivery lost at the same time
    assert not counter.claim(late)  # nor to one that arrived after it
    events.write_text("oom_kill 6\n")
    assert counter.claim(second) and counter.claim(late) and not counter.claim(first)
    assert not counter.claim(None)


def test_only_a_sigkill_is_taken_for_a_possible_oom_kill():
    from billiard.exceptions import WorkerLostError

    assert is_sigkill(WorkerLostError("Worker exited prematurely: signal 9 (SIGKILL) Job: 3."))
    assert not is_sigkill(WorkerLostError("Worker exited prematurely: signal 15 (SIGTERM) Job: 3."))
    assert not is_sigkill(WorkerLostError("Worker exited prematurely: exitcode 1."))
    assert not is_sigkill(ValueError("signal 9"))
