"""Marshmallow schemas of what the API answers: they document it (the OpenAPI document is built from
them) and the tests check real answers against them. The shapes are Cortex 0.28's."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from app.model import status
from app.web.schemas import DeadLetterQueueSchema, OutputSchema, WebhookSchema


def text(description: str, **kwargs) -> fields.String:
    """A string field of a documented answer."""
    return fields.String(metadata={"description": description}, **kwargs)


def count(description: str, **kwargs) -> fields.Integer:
    """An integer field of a documented answer."""
    return fields.Integer(metadata={"description": description}, **kwargs)


class JobSpecSchema(Schema):
    """A job as submitted: the answer to `POST /batch/<api>`, and the predictor's `job_spec`."""

    job_id = text("16 hex digits, sorting by creation time", required=True)
    api_name = text("the Batch API the job runs on", required=True)
    kind = text("always BatchAPI", required=True, validate=validate.OneOf(["BatchAPI"]))
    workers = count("the job's parallelism: at most this many of its batches run at once", required=True)
    config = fields.Dict(
        required=True, metadata={"description": "the API's predictor config with the job's config deep-merged over it"}
    )
    api_id = text("the API as deployed when the job was submitted", required=True)
    sqs_url = text("the broker queue the job's batches go through (no credentials)", required=True)
    queue = text("the queue's name: the API's cortex.yaml `queue:` (a dedicated pool), `gpu`, or the default queue")
    created_time = text("RFC 3339, UTC", required=True)
    timeout = count(
        "seconds from submission after which the job stops with status_timed_out; null for none",
        required=True,
        allow_none=True,
    )
    sqs_dead_letter_queue = fields.Nested(
        DeadLetterQueueSchema, required=True, allow_none=True, metadata={"description": "null for none"}
    )
    webhook = fields.Nested(
        WebhookSchema, required=True, allow_none=True, metadata={"description": "the completion webhook; null for none"}
    )
    parent_job_id = text(
        "of a retry (POST /batch/<api>/<job_id>/retry): the job whose batches it runs again; null for others",
        required=True,
        allow_none=True,
    )
    output = fields.Nested(
        OutputSchema,
        required=True,
        allow_none=True,
        metadata={"description": "where predict's return values go (GET /batch/<api>/<job_id>/output); null for none"},
    )


class BatchMetricsSchema(Schema):
    """`batch_metrics` of a job status."""

    succeeded = count("batches that succeeded", required=True)
    failed = count("failed attempts (a batch that fails 3 times counts 3)", required=True)
    avg_time_per_batch = fields.Float(
        metadata={"description": "seconds in predict, averaged over successful attempts; absent until one succeeds"}
    )
    average_time_per_batch = fields.Float(
        required=True,
        allow_none=True,
        metadata={"description": "the same figure under the name a Cortex 0.28 cluster sent; null until one succeeds"},
    )


class ProgressSchema(Schema):
    """`progress` of a job status: how far it got, how fast it goes, and when it should end."""

    done = count("batches ended: succeeded or failed for good", required=True)
    total = count(
        "as total_batch_count: the batches enqueued so far (an S3 job still enqueuing has more)", required=True
    )
    batches_per_second = fields.Float(
        required=True,
        metadata={
            "description": "batches ended per second over the last 30 s (0 when none ended in them, and while "
            "paused); for a job that ended, over its last 30 s"
        },
    )
    eta_seconds = fields.Integer(
        required=True,
        allow_none=True,
        metadata={
            "description": "seconds until the last batch ends at that rate, rounded up; null without a rate, "
            "0 once the job ended"
        },
    )


class WorkerCountsSchema(Schema):
    """`worker_counts` of a job in progress."""

    pending = count("batches in flight that no worker process has picked up yet", required=True)
    initializing = count("worker processes loading the predictor for one of the job's batches", required=True)
    running = count("worker processes running one of the job's batches", required=True)
    succeeded = count("always 0 (kept for Cortex clients)", required=True)
    failed = count("always 0 (kept for Cortex clients)", required=True)
    stalled = count(
        "batches in flight that no worker process has taken for BATCHERY_STALLED_SECONDS (no delivery began "
        "and no batch was released that long): no worker consumes the queue, or all are busy; at once when no "
        "live worker serves the job's queue (the message names it)",
        required=True,
    )


class WebhookStatusSchema(Schema):
    """`webhook` of a job status: the completion webhook and how its delivery went."""

    url = text("where the signed job.ended event is POSTed", required=True)
    delivered = fields.Boolean(required=True, metadata={"description": "whether the target answered 2xx"})
    attempts = count("POSTs tried so far (each one a line in the job's log)", required=True)
    last_error = text("what the last failed attempt got; null for none", required=True, allow_none=True)


class JobStatusSchema(JobSpecSchema):
    """`job_status`: the spec, with where the job is."""

    status = text("the job's status code", required=True, validate=validate.OneOf(status.PRECEDENCE))
    message = text(
        "why the job ended as it did, when there is more to say than the status; in progress, which queue lacks workers"
    )
    total_batch_count = count("batches enqueued so far", required=True)
    batches_in_queue = count("batches not finished yet; 0 once the job ended", required=True)
    batch_metrics = fields.Nested(BatchMetricsSchema, required=True)
    progress = fields.Nested(ProgressSchema, required=True)
    worker_counts = fields.Nested(WorkerCountsSchema, metadata={"description": "only while the job is in progress"})
    start_time = text("RFC 3339, UTC: when its first batch was released; null before", required=True, allow_none=True)
    end_time = text("RFC 3339, UTC: when it ended")
    webhook = fields.Nested(  # the spec's {url}, with its delivery
        WebhookStatusSchema,
        required=True,
        allow_none=True,
        metadata={"description": "the completion webhook and how its delivery went; null for none"},
    )
    retry_job_ids = fields.List(
        fields.String(), metadata={"description": "only once the job was retried: its retries' job ids, oldest first"}
    )


