"""Batchery: batch jobs over a Celery fleet, with the REST interface of the Cortex Batch API.

The package is layered by concern (docs/architecture.md): `web` (the Flask API) over `jobs` (the
lifecycle) over `broker` and `store`, over `model` (the vocabulary every layer shares); `sources`
reads inputs. Importing `app` itself imports nothing else, so `app.client` and `app.cli` work
with only their own dependencies installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask


def create_app(config: dict | None = None) -> Flask:
    """Build the API (`gunicorn 'app:create_app()'`); see `app.web.create_app`."""
    from app.web import create_app as create_web_app

    return create_web_app(config)
