"""Deploying over HTTP: `POST /apis` (a project upload), `GET /apis`, `DELETE /apis/<api_name>`.

A project uploaded is unpacked into a temporary folder, checked, and deployed from there by the
registry, as `batchery deploy --redis` deploys a local folder (one code path): its files are packed
into the job store, where every worker fetches them, so no worker needs the path it came from.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, cast

from flask import Blueprint, Response, jsonify, request

from app import project_archive
from app.errors import ApiNotFound, DeployError, InvalidRequest
from app.model import job
from app.model.queues import api_queue
from app.model.status import STOPPED
from app.project_archive import ProjectError
from app.store import keys
from app.store.registry import ProjectTooLarge, public_spec, read_deployments
from app.store.replies import as_text
from app.web.batch import _query, endpoint
from app.web.context import services

bp = Blueprint("apis", __name__)

# Raw bodies: the archive itself; multipart: the archive as the form field `file`
ARCHIVE_TYPES = {
    "application/gzip",
    "application/x-gzip",
    "application/x-tar",
    "application/zip",
    "application/x-zip-compressed",
    "application/octet-stream",
}
FORCE_VALUES = {"true": True, "1": True, "false": False, "0": False}
CHUNK = 1024 * 1024


class ApiBusy(InvalidRequest):
    """The API has jobs in progress, so it is not undeployed without `?force=true`."""

    status = 409
    kind = "api_busy"


@bp.post("/apis")
def deploy() -> Response:
    """Deploy the BatchAPIs of a project: its cortex.yaml and files as a .tar.gz, .tar or .zip (the
    raw body, or the multipart form field `file`); nothing is deployed unless every API is valid.

    Errors: 400 an unreadable archive, a path with `..`, an absolute path or a link in it, no
    cortex.yaml, an API of another kind than BatchAPI, a predictor with a syntax error (file and
    line) or without class PythonPredictor, an invalid cortex.yaml; 413 the upload over
    BATCHERY_MAX_PROJECT_BYTES, or over 4 times that once uncompressed; 503 job store unavailable.
    """
    _query()
    limit = services().settings.max_project_bytes
    with tempfile.TemporaryDirectory(prefix="batchery-upload-") as temp:
        folder = Path(temp) / "project"
        folder.mkdir()
        with _upload(limit) as upload:
            _unpack(upload, folder, limit)
        with _warnings() as warnings:
            deployments = _read(folder, limit)
        deployed = services().registry.deploy(deployments)
    return jsonify({"apis": [_deployed(deployment.spec) for deployment in deployed], "warnings": warnings})


@contextlib.contextmanager
def _warnings() -> Iterator[list[str]]:
    """The registry's warnings about this request's cortex.yaml (keys Batchery ignores), for its
    answer: over HTTP the user does not see the API's log."""
    found: list[str] = []
    thread = threading.get_ident()

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.thread == thread and record.levelno >= logging.WARNING:
                found.append(record.getMessage())

    handler = Collect()
    registry_log = logging.getLogger("app.store.registry")
    registry_log.addHandler(handler)
    try:
        yield found
    finally:
        registry_log.removeHandler(handler)


def _upload(limit: int) -> IO[bytes]:
    """The uploaded archive in a temporary file, read at most `limit` bytes; raises ProjectTooLarge,
    InvalidRequest."""
    # refused before a byte is read: the app's own limit (10 MiB, for jobs) does not apply here
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    request.max_content_length = limit
    content_type = request.mimetype
    if content_type == "multipart/form-data":
        upload = request.files.get("file")
        if upload is None:
            raise InvalidRequest("the multipart body has no `file` field: send the project archive as `file`")
        return _spooled(upload.stream, limit)
    if content_type not in ARCHIVE_TYPES:
        raise InvalidRequest(
            f"send the project as a .tar.gz, .tar or .zip (Content-Type application/gzip, application/zip or "
            f"application/octet-stream), or as the multipart field `file`; not {content_type or 'no Content-Type'}"
        )
    return _spooled(request.stream, limit)


