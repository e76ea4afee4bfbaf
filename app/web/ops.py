"""What operators and their tools call: health, metrics, and the API's own documentation."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, render_template
from markdown_it import MarkdownIt
from markupsafe import Markup
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.web import openapi
from app.web.context import services
from app.web.metrics import registry_for

bp = Blueprint("ops", __name__)

# CommonMark, with raw HTML in the text escaped rather than passed through
MARKDOWN = MarkdownIt("commonmark", {"html": False})


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    """Whether the job store's Redis and the broker answer. Errors: 503 either does not."""
    report, code = current_app.extensions["batchery_health"].check()
    return jsonify(report), code


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus metrics of the APIs and their jobs, read from the job store. Errors: 503 job store unavailable."""
    found = services()
    text = generate_latest(registry_for(found.store, found.settings, found.broker_queue))
    return Response(text, content_type=CONTENT_TYPE_LATEST)


@bp.get("/openapi.json")
def openapi_json() -> Response:
    """This API's OpenAPI 3 document."""
    return jsonify(document())


@bp.get("/docs")
def docs() -> str:
    """This API's documentation, as a web page."""
    return render_template("docs.html", spec=document(), schema_type=openapi.schema_type, markdown=inline_markdown)


def inline_markdown(text: str | None) -> Markup:
    """The Markdown of a summary or description (`code`, *emphasis*) as HTML, to show in the docs page."""
    return Markup(MARKDOWN.renderInline(text or ""))  # safe: markdown-it escapes the text, raw HTML included


def document() -> dict:
    """Built once per app: the routes and schemas do not change while it runs."""
    if "batchery_openapi" not in current_app.extensions:
        current_app.extensions["batchery_openapi"] = openapi.build(current_app)
    return current_app.extensions["batchery_openapi"]
