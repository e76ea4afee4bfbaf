"""The API's OpenAPI 3 document, built with apispec from the marshmallow schemas and the routes.

Each endpoint's summary and errors come from its docstring (`Summary. Errors: 400 why, 404 why.`),
so a new error is documented where it is raised from; what a docstring cannot say (parameters,
bodies, success answers, links) is in OPERATIONS below, keyed by the Flask rule and method.

The document describes the API as it runs: `security` and the 401 answers only when it asks for a
token. Outside fuzzers (schemathesis) read it, so what it allows the API accepts and what it
forbids the API refuses (tests/test_fuzz_api.py holds it to that).
"""

from __future__ import annotations

import re

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Flask
from werkzeug.routing import Rule

from app.web import responses, schemas
from app.web.auth import OPEN_ENDPOINTS, token_required

VERSION = "0.1.0"
ERROR = {"application/json": {"schema": "Error"}}
ERRORS_IN_DOCSTRING = re.compile(r"(\d{3}) (.+?)(?=[,;] \d{3} |\.?$)")
PATH_PARAMETER = re.compile(r"<(?:\w+:)?(\w+)>")
BEARER = {
    "type": "http",
    "scheme": "bearer",
    "description": "only when the server sets BATCHERY_API_TOKEN: `Authorization: Bearer <that token>`",
}
UNAUTHORIZED = "no token, or a wrong one"

API_NAME = {
    "name": "api_name",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1},
    "description": "a deployed Batch API (`GET /batch` lists them)",
}


IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[ -~]+$"},
    "description": "1 to 255 printable ASCII characters (a UUID): the same key with the same JSON body "
    "(whitespace and key order aside) within BATCHERY_IDEMPOTENCY_SECONDS answers 200 with the job the first "
    "request created, with `Idempotent-Replayed: true`, and creates no other; with another body, a 409",
}
# A job in a path (pause, resume): what app/web/batch.py's JOB_ID_IN_PATH takes; another id is a 400.
JOB_ID_IN_PATH = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
    "description": "the job: the `job_id` that `POST /batch/{api_name}` answered",
}
NO_BODY = {
    "required": False,
    "description": "none, or an empty JSON object",
    "content": {"application/json": {"schema": {"type": "object", "maxProperties": 0}}},
}


def job_id(required: bool, description: str) -> dict:
    """The OpenAPI description of the `jobID` query parameter (an empty one is refused, given or not)."""
    return {
        "name": "jobID",
        "in": "query",
        "required": required,
        "schema": {"type": "string", "minLength": 1},
        "description": description,
    }


def link_to_job(operation_id: str, description: str) -> dict:
    """An OpenAPI link from a submission's answer to a route of the job it created."""
    return {
        "operationId": operation_id,
        "parameters": {"api_name": "$request.path.api_name", "jobID": "$response.body#/job_id"},
        "description": description,
    }


def link_to_api(operation_id: str, description: str) -> dict:
    """An OpenAPI link from `GET /batch` to a route of the first API it lists."""
    parameters = {"api_name": "$response.body#/apis/0/name"}
    return {"operationId": operation_id, "parameters": parameters, "description": description}


# Clients and stateful fuzzers follow these from a submission to its job, and from the list of APIs
# to a deployed one (without them, a fuzzer never finds a job to read or stop).
JOB_LINKS = {
    "GetJobStatus": link_to_job("batch_get_api", "the job's status"),
    "StopJob": link_to_job("batch_stop", "stop the job"),
    "GetJobLogs": link_to_job("batch_job_logs", "the job's log"),
}
API_LINKS = {
    "SubmitJob": link_to_api("batch_submit", "submit a job to the API"),
    "GetApi": link_to_api("batch_get_api", "the API and its jobs"),
}


HTML_PAGE = {"text/html": {"schema": {"type": "string"}}}


def json_answer(description: str, schema: str | dict) -> dict:
    """An OpenAPI response with a JSON body of the given schema."""
    return {"description": description, "content": {"application/json": {"schema": schema}}}


DEPLOYED_APIS = {
    "type": "object",
    "required": ["apis"],
    "properties": {
        "apis": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "api_id", "endpoint"],
                "properties": {
                    "name": {"type": "string"},
                    "api_id": {"type": "string"},
                    "project_id": {"type": "string", "nullable": True},
                    "endpoint": {"type": "string"},
                    "compute": {"type": "object", "nullable": True},
                    "queue": {"type": "string", "description": "the queue its jobs' batches run on"},
                    "python_path": {"type": "string", "nullable": True},
                    "deployed_at": {"type": "string", "nullable": True},
                    "spec": {"$ref": "#/components/schemas/ApiSpec"},
                },
            },
        },
        "warnings": {
            "type": "array",
            "items": {"type": "string"},
            "description": "POST only: the cortex.yaml's keys Batchery does not use, ignored",
        },
    },
}

