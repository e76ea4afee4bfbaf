"""A job's progress: batches done of the total, the rate over the last 30 s, and the time left at it.

The rate costs the status read nothing in the job's size. RECORD (app/store/lua/record.lua) counts
each batch that ends in a ring of `SLOTS` per-second buckets kept in the job hash, fields
`ends:<second mod SLOTS>` = `"<second> <count>"`: one more command in the call that counts the
batch anyway. The status read takes them with the rest of the job hash, and a bucket older than
the window is ignored here, so nothing needs trimming.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from app.model import status

WINDOW_SECONDS = 30
# More slots than the window's seconds: a bucket in the window is never the slot a writer is
# reusing for the current second, even with the writers' clocks a second or two apart.
SLOTS = 32
BUCKET_PREFIX = "ends:"

# The statuses in which batches start. A job in any other status that is not final (paused) starts
# none, so it has no rate and no time left to estimate.
ADVANCING = frozenset({status.ENQUEUING, status.RUNNING})


def ends_by_second(job_hash: Mapping[str, str]) -> dict[int, int]:
    """The ring's buckets read from a job hash: second -> batches that ended in it."""
    ends: dict[int, int] = {}
    for name, value in job_hash.items():
        if name.startswith(BUCKET_PREFIX):
            second, _, count = value.partition(" ")
            ends[int(second)] = int(count)
    return ends


def batches_per_second(ends: Mapping[int, int], at: float, started: float | None) -> float:
    """Batches ended per second over the `WINDOW_SECONDS` up to `at` (fewer if the job started
    since); 0.0 when none ended in it."""
    current = math.floor(at)
    first = current - WINDOW_SECONDS + 1
    # buckets after `current` come from a writer whose clock is ahead: they are recent too
    ended = sum(count for second, count in ends.items() if second >= first)
    if not ended:
        return 0.0
    span = at - first  # the window's whole seconds and the elapsed part of the current one
    if started:
        span = min(span, at - started)
    return ended / max(span, 1.0)  # at least a second: one early batch is not a rate of thousands


def eta_seconds(remaining: int, rate: float) -> int | None:
    """Whole seconds until `remaining` batches end at `rate` (rounded up); 0 with none remaining;
    None without a rate."""
    if remaining <= 0:
        return 0
    if rate <= 0:
        return None
    return math.ceil(remaining / rate)


def job_progress(state: Mapping) -> dict:
    """`job_status.progress` from a job's stored state: `done` (batches ended, succeeded or failed
    for good), `total` (as `total_batch_count`: what is enqueued so far), `batches_per_second` over
    the last 30 s (for a job that ended, its last 30 s), and `eta_seconds` (null without a rate, 0
    once the job ended)."""
    done = state["succeeded"] + state["failed_batches"]
    total = state["total"]
    ends, started = state.get("ends") or {}, state.get("start")
    if state["status"] in ADVANCING and state.get("read_time"):
        rate = batches_per_second(ends, state["read_time"], started)
        eta = eta_seconds(total - done, rate)
    elif status.is_final(state["status"]):
        rate = batches_per_second(ends, state["end"], started) if state.get("end") else 0.0
        eta = 0
    else:
        rate, eta = 0.0, None
    return {"done": done, "total": total, "batches_per_second": round(rate, 3), "eta_seconds": eta}
