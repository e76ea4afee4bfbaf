"""BATCHERY_API_TOKEN: every endpoint but /healthz and the documentation needs `Authorization: Bearer <token>`."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from app import create_app
from app.client import BatcheryAPIError, Client
from app.config import Settings
from app.web import auth
from tests.services import ROOT, served

TOKEN = "tok-3f9a1c-do-not-echo"

PROTECTED = [
    ("GET", "/batch"),
    ("GET", "/batch/probe"),
    ("GET", "/batch/probe?jobID=nope"),
    ("POST", "/batch/probe"),
    ("DELETE", "/batch/probe?jobID=nope"),
    ("GET", "/batch/probe/logs?jobID=nope"),
    ("GET", "/metrics"),
    ("GET", "/no/such/route"),  # without the token, not even which routes exist
]
# What a load balancer probes, and what a browser (which sends no bearer token) reads about the API
OPEN = ["/healthz", "/openapi.json", "/docs"]
# The dashboard's HTML shells carry no job data (tests/test_dashboard.py): open too
DASHBOARD_PAGES = ["/", "/jobs/{api_name}/{job_id}"]


@pytest.fixture(scope="module")
def token_app(settings):
    return create_app({"SETTINGS": dataclasses.replace(settings, api_token=TOKEN, watchdog_seconds=0)})


@pytest.fixture
def guarded(token_app):
    return token_app.test_client()


@pytest.fixture(scope="module")
def token_url(token_app) -> str:
    with served(token_app, "token-api") as url:
        yield url


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_the_token_is_read_from_the_environment_and_never_shown():
    settings = Settings.from_env({"BATCHERY_API_TOKEN": TOKEN})
    assert settings.api_token == TOKEN
    assert TOKEN not in repr(settings)
    assert Settings.from_env({}).api_token == ""


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize("headers", [{}, bearer("wrong"), bearer(TOKEN + "x"), {"Authorization": TOKEN}])
def test_a_missing_or_wrong_token_is_a_401(guarded, method, path, headers):
    response = guarded.open(path, method=method, headers=headers, data=b"{}")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    answer = response.get_json()
    assert answer["kind"] == "unauthorized" and "Authorization: Bearer" in answer["message"]
    assert TOKEN not in response.get_data(as_text=True)


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_the_right_token_passes(guarded, method, path):
    response = guarded.open(path, method=method, headers=bearer(TOKEN), data=b"")
    assert response.status_code != 401, response.get_data(as_text=True)
    assert response.status_code in (200, 400, 404)


def test_the_scheme_name_is_case_insensitive(guarded):
    assert guarded.get("/batch", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200


def test_healthz_stays_open_for_load_balancers(guarded):
    response = guarded.get("/healthz")
    assert response.status_code == 200 and response.get_json()["status"] == "ok"


def test_the_comparison_is_constant_time(guarded, monkeypatch):
    seen = []

    def spy(a, b):
        seen.append((a, b))
        return a == b

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    assert guarded.get("/batch", headers=bearer("guess")).status_code == 401
    assert seen == [(b"guess", TOKEN.encode())]


def test_without_a_token_setting_nothing_is_asked(client):
    assert client.get("/batch").status_code == 200


@pytest.mark.parametrize("path", OPEN)
def test_the_documentation_stays_open_so_that_a_browser_can_read_it(guarded, path):
    response = guarded.get(path)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert TOKEN not in response.get_data(as_text=True)


def test_with_a_token_the_document_declares_the_bearer_scheme(guarded):
    document = guarded.get("/openapi.json").get_json()
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": auth_description(document),
    }
    assert document["security"] == [{"bearerAuth": []}]
    for path, method in [(path, method) for path, ops in document["paths"].items() for method in ops]:
        operation = document["paths"][path][method]
        if path in OPEN or path in DASHBOARD_PAGES:
            assert operation["security"] == [] and "401" not in operation["responses"], (path, method)
        else:
            assert "security" not in operation and "401" in operation["responses"], (path, method)


def test_without_a_token_the_document_asks_for_none(client):
    """As the API runs: a document that asked for a token the API does not check would be wrong."""
    document = client.get("/openapi.json").get_json()
    assert "security" not in document and "securitySchemes" not in document.get("components", {})
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert "security" not in operation and "401" not in operation["responses"], (path, method)
    assert "asks for no token" in document["info"]["description"]


def auth_description(document: dict) -> str:
    description = document["components"]["securitySchemes"]["bearerAuth"]["description"]
    assert "BATCHERY_API_TOKEN" in description
    return description


def test_the_client_sends_the_token(token_url, monkeypatch):
    monkeypatch.delenv("BATCHERY_API_TOKEN", raising=False)
    assert isinstance(Client(token_url, token=TOKEN).list_apis(), list)
    with pytest.raises(BatcheryAPIError) as raised:
        Client(token_url).list_apis()
    assert raised.value.status == 401 and raised.value.kind == "unauthorized"
    assert TOKEN not in str(raised.value)


def test_the_client_reads_the_token_from_the_environment_as_the_cli_does(token_url, monkeypatch):
    monkeypatch.setenv("BATCHERY_API_TOKEN", TOKEN)
    assert isinstance(Client(token_url).list_apis(), list)
    with pytest.raises(BatcheryAPIError) as raised:  # an explicit token wins over the environment's
        Client(token_url, token="wrong").list_apis()
    assert raised.value.status == 401


def cli(url: str, *args: str, token: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, BATCHERY_URL=url)
    env.pop("BATCHERY_API_TOKEN", None)
    if token is not None:
        env["BATCHERY_API_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_the_cli_reads_the_token_from_the_environment_or_token(token_url):
    from_env = cli(token_url, "-o", "json", "get", token=TOKEN)
    assert from_env.returncode == 0, from_env.stderr
    assert "probe" in {api["name"] for api in json.loads(from_env.stdout)["apis"]}
    for args in (["--token", TOKEN, "get"], ["get", "--token", TOKEN]):
        done = cli(token_url, *args)
        assert done.returncode == 0, done.stderr
    refused = cli(token_url, "get")
    assert refused.returncode == 1
    assert "BATCHERY_API_TOKEN" in refused.stderr and "--token" in refused.stderr
    wrong = cli(token_url, "get", token="nope")
    assert wrong.returncode == 1 and TOKEN not in wrong.stderr