def _spooled(stream: IO[bytes], limit: int) -> IO[bytes]:
    spooled = tempfile.SpooledTemporaryFile(max_size=8 * CHUNK)  # noqa: SIM115  # the caller's `with` closes it
    total = 0
    while chunk := stream.read(CHUNK):
        total += len(chunk)
        if total > limit:  # a chunked body has no Content-Length: cut it here
            spooled.close()
            raise _too_large(limit)
        spooled.write(chunk)
    if total == 0:
        spooled.close()
        raise InvalidRequest("the body is empty: send the project as a .tar.gz, .tar or .zip")
    spooled.seek(0)
    return spooled


def _too_large(limit: int) -> ProjectTooLarge:
    return ProjectTooLarge(
        f"the project upload is over BATCHERY_MAX_PROJECT_BYTES ({limit} bytes): leave large files out "
        "with .cortexignore and have the predictor read them from S3"
    )


def _unpack(upload: IO[bytes], folder: Path, limit: int) -> None:
    try:
        project_archive.unpack(upload, folder, limit)
    except ProjectError as err:
        if err.status == 413:
            raise ProjectTooLarge(err.message) from None
        raise DeployError(err.message) from None


def _read(folder: Path, limit: int) -> list:
    """The deployments of the unpacked project (every API checked before any is stored)."""
    try:
        root = project_archive.project_root(folder)
    except ProjectError as err:
        raise DeployError(err.message) from None
    deployments = read_deployments(root / "cortex.yaml", limit, strict=True)
    if not deployments:
        raise DeployError("cortex.yaml declares no BatchAPI")
    return deployments


def _deployed(spec: dict) -> dict:
    return {
        "name": spec["name"],
        "api_id": spec["api_id"],
        "project_id": spec.get("project_id"),
        "endpoint": endpoint(spec["name"]),
    }


@bp.get("/apis")
def list_deployed() -> Response:
    """Every deployed API with its ids: name, api_id, project_id, compute, the queue its jobs run on,
    python_path, when it was deployed, and its endpoint.

    Errors: 400 a query parameter (it takes none), 503 job store unavailable.
    """
    _query()
    registry = services().registry
    apis = []
    for name in registry.names():
        try:
            spec = registry.get(name)
        except ApiNotFound:  # undeployed between the two reads
            continue
        apis.append(
            {
                **_deployed(spec),
                "compute": spec.get("compute"),
                # the queue its jobs run on: cortex.yaml's `queue:`, `gpu` for compute.gpu > 0, or the default
                "queue": api_queue(spec, services().settings.queue),
                "python_path": spec["predictor"].get("python_path"),
                "deployed_at": spec.get("deployed_at"),
                "spec": public_spec(spec),
            }
        )
    return jsonify({"apis": apis})


@bp.delete("/apis/<api_name>")
def undeploy(api_name: str) -> Response:
    """Undeploy an API: its routes answer 404 from then on (its ended jobs are kept until they
    expire, readable again if it is deployed again). With jobs of it in progress, `?force=true`
    stops them first.

    Errors: 400 an unknown query parameter or a force other than true/false; 404 unknown API; 409
    jobs of it in progress (without force=true); 503 job store unavailable.
    """
    force = _force(_query("force"))
    registry = services().registry
    registry.get(api_name)
    active = services().redis.zrange(keys.api_active(api_name), 0, -1)
    running = [as_text(job_id) for job_id in cast(list[bytes], active)]
    if running and not force:
        raise ApiBusy(
            f"api {api_name} has {len(running)} job(s) in progress ({', '.join(running[:5])}): stop them, "
            "or undeploy with ?force=true, which stops them first"
        )
    stopped = [job_id for job_id in running if _stop(job_id, api_name)]
    registry.undeploy(api_name)
    return jsonify({"message": f"undeployed api {api_name}", "stopped_jobs": stopped})


def _stop(job_id: str, api_name: str) -> bool:
    """Stop a job of the API, as DELETE /batch/<api>?jobID= does; False if it had already ended."""
    state = services().store.state(job_id, api_name, job.now())
    if state is None:
        return False
    return services().store.end(state["spec"], STOPPED, f"the api {api_name} was undeployed", job.now())


def _force(args: dict[str, str]) -> bool:
    value = args.get("force", "false").lower()
    if value not in FORCE_VALUES:
        raise InvalidRequest(f"force must be true or false (or 1 or 0), not {args['force']!r}")
    return FORCE_VALUES[value]
