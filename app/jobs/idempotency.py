"""Idempotent submission: an `Idempotency-Key` on `POST /batch/<api>` makes a retried request
answer with the job the first one created, instead of creating a second job (Stripe's scheme).

A key is kept per API in Redis for `BATCHERY_IDEMPOTENCY_SECONDS` with the hash of its request's
body and, once created, the job's spec. The first request takes the key with `SET NX` (a
"creating" marker holding the body's hash), creates the job, then stores the spec under the key;
a request that finds the marker waits for the spec (a bounded time). If the first request fails
(a 400 found while creating, a broker outage), it removes its marker: nothing is kept, and the
next request with the key creates the job. Bodies are compared as JSON, not bytes: the hash is
of the canonical JSON (sorted keys, no whitespace), so a client that serialises the same body
again with other whitespace or key order sends the same request.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable
from typing import cast

import redis

from app.errors import IdempotencyConflict, InvalidRequest
from app.store import keys, retention

MAX_KEY_LENGTH = 255
# A marker outlives any creation (a 10 MiB item_list is stored in seconds); should its request die
# mid-creation, the key is free again after this, and 409s until then.
CREATING_MS = 120_000
WAIT_SECONDS = 60.0  # how long a request waits for the first one with its key to finish
POLL_SECONDS = 0.05


def check_key(key: str) -> str:
    """An `Idempotency-Key` header's value, checked: 1 to 255 printable ASCII characters; raises InvalidRequest."""
    printable = key.isascii() and key.isprintable()
    if key and len(key) <= MAX_KEY_LENGTH and printable:
        return key
    found = f"{len(key)} characters" + ("" if printable else ", not all of them printable ASCII")
    raise InvalidRequest(
        f"the Idempotency-Key header must be 1 to {MAX_KEY_LENGTH} printable ASCII characters (this one has "
        f"{found}): a UUID makes a good key"
    )


def body_digest(body: object) -> str:
    """The SHA-256 of a decoded JSON body's canonical form: the same for the same JSON, whatever its
    whitespace or key order."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class Idempotency:
    """Submissions by `Idempotency-Key`: the first creates the job, the others answer with it."""

    def __init__(self, client: redis.Redis, seconds: int, wait_seconds: float = WAIT_SECONDS):
        """`seconds`: how long a key answers with its job (BATCHERY_IDEMPOTENCY_SECONDS)."""
        self.redis = client
        self.seconds = seconds
        self.wait_seconds = wait_seconds

    def submit(self, api_name: str, key: str, digest: str, create: Callable[[], dict]) -> tuple[dict, bool]:
        """The job spec for this key: `create()`'s if this request is the first with the key, else
        the first one's; and whether it was replayed. Raises IdempotencyConflict for a key used with
        another body, or whose first request is still running after `wait_seconds`; and what
        `create` raises (the key is then left free)."""
        name = keys.idempotency(api_name, hashlib.sha256(key.encode()).hexdigest())
        give_up = time.monotonic() + self.wait_seconds
        while True:
            marker = uuid.uuid4().hex
            if self.redis.set(name, json.dumps({"body": digest, "creating": marker}), nx=True, px=CREATING_MS):
                return self._create(name, digest, marker, create), False
            found = self.redis.get(name)
            if found is None:  # the first request failed (or its key expired) just now: take it
                continue
            record = json.loads(found)
            if record["body"] != digest:
                raise IdempotencyConflict(
                    f"the Idempotency-Key {key!r} was already used with a different request body "
                    f"for api {api_name}: send the same body to get its job, or use a new key for a new job"
                )
            if "spec" in record:
                return record["spec"], True
            if time.monotonic() > give_up:
                raise IdempotencyConflict(
                    f"a request with the Idempotency-Key {key!r} is still being processed: retry in a moment"
                )
            time.sleep(POLL_SECONDS)

    def _create(self, name: str, digest: str, marker: str, create: Callable[[], dict]) -> dict:
        try:
            spec = create()
        except BaseException:
            self._release(name, marker)  # nothing stored: the next request with the key tries again
            raise
        self.redis.set(name, json.dumps({"body": digest, "spec": spec}), ex=self.seconds)
        retention.note_idempotency(self.redis, spec["job_id"], name)  # kept no longer than its job
        return spec

    def _release(self, name: str, marker: str) -> None:
        """Remove this request's marker, unless another request holds the key by now."""

        def delete_if_mine(pipe: redis.client.Pipeline) -> None:
            found = cast(bytes | None, pipe.get(name))
            mine = found is not None and json.loads(found).get("creating") == marker
            pipe.multi()
            if mine:
                pipe.delete(name)

        self.redis.transaction(delete_if_mine, name)
