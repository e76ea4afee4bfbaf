"""The HTTP interface of a Batch API (`/batch/<api_name>`), as Cortex 0.28 served it."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import cast

from flask import Blueprint, Response, jsonify, request, url_for

from app.config import MAX_BODY_BYTES
from app.errors import BatcheryError, InvalidRequest, JobNotFound, JobNotRunning, PayloadTooLarge
from app.jobs import output, pausing, retention, webhook
from app.jobs.idempotency import Idempotency, body_digest, check_key
from app.jobs.retry import Retrier
from app.jobs.services import Services
from app.model import job, status
from app.model.status import IN_PROGRESS, STOPPED
from app.sources import s3
from app.store.registry import public_spec
from app.web.context import services
from app.web.schemas import decode_body, load_retry, load_submission

bp = Blueprint("batch", __name__)


def endpoint(api_name: str) -> str:
    """The absolute URL of an API's batch endpoint (`/batch/<api_name>`)."""
    return url_for("batch.get_api", api_name=api_name, _external=True)


@bp.get("/batch")
def list_apis() -> Response:
    """The deployed APIs, each with its count of jobs in progress and its latest job (id, status).

    Errors: 400 a query parameter (it takes none), 503 job store unavailable.
    """
    _query()
    registry, store = services().registry, services().store
    apis = []
    for name in registry.names():
        found = [store.state(job_id, name, job.now()) for job_id in store.job_ids(name, 1)]
        states = [state for state in found if state is not None]
        latest = max(states, key=lambda state: state["spec"]["job_id"], default=None)  # ids sort by creation
        apis.append(
            {
                "name": name,
                "endpoint": endpoint(name),
                "running_jobs": sum(state["status"] in IN_PROGRESS for state in states),
                "latest_job": {"job_id": latest["spec"]["job_id"], "status": latest["status"]} if latest else None,
            }
        )
    return jsonify({"apis": apis})


@bp.post("/batch/<api_name>")
def submit(api_name: str) -> Response:
    """Submit a job; `?dryRun=true` only validates. With an `Idempotency-Key`, the same key and body
    answer with the job the first request created (`Idempotent-Replayed: true`).

    Errors: 400 invalid job, unknown query parameter, dryRun not true/false/1/0, a bad Idempotency-Key,
    a webhook without BATCHERY_WEBHOOK_SECRET or an output.s3_path whose bucket does not exist;
    404 unknown API; 409 Idempotency-Key used with another
    body, or its first request still running; 413 body over 10 MiB; 503 broker or job store unavailable.
    """
    dry_run = _dry_run(_query("dryRun"))
    api = services().registry.get(api_name)
    key = request.headers.get("Idempotency-Key")
    if key is not None:
        check_key(key)
    body = decode_body(_body())
    submission = load_submission(body)
    webhook.check_submission(submission, services().settings)
    output.check_submission(submission)

    def create() -> dict | Iterator[str]:
        return services().submitter.submit(api, submission, dry_run=dry_run)

    if key is None or dry_run:  # a dry run creates nothing, so stores nothing under the key
        result = create()
        if isinstance(result, dict):
            return jsonify(result)
        return Response(result, mimetype="text/plain")
    idempotency = Idempotency(services().redis, services().settings.idempotency_seconds)
    spec, replayed = idempotency.submit(api_name, key, body_digest(body), cast(Callable[[], dict], create))
    answer = jsonify(spec)
    if replayed:
        answer.headers["Idempotent-Replayed"] = "true"
    return answer


@bp.get("/batch/<api_name>")
def get_api(api_name: str) -> Response:
    """A job's status with `?jobID=`, else the API and its jobs.

    Errors: 400 unknown query parameter, 404 unknown API or job, 503 job store unavailable.
    """
    api = services().registry.get(api_name)
    args = _query("jobID")
    if "jobID" in args:
        return jsonify(_job_status(api, _job_id(args)))
    store = services().store
    statuses = []
    for listed in store.job_ids(api_name, services().settings.recent_jobs):
        state = store.state(listed, api_name, job.now())
        if state is not None:
            statuses.append(job.job_status(state))
    # Cortex's APIResponse shape for `cortex get <api>`
    return jsonify({"spec": public_spec(api), "endpoint": endpoint(api_name), "batch_job_statuses": _listed(statuses)})


def _listed(statuses: list[dict]) -> list[dict]:
    """Jobs in progress first, then the others newest first (job ids sort by creation): a job the
    reading itself found past its timeout goes with the ended ones."""
    running = [answer for answer in statuses if answer["status"] in status.IN_PROGRESS]
    ended = [answer for answer in statuses if answer["status"] not in status.IN_PROGRESS]
    return running + sorted(ended, key=lambda answer: answer["job_id"], reverse=True)


