"""Marshmallow schemas of the job submission, and how their errors read."""

from __future__ import annotations

import json
from typing import Any

from marshmallow import Schema, ValidationError, fields, post_load, pre_load, validate, validates_schema

from app.errors import InvalidRequest
from app.jobs.output import BUCKET_NAME, MAX_PREFIX_BYTES
from app.sources import jsonstream

SOURCES = ("item_list", "file_path_lister", "delimited_files")


class JsonList(fields.Raw):
    """A JSON array taken as it is: items are any JSON values and are not copied one by one."""

    # typed by marshmallow's Field (an instance attribute there, so not a ClassVar); marshmallow only reads it
    default_error_messages = {  # noqa: RUF012
        "invalid": "Must be a list.",
        "empty": "Must hold at least one item.",
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list:
        if not isinstance(value, list):
            raise self.make_error("invalid")
        if not value:
            raise self.make_error("empty")
        return value


# Cortex's fields are Go ints: a larger number is refused, and 10**400 seconds overflows a deadline.
MAX_INT = 2**63 - 1


def positive(**kwargs: Any) -> fields.Integer:
    """An integer field (JSON integers only: not strings, floats or booleans) from 1 to MAX_INT."""
    in_range = [
        validate.Range(min=1, error="must be at least {min}"),
        validate.Range(max=MAX_INT, error="must be at most {max} (a 64-bit integer, as on Cortex)"),
    ]
    return fields.Integer(strict=True, validate=in_range, **kwargs)


class DeadLetterQueueSchema(Schema):
    """`sqs_dead_letter_queue`: where batches that failed for good go."""

    arn = fields.String(
        required=True,
        validate=validate.Length(min=1, error="Must not be empty."),
        metadata={
            "description": "the queue's ARN, arn:aws:sqs:<region>:<12-digit account>:<name> (partition aws, aws-cn "
            "or aws-us-gov), checked on both brokers; on the Redis broker its last part names a Redis list"
        },
    )
    max_receive_count = positive(required=True, metadata={"description": "deliveries of a batch before it goes there"})


class ItemListSchema(Schema):
    """`item_list`: the items themselves, sliced into batches of `batch_size`."""

    items = JsonList(
        required=True,
        metadata={"type": "array", "items": {}, "minItems": 1, "description": "any JSON values, sliced in order"},
    )
    batch_size = positive(required=True, metadata={"description": "items per batch (the payload is a JSON list)"})


class S3SourceSchema(Schema):
    """`file_path_lister` / `delimited_files`: S3 prefixes filtered by globs."""

    s3_paths = fields.List(
        # the pattern documents the check of app/sources/s3.py (which words the error)
        fields.String(metadata={"pattern": "^s3://[^/]+"}),
        required=True,
        validate=validate.Length(min=1),
        metadata={"description": "s3://bucket/prefix paths, each listed as a prefix"},
    )
    includes = fields.List(
        fields.String(), load_default=list, allow_none=True, metadata={"description": "globs to keep (if any)"}
    )
    excludes = fields.List(
        fields.String(), load_default=list, allow_none=True, metadata={"description": "globs to drop"}
    )
    batch_size = positive(required=True, metadata={"description": "paths, or JSON values, per batch"})

    @post_load
    def _null_is_no_globs(self, data: dict, **kwargs: Any) -> dict:
        """`null` globs are none, as a Go nil slice is on Cortex (and as `null` is for the other optional fields)."""
        for name in ("includes", "excludes"):
            if data.get(name) is None:
                data[name] = []
        return data


class WebhookSchema(Schema):
    """`webhook`: where Batchery POSTs the signed `job.ended` event when the job reaches its final status."""

    url = fields.Url(
        required=True,
        schemes={"http", "https"},
        error_messages={"invalid": "Must be an http:// or https:// URL."},
        require_tld=False,  # a host of the operator's network, or an address, is a target too
        validate=validate.Length(max=2048, error="must be at most {max} characters"),
        metadata={"description": "an HTTP or HTTPS URL; it receives the event as a JSON POST"},
    )


class OutputSchema(Schema):
    """`output`: where `predict`'s return values are written, as NDJSON (exactly one of the two keys)."""

    s3_path = fields.String(
        validate=validate.Regexp(
            rf"^s3://{BUCKET_NAME}(/.{{0,{MAX_PREFIX_BYTES}}})?$",
            error="must be s3://<bucket>/<prefix>/ (a bucket name of 3 to 63 lowercase letters, digits, dots "
            f"and hyphens; a prefix of at most {MAX_PREFIX_BYTES} characters)",
        ),
        metadata={
            "description": "an S3 folder: each batch's predictions go to <s3_path><job_id>/<batch_id>.ndjson "
            "(the bucket must exist)"
        },
    )
    store = fields.String(
        validate=validate.OneOf(["redis"], error="must be redis (or give s3_path instead)"),
        metadata={"description": "redis: keep the predictions in the job store (BATCHERY_OUTPUT_STORE_BYTES at most)"},
    )

    @validates_schema
    def exactly_one_destination(self, data: dict, **kwargs: Any) -> None:
        """One place for the predictions: an S3 folder, or the job store."""
        given = [name for name in ("s3_path", "store") if name in data]
        if len(given) != 1:
            raise ValidationError(
                'give exactly one of s3_path or store: {"s3_path": "s3://bucket/prefix/"} or {"store": "redis"}'
            )


class JobSubmissionSchema(Schema):
    """The body of `POST /batch/<api>`."""

    workers = positive(required=True, metadata={"description": "at most this many of the job's batches run at once"})
    timeout = positive(allow_none=True, load_default=None, metadata={"description": "seconds, from submission"})
    sqs_dead_letter_queue = fields.Nested(
        DeadLetterQueueSchema,
        allow_none=True,
        load_default=None,
        metadata={"description": "retry failed batches, then send them here (without it, no retry)"},
    )
    # allow_none documents that null is taken (as not given: `_null_source_is_none`)
    item_list = fields.Nested(
        ItemListSchema, allow_none=True, metadata={"description": "one of the three inputs: the items"}
    )
    file_path_lister = fields.Nested(
        S3SourceSchema, allow_none=True, metadata={"description": "or: batches of S3 file paths"}
    )
    delimited_files = fields.Nested(
        S3SourceSchema, allow_none=True, metadata={"description": "or: JSON values read from S3 files"}
    )
    config = fields.Dict(
        keys=fields.String(),
        allow_none=True,
        load_default=dict,
        metadata={"description": "deep-merged over the API's predictor config"},
    )
    webhook = fields.Nested(
        WebhookSchema,
        allow_none=True,
        load_default=None,
        metadata={"description": "where to POST a signed job.ended event when the job ends (BATCHERY_WEBHOOK_SECRET)"},
    )
    output = fields.Nested(
        OutputSchema,
        allow_none=True,
        load_default=None,
        metadata={"description": "where predict's return values go, as NDJSON; without it they are ignored"},
    )

    @pre_load
    def _null_source_is_none(self, data: Any, **kwargs: Any) -> Any:
        """An input given as `null` is not given, as a nil pointer is on Cortex (clients that send
        every key, the unused ones null)."""
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if not (key in SOURCES and value is None)}
        return data

    @validates_schema
    def exactly_one_source(self, data: dict, **kwargs: Any) -> None:
        """Cortex takes exactly one of the three input kinds."""
        given = [name for name in SOURCES if name in data]
        if len(given) != 1:
            found = ", ".join(given) if given else "none"
            raise ValidationError(f"exactly one of {', '.join(SOURCES)} is required (found: {found})")


