"""What operators and their tools call: health, metrics, and the API's own documentation."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from app.services import Services

bp = Blueprint("ops", __name__)


def services() -> Services:
    return current_app.extensions["batchery"]


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    """Whether the job store's Redis and the broker answer. Errors: 503 naming each that does not."""
    report, code = current_app.extensions["batchery_health"].check()
    return jsonify(report), code
