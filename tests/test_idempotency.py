"""`Idempotency-Key` on `POST /batch/<api>`: the same key and the same JSON body answer with the job
the first request created (`Idempotent-Replayed: true`) and create no other, also when many requests
with one key arrive at once; another body is a 409; keys are per API; a dry run, or a request that
fails, stores nothing."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import uuid

import pytest
import requests
from click.testing import CliRunner

from app import create_app
from app.cli import main
from app.client import BatcheryAPIError, Client
from app.store import keys
from tests.services import wait_for

API = "minimal"
BODY = {"workers": 1, "item_list": {"items": [1, 2, 3], "batch_size": 2}, "config": {"a": 1, "b": [1, 2]}}


@pytest.fixture(autouse=True)
def _running(worker, probe_config):
    """The jobs these tests create run (and end) on the shared worker, not left in progress for other tests."""
    BODY["config"] = dict(probe_config, b=[1, 2])


def post(client, body: dict | str, key: str | None, api: str = API, query: str = ""):
    data = body if isinstance(body, str) else json.dumps(body)
    headers = {} if key is None else {"Idempotency-Key": key}
    return client.post(f"/batch/{api}{query}", data=data, headers=headers)


def new_key() -> str:
    return f"key-{uuid.uuid4()}"


def job_count(r, api: str = API) -> int:
    return r.zcard(keys.api_jobs(api))


def stored(r, key: str, api: str = API) -> str | None:
    return r.get(keys.idempotency(api, hashlib.sha256(key.encode()).hexdigest()))


@pytest.mark.parametrize("broker", ["redis", "sqs"], indirect=True)
def test_the_same_key_and_json_body_answer_with_the_first_job_and_create_no_other(client, r):
    key, before = new_key(), job_count(r)
    first = post(client, BODY, key)
    assert first.status_code == 200, first.get_json()
    assert "Idempotent-Replayed" not in first.headers
    # the same JSON, serialised again with another key order and whitespace
    again_text = json.dumps(dict(reversed(list(BODY.items()))), indent=3)
    again = post(client, again_text, key)
    assert again.status_code == 200, again.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()  # the first answer: the job's spec
    assert job_count(r) == before + 1
    assert 86_000 < r.ttl(keys.idempotency(API, hashlib.sha256(key.encode()).hexdigest())) <= 86_400
    # no key: a new job each time, as before
    assert post(client, BODY, None).get_json()["job_id"] != first.get_json()["job_id"]


def test_the_same_key_with_another_body_is_a_409_saying_so(client, r):
    key = new_key()
    assert post(client, BODY, key).status_code == 200
    before = job_count(r)
    other = post(client, dict(BODY, workers=2), key)
    assert other.status_code == 409
    assert other.get_json()["kind"] == "idempotency_conflict"
    assert "already used with a different request body" in other.get_json()["message"]
    assert job_count(r) == before


def test_keys_are_per_api(client, r):
    key = new_key()
    mine = post(client, BODY, key, api="minimal")
    theirs = post(client, dict(BODY, workers=2), key, api="probe")
    assert mine.status_code == theirs.status_code == 200
    assert "Idempotent-Replayed" not in theirs.headers
    assert mine.get_json()["job_id"] != theirs.get_json()["job_id"]


def test_a_dry_run_or_a_refused_request_stores_nothing(client, r):
    key = new_key()
    dry = post(client, BODY, key, query="?dryRun=true")
    assert dry.status_code == 200 and dry.get_data(as_text=True) == "validations passed"
    invalid = post(client, {"workers": 0, "item_list": {"items": [1], "batch_size": 1}}, key)
    assert invalid.status_code == 400
    # refused while creating the job: its S3 input matches nothing (the marker is removed again)
    no_match = {
        "workers": 1,
        "file_path_lister": {"s3_paths": [f"s3://no-bucket-{uuid.uuid4().hex[:8]}/x"], "batch_size": 1},
    }
    assert post(client, no_match, key).status_code == 400
    assert stored(r, key) is None
    # so the key is still free: another body creates its job
    created = post(client, dict(BODY, workers=3), key)
    assert created.status_code == 200 and "Idempotent-Replayed" not in created.headers
    assert stored(r, key) is not None


@pytest.mark.parametrize(
    "key, says",
    [
        ("", "(this one has 0 characters)"),
        ("k" * 256, "(this one has 256 characters)"),
        ("tab\there", "not all of them printable ASCII"),
        ("caf\u00e9", "not all of them printable ASCII"),
    ],
    ids=["empty", "too-long", "control", "non-ascii"],
)
def test_a_bad_key_is_a_400_saying_what_a_key_is(client, r, key, says):
    before = job_count(r)
    answer = post(client, BODY, key)
    assert answer.status_code == 400, answer.get_json()
    message = answer.get_json()["message"]
    assert "Idempotency-Key header must be 1 to 255 printable ASCII characters" in message and says in message
    assert job_count(r) == before


def test_concurrent_requests_with_one_key_create_exactly_one_job(live_url, r):
    """20 threads POST the same key at once over real HTTP: one job, 20 answers with it."""
    key, before = new_key(), job_count(r)
    start = threading.Barrier(20)
    answers: list = []

    def submit() -> None:
        start.wait()
        answers.append(
            requests.post(f"{live_url}/batch/{API}", json=BODY, headers={"Idempotency-Key": key}, timeout=120)
        )

    threads = [threading.Thread(target=submit) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(150)
    assert [answer.status_code for answer in answers] == [200] * 20, [answer.text for answer in answers]
    assert len({answer.json()["job_id"] for answer in answers}) == 1
    assert sum(answer.headers.get("Idempotent-Replayed") == "true" for answer in answers) == 19
    assert job_count(r) == before + 1


def test_the_python_client_sends_the_key(live_url, r):
    client, key, before = Client(live_url), new_key(), job_count(r)
    first = client.submit(API, BODY, idempotency_key=key)
    assert client.submit(API, BODY, idempotency_key=key) == first
    assert job_count(r) == before + 1
    with pytest.raises(BatcheryAPIError) as refused:
        client.submit(API, dict(BODY, workers=2), idempotency_key=key)
    assert refused.value.status == 409


def test_the_cli_sends_the_key(live_url, r, tmp_path):
    job_file, key, before = tmp_path / "job.json", new_key(), job_count(r)
    job_file.write_text(json.dumps(BODY))
    args = ["submit", API, str(job_file), "--idempotency-key", key, "--url", live_url]
    first, again = CliRunner().invoke(main, args), CliRunner().invoke(main, args)
    assert first.exit_code == again.exit_code == 0, first.output + again.output
    assert first.output == again.output and len(first.output.strip()) == 16  # the same job id
    assert job_count(r) == before + 1


def test_a_key_answers_with_its_job_for_batchery_idempotency_seconds_only(settings, r):
    app = create_app({"SETTINGS": dataclasses.replace(settings, idempotency_seconds=1, watchdog_seconds=0)})
    client, key = app.test_client(), new_key()
    first = post(client, BODY, key).get_json()
    assert post(client, BODY, key).get_json() == first
    wait_for(lambda: stored(r, key) is None, timeout=30, what="the key to expire")
    later = post(client, BODY, key)
    assert later.status_code == 200 and "Idempotent-Replayed" not in later.headers
    assert later.get_json()["job_id"] != first["job_id"]
