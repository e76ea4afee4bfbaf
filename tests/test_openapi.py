"""`/openapi.json` and `/docs`: every route documented with its errors, and real answers fit the schemas."""

from __future__ import annotations

import json

import pytest
from openapi_spec_validator import validate

from app.web import responses
from app.web.openapi import openapi_path
from app.web.ops import inline_markdown


@pytest.fixture
def document(client) -> dict:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.get_json()


def routes(flask_app) -> list[tuple[str, str]]:
    return [
        (openapi_path(rule.rule), method.lower())
        for rule in flask_app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods - {"HEAD", "OPTIONS"}
    ]


def test_the_document_is_valid_openapi_3(document):
    validate(document)
    assert document["openapi"].startswith("3.")


def test_every_route_is_documented_with_its_errors(flask_app, document):
    """The suite's API sets no token, so no answer is a 401 (tests/test_auth.py: with one)."""
    expected_errors = {
        ("/batch", "get"): {"400", "503"},
        ("/batch/{api_name}", "post"): {"400", "404", "409", "413", "503"},  # 409: Idempotency-Key
        ("/batch/{api_name}", "get"): {"400", "404", "503"},
        ("/batch/{api_name}", "delete"): {"400", "404", "503"},
        ("/batch/{api_name}/logs", "get"): {"400", "404", "503"},
        ("/batch/{api_name}/{job_id}/retry", "post"): {"400", "404", "413", "503"},
        ("/batch/{api_name}/{job_id}/pause", "post"): {"400", "404", "413", "503"},
        ("/batch/{api_name}/{job_id}/resume", "post"): {"400", "404", "413", "503"},
        ("/batch/{api_name}/{job_id}/output", "get"): {"400", "404", "503"},
        ("/", "get"): {"404"},
        ("/jobs/{api_name}/{job_id}", "get"): {"404"},
        ("/batch/{api_name}/{job_id}/throughput", "get"): {"400", "404", "503"},
        ("/batch/{api_name}/{job_id}/dead_letters", "get"): {"400", "404", "503"},
        ("/healthz", "get"): {"503"},
        ("/apis", "post"): {"400", "413", "503"},
        ("/apis", "get"): {"400", "503"},
        ("/apis/{api_name}", "delete"): {"400", "404", "409", "503"},
        ("/metrics", "get"): {"503"},
        ("/openapi.json", "get"): set(),
        ("/docs", "get"): set(),
    }
    found = routes(flask_app)
    assert sorted(found) == sorted(expected_errors)
    error_ref = {"$ref": "#/components/schemas/Error"}
    for path, method in found:
        operation = document["paths"][path][method]
        assert operation["summary"], (path, method)
        codes = {code for code in operation["responses"] if code != "200"}
        assert codes == expected_errors[(path, method)], (path, method)
        assert "content" in operation["responses"]["200"], (path, method)
        for code in codes - ({"503"} if path == "/healthz" else set()):
            assert operation["responses"][code]["content"]["application/json"]["schema"] == error_ref


def test_submission_documents_its_parameters_body_and_dry_run_text(document):
    post = document["paths"]["/batch/{api_name}"]["post"]
    assert {(p["name"], p["in"]) for p in post["parameters"]} == {
        ("api_name", "path"),
        ("dryRun", "query"),
        ("Idempotency-Key", "header"),
    }
    assert post["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/JobSubmission"
    }
    assert set(post["responses"]["200"]["content"]) == {"application/json", "text/plain"}
    submission = document["components"]["schemas"]["JobSubmission"]
    assert submission["required"] == ["workers"]
    assert {"item_list", "file_path_lister", "delimited_files", "sqs_dead_letter_queue"} <= set(
        submission["properties"]
    )
    delete = document["paths"]["/batch/{api_name}"]["delete"]
    assert next(p for p in delete["parameters"] if p["name"] == "jobID")["required"] is True


