"""`GET /metrics`: Batchery's counts read from the job store, the same from any process."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from dataclasses import replace

import boto3
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app import create_app
from app.config import Settings
from app.model import status
from tests.conftest import PREDICTORS
from tests.services import ROOT, wait_for


def scrape(client) -> dict:
    """`{(sample name, sorted labels): value}` of a `/metrics` answer, parsed as Prometheus does."""
    response = client.get("/metrics")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.content_type.startswith("text/plain; version=")
    return parse(response.get_data(as_text=True))


def parse(text: str) -> dict:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def of_api(samples: dict, api: str) -> dict:
    return {key: value for key, value in samples.items() if ("api", api) in key[1]}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def api(flask_app, tmp_path) -> str:
    """A Batch API of its own (the probe predictor), so that its jobs-per-status counts are exact."""
    name = f"metrics-{uuid.uuid4().hex[:8]}"
    cortex_yaml = tmp_path / "cortex.yaml"
    entry = {"name": name, "kind": "BatchAPI", "predictor": {"type": "python", "path": str(PREDICTORS / "probe.py")}}
    cortex_yaml.write_text(json.dumps([entry]))  # JSON is YAML
    flask_app.extensions["batchery"].registry.deploy_file(cortex_yaml)
    return name


def test_metrics_after_a_job_with_failed_attempts_count_exactly(
    jobs, worker, client, api, dead_letter_queue, probe_config
):
    body = {
        "workers": 2,
        "sqs_dead_letter_queue": {"arn": dead_letter_queue(f"metrics-{probe_config['tag']}"), "max_receive_count": 2},
        "config": probe_config,
        # batch 1 fails both its deliveries (dead-lettered), batch 2 fails once then succeeds
        "item_list": {"items": [1, {"fail": "always"}, {"fail": 1}, 4], "batch_size": 1},
    }
    job_id = jobs.submit(api, body)["job_id"]
    done = jobs.wait_final(api, job_id)
    assert done["status"] == status.COMPLETED_WITH_FAILURES

    samples = scrape(client)
    labels = {"api": api, "job_id": job_id}
    assert value(samples, "batchery_batches_succeeded_total", **labels) == 3
    assert value(samples, "batchery_batch_failed_attempts_total", **labels) == 3
    assert value(samples, "batchery_batches_failed_total", **labels) == 1
    assert value(samples, "batchery_batch_seconds_count", **labels) == 3
    seconds = value(samples, "batchery_batch_seconds_sum", **labels)
    assert seconds == pytest.approx(3 * done["batch_metrics"]["avg_time_per_batch"])
    assert value(samples, "batchery_batches_in_queue", **labels) == 0
    assert value(samples, "batchery_batches", **labels) == 4
    assert not [key for key in samples if key[0] == "batchery_workers" and ("job_id", job_id) in key[1]]
    jobs_by_status = {key: v for key, v in samples.items() if key[0] == "batchery_jobs" and ("api", api) in key[1]}
    assert jobs_by_status == {("batchery_jobs", (("api", api), ("status", status.COMPLETED_WITH_FAILURES))): 1}
    assert value(samples, "batchery_broker_queue_depth", queue=worker_queue(client)) >= 0


def worker_queue(client) -> str:
    return client.application.extensions["batchery"].settings.queue


def test_a_running_job_shows_its_workers_and_a_stopped_one_counts_by_status(jobs, worker, client, api, probe_config):
    body = {"workers": 1, "config": probe_config, "item_list": {"items": [{"sleep": 3}, 2], "batch_size": 1}}
    job_id = jobs.submit(api, body)["job_id"]
    wait_for(lambda: jobs.status(api, job_id)["worker_counts"]["running"] == 1, what="the batch to run")
    samples = scrape(client)
    labels = {"api": api, "job_id": job_id}
    assert value(samples, "batchery_workers", state="running", queue=worker_queue(client), **labels) == 1
    assert value(samples, "batchery_workers", state="initializing", queue=worker_queue(client), **labels) == 0
    assert value(samples, "batchery_workers", state="pending", queue=worker_queue(client), **labels) == 0
    assert value(samples, "batchery_batches_in_queue", **labels) == 2
    assert value(samples, "batchery_jobs", api=api, status=status.RUNNING) == 1

    assert client.delete(f"/batch/{api}?jobID={job_id}").status_code == 200
    samples = scrape(client)
    assert value(samples, "batchery_jobs", api=api, status=status.STOPPED) == 1
    assert ("batchery_jobs", (("api", api), ("status", status.RUNNING))) not in samples
    running = dict(labels, state="running", queue=worker_queue(client))
    assert ("batchery_workers", tuple(sorted(running.items()))) not in samples


def test_every_process_reports_the_same_totals(jobs, worker, client, api, settings, probe_config):
    """The batches ran in 4 worker processes; a second app, and another OS process, read the same counts."""
    job_id = jobs.submit(
        api, {"workers": 4, "config": probe_config, "item_list": {"items": list(range(8)), "batch_size": 1}}
    )["job_id"]
    assert jobs.wait_final(api, job_id)["status"] == status.SUCCEEDED
    here = of_api(scrape(client), api)
    assert value(here, "batchery_batches_succeeded_total", api=api, job_id=job_id) == 8

    second_app = create_app({"SETTINGS": replace(settings, apis_file="", watchdog_seconds=0)})
    assert of_api(scrape(second_app.test_client()), api) == here

    code = "from app import create_app; print(create_app().test_client().get('/metrics').get_data(as_text=True))"
    env = {
        "REDIS_URL": settings.redis_url,
        "BATCHERY_QUEUE": settings.queue,
        "BATCHERY_APIS": "",
        "BATCHERY_WATCHDOG_SECONDS": "0",
    }
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert of_api(parse(out.stdout), api) == here


def test_redis_broker_queue_depth_is_the_length_of_the_queue(redis_server, r):
    queue = f"depth-{uuid.uuid4().hex[:8]}"
    app = create_app({"SETTINGS": Settings(redis_url=redis_server.url, queue=queue, apis_file="", watchdog_seconds=0)})
    assert value(scrape(app.test_client()), "batchery_broker_queue_depth", queue=queue) == 0
    r.rpush(queue, "a", "b", "c")
    assert value(scrape(app.test_client()), "batchery_broker_queue_depth", queue=queue) == 3


def test_broker_queue_depth_covers_every_pool_and_its_control_queue(redis_server, r):
    """A fleet with a dedicated pool: each queue a worker serves, and its control queue, has its depth
    (only the default queue's was exported)."""
    from app.store.pools import Pools

    queue, gpu = f"depth-{uuid.uuid4().hex[:8]}", f"gpu-{uuid.uuid4().hex[:8]}"
    app = create_app({"SETTINGS": Settings(redis_url=redis_server.url, queue=queue, apis_file="", watchdog_seconds=0)})
    Pools(r).serve("w1", [gpu, f"{gpu}-control"], 2)
    r.rpush(gpu, "a", "b")
    r.rpush(f"{gpu}-control", "f")
    samples = scrape(app.test_client())
    assert value(samples, "batchery_broker_queue_depth", queue=queue) == 0
    assert value(samples, "batchery_broker_queue_depth", queue=gpu) == 2
    assert value(samples, "batchery_broker_queue_depth", queue=f"{gpu}-control") == 1
    assert value(samples, "batchery_queue_demand", queue=gpu) == 0
    assert value(samples, "batchery_queue_processes", queue=gpu) == 2


def test_sqs_broker_queue_depth_is_its_approximate_number_of_messages(redis_server, moto):
    queue = f"depth-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        redis_url=redis_server.url,
        broker_url="sqs://",
        sqs_queue_prefix="test-",
        queue=queue,
        apis_file="",
        watchdog_seconds=0,
    )
    client = create_app({"SETTINGS": settings}).test_client()
    # labelled with its name on SQS, prefix included
    assert value(scrape(client), "batchery_broker_queue_depth", queue=f"test-{queue}") == 0  # not created yet
    sqs = boto3.client("sqs")
    url = sqs.create_queue(QueueName=f"test-{queue}")["QueueUrl"]
    for n in range(2):
        sqs.send_message(QueueUrl=url, MessageBody=str(n))
    assert value(scrape(client), "batchery_broker_queue_depth", queue=f"test-{queue}") == 2


def test_metrics_is_a_503_when_redis_is_down():
    from tests.test_health import nowhere

    client = create_app({"SETTINGS": Settings(redis_url=nowhere(), apis_file="", watchdog_seconds=0)}).test_client()
    response = client.get("/metrics")
    assert response.status_code == 503
    assert response.get_json()["kind"] == "store_unavailable"


def test_a_job_past_its_timeout_counts_as_timed_out_at_the_next_scrape(client, api):
    """It counted as running until a status read or the watchdog's sweep noticed its deadline."""
    from app.model.job import build_spec, now

    services = client.application.extensions["batchery"]
    deployed = services.registry.get(api)
    created = now() - 5
    spec = build_spec(deployed, {"workers": 1, "timeout": 1, "config": {}}, services.submitter.queue_url, created)
    services.store.create(spec, deployed, created)  # enqueuing: no batch reaches a worker
    samples = scrape(client)
    assert value(samples, "batchery_jobs", api=api, status=status.TIMED_OUT) == 1
    assert ("batchery_jobs", (("api", api), ("status", status.ENQUEUING))) not in samples
