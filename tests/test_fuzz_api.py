"""The HTTP API fuzzed from its own OpenAPI document (schemathesis, in-process through the WSGI app).

Every operation of `/openapi.json`, with valid and invalid inputs: no answer is a 5xx, every 4xx is
the JSON error `{"kind", "message"}`, and every answer conforms to the document. Bounded and
derandomized, so it is quick and the same on every run. Submissions are always dry runs (nothing
reaches the broker), and `api_name` is most often a deployed API, so that the fuzzer gets past the
404 to the validation of the body.

(schemathesis's own pytest plugin, `from_fixture(...).parametrize()`, does not run on pytest 9.2,
hence plain hypothesis over each operation's strategy.)
"""

from __future__ import annotations

import dataclasses

import pytest
import schemathesis
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from app import create_app
from app.web.schemas import SOURCES

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
    if "api_name" in names:
        strategies += [
            operation.as_strategy(generation_mode=mode, query=query, path_parameters={"api_name": name})
            for name in DEPLOYED
        ]
    if operation.method.upper() == "POST" and mode is GenerationMode.POSITIVE:
        # The document cannot say "exactly one of the three sources": keep one, so some bodies pass.
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
        # cannot say that a job takes exactly one source, or that its S3 objects must exist.
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
