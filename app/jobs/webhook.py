"""The signed completion webhook: when a job with a `webhook` reaches its final status, POST a
`job.ended` event to its URL, signed as Stripe signs its webhooks, until the target takes it.

Delivery never holds up a job. The Lua call that sets a job's final status (`end_job` in
app/store/lua/common.lua, whatever ended the job: its finalizer after `on_job_complete`, a stop,
the timeout, a failed enqueue) also puts the job in the outbox, a sorted set of due times in
Redis. A daemon thread in each API process (as the watchdog) takes the due events, each under a
Redis lock so that one process sends it, and POSTs them from a small pool of threads, 10 s at most
each. A non-2xx answer, a timeout or a refused connection is retried with exponential backoff
(`BATCHERY_WEBHOOK_BACKOFF_SECONDS`, doubling, at most an hour apart) until
`BATCHERY_WEBHOOK_RETRY_SECONDS` after the job ended. The outbox and the attempts are in Redis,
so a restart of any process loses nothing: delivery is at least once, and every attempt sends
the same event (its body is fixed at the first attempt, and `Batchery-Event-Id` with it).

Each attempt is signed afresh: `Batchery-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
"<t>.<raw body>" keyed with BATCHERY_WEBHOOK_SECRET>`; a receiver checks it and that `t` is
recent (the README shows how, in Python).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import cast
from urllib.parse import urlsplit

import redis

from app.config import Settings, redacted
from app.errors import InvalidRequest
from app.jobs.services import Services
from app.model.job import job_status, now
from app.store import keys
from app.store.joblog import for_job

log = logging.getLogger(__name__)

EVENT = "job.ended"
ATTEMPT_SECONDS = 10.0  # an attempt's connect, and each read of its answer, time out after this
MAX_BACKOFF_SECONDS = 3600.0
SENDERS = 8  # attempts under way at once, per API process: one slow target does not hold up the others
LOCK_MS = 60_000  # longer than any attempt: the process sending an event holds it that long at most
DUE_AT_ONCE = 100


def check_submission(submission: dict, settings: Settings) -> None:
    """Refuse a submission with a webhook when this server has no secret to sign it with; raises InvalidRequest."""
    if submission.get("webhook") and not settings.webhook_secret:
        raise InvalidRequest(
            "webhook: this server cannot sign webhooks (BATCHERY_WEBHOOK_SECRET is not set on the API); "
            "set it, or submit the job without a webhook"
        )


def event_id(job_id: str) -> str:
    """The id of a job's `job.ended` event: the same on every attempt, so a receiver can drop repeats."""
    return f"evt_{job_id}"


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The `Batchery-Signature` header's value: `t=<timestamp>,v1=<hex HMAC-SHA256 of "<t>.<body>">`."""
    signed = str(timestamp).encode() + b"." + body
    return f"t={timestamp},v1={hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()}"


class WebhookRefused(Exception):
    """The target's address is one BATCHERY_WEBHOOK_DENY_PRIVATE=1 refuses."""


def post(url: str, body: bytes, headers: dict[str, str], deny_private: bool, timeout: float = ATTEMPT_SECONDS) -> int:
    """POST `body` to `url`; the answer's status code. The host is resolved here, at delivery time,
    and the connection made to the address checked (no second lookup that could answer otherwise).
    Raises WebhookRefused for a refused address, OSError (and http.client's errors) for the rest."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    address = _address(host, port, deny_private)
    connection = (
        _Pinned(host, port, address, timeout) if parts.scheme == "http" else _PinnedTls(host, port, address, timeout)
    )
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request("POST", path, body=body, headers=headers)
        answer = connection.getresponse()
        answer.read(65536)  # a bounded read: the answer's body is not used
        return answer.status
    finally:
        connection.close()


def _address(host: str, port: int, deny_private: bool) -> str:
    """The address to connect to for `host`; raises WebhookRefused, or OSError if it does not resolve."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = [str(entry[4][0]) for entry in found]
    if deny_private:
        for address in addresses:
            kind = _non_public(ipaddress.ip_address(address.partition("%")[0]))
            if kind:
                raise WebhookRefused(
                    f"{host} resolves to {address}, a {kind} address, which BATCHERY_WEBHOOK_DENY_PRIVATE=1 refuses"
                )
    return addresses[0]


