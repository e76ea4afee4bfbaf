"""The signed completion webhook: a job with `webhook: {url}` POSTs one `job.ended` event when it
ends (the finalizer, a stop), signed as Stripe signs (`Batchery-Signature: t=..,v1=..`), with the
same `Batchery-Event-Id` and body on every attempt; a failing target is retried with backoff, through
a restart of the API process, and gets it once it answers; a target that is down does not hold up the
job; BATCHERY_WEBHOOK_DENY_PRIVATE=1 refuses loopback; a webhook without a secret is a 400. The
target is a real HTTP server in the test, the jobs run on real workers."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import http.server
import json
import re
import threading
import time
from pathlib import Path

import pytest
import requests

from app import create_app
from app.jobs import webhook
from app.model import status
from app.store import keys
from tests.conftest import PREDICTORS, Jobs
from tests.services import Gunicorn, free_port, wait_for

API = "minimal"
SECRET = "whsec_test_secret"
ROOT = Path(__file__).resolve().parent.parent


class Receiver:
    """A webhook target: answers each POST with the next of `answers` (then 200), and keeps what it got."""

    def __init__(self, answers: list[int] | None = None, port: int = 0):
        self.answers = list(answers or [])
        self.received: list[tuple[dict, bytes]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(receiver.answers.pop(0) if receiver.answers else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/batchery?source=test"
        self.thread = threading.Thread(target=self.server.serve_forever, name="webhook-receiver", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    target = Receiver()
    yield target
    target.stop()


@pytest.fixture
def make_app(settings, r):
    """An API with a webhook secret and a short backoff (0.2 s, doubling), and no watchdog."""
    made = []

    def make(**overrides):
        options = dict(webhook_secret=SECRET, webhook_backoff_seconds=0.2, watchdog_seconds=0, **overrides)
        app = create_app({"SETTINGS": dataclasses.replace(settings, **options)})
        made.append(app)
        return app

    yield make
    for app in made:
        app.extensions["batchery_webhooks"].stop()
    r.delete(keys.webhook_outbox())  # nothing left due for the next test's sender


@pytest.fixture
def hooked(make_app, worker) -> Jobs:
    return Jobs(make_app().test_client())


def with_webhook(url: str, config: dict | None = None, items: int = 1) -> dict:
    body = {"workers": 1, "item_list": {"items": list(range(items)), "batch_size": 1}, "webhook": {"url": url}}
    return dict(body, config=config) if config else body


def verified(headers: dict, body: bytes, secret: str = SECRET) -> dict:
    """The event, once its signature is checked as a receiver checks it."""
    found = re.fullmatch(r"t=(\d+),v1=([0-9a-f]{64})", headers["batchery-signature"])
    assert found, headers["batchery-signature"]
    timestamp, sent = found.groups()
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(sent, expected)
    assert abs(time.time() - int(timestamp)) < 300
    return json.loads(body)


def webhook_state(jobs: Jobs, job_id: str) -> dict:
    return jobs.status(API, job_id)["webhook"]


def wait_webhook(jobs: Jobs, job_id: str, condition, what: str, timeout: float = 60) -> dict:
    return wait_for(
        lambda: (state := webhook_state(jobs, job_id)) and condition(state) and state,
        timeout=timeout,
        interval=0.1,
        what=what,
    )


def log_lines(jobs: Jobs, job_id: str) -> list[str]:
    answer = jobs.client.get(f"/batch/{API}/logs?jobID={job_id}").get_json()
    return [line["message"] for line in answer["lines"] if line["message"].startswith("webhook")]


@pytest.mark.parametrize("broker", ["redis", "sqs"], indirect=True)
def test_a_job_that_ends_posts_one_signed_job_ended_event(hooked, receiver, broker, probe_config):
    spec = hooked.submit(API, with_webhook(receiver.url, probe_config))
    assert spec["webhook"] == {"url": receiver.url}
    final = hooked.wait_final(API, spec["job_id"])
    assert final["status"] == status.SUCCEEDED
    delivered = wait_webhook(hooked, spec["job_id"], lambda w: w["delivered"], "the webhook to be delivered")
    assert delivered == {"url": receiver.url, "delivered": True, "attempts": 1, "last_error": None}
    assert len(receiver.received) == 1
    headers, body = receiver.received[0]
    event = verified(headers, body)
    assert headers["batchery-event-id"] == f"evt_{spec['job_id']}"
    assert headers["content-type"] == "application/json"
    assert set(event) == {"event", "api_name", "job_id", "job_status"}
    assert (event["event"], event["api_name"], event["job_id"]) == ("job.ended", API, spec["job_id"])
    # the job's status as GET answers it, at its end
    sent = event["job_status"]
    assert sent["status"] == status.SUCCEEDED and sent["batch_metrics"]["succeeded"] == 1
    assert sent["end_time"] == final["end_time"]
    assert log_lines(hooked, spec["job_id"]) == [f"webhook attempt 1 to {receiver.url}: delivered"]


def test_a_failing_target_is_retried_with_backoff_and_the_same_event_until_it_takes_it(hooked, receiver, probe_config):
    receiver.answers = [500, 503]
    spec = hooked.submit(API, with_webhook(receiver.url, probe_config))
    delivered = wait_webhook(hooked, spec["job_id"], lambda w: w["delivered"], "the third attempt to succeed")
    assert delivered == {"url": receiver.url, "delivered": True, "attempts": 3, "last_error": None}
    assert len(receiver.received) == 3
    events = [verified(headers, body) for headers, body in receiver.received]
    assert len({headers["batchery-event-id"] for headers, _ in receiver.received}) == 1
    assert len({body for _, body in receiver.received}) == 1  # the same event, only signed again
    assert events[0]["job_status"]["status"] == status.SUCCEEDED
    assert log_lines(hooked, spec["job_id"]) == [
        f"webhook attempt 1 to {receiver.url} failed: HTTP 500; next attempt in 0.2 s",
        f"webhook attempt 2 to {receiver.url} failed: HTTP 503; next attempt in 0.4 s",
        f"webhook attempt 3 to {receiver.url}: delivered",
    ]


def test_the_event_is_posted_after_on_job_complete_ran(hooked, receiver, probe_config, r):
    config = dict(probe_config, complete_sleep=1.0)  # a slow on_job_complete
    spec = hooked.client.post("/batch/probe", json=with_webhook(receiver.url, config, items=2)).get_json()
    wait_for(lambda: receiver.received, timeout=60, what="the webhook")
    assert r.lrange(f"probe:{probe_config['tag']}:complete", 0, -1) == [spec["job_id"]]  # it had run
    assert verified(*receiver.received[0])["job_status"]["status"] == status.SUCCEEDED


def test_a_stopped_job_posts_its_event_too(hooked, receiver, probe_config):
    body = with_webhook(receiver.url, dict(probe_config, sleep=0.5), items=50)
    spec = hooked.client.post("/batch/probe", json=body).get_json()
    assert hooked.client.delete(f"/batch/probe?jobID={spec['job_id']}").status_code == 200
    wait_for(lambda: receiver.received, timeout=60, what="the stopped job's webhook")
    event = verified(*receiver.received[0])
    assert event["api_name"] == "probe" and event["job_status"]["status"] == status.STOPPED


def test_a_target_that_is_down_does_not_hold_up_the_job_and_gets_the_event_once_up(hooked, probe_config):
    port = free_port()  # nothing listens there yet
    url = f"http://127.0.0.1:{port}/hook"
    spec = hooked.submit(API, with_webhook(url, probe_config))
    final = hooked.wait_final(API, spec["job_id"])
    assert final["status"] == status.SUCCEEDED  # ended, whatever its webhook's target does
    failing = wait_webhook(hooked, spec["job_id"], lambda w: w["attempts"] >= 2, "two failed attempts")
    assert failing["delivered"] is False and "ConnectionRefusedError" in failing["last_error"]
    target = Receiver(port=port)
    try:
        # the backoff doubles from 0.2 s: the next attempt comes within seconds
        wait_webhook(hooked, spec["job_id"], lambda w: w["delivered"], "delivery once the target is up")
        assert [verified(*received)["job_id"] for received in target.received] == [spec["job_id"]]
    finally:
        target.stop()


def test_a_webhook_is_given_up_after_the_retry_seconds(make_app, worker, r, probe_config):
    jobs = Jobs(make_app(webhook_retry_seconds=1.0).test_client())
    spec = jobs.submit(API, with_webhook(f"http://127.0.0.1:{free_port()}/hook", probe_config))
    wait_for(lambda: any("giving up" in line for line in log_lines(jobs, spec["job_id"])), timeout=60, what="giving up")
    assert r.zscore(keys.webhook_outbox(), spec["job_id"]) is None
    assert webhook_state(jobs, spec["job_id"])["delivered"] is False


def test_deny_private_refuses_a_loopback_target(make_app, worker, receiver, probe_config):
    jobs = Jobs(make_app(webhook_deny_private=True).test_client())
    spec = jobs.submit(API, with_webhook(receiver.url, probe_config))
    refused = wait_webhook(jobs, spec["job_id"], lambda w: w["attempts"] >= 1, "an attempt")
    assert refused["delivered"] is False
    assert refused["last_error"] == (
        "refused: 127.0.0.1 resolves to 127.0.0.1, a loopback address, which BATCHERY_WEBHOOK_DENY_PRIVATE=1 refuses"
    )
    assert receiver.received == []


@pytest.mark.parametrize(
    "host, kind",
    [("localhost", "loopback"), ("169.254.169.254", "link-local"), ("10.1.2.3", "private"), ("192.168.0.1", "private")],
)
def test_deny_private_names_the_kind_of_address(host, kind):
    with pytest.raises(webhook.WebhookRefused, match=f"a {kind} address"):
        webhook.post(f"http://{host}:9/hook", b"{}", {}, deny_private=True)


def test_an_api_process_killed_mid_retry_still_delivers(worker_env, worker, receiver, tmp_path, probe_config):
    """gunicorn's worker SIGKILLed while the target fails: the new worker goes on from Redis."""
    receiver.answers = [500] * 1000
    env = dict(
        worker_env,
        BATCHERY_APIS=str(PREDICTORS / "cortex.yaml"),
        BATCHERY_WEBHOOK_SECRET=SECRET,
        BATCHERY_WEBHOOK_BACKOFF_SECONDS="0.2",
    )
    api = Gunicorn(env, tmp_path)
    try:
        base = f"{api.url}/batch/{API}"
        spec = requests.post(base, json=with_webhook(receiver.url, probe_config), timeout=30).json()

        def attempts() -> int:
            answer = requests.get(base, params={"jobID": spec["job_id"]}, timeout=30).json()
            return answer["job_status"]["webhook"]["attempts"]

        wait_for(lambda: attempts() >= 2, timeout=60, interval=0.1, what="two failed attempts")
        api.kill_worker()
        failed = attempts()
        receiver.answers = []  # the target is back
        wait_for(
            lambda: requests.get(base, params={"jobID": spec["job_id"]}, timeout=30).json()["job_status"]["webhook"][
                "delivered"
            ],
            timeout=150,
            interval=0.2,
            what="delivery by the new API process",
        )
        assert attempts() > failed
        assert len({headers["batchery-event-id"] for headers, _ in receiver.received}) == 1
        assert verified(*receiver.received[-1])["job_id"] == spec["job_id"]
    finally:
        api.stop()


