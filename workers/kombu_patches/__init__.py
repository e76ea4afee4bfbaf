"""Patches to kombu's transports, each for a failure or a cost measured with kombu 5.7.

Each patch replaces one method of a kombu class, wrapping the original, once per process, and
only on the kombu version it was written for: on another, installing it raises
`UnsupportedKombu`, which says what to check. A patch that installed silently over code it was
not written for could hide the very failure it guards against, or guard a method that now means
something else.

| module | kombu method | why |
|---|---|---|
| `kept_client` | `redis.Channel.conn_or_acquire` | a new redis client per ack cost ~14% of a worker's main process |
| `redis_restore` | `redis.QoS.restore_unacked`, `ack`, `reject` | a channel without its connection stopped the worker |
| `sqs_receive` | `SQS.Channel._on_messages_ready` | a receive SQS did not answer stopped the worker |
| `sqs_restore` | `SQS.Channel._restore` | a stale receipt handle stopped the worker |
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import kombu

WRITTEN_FOR = (5, 7)  # kombu 5.7.x: the release every patch here was read against and tested on
MARK = "batchery_patch"  # attribute naming the patch on a method it installed


class UnsupportedKombu(RuntimeError):
    """A patch was asked to install on a kombu version it was not written for."""


def release(version: str) -> tuple[int, int] | None:
    """The (major, minor) of a version string such as `5.7.0` or `5.7.0rc1`; None if it has none."""
    parts = version.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


def check_kombu(patch: str, upstream: str, version: str | None = None) -> None:
    """Raise UnsupportedKombu unless `version` (default: the installed kombu's) is one `patch`
    was written for; the error names the upstream issue to check."""
    version = kombu.__version__ if version is None else version
    if release(version) == WRITTEN_FOR:
        return
    written_for = ".".join(map(str, WRITTEN_FOR))
    raise UnsupportedKombu(
        f"{patch} was written for kombu {written_for}.x, and kombu {version} is installed. "
        f"Install kombu {written_for}.x (pip install 'kombu~={written_for}.0'), or check the patch "
        f"against kombu {version}: if {upstream} is fixed there, remove the patch; if not, read the "
        f"method it replaces again, then raise WRITTEN_FOR in workers/kombu_patches/__init__.py."
    )


def install_once(
    owner: type,
    name: str,
    wrap: Callable[[Any], Any],
    patch: str,
    upstream: str,
    version: str | None = None,
) -> None:
    """Replace `owner.name` with `wrap(original)`, unless this patch already did; raises
    UnsupportedKombu on a kombu version the patch was not written for."""
    check_kombu(patch, upstream, version)
    original = getattr(owner, name)
    if getattr(original, MARK, None) == patch:
        return
    replacement = wrap(original)
    setattr(replacement, MARK, patch)
    setattr(owner, name, replacement)
