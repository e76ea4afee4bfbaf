"""Every Redis client Batchery makes, built from a URL: `redis://`, `rediss://`, `unix://`, or
Redis Sentinel's form as Celery writes it, `sentinel://h1:26379;sentinel://h2:26379/0`.

A Sentinel URL names the sentinels, not the master: the client asks them for the master named by
`REDIS_SENTINEL_MASTER` each time it opens a connection, so after a failover every new connection
goes to the new master (redis-py's `SentinelConnectionPool`; a connection still open to a demoted
master answers READONLY, which redis-py turns into a ConnectionError, and the retry reconnects).
The master's password and database are written as Celery and kombu read them: on the first
address (`sentinel://:password@h1:26379/0;sentinel://h2:26379`); the sentinels' own password is
`REDIS_SENTINEL_PASSWORD`.

Redis replicates asynchronously: a write the master acknowledged can be lost in a failover. Where
that must not happen (`replicated`), a client of a Sentinel-backed store waits for a replica
(`WAIT 1`) before going on; a plain Redis has no replica to wait for, and pays nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote, urlsplit

import redis
from redis.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection

from app.store import keys
from app.store.held_client import HeldConnectionClient

if TYPE_CHECKING:
    from app.config import Settings

log = logging.getLogger(__name__)

SENTINEL_SCHEME = "sentinel"
DEFAULT_MASTER = "mymaster"
DEFAULT_SENTINEL_PORT = 26379
# How long a write that must survive a failover waits for a replica to have it, by default
# (REDIS_SENTINEL_WAIT_MS). A replica that lags longer makes the write go on unreplicated (logged):
# waiting longer would stall the fleet behind one slow replica, and the write is on the master.
WAIT_MS = 1000
# After a WAIT no replica answered in time (none is left after a failover, until the old master
# comes back as a replica), a process writes without waiting this long before it tries again: a
# store with no replica would otherwise cost every batch the whole WAIT_MS.
NO_REPLICA_SECONDS = 10.0


@dataclass(frozen=True)
class SentinelUrl:
    """A parsed Sentinel URL: the sentinels' addresses, and the master's credentials and database."""

    sentinels: list[tuple[str, int]]
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)


class MasterFollowingConnection(SentinelManagedConnection):
    """redis-py's connection to a Sentinel-managed master, which asks the sentinels where the master
    is each time it opens its socket, also when a retry reopens it.

    redis-py (8.1) asks them only in `connect()`, which its pool calls when it hands a connection
    out; a retry after a dropped connection sends again on the same connection, which reopens its
    socket to the address it had: the dead master, until the retries run out (redis/redis-py#3874,
    open). A worker waiting through an outage (BATCHERY_STORE_OUTAGE_SECONDS) and the held
    connections of app/store/held_client.py never go back through the pool, so they would never
    reach the new master."""

    def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        """Open the socket (if closed) to the master the sentinels name now. Raises redis-py's
        ConnectionError (MasterNotFoundError while they have none: the retry waits it out)."""
        if self._sock is None and self.connection_pool.is_master:
            self.host, self.port = self.connection_pool.get_master_address()
        super().connect_check_health(check_health=check_health, retry_socket_connect=retry_socket_connect)


def is_sentinel(url: str) -> bool:
    """Whether `url` is in Sentinel's form (`sentinel://...`)."""
    return url.strip().lower().startswith(f"{SENTINEL_SCHEME}://")


def parse_sentinel_url(url: str) -> SentinelUrl:
    """The sentinels, database and master credentials of a `sentinel://h1:p1;sentinel://h2:p2/0`
    URL. Raises ValueError saying what is wrong with it (no credentials in the message)."""
    parts = [part.strip() for part in url.split(";") if part.strip()]
    if not parts:
        raise ValueError("a Sentinel URL names at least one sentinel: sentinel://host:26379")
    parsed = [_sentinel_address(part, number) for number, part in enumerate(parts, 1)]
    first = parsed[0]
    for number, other in enumerate(parsed[1:], 2):
        for name in ("db", "username", "password"):
            value, expected = other[name], (first["db"] or 0) if name == "db" else first[name]
            if value is not None and value != expected:  # absent on a later address: the first's
                what = "database" if name == "db" else name
                raise ValueError(
                    f"Sentinel URL: address {number} gives another {what} than the first; Celery and kombu read "
                    f"the master's {what} from the first address: write it there (or the same on every address)"
                )
    return SentinelUrl(
        sentinels=[(part["host"], part["port"]) for part in parsed],
        db=first["db"] or 0,
        username=first["username"],
        password=first["password"],
    )


