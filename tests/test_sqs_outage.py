"""A worker on the SQS broker lives through SQS not answering (workers/kombu_patches/sqs_receive.py): a real
worker against a moto server that stops, then comes back on the same port."""

from __future__ import annotations

import dataclasses
import uuid

from app import create_app
from app.model import status
from tests.conftest import Jobs
from tests.services import MotoServer, TcpProxy, Worker, wait_for


def test_a_worker_lives_through_an_sqs_outage_and_takes_jobs_after_it(
    settings, worker_env, tmp_path, probe_config, monkeypatch
):
    """kombu handed the receive callback a list when SQS failed a poll, and the AttributeError
    stopped the whole worker for good: jobs submitted after the outage waited forever."""
    # The outage is a proxy in front of moto going away: a moto server restarted would come back
    # without the queue, and a worker polling before the API declares it again dies on
    # QueueDoesNotExist (a test artifact, and a race the test lost on a loaded machine).
    moto = MotoServer(tmp_path)
    sqs = TcpProxy(moto.port)
    queue = f"outage-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", sqs.url)  # this app's broker: the server that goes away
    env = {**worker_env, "BROKER_URL": "sqs://", "BATCHERY_QUEUE": queue, "AWS_ENDPOINT_URL_SQS": sqs.url}
    env.update(BATCHERY_SQS_QUEUE_PREFIX="outage-", BATCHERY_SQS_VISIBILITY_TIMEOUT="30")
    quick = dataclasses.replace(settings, broker_url="sqs://", queue=queue, sqs_queue_prefix="outage-")
    worker = Worker(env, tmp_path, queue, concurrency=1)
    app = create_app({"SETTINGS": quick})
    try:
        sqs.stop()
        polled = lambda: "SQS did not answer a receive" in worker.output()  # noqa: E731
        wait_for(lambda: polled() or worker.process.poll() is not None, 60, what="a poll to fail")
        assert worker.process.poll() is None, worker.output()[-3000:]  # it died here
        sqs = TcpProxy(moto.port, port=sqs.port)
        jobs = Jobs(app.test_client())
        spec = jobs.submit(
            "probe", {"workers": 1, "config": probe_config, "item_list": {"items": [1, 2], "batch_size": 1}}
        )
        assert jobs.wait_final("probe", spec["job_id"])["status"] == status.SUCCEEDED
    finally:
        app.extensions["batchery_watchdog"].stop()
        worker.stop()
        sqs.stop()
        moto.stop()
