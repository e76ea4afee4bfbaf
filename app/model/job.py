"""A job: its spec (what was asked), and how its state reads as a Cortex job status."""

from __future__ import annotations

import copy
import os
import time
from datetime import UTC, datetime

from app.model import progress, status

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
    dead_letter_queue = submission.get("sqs_dead_letter_queue")
    spec = {
        "job_id": job_id,
        "api_name": api["name"],
        "kind": "BatchAPI",
        "workers": submission["workers"],
        "config": deep_merge(api["predictor"]["config"], submission["config"]),
        "api_id": api["api_id"],
        "sqs_url": f"{queue_url}#job={job_id}",
        # null when not given, never left out: Cortex sent both keys always (clients read job["timeout"])
        "timeout": submission.get("timeout") or None,
        "sqs_dead_letter_queue": dict(dead_letter_queue) if dead_letter_queue else None,
        "created_time": iso(now),
        # null when not given, as timeout: every spec has the same keys
        "webhook": {"url": submission["webhook"]["url"]} if submission.get("webhook") else None,
        "parent_job_id": None,  # a retry's (POST .../retry): the job whose batches it runs again
        # where predict's return values go ({"s3_path"} or {"store"}); null for none, as timeout
        "output": dict(submission["output"]) if submission.get("output") else None,
    }
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
    """The `job_status` object of the reference page, from a job's stored state.

    Keys Cortex always sent are always here, `null` when there is no value (`timeout`,
    `sqs_dead_letter_queue`, `start_time` before any batch started); the ones the reference page
    calls optional are left out instead (`end_time`, `worker_counts` once the job ended).
    """
    spec = state["spec"]
    view = dict(spec)
    view.setdefault("timeout", None)  # jobs stored before both keys were kept
    view.setdefault("sqs_dead_letter_queue", None)
    view.setdefault("parent_job_id", None)  # jobs stored before retries
    view.setdefault("output", None)  # jobs stored before predictions were collected
    view["status"] = state["status"]
    if state.get("message"):
        view["message"] = state["message"]
    view["total_batch_count"] = state["total"]
    view["batches_in_queue"] = batches_in_queue(state)
    view["batch_metrics"] = batch_metrics(state)
    view["progress"] = progress.job_progress(state)
    if state["status"] in status.IN_PROGRESS:
        view["worker_counts"] = state["worker_counts"]
    view["created_time"] = spec["created_time"]
    view["start_time"] = iso(state.get("start"))
    if state.get("end"):
        view["end_time"] = iso(state["end"])
    # the spec's {"url"}, with how its delivery went; null without one (and for jobs older than webhooks)
    view["webhook"] = dict(state["webhook"]) if "webhook" in state else None
    if state.get("retry_job_ids"):  # retried (POST .../retry): its retries, oldest first
        view["retry_job_ids"] = state["retry_job_ids"]
    return view


def batches_in_queue(state: dict) -> int:
    """Batches not finished yet; 0 once the job ended, as on Cortex (the queue of an ended job is
    gone: a stopped job's remaining batches never run, and a script waiting for 0 must not spin)."""
    if state["status"] not in status.IN_PROGRESS:
        return 0
    return max(0, state["total"] - state["succeeded"] - state["failed_batches"])


def batch_metrics(state: dict) -> dict:
    """`batch_metrics`: `avg_time_per_batch` as the reference page names it (absent until a batch
    succeeded), and the same figure as `average_time_per_batch`, the name (and `null`) a running
    Cortex 0.28 cluster sent, for scripts written against one."""
    average = state["time_sum"] / state["succeeded"] if state["succeeded"] else None
    metrics = {"succeeded": state["succeeded"], "failed": state["failed"]}
    if average is not None:
        metrics["avg_time_per_batch"] = average
    metrics["average_time_per_batch"] = average
    return metrics


def deadline(spec: dict, created: float) -> float:
    """Epoch seconds at which the job times out, 0 for none (timeout counts from submission)."""
    return created + spec["timeout"] if spec.get("timeout") else 0.0


def now() -> float:
    """The clock every job time is measured with."""
    return time.time()