def _sentinel_address(part: str, number: int) -> dict[str, Any]:
    where = f"Sentinel URL, address {number}"
    try:
        split = urlsplit(part)
        port = split.port or DEFAULT_SENTINEL_PORT
    except ValueError as err:  # a port that is not a number, or out of range
        raise ValueError(f"{where}: {err} (write sentinel://host:26379)") from None
    if split.scheme.lower() != SENTINEL_SCHEME:
        raise ValueError(
            f"{where}: every address of a Sentinel URL starts with sentinel:// (found {split.scheme or 'none'}://), "
            "separated by ';': sentinel://h1:26379;sentinel://h2:26379/0"
        )
    if not split.hostname:
        raise ValueError(f"{where}: no host (write sentinel://host:26379)")
    if split.query or split.fragment:
        raise ValueError(f"{where}: a Sentinel URL takes no ?options or #fragment")
    path = split.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"{where}: the database after the / is a number (found {path!r})")
    return {
        "host": split.hostname,
        "port": port,
        "db": int(path) if path else None,
        "username": unquote(split.username) if split.username else None,
        "password": unquote(split.password) if split.password else None,
    }


def connect(
    url: str,
    *,
    master: str = DEFAULT_MASTER,
    sentinel_password: str = "",
    wait_ms: int = WAIT_MS,
    client_class: type[redis.Redis] = redis.Redis,
    **options: Any,
) -> redis.Redis:
    """A client of the Redis at `url` (`options`: what `redis.Redis` takes, e.g. socket timeouts,
    `retry`), of `client_class`. For a Sentinel URL, a client of the master named `master`, found
    through the sentinels (asked with `sentinel_password` if given, and the same socket timeouts),
    whose `replicated` waits up to `wait_ms` for a replica (0: never). Raises ValueError for a URL
    of no known form."""
    if not is_sentinel(url):
        return client_class.from_url(url, **options)
    parsed = parse_sentinel_url(url)
    sentinel_kwargs = {name: value for name, value in options.items() if name.startswith("socket_")}
    if sentinel_password:
        sentinel_kwargs["password"] = sentinel_password
    credentials = {"username": parsed.username, "password": parsed.password}
    sentinel = Sentinel(parsed.sentinels, sentinel_kwargs=sentinel_kwargs)
    client = sentinel.master_for(
        master,
        redis_class=client_class,
        connection_pool_class=ReplicatedPool,
        connection_class=MasterFollowingConnection,
        db=parsed.db,
        **credentials,
        **options,
    )
    cast(ReplicatedPool, client.connection_pool).wait_ms = wait_ms
    return client


def store_client(
    url: str,
    settings: Settings,
    client_class: type[redis.Redis] = redis.Redis,
    **options: Any,
) -> redis.Redis:
    """`connect(url, ...)` with the Sentinel master, password and WAIT of `settings`. Raises
    ValueError for a URL of no known form."""
    return connect(
        url,
        master=settings.redis_sentinel_master,
        sentinel_password=settings.redis_sentinel_password,
        wait_ms=settings.redis_sentinel_wait_ms,
        client_class=client_class,
        **options,
    )


class ReplicatedPool(SentinelConnectionPool):
    """redis-py's pool of connections to a Sentinel-managed master, with how long its writes that
    must survive a failover wait for a replica (`replicated`)."""

    wait_ms: int = WAIT_MS
    no_replica_until: float = 0.0  # a WAIT timed out: until then, writes do not wait


def has_replicas(client: redis.Redis) -> bool:
    """Whether `client` talks to a Sentinel-managed master (which has replicas to wait for)."""
    return isinstance(client.connection_pool, SentinelConnectionPool)


def replicated(client: redis.Redis) -> int | None:
    """Wait until a replica has every write this process made so far, on a Sentinel-backed store
    (at once otherwise): how many replicas have them (0: none answered in time), or None when
    nothing was waited for (no Sentinel, or REDIS_SENTINEL_WAIT_MS=0). Raises redis-py's errors.

    `WAIT` counts the writes of its own connection only, and a pool hands out any of its
    connections: so it follows a write of its own on the same connection (replication is one
    ordered stream: that write is behind every earlier write of every connection)."""
    pool = client.connection_pool
    if not isinstance(pool, ReplicatedPool) or pool.wait_ms <= 0:
        return None
    if time.monotonic() < pool.no_replica_until:
        return 0
    fence = ("INCR", keys.replication_fence())
    wait = ("WAIT", 1, pool.wait_ms)
    if isinstance(client, HeldConnectionClient):
        replies = client.execute_held_many([fence, wait])
    else:
        pipe = client.pipeline(transaction=False)
        pipe.execute_command(*fence)
        pipe.execute_command(*wait)
        replies = pipe.execute(raise_on_error=False)
    acknowledged = replies[1]
    if isinstance(acknowledged, Exception):
        raise acknowledged
    if not acknowledged:
        pool.no_replica_until = time.monotonic() + NO_REPLICA_SECONDS
        log.warning(
            "no replica acknowledged a write within %d ms: a failover now could lose the writes of the next %.0f s, "
            "which do not wait for one",
            pool.wait_ms,
            NO_REPLICA_SECONDS,
        )
    return int(acknowledged)
