"""app.client over real HTTP: the API served on a free port, jobs run by the real worker processes."""

from __future__ import annotations

import pytest

from app.client import BatcheryAPIError, BatcheryConnectionError, Client
from app.config import client_env
from app.model import status
from tests.services import free_port, wait_for


@pytest.fixture
def api(live_url, worker) -> Client:
    return Client(live_url, timeout=10)


def job_body(probe_config: dict, items: list, workers: int = 2, **config) -> dict:
    return {"workers": workers, "item_list": {"items": items, "batch_size": 1}, "config": dict(probe_config, **config)}


def long_job(probe_config: dict) -> dict:
    """A job that runs for 40 s unless stopped; stopped, it frees its worker process within 0.2 s."""
    return job_body(probe_config, list(range(200)), workers=1, sleep=0.2)


def test_submit_wait_get_job_and_list_jobs(api, probe_config):
    spec = api.submit("probe", job_body(probe_config, [1, 2, 3]))
    assert spec["api_name"] == "probe" and len(spec["job_id"]) == 16

    final = api.wait("probe", spec["job_id"], timeout=60, poll=0.05)
    assert final["status"] == status.SUCCEEDED
    assert final["batch_metrics"]["succeeded"] == 3

    answer = api.get_job("probe", spec["job_id"])
    assert answer["job_status"] == final
    assert answer["endpoint"] == f"{api.base_url}/batch/probe"
    assert answer["api_spec"]["name"] == "probe"

    assert spec["job_id"] in [job["job_id"] for job in api.list_jobs("probe")]
    listing = api.get_api("probe")
    assert listing["spec"]["name"] == "probe" and listing["endpoint"] == answer["endpoint"]


def test_wait_returns_a_failed_final_status(api, probe_config):
    spec = api.submit("probe", job_body(probe_config, [1, {"fail": "always"}]))
    final = api.wait("probe", spec["job_id"], timeout=60, poll=0.05)
    assert final["status"] == status.COMPLETED_WITH_FAILURES
    assert (final["batch_metrics"]["succeeded"], final["batch_metrics"]["failed"]) == (1, 1)


def test_wait_times_out_naming_the_job_and_its_last_status(api, probe_config):
    spec = api.submit("probe", long_job(probe_config))
    try:
        with pytest.raises(TimeoutError) as raised:
            api.wait("probe", spec["job_id"], timeout=0.2, poll=0.05)
        message = str(raised.value)
        assert spec["job_id"] in message and "probe" in message
        assert "status_running" in message or "status_enqueuing" in message
    finally:
        api.stop_job("probe", spec["job_id"])


def test_stop_job_then_stopping_again_is_an_api_error(api, probe_config):
    spec = api.submit("probe", long_job(probe_config))
    assert api.stop_job("probe", spec["job_id"]) == {"message": f"stopped job {spec['job_id']}"}
    assert api.get_job("probe", spec["job_id"])["job_status"]["status"] == status.STOPPED
    with pytest.raises(BatcheryAPIError) as raised:
        api.stop_job("probe", spec["job_id"])
    assert (raised.value.status, raised.value.kind) == (400, "job_not_running")
    assert "already ended with status_stopped" in raised.value.message


def test_dry_run_answers_text_and_creates_no_job(api, probe_config):
    before = [job["job_id"] for job in api.list_jobs("probe")]
    assert api.submit("probe", job_body(probe_config, [1]), dry_run=True) == "validations passed"
    assert [job["job_id"] for job in api.list_jobs("probe")] == before


