"""Several Lua scripts in one round trip to Redis.

redis-py runs a `Script` in a pipeline only after asking Redis whether it has it (`SCRIPT EXISTS`,
a round trip of its own); a worker writing a batch's log lines and counting its outcome together
would pay two round trips instead of one. Here each script goes as a plain `EVALSHA`, and one that
Redis does not have (after a restart: `NOSCRIPT`, so it did not run) is run again on its own,
which loads it.
"""

from __future__ import annotations

from typing import NamedTuple

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

from app.store.held_client import HeldConnectionClient


class Call(NamedTuple):
    """A script to run, with its keys and arguments."""

    script: Script
    keys: list
    args: list

    def run(self, client: object) -> object:
        """Run it alone (`client`: a Redis client, or a pipeline to add it to). Raises redis-py's errors."""
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