def load_submission(body: Any) -> dict:
    """Validate a decoded JSON body; raises InvalidRequest naming each bad field."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object describing the job")
    try:
        data = JobSubmissionSchema().load(body)
    except ValidationError as err:
        raise InvalidRequest(describe(err.normalized_messages())) from None
    data["config"] = data.get("config") or {}
    return data


def describe(messages: Any, path: str = "") -> str:
    """Flatten marshmallow's nested messages into `field.sub: message; ...`."""
    if isinstance(messages, dict):
        parts = []
        for key, value in messages.items():
            name = path if key == "_schema" else f"{path}.{key}" if path else str(key)
            parts.append(describe(value, name))
        return "; ".join(parts)
    if isinstance(messages, list):
        text = " ".join(_sentence(m) for m in messages if not isinstance(m, (dict, list)))
        nested = [describe(m, path) for m in messages if isinstance(m, (dict, list))]
        return "; ".join(([f"{path}: {text}" if path else text] if text else []) + nested)
    return f"{path}: {_sentence(messages)}" if path else _sentence(messages)


def _sentence(message: Any) -> str:
    text = str(message).rstrip(".")
    if text == "Unknown field":
        return "unknown field (check its spelling against the job submission reference)"
    return text[:1].lower() + text[1:]


# Well under Python's recursion limit: json.loads takes up to ~990 levels, but later steps recurse
# once or more per level (deep_merge's copy, json.dumps into Redis, the worker), and would fail.
MAX_NESTING = 200