def test_api_errors_carry_status_kind_and_a_one_line_message(api):
    with pytest.raises(BatcheryAPIError) as raised:
        api.get_job("nope", "0")
    err = raised.value
    assert (err.status, err.kind) == (404, "api_not_found")
    assert err.message.startswith("api nope is not deployed (deployed: ")
    assert str(err) == f"{err.message} (api_not_found, HTTP 404)" and "\n" not in str(err)

    with pytest.raises(BatcheryAPIError) as raised:
        api.get_job("probe", "nosuchjob")
    assert (raised.value.status, raised.value.kind) == (404, "job_not_found")

    with pytest.raises(BatcheryAPIError) as raised:
        api.submit("probe", {"workers": 0, "item_list": {"items": [], "batch_size": 1}})
    assert raised.value.status == 400 and raised.value.kind == "invalid_request"
    assert "workers: must be at least 1" in raised.value.message

    with pytest.raises(BatcheryAPIError) as raised:  # an error of Flask's own routing is JSON too
        api._request("GET", "/nowhere")
    assert raised.value.status == 404 and raised.value.kind == "not_found"


def test_an_unreachable_api_is_a_connection_error_naming_the_url():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(BatcheryConnectionError) as raised:
        Client(url, timeout=5).list_apis()
    assert str(raised.value) == f"cannot reach the Batchery API at {url}: connection refused"


def test_list_apis_counts_jobs_in_progress_and_names_the_latest(api, probe_config):
    """GET /batch: every deployed API, its jobs in progress, its latest job."""
    spec = api.submit("probe", long_job(probe_config))
    try:
        apis = {entry["name"]: entry for entry in api.list_apis()}
        assert {"probe", "minimal"} <= set(apis)
        probe = apis["probe"]
        assert probe["endpoint"] == f"{api.base_url}/batch/probe"
        assert probe["running_jobs"] >= 1
        assert probe["latest_job"]["job_id"] == spec["job_id"]
        assert probe["latest_job"]["status"] in (status.ENQUEUING, status.RUNNING)
    finally:
        api.stop_job("probe", spec["job_id"])

    def stopped_is_latest():
        probe = {entry["name"]: entry for entry in api.list_apis()}["probe"]
        return probe if probe["latest_job"] == {"job_id": spec["job_id"], "status": status.STOPPED} else None

    wait_for(stopped_is_latest, timeout=10, what="the stopped job to show as the latest")


def test_the_client_environment_has_one_rule_for_url_token_and_job_store():
    assert client_env({}) == client_env({"BATCHERY_URL": "", "BATCHERY_API_TOKEN": ""})
    defaults = client_env({})
    assert (defaults.url, defaults.token) == ("http://127.0.0.1:8080", "")
    assert defaults.redis_url == "redis://127.0.0.1:6379/0"
    assert client_env({"PORT": "9000", "REDIS_PORT": "6400"}).url == "http://127.0.0.1:9000"
    assert client_env({"PORT": "9000", "REDIS_PORT": "6400"}).redis_url == "redis://127.0.0.1:6400/0"
    given = client_env({"BATCHERY_URL": "http://api:8080", "BATCHERY_API_TOKEN": " s3cret\n", "REDIS_URL": "redis://r/1"})
    assert (given.url, given.token, given.redis_url) == ("http://api:8080", "s3cret", "redis://r/1")
    assert "s3cret" not in repr(given)


def test_client_takes_url_and_token_as_given_else_from_the_environment(monkeypatch):
    monkeypatch.setenv("BATCHERY_URL", "http://from-env:8080/")
    monkeypatch.setenv("BATCHERY_API_TOKEN", "env-token")
    from_env = Client()
    assert from_env.base_url == "http://from-env:8080"
    assert from_env.session.headers["Authorization"] == "Bearer env-token"
    given = Client("http://given:1", token="given-token")
    assert given.base_url == "http://given:1" and given.session.headers["Authorization"] == "Bearer given-token"
    assert "Authorization" not in Client(token="").session.headers  # "" is no token, whatever the environment

    monkeypatch.delenv("BATCHERY_URL")
    monkeypatch.delenv("BATCHERY_API_TOKEN")
    monkeypatch.setenv("PORT", "8123")
    bare = Client()
    assert bare.base_url == "http://127.0.0.1:8123" and "Authorization" not in bare.session.headers
