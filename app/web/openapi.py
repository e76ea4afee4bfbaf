"""The API's OpenAPI 3 document, built with apispec from the marshmallow schemas and the routes.

Each endpoint's summary and errors come from its docstring (`Summary. Errors: 400 why, 404 why.`),
so a new error is documented where it is raised from; what a docstring cannot say (parameters,
bodies, success answers) is in OPERATIONS below, keyed by the Flask rule and method.
"""

from __future__ import annotations

import re

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Flask

from app.web import responses, schemas
from app.web.auth import OPEN_ENDPOINTS

VERSION = "0.1.0"
ERROR = {"application/json": {"schema": "Error"}}
ERRORS_IN_DOCSTRING = re.compile(r"(\d{3}) (.+?)(?=[,;] \d{3} |\.?$)")
PATH_PARAMETER = re.compile(r"<(?:\w+:)?(\w+)>")
BEARER = {
    "type": "http",
    "scheme": "bearer",
    "description": "only when the server sets BATCHERY_API_TOKEN: `Authorization: Bearer <that token>`",
}
UNAUTHORIZED = "no token, or a wrong one (only when the server sets BATCHERY_API_TOKEN)"

API_NAME = {"name": "api_name", "in": "path", "required": True, "schema": {"type": "string"}}


def job_id(required: bool, description: str) -> dict:
    """The OpenAPI description of the `jobID` query parameter."""
    return {
        "name": "jobID",
        "in": "query",
        "required": required,
        "schema": {"type": "string", "minLength": 1} if required else {"type": "string"},
        "description": description,
    }


def json_answer(description: str, schema: str | dict) -> dict:
    """An OpenAPI response with a JSON body of the given schema."""
    return {"description": description, "content": {"application/json": {"schema": schema}}}


