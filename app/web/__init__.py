"""Batchery's API: the Flask application factory."""

from __future__ import annotations

import logging

import redis
from flask import Flask, Response, jsonify, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException, MethodNotAllowed, RequestEntityTooLarge

from app.config import MAX_BODY_BYTES, Settings, redacted
from app.errors import PayloadTooLarge
from app.jobs.services import Services
from app.jobs.watchdog import Watchdog
from app.jobs.webhook import WebhookSender
from app.store.joblog import attach_job_log, configure_process_logging
from app.store.registry import read_deployments
from app.web.auth import require_token
from app.web.health import Health

log = logging.getLogger(__name__)


def create_app(config: dict | None = None) -> Flask:
    """Build the API: deploys `BATCHERY_APIS` at start. `config` may hold `SETTINGS` and `CELERY`."""
    config = config or {}
    flask_app = Flask(__name__)
    flask_app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES  # refused before the body is read whole
    flask_app.json = UnsortedJSON(flask_app)
    settings = config.get("SETTINGS") or Settings.from_env()
    services = Services.build(settings, config.get("CELERY"))
    flask_app.extensions["batchery"] = services
    if logging.getLogger().handlers:  # a host (gunicorn, pytest) set up logging: only add the job logs
        attach_job_log(services.job_log)
    else:
        configure_process_logging(services.job_log, log_format=settings.log_format)
    flask_app.extensions["batchery_health"] = Health(settings, services.broker_queue)
    deployed = services.registry.deploy(read_deployments(settings.apis_file)) if settings.apis_file else []
    if settings.watchdog_seconds > 0:
        watchdog = Watchdog(services, deployed)
        watchdog.start(settings.watchdog_seconds)
        flask_app.extensions["batchery_watchdog"] = watchdog
    if settings.webhook_secret:  # without a secret no job has a webhook (a submission with one is a 400)
        webhooks = WebhookSender(services)
        webhooks.start()
        flask_app.extensions["batchery_webhooks"] = webhooks

    from app.web import apis, dashboard, ops
    from app.web import batch as api

    flask_app.register_blueprint(api.bp)
    flask_app.register_blueprint(apis.bp)
    flask_app.register_blueprint(ops.bp)
    flask_app.register_blueprint(dashboard.bp)
    require_token(flask_app, settings.api_token)
    flask_app.register_error_handler(RequestEntityTooLarge, _too_large)
    flask_app.register_error_handler(HTTPException, _http_error)
    flask_app.register_error_handler(redis.RedisError, _store_unavailable)
    return flask_app


class UnsortedJSON(DefaultJSONProvider):
    """Flask's JSON, with the keys of an answer in the order the code puts them (Cortex's order)."""

    sort_keys = False


def _too_large(err: RequestEntityTooLarge) -> tuple[Response, int]:
    return jsonify({"kind": PayloadTooLarge.kind, "message": PayloadTooLarge.MESSAGE}), PayloadTooLarge.status


def _http_error(err: HTTPException) -> tuple[Response, int, list[tuple[str, str]]]:
    message = err.description
    if isinstance(err, MethodNotAllowed) and err.valid_methods:
        message = f"{request.method} is not allowed for this URL; it takes {', '.join(sorted(err.valid_methods))}"
    # werkzeug's headers but its HTML content type: a 405's Allow, which HTTP requires
    headers = [(name, value) for name, value in err.get_headers() if name.lower() != "content-type"]
    code = err.code or 500  # werkzeug's HTTPExceptions all set one; the type allows None
    return jsonify({"kind": err.name.lower().replace(" ", "_"), "message": message}), code, headers


def _store_unavailable(err: redis.RedisError) -> tuple[Response, int]:
    log.warning("job store error: %s", redacted(str(err)))
    return jsonify(
        {"kind": "store_unavailable", "message": f"the job store (Redis) is unavailable: {type(err).__name__}"}
    ), 503
