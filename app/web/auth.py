"""Optional bearer-token auth: with BATCHERY_API_TOKEN set, every endpoint needs it but /healthz,
the API's own documentation (/openapi.json, /docs) and the dashboard's HTML shells and static files."""

from __future__ import annotations

import hmac

from flask import Flask, Response, current_app, jsonify, request

# Load balancers and orchestrators probe /healthz without credentials; it says only ok/unhealthy
# per dependency (never a URL with a password: app/web/health.py strips them). The documentation
# describes the routes of this open-source API, no data: a browser (which sends no bearer token)
# must be able to read /docs, and fuzzers and client generators /openapi.json; every call they
# document still needs the token.
# The dashboard's HTML shells and static files carry no job data: their script reads it through the
# token-checked JSON API, with the token the person gives the page (app/web/dashboard.py).
OPEN_ENDPOINTS = frozenset(
    {"ops.healthz", "ops.openapi_json", "ops.docs", "dashboard.index", "dashboard.job_page", "static"}
)


def require_token(flask_app: Flask, token: str) -> None:
    """Check `Authorization: Bearer <token>` before every request to `flask_app` (not /healthz)."""
    if not token:
        return
    flask_app.extensions["batchery_token"] = token.encode()
    flask_app.before_request(_check)


def token_required(flask_app: Flask) -> bool:
    """Whether `flask_app` asks for a token (BATCHERY_API_TOKEN is set)."""
    return "batchery_token" in flask_app.extensions


def _check() -> tuple[Response, int] | None:
    # request.endpoint is None for an unknown route: it needs the token too, so that a caller
    # without it learns nothing, not even which routes exist.
    if request.endpoint in OPEN_ENDPOINTS:
        return None
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    expected = current_app.extensions["batchery_token"]
    if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected):
        return None
    message = (
        "a valid API token is required: send `Authorization: Bearer <token>` (the API's BATCHERY_API_TOKEN)"
        if scheme
        else "this API needs a token: send `Authorization: Bearer <token>` (the API's BATCHERY_API_TOKEN)"
    )
    response = jsonify({"kind": "unauthorized", "message": message})
    response.headers["WWW-Authenticate"] = 'Bearer realm="batchery"'
    return response, 401