OPERATIONS: dict[tuple[str, str], dict] = {
    ("/batch", "get"): {
        "responses": {"200": json_answer("the deployed APIs, their jobs in progress and latest job", "ApisResponse")},
    },
    ("/batch/<api_name>", "post"): {
        "parameters": [
            API_NAME,
            {
                "name": "dryRun",
                "in": "query",
                "required": False,
                "schema": {"type": "boolean", "default": False},
                "description": "only validate: answer with the S3 files that would be processed, create nothing",
            },
        ],
        "requestBody": {
            "required": True,
            "description": "the job, at most 10 MiB; exactly one of item_list, file_path_lister, delimited_files",
            "content": {"application/json": {"schema": "JobSubmission"}},
        },
        "responses": {
            "200": {
                "description": "the job's spec; with dryRun=true, text: one s3://bucket/key a line, then "
                "`validations passed`",
                "content": {
                    "application/json": {"schema": "JobSpec"},
                    "text/plain": {"schema": {"type": "string"}, "example": "s3://bucket/a.json\nvalidations passed"},
                },
            }
        },
    },
    ("/batch/<api_name>", "get"): {
        "parameters": [API_NAME, job_id(False, "a job of the API: answer with its status")],
        "responses": {
            "200": json_answer(
                "with jobID, the job's status; without, the API and its jobs",
                {"oneOf": ["JobStatusResponse", "ApiJobsResponse"]},
            )
        },
    },
    ("/batch/<api_name>", "delete"): {
        "parameters": [API_NAME, job_id(True, "the job to stop")],
        "responses": {"200": json_answer("the job stopped: no batch of it starts any more", "StopResponse")},
    },
    ("/batch/<api_name>/logs", "get"): {
        "parameters": [
            API_NAME,
            job_id(True, "the job whose log to read"),
            {
                "name": "after",
                "in": "query",
                "required": False,
                "schema": {"type": "integer", "default": 0},
                "description": "the number of the last line you have: only the lines after it are sent",
            },
        ],
        "responses": {"200": json_answer("the job's log lines after `after`, oldest first", "JobLogsResponse")},
    },
    ("/healthz", "get"): {
        "responses": {
            "200": json_answer("Redis and the broker answer", "Health"),
            "503": json_answer("Redis or the broker does not answer: each is `ok` or `error: ...`", "Health"),
        },
    },
    ("/metrics", "get"): {
        "responses": {
            "200": {
                "description": "Prometheus text format",
                "content": {"text/plain; version=0.0.4": {"schema": {"type": "string"}}},
            }
        },
    },
    ("/openapi.json", "get"): {
        "responses": {"200": json_answer("this document", {"type": "object"})},
    },
    ("/docs", "get"): {
        "responses": {"200": {"description": "an HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}},
    },
}

SCHEMAS = {
    "JobSubmission": schemas.JobSubmissionSchema,
    "JobSpec": responses.JobSpecSchema,
    "JobStatusResponse": responses.JobStatusResponseSchema,
    "ApiJobsResponse": responses.ApiJobsResponseSchema,
    "StopResponse": responses.StopResponseSchema,
    "ApisResponse": responses.ApisResponseSchema,
    "JobLogsResponse": responses.JobLogsResponseSchema,
    "Error": responses.ErrorSchema,
    "Health": responses.HealthSchema,
}


def openapi_path(rule: str) -> str:
    """`/batch/<api_name>` -> `/batch/{api_name}`."""
    return PATH_PARAMETER.sub(r"{\1}", rule)


def docstring_parts(doc: str | None) -> tuple[str, dict[str, str]]:
    """(summary, {status code: why}) from a `Summary. Errors: 400 why, 404 why.` docstring.

    `;` may separate the codes too.
    """
    text = " ".join((doc or "").split())
    summary, _, errors = text.partition("Errors:")
    return summary.strip(), {code: why for code, why in ERRORS_IN_DOCSTRING.findall(errors.strip())}


def build(flask_app: Flask) -> dict:
    """The OpenAPI 3.0 document of every route of the app (but static files)."""
    spec = APISpec(
        title="Batchery",
        version=VERSION,
        openapi_version="3.0.3",
        plugins=[MarshmallowPlugin(schema_name_resolver=_schema_name)],
        info={
            "description": "Batch jobs over a Celery fleet, with the REST interface of the Cortex 0.28 Batch API. "
            "Errors are JSON `{kind, message}`. With BATCHERY_API_TOKEN set on the server, every endpoint but "
            "/healthz needs `Authorization: Bearer <token>`."
        },
        security=[{"bearerAuth": []}],
    )
    spec.components.security_scheme("bearerAuth", BEARER)
    for name, schema in SCHEMAS.items():
        spec.components.schema(name, schema=schema)
    paths: dict[str, dict] = {}
    for rule in sorted(flask_app.url_map.iter_rules(), key=lambda r: r.rule):
        if rule.endpoint == "static":
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            paths.setdefault(rule.rule, {})[method.lower()] = _operation(flask_app, rule, method.lower())
    for rule, operations in paths.items():
        spec.path(path=openapi_path(rule), operations=operations)
    return spec.to_dict()


def _operation(flask_app: Flask, rule, method: str) -> dict:
    summary, errors = docstring_parts(flask_app.view_functions[rule.endpoint].__doc__)
    extra = OPERATIONS.get((rule.rule, method), {})
    operation = {"operationId": rule.endpoint.replace(".", "_"), "summary": summary, **extra}
    answers = {code: {"description": why, "content": ERROR} for code, why in errors.items()}
    if rule.endpoint in OPEN_ENDPOINTS:
        operation["security"] = []  # open to load balancers, token or not
    else:
        answers["401"] = {"description": UNAUTHORIZED, "content": ERROR}
    operation["responses"] = {**{"200": {"description": "OK"}}, **answers, **extra.get("responses", {})}
    return operation


def _schema_name(schema) -> str:
    """Nested schemas are named after their class, without the `Schema` suffix."""
    cls = schema if isinstance(schema, type) else type(schema)
    return cls.__name__.removesuffix("Schema")


def schema_type(schema: dict | None) -> tuple[str, str]:
    """(text, link) to show a schema in the docs page: `JobSpec` links to its section, `array of X`."""
    if not schema:
        return "any", ""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return name, f"#schema-{name}"
    choices = [c for c in schema.get("oneOf", schema.get("anyOf", [])) if not c.get("nullable")]
    if len(choices) == 1:  # a nullable nested schema
        return schema_type(choices[0])
    if choices:
        return " or ".join(schema_type(choice)[0] for choice in choices), ""
    if schema.get("type") == "array":
        inner, link = schema_type(schema.get("items"))
        return f"array of {inner}", link
    return schema.get("type", "object"), ""