def test_a_webhook_without_a_secret_or_with_a_bad_url_is_a_400(client):
    body = with_webhook("https://example.com/hook")
    no_secret = client.post(f"/batch/{API}", json=body)  # the suite's API sets no BATCHERY_WEBHOOK_SECRET
    assert no_secret.status_code == 400
    assert no_secret.get_json()["message"] == (
        "webhook: this server cannot sign webhooks (BATCHERY_WEBHOOK_SECRET is not set on the API); "
        "set it, or submit the job without a webhook"
    )
    bad = {
        "ftp://example.com/hook": "webhook.url: must be an http:// or https:// URL",
        "example.com/hook": "webhook.url: must be an http:// or https:// URL",
    }
    for url, message in bad.items():
        answer = client.post(f"/batch/{API}", json=with_webhook(url))
        assert answer.status_code == 400 and answer.get_json()["message"] == message
    answer = client.post(f"/batch/{API}", json=dict(body, webhook={"uri": "https://example.com"}))
    assert answer.status_code == 400
    assert "webhook.url: missing data for required field" in answer.get_json()["message"]


def test_the_readme_verifies_a_signature_in_ten_lines_of_python():
    """The README's receiver-side check, run on a body signed as the sender signs it."""
    readme = (ROOT / "README.md").read_text()
    code = readme.split("<!-- verify-signature -->\n```python\n", 1)[1].split("```", 1)[0]
    assert len(code.strip().splitlines()) <= 10
    namespace: dict = {}
    exec(code, namespace)
    body = b'{"event": "job.ended"}'
    header = webhook.signature(SECRET, int(time.time()), body)
    assert namespace["verify"](body, header, SECRET) is True
    assert namespace["verify"](body + b" ", header, SECRET) is False
    assert namespace["verify"](body, webhook.signature(SECRET, int(time.time()) - 3600, body), SECRET) is False


def test_the_document_offers_a_webhook_only_where_the_server_can_sign_it(make_app, client):
    def submission(answer) -> dict:
        return answer.get_json()["components"]["schemas"]["JobSubmission"]["properties"]

    assert submission(make_app().test_client().get("/openapi.json"))["webhook"]["anyOf"][0] == {
        "$ref": "#/components/schemas/Webhook"
    }
    assert "webhook" not in submission(client.get("/openapi.json"))  # the suite's API has no secret