def test_a_submission_takes_exactly_one_input_and_null_is_not_given(document):
    """What the API checks, the document says: exactly one input, not null; null counts as not given."""
    submission = document["components"]["schemas"]["JobSubmission"]
    assert submission["oneOf"] == [
        {"required": [name], "properties": {name: {"type": "object"}}}
        for name in ("item_list", "file_path_lister", "delimited_files")
    ]
    for name in ("item_list", "file_path_lister", "delimited_files", "sqs_dead_letter_queue"):
        null = submission["properties"][name]["anyOf"][1]
        assert null == {"type": "object", "nullable": True, "enum": [None]}, name  # null only, not any object
    s3_path = document["components"]["schemas"]["S3Source"]["properties"]["s3_paths"]["items"]
    assert s3_path["pattern"] == "^s3://[^/]+"
    job_routes = [("/batch/{api_name}", "get"), ("/batch/{api_name}", "delete"), ("/batch/{api_name}/logs", "get")]
    for path, method in job_routes:
        parameters = {p["name"]: p for p in document["paths"][path][method]["parameters"]}
        assert parameters["jobID"]["schema"]["minLength"] == 1, (path, method)  # ?jobID= is refused
        assert parameters["api_name"]["schema"]["minLength"] == 1


def test_links_lead_from_a_submission_to_its_job_and_from_the_list_to_an_api(document):
    """OpenAPI links: what a client, or a stateful fuzzer, calls next with what an answer holds."""
    operation_ids = {op["operationId"] for ops in document["paths"].values() for op in ops.values()}
    submitted = document["paths"]["/batch/{api_name}"]["post"]["responses"]["200"]["links"]
    assert {link["operationId"] for link in submitted.values()} == {"batch_get_api", "batch_stop", "batch_job_logs"}
    for link in submitted.values():
        assert link["parameters"] == {"api_name": "$request.path.api_name", "jobID": "$response.body#/job_id"}
    listed = document["paths"]["/batch"]["get"]["responses"]["200"]["links"]
    assert {link["operationId"] for link in listed.values()} == {"batch_submit", "batch_get_api"}
    every_link = [*submitted.values(), *listed.values()]
    assert {link["operationId"] for link in every_link} <= operation_ids


def test_docs_page_renders_the_markdown_of_the_descriptions(client):
    page = client.get("/docs").get_data(as_text=True)
    assert "<code>?dryRun=true</code> only validates" in page  # the submission's docstring
    assert "<code>{kind, message}</code>" in page  # the document's description
    assert "`" not in page  # no Markdown left raw
    assert 'then: <a href="#batch_get_api" title="the job&#39;s status">GetJobStatus</a>' in page  # the links


def test_the_markdown_of_a_description_cannot_inject_html():
    assert inline_markdown("`a` <script>alert(1)</script> *b*") == (
        "<code>a</code> &lt;script&gt;alert(1)&lt;/script&gt; <em>b</em>"
    )
    assert inline_markdown(None) == ""


def test_docs_page_renders_every_endpoint_and_schema(client, flask_app, document):
    response = client.get("/docs")
    assert response.status_code == 200
    assert response.content_type.startswith("text/html")
    page = response.get_data(as_text=True)
    assert "<script" not in page and "http" not in page.split("<body>")[1]  # self-contained: no CDN
    for path, method in routes(flask_app):
        assert f'id="{document["paths"][path][method]["operationId"]}"' in page
        assert f'<span class="path">{path}</span>' in page
    for name in document["components"]["schemas"]:
        assert f'id="schema-{name}"' in page
    assert "413" in page and "body over 10 MiB" in page


def test_real_answers_fit_their_response_schemas(client, probe_config):
    """Loading with marshmallow's default (unknown fields raise) checks no field is undocumented."""
    # a job that runs ~40 s unless stopped, so that it is still running when it is stopped
    config = dict(probe_config, sleep=0.2)
    body = {"workers": 1, "timeout": 60, "item_list": {"items": list(range(200)), "batch_size": 1}, "config": config}
    submitted = client.post("/batch/probe", data=json.dumps(body))
    assert submitted.status_code == 200
    spec = responses.JobSpecSchema().load(submitted.get_json())
    job_id = spec["job_id"]
    stopped = client.delete(f"/batch/probe?jobID={job_id}")
    assert responses.StopResponseSchema().load(stopped.get_json()) == {"message": f"stopped job {job_id}"}
    status = responses.JobStatusResponseSchema().load(client.get(f"/batch/probe?jobID={job_id}").get_json())
    assert status["job_status"]["status"] == "status_stopped"
    listed = responses.ApiJobsResponseSchema().load(client.get("/batch/probe").get_json())
    assert job_id in [job["job_id"] for job in listed["batch_job_statuses"]]
    again = client.delete(f"/batch/probe?jobID={job_id}")
    assert again.status_code == 400
    responses.ErrorSchema().load(again.get_json())
    responses.HealthSchema().load(client.get("/healthz").get_json())
    apis = responses.ApisResponseSchema().load(client.get("/batch").get_json())
    assert "probe" in [api["name"] for api in apis["apis"]]