@bp.delete("/batch/<api_name>")
def stop(api_name: str) -> Response:
    """Stop a job.

    Errors: 400 no jobID, unknown query parameter or job already ended; 404 unknown API or job;
    503 job store unavailable.
    """
    services().registry.get(api_name)
    job_id = _job_id(_query("jobID"))
    store = services().store
    state = _state(api_name, job_id)
    if not store.end(state["spec"], STOPPED, "", job.now()):
        final = _state(api_name, job_id)["status"]
        raise JobNotRunning(f"job {job_id} is not running: it already ended with {final}")
    return jsonify({"message": f"stopped job {job_id}"})


@bp.get("/batch/<api_name>/logs")
def job_logs(api_name: str) -> Response:
    """A job's log lines after `?after=<seq>`, oldest first.

    Errors: 400 no jobID, a bad `after` or an unknown query parameter; 404 unknown API or job;
    503 job store unavailable.
    """
    services().registry.get(api_name)
    args = _query("jobID", "after")
    job_id = _job_id(args)
    state = _state(api_name, job_id)
    try:
        after = int(args.get("after", "0"))
    except ValueError:
        raise InvalidRequest("after must be the number of the last log line you have, e.g. ?after=0") from None
    lines = services().job_log.read(job_id, after=after)
    return jsonify(
        {"job_id": job_id, "status": state["status"], "lines": lines, "next": lines[-1]["seq"] if lines else after}
    )


def _body() -> bytes:
    """The request body, at most 10 MiB; raises PayloadTooLarge.

    Flask refuses a Content-Length over the limit before reading; a chunked body is cut at the
    limit instead, so one more byte tells whether it went over.
    """
    raw = request.get_data(cache=False)
    if len(raw) >= MAX_BODY_BYTES and request.content_length is None and request.environ["wsgi.input"].read(1):
        raise PayloadTooLarge(PayloadTooLarge.MESSAGE)
    return raw


def _query(*known: str) -> dict[str, str]:
    """The query parameters, when all are ones this endpoint takes; raises InvalidRequest.

    A misspelt parameter (`?jobid=`) silently ignored would answer another question than the one asked
    (the API instead of the job, a real job instead of a dry run).
    """
    unknown = sorted(set(request.args) - set(known))
    if unknown:
        takes = ", ".join(known) if known else "no query parameters"
        raise InvalidRequest(f"unknown query parameter {unknown[0]!r}: this endpoint takes {takes}")
    repeated = sorted(name for name in request.args if len(request.args.getlist(name)) > 1)
    if repeated:  # which one was meant? (werkzeug would take the first)
        raise InvalidRequest(f"the query parameter {repeated[0]!r} is given more than once: give it once")
    return request.args.to_dict()


# What Cortex's dryRun took (Go's strconv.ParseBool), in any case. Cortex ran a real job for any
# other value; here it is refused, as a dry run mistaken for a job is not undone.
DRY_RUN_VALUES = {"true": True, "t": True, "1": True, "false": False, "f": False, "0": False}


def _dry_run(args: dict[str, str]) -> bool:
    """`?dryRun=true|false` (also t/f, 1/0; any case); raises InvalidRequest for another value."""
    value = args.get("dryRun", "false").lower()
    if value not in DRY_RUN_VALUES:
        raise InvalidRequest(f"dryRun must be true or false (or 1 or 0), not {args['dryRun']!r}")
    return DRY_RUN_VALUES[value]


def _job_id(args: dict[str, str]) -> str:
    job_id = args.get("jobID")
    if not job_id:
        raise InvalidRequest("the jobID query parameter is required, e.g. ?jobID=<job_id>")
    return job_id


def _state(api_name: str, job_id: str) -> dict:
    state = services().store.state(job_id, api_name, job.now())
    if state is None:  # it may have expired (BATCHERY_JOB_RETENTION_SECONDS): the 404 says so
        raise retention.job_not_found(services(), api_name, job_id)
    if state["spec"]["api_name"] != api_name:
        raise JobNotFound(f"job {job_id} does not exist for api {api_name}")
    return state


def _job_status(api: dict, job_id: str) -> dict:
    state = _state(api["name"], job_id)
    # the API the job runs (a redeploy since then does not change it), as Cortex answers with the
    # spec of the job's api_id; jobs stored before the API was kept with them show today's
    ran = json.loads(state["api"]) if state["api"] else api
    return {"job_status": job.job_status(state), "endpoint": endpoint(api["name"]), "api_spec": public_spec(ran)}


@bp.app_errorhandler(BatcheryError)
def batchery_error(err: BatcheryError) -> tuple[Response, int]:
    """Answer a BatcheryError as `{"kind", "message"}` with its HTTP status."""
    return jsonify({"kind": err.kind, "message": err.message}), err.status


