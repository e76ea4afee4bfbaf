"""What operators and their tools call: health, metrics, and the API's own documentation."""

from __future__ import annotations

import redis
from flask import Blueprint, Response, current_app, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.metrics import registry_for
from app.services import Services

bp = Blueprint("ops", __name__)


def services() -> Services:
    return current_app.extensions["batchery"]


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    """Whether the job store's Redis and the broker answer. Errors: 503 naming each that does not."""
    report, code = current_app.extensions["batchery_health"].check()
    return jsonify(report), code


@bp.get("/metrics")
def metrics() -> Response | tuple[Response, int]:
    """Prometheus metrics of every API and job, read from the job store. Errors: 503 Redis unreachable."""
    found = services()
    try:
        text = generate_latest(registry_for(found.store, found.settings, found.broker_queue))
    except redis.RedisError as err:
        message = f"cannot read the job store: {type(err).__name__}"
        return jsonify({"kind": "store_unavailable", "message": message}), 503
    return Response(text, content_type=CONTENT_TYPE_LATEST)
