"""The jobs dashboard: two HTML pages served by the API itself, and the JSON they read besides the API's own.

The pages are shells that carry no job data: their script (static/dashboard.js) reads everything through the
JSON API, with the token when BATCHERY_API_TOKEN is set, so the shells and static files need none.
"""

from __future__ import annotations

from flask import Blueprint, Response, abort, current_app, jsonify, render_template, request

from app.errors import InvalidRequest
from app.store import batch_errors, throughput
from app.web.auth import token_required
from app.web.batch import JOB_ID_IN_PATH, _query, _state
from app.web.context import services

bp = Blueprint("dashboard", __name__)


@bp.get("/")
def index() -> str:
    """The dashboard page, for a browser (`Accept: text/html`); anything else gets the 404 `/` answered before.

    Errors: 404 without `text/html` in Accept.
    """
    if not _wants_html():
        abort(404)
    return render_template("dashboard.html", token_required=token_required(current_app))


@bp.get("/jobs/<api_name>/<job_id>")
def job_page(api_name: str, job_id: str) -> str:
    """One job's page, an address to bookmark and share; its data comes from the JSON API.

    Errors: 404 a job id that is not one.
    """
    if not JOB_ID_IN_PATH.fullmatch(job_id):
        abort(404)
    return render_template("job.html", api_name=api_name, job_id=job_id, token_required=token_required(current_app))


@bp.get("/batch/<api_name>/<job_id>/throughput")
def job_throughput(api_name: str, job_id: str) -> Response:
    """A job's batches ended per second against time (epoch seconds), over its life: at most 360 points.

    Errors: 400 a job id that is not one or an unknown query parameter; 404 unknown API or job;
    503 job store unavailable.
    """
    _check_job(api_name, job_id)
    buckets = throughput.read_buckets(services().redis, job_id)
    return jsonify({"job_id": job_id, **throughput.series(buckets)})


@bp.get("/batch/<api_name>/<job_id>/dead_letters")
def job_dead_letters(api_name: str, job_id: str) -> Response:
    """A job's batches that failed for good: the first 100 by batch number (id, attempts, last error), and
    how many there are in all.

    Errors: 400 a job id that is not one or an unknown query parameter; 404 unknown API or job;
    503 job store unavailable.
    """
    _check_job(api_name, job_id)
    return jsonify({"job_id": job_id, **batch_errors.read(services().redis, job_id)})


def _check_job(api_name: str, job_id: str) -> None:
    """Raise InvalidRequest for a query parameter or a bad job id, ApiNotFound or JobNotFound."""
    services().registry.get(api_name)
    _query()
    if not JOB_ID_IN_PATH.fullmatch(job_id):
        raise InvalidRequest(f"{job_id[:80]!r} is not a job id: the job_id that POST /batch/{api_name} answered")
    _state(api_name, job_id)


def _wants_html() -> bool:
    accepted = request.accept_mimetypes
    return accepted.best_match(["application/json", "text/html"]) == "text/html" and accepted["text/html"] > 0
