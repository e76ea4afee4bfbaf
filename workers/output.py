"""Writing a batch's predictions where its job's `output` says (app/jobs/output.py), from the pool
process that ran `predict`, before the batch's outcome is counted."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from app.jobs.output import OutputError, OutputStore, S3Destination, ndjson_lines, write_s3

log = logging.getLogger(__name__)


def write_batch_output(spec: dict, batch_id: str, items: Any, prediction: Any, store: Callable[[], OutputStore]) -> str:
    """Write `predict`'s return value for a batch of a job that has `output`; what was written, for
    the batch's log line ("" for a job without output). Raises OutputError, logged in the job's log
    with S3's (or the store's) answer: the attempt fails, and a retry writes again."""
    output = spec.get("output")
    if not output:
        return ""  # as on Cortex: predict's return value is ignored
    try:
        body = ndjson_lines(batch_id, items if isinstance(items, list) else [], prediction)
        lines = body.count(b"\n")
        if "s3_path" in output:
            where = write_s3(S3Destination.of(output["s3_path"]), spec["job_id"], batch_id, body)
        else:
            store().put(spec["job_id"], batch_id, body)
            where = "the job store"
    except OutputError as err:
        log.error("batch %s: its output was not written: %s", batch_id, err)
        raise
    return f"output: {lines} lines, {len(body):,} bytes to {where}"