OPERATIONS: dict[tuple[str, str], dict] = {
    ("/batch", "get"): {
        "responses": {
            "200": {
                **json_answer("the deployed APIs, their jobs in progress and latest job", "ApisResponse"),
                "links": API_LINKS,
            }
        },
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
            IDEMPOTENCY_KEY,
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
                "headers": {
                    "Idempotent-Replayed": {
                        "description": "`true` when the Idempotency-Key answered with the job of an earlier request",
                        "schema": {"type": "string", "enum": ["true"]},
                    }
                },
                "links": JOB_LINKS,
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
    ("/apis", "post"): {
        "requestBody": {
            "required": True,
            "description": "the project (the folder of cortex.yaml, or one holding it as its single top folder) "
            "as a .tar.gz, .tar or .zip: the raw body (Content-Type application/octet-stream; application/gzip, "
            "application/x-tar and application/zip are taken too), or the multipart form field `file`; at most "
            "BATCHERY_MAX_PROJECT_BYTES (256 MiB)",
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {"file": {"type": "string", "format": "binary"}},
                    }
                },
            },
        },
        "responses": {"200": json_answer("the APIs deployed", DEPLOYED_APIS)},
    },
    ("/apis", "get"): {
        "responses": {"200": json_answer("every deployed API with its ids", DEPLOYED_APIS)},
    },
    ("/apis/<api_name>", "delete"): {
        "parameters": [
            API_NAME,
            {
                "name": "force",
                "in": "query",
                "required": False,
                "schema": {"type": "boolean", "default": False},
                "description": "stop the API's jobs in progress first (without: a 409 while it has some)",
            },
        ],
        "responses": {
            "200": json_answer(
                "the API undeployed",
                {
                    "type": "object",
                    "required": ["message", "stopped_jobs"],
                    "properties": {
                        "message": {"type": "string"},
                        "stopped_jobs": {"type": "array", "items": {"type": "string"}},
                    },
                },
            )
        },
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
    ("/batch/<api_name>/<job_id>/retry", "post"): {
        "parameters": [
            API_NAME,
            {
                "name": "job_id",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "minLength": 1},
                "description": "a job of the API that ended",
            },
        ],
        "requestBody": {
            "required": True,
            "description": "what to retry and the settings that differ from the job's; `{}` retries its failed "
            "batches with its settings",
            "content": {"application/json": {"schema": "Retry"}},
        },
        "responses": {"200": {**json_answer("the new job's spec, with parent_job_id", "JobSpec"), "links": JOB_LINKS}},
    },
    ("/batch/<api_name>/<job_id>/pause", "post"): {
        "parameters": [API_NAME, JOB_ID_IN_PATH],
        "requestBody": NO_BODY,
        "responses": {
            "200": json_answer(
                "the job's status, as GET ?jobID= answers it: status_paused (or the job was paused already)",
                "JobStatusResponse",
            )
        },
    },
    ("/batch/<api_name>/<job_id>/resume", "post"): {
        "parameters": [API_NAME, JOB_ID_IN_PATH],
        "requestBody": NO_BODY,
        "responses": {
            "200": json_answer(
                "the job's status, as GET ?jobID= answers it: running (or enqueuing) again, or as it was if it "
                "was not paused",
                "JobStatusResponse",
            )
        },
    },
    ("/batch/<api_name>/<job_id>/output", "get"): {
        "parameters": [
            API_NAME,
            JOB_ID_IN_PATH,
            {
                "name": "after",
                "in": "query",
                "required": False,
                "schema": {"type": "string"},
                "description": "output.s3_path: the `next` of the last page, to list the files after it",
            },
        ],
        "responses": {
            "200": {
                "description": "output.s3_path: a page of the job's files; output.store redis: its NDJSON, one "
                "line per prediction, batch by batch",
                "content": {
                    "application/json": {"schema": "OutputFilesResponse"},
                    "application/x-ndjson": {
                        "schema": {"type": "string"},
                        "example": '{"batch_id":"0","index":0,"prediction":{"label":"cat"}}\n',
                    },
                },
            }
        },
    },
    ("/", "get"): {
        "responses": {"200": {"description": "the dashboard, an HTML page", "content": HTML_PAGE}},
    },
    ("/jobs/<api_name>/<job_id>", "get"): {
        "parameters": [API_NAME, JOB_ID_IN_PATH],
        "responses": {"200": {"description": "a job's page, HTML", "content": HTML_PAGE}},
    },
    ("/batch/<api_name>/<job_id>/throughput", "get"): {
        "parameters": [API_NAME, JOB_ID_IN_PATH],
        "responses": {
            "200": json_answer(
                "`points`: batches ended per second in each `bucket_seconds` from `time` (epoch seconds), oldest first",
                {
                    "type": "object",
                    "properties": {
                        "job_id": {"type": "string"},
                        "bucket_seconds": {"type": "integer"},
                        "points": {
                            "type": "array",
                            "maxItems": 360,
                            "items": {
                                "type": "object",
                                "properties": {"time": {"type": "integer"}, "batches_per_second": {"type": "number"}},
                            },
                        },
                    },
                },
            )
        },
    },
    ("/batch/<api_name>/<job_id>/dead_letters", "get"): {
        "parameters": [API_NAME, JOB_ID_IN_PATH],
        "responses": {
            "200": json_answer(
                "the first 100 batches that failed for good (`attempts` and `error` null past the first 100 kept), "
                "`total` in all and `more` not listed",
                {
                    "type": "object",
                    "properties": {
                        "job_id": {"type": "string"},
                        "total": {"type": "integer"},
                        "more": {"type": "integer"},
                        "dead_letters": {
                            "type": "array",
                            "maxItems": 100,
                            "items": {
                                "type": "object",
                                "properties": {
                                    "batch_id": {"type": "string"},
                                    "attempts": {"type": "integer", "nullable": True},
                                    "error": {"type": "string", "nullable": True},
                                },
                            },
                        },
                    },
                },
            )
        },
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
    "Retry": schemas.RetrySchema,
    "OutputFilesResponse": responses.OutputFilesResponseSchema,
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


DESCRIPTION = (
    "Batch jobs over a Celery fleet, with the REST interface of the Cortex 0.28 Batch API. "
    "Errors are JSON `{kind, message}`."
)
WITH_TOKEN = (
    " This server asks for a token (its BATCHERY_API_TOKEN): every endpoint needs `Authorization: Bearer <token>` "
    "but /healthz, /openapi.json and /docs, and the dashboard's HTML pages (/ and /jobs/...), which hold no job data."
)
WITHOUT_TOKEN = " This server asks for no token (it sets no BATCHERY_API_TOKEN)."


def build(flask_app: Flask) -> dict:
    """The OpenAPI 3.0 document of every route of the app (but static files), with `security` as
    the app is configured: bearer with a token, none without."""
    token = token_required(flask_app)
    spec = APISpec(
        title="Batchery",
        version=VERSION,
        openapi_version="3.0.3",
        plugins=[MarshmallowPlugin(schema_name_resolver=_schema_name)],
        info={"description": DESCRIPTION + (WITH_TOKEN if token else WITHOUT_TOKEN)},
        **({"security": [{"bearerAuth": []}]} if token else {}),
    )
    if token:
        spec.components.security_scheme("bearerAuth", BEARER)
    for name, schema in SCHEMAS.items():
        spec.components.schema(name, schema=schema)
    paths: dict[str, dict] = {}
    for rule in sorted(flask_app.url_map.iter_rules(), key=lambda r: r.rule):
        if rule.endpoint == "static":
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            paths.setdefault(rule.rule, {})[method.lower()] = _operation(flask_app, rule, method.lower(), token)
    for path, operations in paths.items():
        spec.path(path=openapi_path(path), operations=operations)
    document = spec.to_dict()
    _exactly_one_source(document["components"]["schemas"]["JobSubmission"])
    _null_means_null(document["components"]["schemas"])
    _webhooks_if_signed(flask_app, document["components"]["schemas"]["JobSubmission"])
    _exactly_one_destination(document["components"]["schemas"]["Output"])
    return document


def _webhooks_if_signed(flask_app: Flask, submission: dict) -> None:
    """A server without BATCHERY_WEBHOOK_SECRET refuses a submission with a `webhook` (it could not
    sign it): its document leaves the field out, as it leaves out the token it does not ask for."""
    if not flask_app.extensions["batchery"].settings.webhook_secret:
        submission["properties"].pop("webhook", None)


def _operation(flask_app: Flask, rule: Rule, method: str, token: bool) -> dict:
    summary, errors = docstring_parts(flask_app.view_functions[rule.endpoint].__doc__)
    extra = OPERATIONS.get((rule.rule, method), {})
    operation = {"operationId": rule.endpoint.replace(".", "_"), "summary": summary, **extra}
    answers = {code: {"description": why, "content": ERROR} for code, why in errors.items()}
    if token and rule.endpoint in OPEN_ENDPOINTS:
        operation["security"] = []  # open to load balancers and browsers, token or not
    elif token:  # without one, no call is ever a 401
        answers["401"] = {"description": UNAUTHORIZED, "content": ERROR}
    operation["responses"] = {**{"200": {"description": "OK"}}, **answers, **extra.get("responses", {})}
    return operation


def _exactly_one_source(submission: dict) -> None:
    """Say in the schema what the API checks: exactly one of the three inputs, given and not null
    (a null one counts as not given, as on Cortex)."""
    submission["oneOf"] = [{"required": [name], "properties": {name: {"type": "object"}}} for name in schemas.SOURCES]


def _exactly_one_destination(output: dict) -> None:
    """Say in the schema what the API checks: `output` is either `s3_path` or `store`, not both."""
    output["oneOf"] = [{"required": ["s3_path"]}, {"required": ["store"]}]


def _null_means_null(components: dict) -> None:
    """apispec writes a nullable nested schema as `anyOf: [<ref>, {type: object, nullable: true}]`,
    whose second choice lets any object through (`item_list: {}`); OpenAPI 3.0.3's way to say
    "or null" is that choice with `enum: [null]`."""
    for schema in components.values():
        for prop in schema.get("properties", {}).values():
            for choice in prop.get("anyOf", []):
                if choice == {"type": "object", "nullable": True}:
                    choice["enum"] = [None]


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
