"""What a request handler reaches through the running Flask app."""

from __future__ import annotations

from flask import current_app

from app.jobs.services import Services


def services() -> Services:
    """The app's services (settings, job store, broker), built once by `create_app`."""
    return current_app.extensions["batchery"]
