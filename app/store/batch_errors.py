"""The last error of a job's batches that failed for good, for its dead letters page.

The worker notes each batch that fails for good (workers/tasks.py), with the deliveries it took;
only the first BATCH_ERRORS_KEPT are kept, so a job with a million failures keeps a bounded hash.
The ids of all of them are in the job's kept failed batches (app/store/retries.py).
"""

from __future__ import annotations

import json

import redis

from app.store import keys
from app.store.scripts import lua_file

BATCH_ERRORS_KEPT = 100
MAX_ERROR_CHARS = 2000

_NOTE = lua_file("batch_error")  # atomic: concurrent workers never keep more than BATCH_ERRORS_KEPT


def note(client: redis.Redis, job_id: str, batch_id: str, error: str) -> bool:
    """Keep a batch's last error (if fewer than BATCH_ERRORS_KEPT are kept); False if it was not."""
    hash_key, deliveries = keys.batch_errors(job_id), keys.deliveries(job_id)
    return bool(client.eval(_NOTE, 2, hash_key, deliveries, batch_id, error[:MAX_ERROR_CHARS], BATCH_ERRORS_KEPT))


def read(client: redis.Redis, job_id: str, limit: int = BATCH_ERRORS_KEPT) -> dict:
    """`{"dead_letters": [{"batch_id", "attempts", "error"}], "total", "more"}`: the first `limit` batches
    that failed for good by batch number, and how many there are in all (`more`: the rest)."""
    pipe = client.pipeline(transaction=False)
    pipe.zrange(keys.failed_batches(job_id), 0, limit - 1)
    pipe.hget(keys.job(job_id), "failed_batches")
    pipe.hgetall(keys.batch_errors(job_id))
    entries, total, errors = pipe.execute()
    letters = []
    for entry in entries:
        batch_id = _text(entry).split(" ", 1)[0]
        kept = json.loads(_text(errors.get(_key(errors, batch_id)) or "{}"))
        letters.append({"batch_id": batch_id, "attempts": kept.get("attempts"), "error": kept.get("error")})
    total = max(int(total or 0), len(letters))
    return {"dead_letters": letters, "total": total, "more": total - len(letters)}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _key(mapping: dict, text: str) -> bytes | str:
    # the client may or may not decode responses
    return text if text in mapping else text.encode()
