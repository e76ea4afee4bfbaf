"""`GET /healthz`: the job store's Redis and the broker, each named when it does not answer."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import pytest

from app import create_app
from app.config import Settings
from tests.services import RedisServer, free_port


def health(settings: Settings) -> tuple[int, dict]:
    response = create_app({"SETTINGS": settings}).test_client().get("/healthz")
    return response.status_code, response.get_json()


def nowhere(password: str = "") -> str:
    """A Redis URL at a port nothing listens on."""
    return f"redis://{':' + password + '@' if password else ''}127.0.0.1:{free_port()}/0"


def test_healthy_when_redis_and_the_broker_answer(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "redis": "ok", "broker": "ok"}


def test_503_naming_redis_when_it_is_down_without_its_password():
    code, body = health(Settings(redis_url=nowhere("s3cret-pw"), apis_file="", watchdog_seconds=0))
    assert code == 503
    assert body["status"] == "unhealthy"
    assert body["redis"].startswith("error: ConnectionError")
    assert body["broker"].startswith("error: ConnectionError")  # the broker is the same Redis
    assert "s3cret-pw" not in str(body)


def test_503_naming_the_broker_alone_when_only_it_is_down(redis_server):
    settings = Settings(redis_url=redis_server.url, broker_url=nowhere(), apis_file="", watchdog_seconds=0)
    code, body = health(settings)
    assert code == 503
    assert body["redis"] == "ok"
    assert body["broker"].startswith("error: ConnectionError")


def sqs_settings(redis_server) -> Settings:
    return Settings(redis_url=redis_server.url, broker_url="sqs://", apis_file="", watchdog_seconds=0)


def test_sqs_broker_is_checked_with_an_sqs_call(redis_server, moto):
    assert health(sqs_settings(redis_server)) == (200, {"status": "ok", "redis": "ok", "broker": "ok"})


def test_sqs_broker_unreachable_is_a_503_naming_the_broker(redis_server, moto, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", f"http://127.0.0.1:{free_port()}")
    code, body = health(sqs_settings(redis_server))
    assert code == 503
    assert body["redis"] == "ok"
    assert body["broker"].startswith("error: EndpointConnectionError")
    assert "testing" not in body["broker"]  # the access key


def test_the_batch_endpoints_answer_a_json_503_when_redis_is_down():
    client = create_app({"SETTINGS": Settings(redis_url=nowhere(), apis_file="", watchdog_seconds=0)}).test_client()
    for response in (client.get("/batch/minimal"), client.delete("/batch/minimal?jobID=x")):
        assert response.status_code == 503
        assert response.get_json() == {
            "kind": "store_unavailable",
            "message": "the job store (Redis) is unavailable: ConnectionError",
        }


def timed_health(app) -> tuple[float, int, dict]:
    started = time.monotonic()
    response = app.test_client().get("/healthz")
    return time.monotonic() - started, response.status_code, response.get_json()


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of this test's own, to stop or kill."""
    server = RedisServer(tmp_path)
    yield server
    with contextlib.suppress(ProcessLookupError):
        os.kill(server.process.pid, signal.SIGCONT)
    server.stop()


def test_a_hung_redis_is_a_503_within_a_second_and_a_half(own_redis):
    app = create_app({"SETTINGS": Settings(redis_url=own_redis.url, apis_file="", watchdog_seconds=0)})
    assert timed_health(app)[1] == 200  # connected before it hangs
    os.kill(own_redis.process.pid, signal.SIGSTOP)  # the process is there, its socket accepts, it answers nothing
    seconds, code, body = timed_health(app)
    print(f"\n/healthz with Redis stopped (SIGSTOP): {code} in {seconds:.2f}s: {body}")
    assert code == 503 and seconds < 1.5
    assert body["redis"].startswith("error: TimeoutError") and body["broker"].startswith("error: TimeoutError")


def test_a_redis_that_is_gone_is_a_503_within_a_second_and_a_half(own_redis):
    app = create_app({"SETTINGS": Settings(redis_url=own_redis.url, apis_file="", watchdog_seconds=0)})
    assert timed_health(app)[1] == 200
    own_redis.process.kill()
    own_redis.process.wait()
    seconds, code, body = timed_health(app)
    print(f"\n/healthz with Redis killed: {code} in {seconds:.2f}s: {body}")
    assert code == 503 and seconds < 1.5
    assert body["redis"].startswith("error: ConnectionError")