def decode_body(raw: bytes) -> object:
    """The request body as JSON; raises InvalidRequest for an empty, malformed or too deeply nested body."""
    if not raw.strip():
        raise InvalidRequest("the request body is empty: send the job as a JSON object")
    too_deep = f"the request body is nested too deeply (more than {MAX_NESTING} levels of lists and objects)"
    try:
        body = json.loads(raw, parse_constant=jsonstream.no_constants, parse_float=jsonstream.finite_float)
    except RecursionError:
        raise InvalidRequest(too_deep) from None
    except UnicodeDecodeError as err:
        raise InvalidRequest(f"the request body is not valid JSON: {err}") from None
    except ValueError as err:
        raise InvalidRequest(f"the request body is not valid JSON: {jsonstream.reason(err)}") from None
    # Counting brackets first spares the walk for the usual body, a long flat list.
    if raw.count(b"[") + raw.count(b"{") > MAX_NESTING and _nested_deeper_than(body, MAX_NESTING):
        raise InvalidRequest(too_deep)
    return body


def _nested_deeper_than(value: object, limit: int) -> bool:
    # Level by level rather than recursively: the point is not to recurse per level.
    level = [value] if isinstance(value, (list, dict)) else []
    for _ in range(limit):
        level = [
            child
            for node in level
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, (list, dict))
        ]
        if not level:
            return False
    return True


class RetrySchema(Schema):
    """The body of `POST /batch/<api>/<job_id>/retry`: what to retry, and the settings of the new
    job that differ from its parent's (each checked as in a submission)."""

    include = fields.String(
        validate=validate.OneOf(["failed", "unfinished"], error="must be failed or unfinished"),
        metadata={
            "description": "failed (the default): the batches that failed for good; unfinished: those and the "
            "batches that never ran to an outcome (the job was stopped or timed out)"
        },
    )
    workers = positive(metadata={"description": "the new job's parallelism (default: the parent's)"})
    timeout = positive(allow_none=True, metadata={"description": "seconds, from the retry; null for none"})
    sqs_dead_letter_queue = fields.Nested(
        DeadLetterQueueSchema, allow_none=True, metadata={"description": "null for none (default: the parent's)"}
    )
    config = fields.Dict(
        keys=fields.String(),
        allow_none=True,
        metadata={"description": "deep-merged over the parent's config (which holds the API's predictor config)"},
    )


def load_retry(body: Any) -> dict:
    """Validate a decoded retry body; raises InvalidRequest naming each bad field."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object: {} to retry the failed batches as they were")
    try:
        return RetrySchema().load(body)
    except ValidationError as err:
        raise InvalidRequest(describe(err.normalized_messages())) from None
