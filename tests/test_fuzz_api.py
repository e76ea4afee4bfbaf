"""The HTTP API fuzzed from its own OpenAPI document.

First in-process through the WSGI app: every operation of `/openapi.json`, with valid and invalid
inputs: no answer is a 5xx, every 4xx is the JSON error `{"kind", "message"}`, and every answer
conforms to the document. Bounded and derandomized, so it is quick and the same on every run.
Submissions are always dry runs (nothing reaches the broker), and `api_name` is most often a
deployed API, so that the fuzzer gets past the 404 to the validation of the body.

(schemathesis's own pytest plugin, `from_fixture(...).parametrize()`, does not run on pytest 9.2,
hence plain hypothesis over each operation's strategy.)

Then as an outside fuzzer reads it: `schemathesis run --checks all` over real HTTP, every phase
(the stateful one follows the document's links from a submission to its job's status, stop and
log), with and without a token.
"""

from __future__ import annotations

import dataclasses
import subprocess
import uuid

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from app import create_app
from app.web.schemas import SOURCES
from tests.services import ROOT, VENV_BIN, served

DEPLOYED = ["minimal", "probe"]  # tests/predictors/cortex.yaml
EXAMPLES = 100  # per operation and generation mode


TOKEN = "fuzz-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def api_schema(settings):
    """The document of an API that asks for a token (as compose runs it), so that schemathesis also
    checks that made-up credentials are refused; the cases themselves carry the right token."""
    app = create_app({"SETTINGS": dataclasses.replace(settings, api_token=TOKEN, watchdog_seconds=0)})
    return schemathesis.openapi.from_wsgi("/openapi.json", app, headers=AUTH)


def cases(operation, mode: GenerationMode) -> st.SearchStrategy:
    """The operation's cases; with an `api_name`, two in three name a deployed API; a POST is a dry run."""
    query = {"dryRun": "true"} if operation.method.upper() == "POST" else None
    names = [p.name for p in operation.path_parameters]
    strategies = [operation.as_strategy(generation_mode=mode, query=query)]
    # DELETE /apis/<api_name> undeploys: never the deployed APIs the other tests share (404s and 409s are fuzzed)
    if "api_name" in names and operation.label != "DELETE /apis/{api_name}":
        strategies += [
            operation.as_strategy(generation_mode=mode, query=query, path_parameters={"api_name": name})
            for name in DEPLOYED
        ]
    if operation.method.upper() == "POST" and mode is GenerationMode.POSITIVE:
        # More bodies with one source only, so that more pass the validation to the dry run.
        strategies.append(st.tuples(strategies[-1], st.sampled_from(SOURCES)).map(lambda pair: one_source(*pair)))
    return st.one_of(strategies)


def one_source(case, source: str):
    if isinstance(case.body, dict) and source in case.body:
        case.body = {key: value for key, value in case.body.items() if key == source or key not in SOURCES}
    return case


def check(response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if 400 <= response.status_code < 500:
        content_type = {name.lower(): value for name, value in response.headers.items()}.get("content-type", [""])
        assert content_type[0].startswith("application/json"), response.headers
        body = response.json()
        assert isinstance(body, dict) and set(body) == {"kind", "message"}, body
        assert isinstance(body["kind"], str) and body["kind"]
        assert isinstance(body["message"], str) and body["message"]


def fuzz(operation, mode: GenerationMode) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=5000,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases(operation, mode))
    def run(case):
        note(case.as_curl_command())
        response = case.call(headers=AUTH)
        check(response)
        # schemathesis's own checks too: answers conform to the document (status codes, content
        # types, bodies), invalid data is rejected. But for "valid data is accepted": the document
        # cannot say that a job's S3 objects must exist (schemathesis.toml says why, for the run below).
        case.validate_response(response, excluded_checks=[positive_data_acceptance], headers=AUTH)

    run()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_no_server_error_and_every_rejection_is_a_json_error(api_schema, mode):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    labels = {operation.label for operation in operations}
    assert {"POST /batch/{api_name}", "GET /batch/{api_name}", "DELETE /batch/{api_name}"} <= labels, labels
    for operation in operations:
        if mode is GenerationMode.NEGATIVE and not (operation.path_parameters or operation.query or operation.body):
            continue  # nothing to make invalid
        try:
            fuzz(operation, mode)
        except Exception as err:
            err.add_note(f"operation: {operation.label} ({mode.value})")
            raise


# `schemathesis run` below: examples per operation and phase, and a fixed seed, so that the run is
# the same every time and takes about 10 s per configuration on a 2-core machine.
RUN_EXAMPLES = 25
RUN_SEED = 20261207


@pytest.fixture(params=["no-token", "token"])
def fuzzed_url(request, settings, redis_server):
    """The API over real HTTP, on a Redis database and a queue of its own: the stateful phase submits
    real jobs (no worker runs them), which no other test should see."""
    redis_url = redis_server.url.rsplit("/", 1)[0] + "/7"
    store = redis.Redis.from_url(redis_url)
    store.flushdb()
    token = TOKEN if request.param == "token" else ""
    queue = f"fuzz-{uuid.uuid4().hex[:8]}"
    own = dataclasses.replace(
        settings, redis_url=redis_url, broker_url="", queue=queue, api_token=token, watchdog_seconds=0
    )
    with served(create_app({"SETTINGS": own}), "fuzzed-api") as url:
        yield url, token
    store.flushdb()


def test_schemathesis_run_with_every_check_finds_nothing(fuzzed_url, tmp_path):
    """The document is the API as it runs: what it allows is accepted, what it forbids refused, its
    `security` is the API's, and its links lead a stateful fuzzer from a submission to its job."""
    url, token = fuzzed_url
    command = [
        str(VENV_BIN / "schemathesis"),
        "--config-file", str(ROOT / "schemathesis.toml"),
        "--no-color",
        "run", f"{url}/openapi.json",
        # use_after_free takes DELETE for a removal; here it is Cortex's stop (schemathesis.toml)
        "--checks", "all", "--exclude-checks", "use_after_free",
        "--max-examples", str(RUN_EXAMPLES), "--seed", str(RUN_SEED),
        "--generation-database", "none",
        "--workers", "1",
        # hypothesis's health checks time the generation of data, not the API: on a busy CI machine
        # they would fail a run that found nothing
        "--suppress-health-check", "all",
    ]  # fmt: skip
    if token:
        command += ["-H", f"Authorization: Bearer {token}"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    report = done.stdout[-6000:] + done.stderr[-2000:]
    assert done.returncode == 0, report
    assert "No issues found" in done.stdout, report
    assert "Stateful" in done.stdout and "API Links" in done.stdout, report
