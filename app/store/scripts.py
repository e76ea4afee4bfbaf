"""The store's Lua scripts: read from app/store/lua/, and run several in one round trip to Redis.

The scripts are `.lua` files, read with `importlib.resources` (so they load from an installed
wheel as from a clone). The job store's scripts share the functions of `common.lua`, which the
loader puts before each of them. What Lua must agree on with Python, the status names
(app/model/status.py), the batch task's name (app/model/wire.py) and the limits a `JobStore` is
given (Settings), is written in Lua as a name in capitals (`STATUS_RUNNING`), which the loader
replaces with the value from Python. No Lua file types one of them again.

redis-py runs a `Script` in a pipeline only after asking Redis whether it has it (`SCRIPT EXISTS`,
a round trip of its own); a worker writing a batch's log lines and counting its outcome together
would pay two round trips instead of one. Here each script goes as a plain `EVALSHA`, and one that
Redis does not have (after a restart: `NOSCRIPT`, so it did not run) is run again on its own,
which loads it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from importlib import resources
from typing import Any, NamedTuple

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

from app.config import DEFAULT_JOB_RETENTION_SECONDS
from app.model import progress, status, wire
from app.store import keys
from app.store.held_client import HeldConnectionClient

# What a Lua string literal here may hold: names, not text (no quote or backslash to escape).
_PLAIN = re.compile(r"[A-Za-z0-9_.:-]*")
# A constant's name in Lua: capitals, digits and at least one underscore (STATUS_RUNNING, LEASE_MS).
_CONSTANT = re.compile(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b")


@functools.cache
def lua_file(name: str) -> str:
    """The text of `app/store/lua/<name>.lua`. Raises FileNotFoundError if there is no such script."""
    return (resources.files("app.store") / "lua" / f"{name}.lua").read_text(encoding="utf-8")


def lua_constants(limits: Mapping[str, int]) -> dict[str, str]:
    """The values Lua takes from Python, as Lua literals by name: `STATUS_<NAME>` for each status,
    `RUN_BATCH_TASK`, the process states `PROC_<STATE>`, `PROGRESS_SLOTS` (app/model/progress.py),
    `BUNDLED_ENTRY_BYTES` (app/model/wire.py),
    `WEBHOOK_OUTBOX`, the liveness keys' parts `PROC_ALIVE_*` and `WORKER_CHILDREN_*`, the
    retention's (`_retention_constants`), and `limits` (name -> integer). Raises ValueError for a
    string Lua cannot take as it is."""
    strings = {f"STATUS_{str(code).removeprefix('status_').upper()}": str(code) for code in status.PRECEDENCE}
    strings["RUN_BATCH_TASK"] = wire.RUN_BATCH
    strings["PROC_RUNNING"] = wire.RUNNING  # a `procs` record is "<state> <batch_id>" (wire.process_record)
    strings["PROC_INITIALIZING"] = wire.INITIALIZING
    strings["WEBHOOK_OUTBOX"] = keys.webhook_outbox()  # end_job queues a job's completion webhook there
    # owner_alive (common.lua) reads a process's liveness key and its worker's list of children
    strings["PROC_ALIVE_PREFIX"], strings["PROC_ALIVE_SUFFIX"] = keys.proc_alive("\n").split("\n")
    strings["WORKER_CHILDREN_PREFIX"], strings["WORKER_CHILDREN_SUFFIX"] = keys.worker_children("\n").split("\n")
    constants = {name: f"'{_plain(value)}'" for name, value in strings.items()}
    constants["PROGRESS_SLOTS"] = str(progress.SLOTS)  # the ring of per-second counts RECORD keeps
    constants["BUNDLED_ENTRY_BYTES"] = str(wire.BUNDLED_ENTRY_BYTES)  # the largest batch a bundle takes
    constants.update(_retention_constants())
    constants.update({name: str(int(value)) for name, value in limits.items()})
    return constants


def _retention_constants() -> dict[str, str]:
    """What end_job needs to keep an ended job for its retention (app/store/retention.py): the
    suffixes of every key family of a job after the job's key (app/store/keys.py `job_keys`), as a
    Lua table; the sorted set of ended jobs; the retention of a job stored without one."""
    job = keys.job("")
    suffixes = [key.removeprefix(job) for key in keys.job_keys("")]
    return {
        "JOB_KEY_SUFFIXES": "{" + ", ".join(f"'{_plain(suffix)}'" for suffix in suffixes) + "}",
        "RETENTION_ENDED": f"'{_plain(keys.retention_ended())}'",
        "DEFAULT_JOB_RETENTION_SECONDS": str(DEFAULT_JOB_RETENTION_SECONDS),
    }


def with_common(name: str, limits: Mapping[str, int]) -> str:
    """The source of the job store's script `name`: common.lua, then `<name>.lua`, with the value
    of each constant (`lua_constants`) written in place of its name: as cheap to run as a literal
    (a `local` would cost every call its assignment, and the functions using it an upvalue)."""
    constants = lua_constants(limits)
    source = lua_file("common") + lua_file(name)
    return _CONSTANT.sub(lambda found: constants.get(found[0], found[0]), source)


def _plain(value: str) -> str:
    if not _PLAIN.fullmatch(value):
        raise ValueError(f"not a plain name, for a Lua string: {value!r}")
    return value


class Call(NamedTuple):
    """A script to run, with its keys and arguments."""

    script: Script
    keys: list
    args: list

    def run(self, client: redis.Redis | None) -> Any:
        """Run it alone (`client`: a Redis client, or a pipeline to add it to; None: the client the
        script was registered with); its reply. Raises redis-py's errors."""
        if not isinstance(client, HeldConnectionClient):
            return self.script(keys=self.keys, args=self.args, client=client)
        try:
            return client.execute_held(*self.evalsha())
        except NoScriptError:  # Redis lost its scripts (a restart): load it, as redis-py's Script does
            self.script.sha = client.script_load(self.script.script)
            return client.execute_held(*self.evalsha())

    def evalsha(self) -> tuple:
        """The `EVALSHA` command that runs it."""
        return ("EVALSHA", self.script.sha, len(self.keys), *self.keys, *self.args)


def run_together(client: redis.Redis, calls: list[Call]) -> list:
    """Run `calls` in order in one round trip; each one's reply, or the error it raised (returned,
    not raised: the callers decide which errors matter). Raises a connection error that outlasts
    the client's retries."""
    if isinstance(client, HeldConnectionClient):
        replies = client.execute_held_many([call.evalsha() for call in calls])
    else:
        pipe = client.pipeline(transaction=False)
        for call in calls:
            pipe.execute_command(*call.evalsha())
        replies = pipe.execute(raise_on_error=False)
    for i, (reply, call) in enumerate(zip(replies, calls, strict=True)):
        if isinstance(reply, NoScriptError):
            try:
                replies[i] = call.run(client)
            except redis.RedisError as err:
                replies[i] = err
    return replies