class PredictorSchema(Schema):
    """`predictor` of a Batch API, as in cortex.yaml."""

    type = text("always python", required=True)
    path = text("the predictor file, relative to the cortex.yaml", required=True)
    config = fields.Dict(required=True, metadata={"description": "merged under each job's config"})
    python_path = text("Cortex's predictor.python_path: a folder of the project searched first for its imports")


class ApiSpecSchema(Schema):
    """A deployed Batch API."""

    name = text("the API's name", required=True)
    kind = text("always BatchAPI", required=True)
    predictor = fields.Nested(PredictorSchema, required=True)
    api_id = text("a hash of the spec and the predictor file", required=True)
    compute = fields.Dict(metadata={"description": "cortex.yaml's compute (cpu, gpu, mem), recorded for the fleet"})
    queue = text("cortex.yaml's `queue:`: its jobs' pool (absent: `gpu` if compute.gpu > 0, else the default)")
    project_id = text("the deployed project's content id: the files the workers fetch and run from")
    project_bytes = count("the deployed project's size, packed (.tar.gz)")
    deployed_at = text("RFC 3339, UTC: when it was deployed")


class JobStatusResponseSchema(Schema):
    """`GET /batch/<api>?jobID=<id>`."""

    job_status = fields.Nested(JobStatusSchema, required=True)
    endpoint = text("the API's endpoint, `<base URL>/batch/<api>`", required=True)
    api_spec = fields.Nested(ApiSpecSchema, required=True)


class ApiJobsResponseSchema(Schema):
    """`GET /batch/<api>`: the API and its jobs (in progress first, then the most recent, newest first)."""

    spec = fields.Nested(ApiSpecSchema, required=True)
    endpoint = text("the API's endpoint", required=True)
    batch_job_statuses = fields.List(fields.Nested(JobStatusSchema), required=True)


class LatestJobSchema(Schema):
    """The latest job of an API."""

    job_id = text("the job", required=True)
    status = text("its status", required=True)


class ApiSummarySchema(Schema):
    """One deployed API in `GET /batch`."""

    name = text("the API", required=True)
    endpoint = text("the API's endpoint", required=True)
    running_jobs = count("its jobs in progress", required=True)
    latest_job = fields.Nested(LatestJobSchema, allow_none=True, required=True)


class ApisResponseSchema(Schema):
    """`GET /batch`: the deployed APIs."""

    apis = fields.List(fields.Nested(ApiSummarySchema), required=True)


class StopResponseSchema(Schema):
    """`DELETE /batch/<api>?jobID=<id>`."""

    message = text("stopped job <job_id>", required=True)


class LogLineSchema(Schema):
    """One line of a job's log."""

    seq = fields.Integer(required=True, metadata={"description": "the line's number in the job's log"})
    time = fields.Float(required=True, metadata={"description": "epoch seconds"})
    level = text("debug, info, warning, error", required=True)
    logger = text("the Python logger that wrote it", required=True)
    message = text("what happened", required=True)
    process = text("host:pid of the process that wrote it", required=True)
    api_name = text("the API")
    job_id = text("the job")
    traceback = text("the traceback of a failure")


class JobLogsResponseSchema(Schema):
    """`GET /batch/<api>/logs?jobID=<id>&after=<n>`."""

    job_id = text("the job", required=True)
    status = text("the job's status now", required=True)
    lines = fields.List(fields.Nested(LogLineSchema), required=True)
    next = fields.Integer(required=True, metadata={"description": "pass it as `after` to get the lines that follow"})


class ErrorSchema(Schema):
    """Every error: what kind, and a sentence saying what to change."""

    kind = text("e.g. invalid_request, api_not_found, job_not_found, payload_too_large", required=True)
    message = text("what went wrong, naming the field or the job", required=True)


class HealthSchema(Schema):
    """`GET /healthz`."""

    status = text("ok or unhealthy", required=True, validate=validate.OneOf(["ok", "unhealthy"]))
    redis = text("ok, or error: <what failed>", required=True)
    broker = text("ok, or error: <what failed>", required=True)


class OutputFileSchema(Schema):
    """A file of a job's predictions on S3."""

    path = text("s3://bucket/<prefix><job_id>/<batch_id>.ndjson", required=True)
    batch_id = text("the batch whose predictions it holds", required=True)
    size = count("bytes", required=True)


class OutputFilesResponseSchema(Schema):
    """`GET /batch/<api>/<job_id>/output` of a job with `output.s3_path`: a page of its files."""

    job_id = text("the job", required=True)
    status = text("the job's status code", required=True, validate=validate.OneOf(status.PRECEDENCE))
    s3_path = text("the job's output.s3_path", required=True)
    files = fields.List(
        fields.Nested(OutputFileSchema), required=True, metadata={"description": "in key order, at most 1000"}
    )
    next = text(
        "the batch id to send as ?after= for the next page; null on the last page", required=True, allow_none=True
    )