def _non_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """What kind of non-public address this is ("" for a public one)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    for kind in ("loopback", "link_local", "private", "multicast", "unspecified", "reserved"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    return "" if address.is_global else "non-public"


class _Pinned(http.client.HTTPConnection):
    """An HTTP connection to the address already resolved (and checked), with the URL's Host."""

    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedTls(http.client.HTTPSConnection):
    """An HTTPS connection to the address already resolved, its certificate checked for the URL's host."""

    def __init__(self, host: str, port: int, address: str, timeout: float):
        self.tls = ssl.create_default_context()
        super().__init__(host, port, timeout=timeout, context=self.tls)
        self.address = address

    def connect(self) -> None:
        raw = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self.tls.wrap_socket(raw, server_hostname=self.host)


class WebhookSender:
    """Sends the due completion webhooks of the fleet, from this process, one sender per event."""

    def __init__(self, services: Services, poster: Callable[..., int] = post):
        self.services = services
        self.settings = services.settings
        self.poster = poster
        self._pool = ThreadPoolExecutor(max_workers=SENDERS, thread_name_prefix="batchery-webhook")
        self._busy = 0
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    def start(self) -> threading.Thread:
        """Look for due webhooks every second (sooner with a shorter backoff) in a daemon thread."""
        every = min(1.0, max(0.05, self.settings.webhook_backoff_seconds / 2))
        thread = threading.Thread(target=self._loop, args=(every,), name="batchery-webhooks", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        """Stop looking for due webhooks (attempts under way run to their end)."""
        self._stopped.set()
        self._pool.shutdown(wait=False)

    def _loop(self, every: float) -> None:
        while not self._stopped.wait(every):
            try:
                self.send_due(now())
            except redis.RedisError as err:  # one line a turn, not a traceback, while Redis is down
                log.warning("webhooks: the job store does not answer (%s)", err)
            except Exception:
                log.exception("webhooks: looking for due webhooks failed")

    def send_due(self, at: float) -> int:
        """Start sending the webhooks due at `at` that no other process is sending; how many."""
        with self._lock:
            room = SENDERS - self._busy
        if room <= 0:
            return 0
        client = self.services.redis
        due = cast(list[bytes], client.zrangebyscore(keys.webhook_outbox(), "-inf", at, start=0, num=DUE_AT_ONCE))
        started = 0
        for raw in due:
            if started == room:
                break
            job_id, token = raw.decode(), uuid.uuid4().hex
            if not client.set(keys.webhook_lock(job_id), token, nx=True, px=LOCK_MS):
                continue  # another process sends it now
            try:
                with self._lock:
                    self._busy += 1
                self._pool.submit(self._send_one, job_id, token)
            except RuntimeError:  # stopped meanwhile: leave the event to another process, at once
                with self._lock:
                    self._busy -= 1
                _delete_if(client, keys.webhook_lock(job_id), token)
                break
            started += 1
        return started

    def _send_one(self, job_id: str, token: str) -> None:
        try:
            self.attempt(job_id)
        except Exception:
            log.exception("webhooks: job %s: the attempt failed; it is tried again later", job_id)
        finally:
            _delete_if(self.services.redis, keys.webhook_lock(job_id), token)
            with self._lock:
                self._busy -= 1

    def attempt(self, job_id: str) -> None:
        """POST a job's `job.ended` event once, and note how it went: delivered, due again later, or
        given up once BATCHERY_WEBHOOK_RETRY_SECONDS passed since the job ended."""
        client, store = self.services.redis, self.services.store
        api_name = cast(bytes | None, client.hget(keys.job(job_id), "api_name"))
        state = store.state(job_id, api_name.decode(), now()) if api_name else None
        if state is None or "webhook" not in state:  # the job is gone: nothing to say
            client.zrem(keys.webhook_outbox(), job_id)
            return
        body = self._body(job_id, state)
        url = state["webhook"]["url"]
        number = state["webhook"]["attempts"] + 1
        error = self._post(url, job_id, body)
        with for_job(state["spec"]["api_name"], job_id, self.services.job_log):
            self._note(job_id, state, number, error)

    def _body(self, job_id: str, state: dict) -> bytes:
        """The event's body: fixed by the first attempt, so that every attempt sends the same event."""
        client = self.services.redis
        event = {
            "event": EVENT,
            "api_name": state["spec"]["api_name"],
            "job_id": job_id,
            "job_status": job_status(state),
        }
        client.set(keys.webhook_body(job_id), json.dumps(event), nx=True)
        client.expire(keys.webhook_body(job_id), max(client.ttl(keys.job(job_id)), 1))  # kept as long as the job
        return cast(bytes, client.get(keys.webhook_body(job_id)))

    def _post(self, url: str, job_id: str, body: bytes) -> str:
        """POST the event once; "" if the target took it (2xx), else what went wrong."""
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Batchery-Webhooks/1",
            "Batchery-Event-Id": event_id(job_id),
            "Batchery-Signature": signature(self.settings.webhook_secret, int(time.time()), body),
        }
        try:
            code = self.poster(url, body, headers, self.settings.webhook_deny_private)
        except WebhookRefused as err:
            return f"refused: {err}"
        except TimeoutError:
            return f"no answer within {ATTEMPT_SECONDS:g} s"
        except (OSError, http.client.HTTPException) as err:
            return f"{type(err).__name__}: {err}"
        return "" if 200 <= code < 300 else f"HTTP {code}"

    def _note(self, job_id: str, state: dict, number: int, error: str) -> None:
        url, at = redacted(state["webhook"]["url"]), now()
        give_up = bool(error) and at - state["end"] >= self.settings.webhook_retry_seconds
        delay = min(self.settings.webhook_backoff_seconds * 2 ** (number - 1), MAX_BACKOFF_SECONDS)
        due_again = None if not error or give_up else at + delay
        # Written only while the job is kept (WATCHed: its keys may expire meanwhile,
        # BATCHERY_JOB_RETENTION_SECONDS), or its fields would make a job hash of their own, kept for ever.
        kept: list[bool] = []  # one per try: the transaction runs it again if the job changed meanwhile

        def write(pipe: redis.client.Pipeline) -> None:
            kept.append(self._write_note(pipe, job_id, error, due_again))

        self.services.redis.transaction(write, keys.job(job_id))
        if not kept[-1]:
            log.info("webhook attempt %d to %s: the job expired meanwhile; nothing more is sent", number, url)
        elif not error:
            log.info("webhook attempt %d to %s: delivered", number, url)
        elif give_up:
            log.error(
                "webhook attempt %d to %s failed: %s; giving up, %g s after the job ended "
                "(BATCHERY_WEBHOOK_RETRY_SECONDS)",
                number,
                url,
                error,
                self.settings.webhook_retry_seconds,
            )
        else:
            log.warning("webhook attempt %d to %s failed: %s; next attempt in %g s", number, url, error, delay)

    @staticmethod
    def _write_note(pipe: redis.client.Pipeline, job_id: str, error: str, due_again: float | None) -> bool:
        """Queue the attempt's writes in `pipe` (a WATCHed transaction); False, and only the outbox
        entry removed, if the job is no longer kept."""
        kept = bool(pipe.exists(keys.job(job_id)))
        pipe.multi()
        if not kept:
            pipe.zrem(keys.webhook_outbox(), job_id)
            return False
        pipe.hincrby(keys.job(job_id), "webhook_attempts", 1)
        if not error:
            pipe.hset(keys.job(job_id), "webhook_delivered", 1)
            pipe.hdel(keys.job(job_id), "webhook_error")
        else:
            pipe.hset(keys.job(job_id), "webhook_error", error)
        if due_again is None:
            pipe.zrem(keys.webhook_outbox(), job_id)
        else:
            pipe.zadd(keys.webhook_outbox(), {job_id: due_again})
        return True


def _delete_if(client: redis.Redis, name: str, value: str) -> None:
    """Delete the key `name` if it still holds `value` (a lock this process took, not expired since)."""

    def delete_if_held(pipe: redis.client.Pipeline) -> None:
        held = cast(bytes | None, pipe.get(name))
        pipe.multi()
        if held is not None and held.decode() == value:
            pipe.delete(name)

    client.transaction(delete_if_held, name)
