"""A job: its spec (what was asked), and how its state reads as a Cortex job status."""

from __future__ import annotations

import copy
import os
import time
from datetime import UTC, datetime

from app import status

# Without a dead-letter queue Cortex does not retry a batch whose predict raised; a delivery that
# died with its worker (a preempted or killed process) is still delivered again, this often in all.
DELIVERIES_WITHOUT_DLQ = 3


def new_job_id(now: float) -> str:
    """A 16-hex-digit id that sorts by creation time (like Cortex's)."""
    return f"{int(now * 1_000_000):013x}{os.urandom(2).hex()[:3]}"


def deep_merge(base: dict, override: dict) -> dict:
    """`override` merged into a copy of `base`, recursively for nested mappings; override wins."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def iso(timestamp: float | None) -> str | None:
    """RFC 3339 UTC time, as Cortex prints it."""
    if not timestamp:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def build_spec(api: dict, submission: dict, queue_url: str, now: float) -> dict:
    """The job spec returned on submission and given to the predictor as `job_spec`."""
    job_id = new_job_id(now)
    spec = {
        "job_id": job_id,
        "api_name": api["name"],
        "kind": "BatchAPI",
        "workers": submission["workers"],
        "config": deep_merge(api["predictor"]["config"], submission["config"]),
        "api_id": api["api_id"],
        "sqs_url": f"{queue_url}#job={job_id}",
        "created_time": iso(now),
    }
    if submission.get("timeout"):
        spec["timeout"] = submission["timeout"]
    if submission.get("sqs_dead_letter_queue"):
        spec["sqs_dead_letter_queue"] = dict(submission["sqs_dead_letter_queue"])
    return spec


def queue_of(spec: dict) -> str:
    """The broker queue a job's batches go through, as in `public_queue_url`."""
    return spec["sqs_url"].partition("#")[0]


def retry_limits(spec: dict) -> tuple[int, int]:
    """(deliveries a batch may have in all, deliveries after which a raising predict is final)."""
    dlq = spec.get("sqs_dead_letter_queue")
    if dlq:
        return dlq["max_receive_count"], dlq["max_receive_count"]
    return DELIVERIES_WITHOUT_DLQ, 1


def job_status(state: dict) -> dict:
    """The `job_status` object of the reference page, from a job's stored state."""
    spec = state["spec"]
    view = dict(spec)
    view["status"] = state["status"]
    if state.get("message"):
        view["message"] = state["message"]
    view["total_batch_count"] = state["total"]
    view["batches_in_queue"] = max(0, state["total"] - state["succeeded"] - state["failed_batches"])
    metrics = {"succeeded": state["succeeded"], "failed": state["failed"]}
    if state["succeeded"]:
        metrics["avg_time_per_batch"] = state["time_sum"] / state["succeeded"]
    view["batch_metrics"] = metrics
    if state["status"] in status.IN_PROGRESS:
        view["worker_counts"] = state["worker_counts"]
    view["created_time"] = spec["created_time"]
    view["start_time"] = iso(state.get("start"))
    if state.get("end"):
        view["end_time"] = iso(state["end"])
    return {k: v for k, v in view.items() if v is not None}


def deadline(spec: dict, created: float) -> float:
    """Epoch seconds at which the job times out, 0 for none (timeout counts from submission)."""
    return created + spec["timeout"] if spec.get("timeout") else 0.0


def now() -> float:
    """The clock every job time is measured with."""
    return time.time()