@bp.post("/batch/<api_name>/<job_id>/retry")
def retry(api_name: str, job_id: str) -> Response:
    """Retry a job that ended: a new job of its batches that failed for good (with `include: unfinished`,
    also those it never ran), answered with its spec.

    Errors: 400 invalid body, unknown query parameter, job still in progress or nothing to retry;
    404 unknown API or job; 413 body over 10 MiB; 503 broker or job store unavailable.
    """
    _query()
    raw = _body()
    if not raw.strip():  # as every POST here: an empty body is a 400 (clients probe with one)
        raise InvalidRequest("the request body is empty: send a JSON object ({} retries the failed batches)")
    request_body = load_retry(decode_body(raw))
    return jsonify(Retrier(services()).retry(api_name, job_id, request_body))


# A job id in a path: Batchery's are 16 hex digits; anything else of letters, digits, `-` and `_`
# is looked up (a 404), the rest refused.
JOB_ID_IN_PATH = re.compile(r"[A-Za-z0-9_-]{1,64}")


@bp.post("/batch/<api_name>/<job_id>/pause")
def pause(api_name: str, job_id: str) -> Response:
    """Pause a job: no batch of it starts until it is resumed; batches inside predict finish. Pausing a paused job
    changes nothing. Answers the job's status, as `GET ?jobID=`.

    Errors: 400 a job id that is not one, an unknown query parameter, a body other than none or {}, or a job that
    ended (its status is in the message); 404 unknown API or job; 413 body over 10 MiB; 503 job store unavailable.
    """
    return _control(api_name, job_id, pausing.pause)


@bp.post("/batch/<api_name>/<job_id>/resume")
def resume(api_name: str, job_id: str) -> Response:
    """Resume a paused job where it stopped, with the same workers. Resuming a job that is not paused changes
    nothing. Answers the job's status, as `GET ?jobID=`.

    Errors: 400 a job id that is not one, an unknown query parameter, a body other than none or {}, or a job that
    ended (its status is in the message); 404 unknown API or job; 413 body over 10 MiB; 503 job store unavailable.
    """
    return _control(api_name, job_id, pausing.resume)


def _control(api_name: str, job_id: str, action: Callable[[Services, dict], str]) -> Response:
    """Run `action` (pausing.pause or pausing.resume) on the job and answer its status; raises
    InvalidRequest for a bad job id, a query parameter or a body, JobNotFound, JobNotRunning."""
    api = services().registry.get(api_name)
    _query()
    if not JOB_ID_IN_PATH.fullmatch(job_id):
        answered = f"a job id is the job_id that POST /batch/{api_name} answered (letters, digits, - and _)"
        raise InvalidRequest(f"{job_id[:80]!r} is not a job id: {answered}")
    raw = _body()
    if raw.strip() and decode_body(raw) != {}:
        raise InvalidRequest(f"{request.path} takes no body: send none, or {{}}")
    action(services(), _state(api_name, job_id)["spec"])
    return jsonify(_job_status(api, job_id))


@bp.get("/batch/<api_name>/<job_id>/output")
def job_output(api_name: str, job_id: str) -> Response:
    """A job's predictions: with `output.s3_path`, a page of its NDJSON files (`?after=<batch_id>` for the
    next); with `output.store: redis`, the stored NDJSON itself, batch by batch.

    Errors: 400 a job id that is not one, an unknown query parameter, or S3 not answering the listing;
    404 unknown API or job, or a job submitted without output; 503 job store unavailable.
    """
    services().registry.get(api_name)
    args = _query("after")
    if not JOB_ID_IN_PATH.fullmatch(job_id):
        raise InvalidRequest(f"{job_id[:80]!r} is not a job id: the job_id that POST /batch/{api_name} answered")
    state = _state(api_name, job_id)
    destination = state["spec"].get("output")
    if not destination:
        raise JobNotFound(
            f"job {job_id} has no output: its predictions were not collected (submit a job with "
            '"output": {"s3_path": "s3://bucket/prefix/"} or {"store": "redis"})'
        )
    if "s3_path" not in destination:
        store = output.OutputStore(services().redis, services().settings.output_store_bytes)
        return Response(store.lines(job_id), mimetype=output.NDJSON)
    try:
        files, following = output.list_files(
            output.S3Destination.of(destination["s3_path"]), job_id, args.get("after", "")
        )
    except s3.S3Error as err:
        raise InvalidRequest(f"cannot list the job's output: {err}") from None
    return jsonify(
        {
            "job_id": job_id,
            "status": state["status"],
            "s3_path": destination["s3_path"],
            "files": files,
            "next": following,
        }
    )
