"""The Redis job store: a job's spec, status and counters, its backlog and the batches in flight.

Every change that must be atomic is one Lua call: the scripts in app/store/lua/, one file each.
All of them take the same KEYS (see `_prepare`) and `ARGV[1] = job_id, ARGV[2] = now`, so the
shared functions of app/store/lua/common.lua can end a job or release batches from any of them.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.typing import EncodableT, FieldT

from app.config import DEFAULT_JOB_RETENTION_SECONDS
from app.model import progress, status
from app.model.job import deadline, retry_limits
from app.model.queues import job_queue, no_worker_message
from app.model.wire import INITIALIZING, RUNNING, entry_batch_id, parse_process_record, split_backlog_entry
from app.store import keys
from app.store.pools import Pools
from app.store.replies import as_text
from app.store.scripts import Call, with_common

# The job store's scripts, each app/store/lua/<name>.lua after common.lua.
SCRIPTS = (
    "append",
    "enqueued",
    "begin",
    "proceed",
    "record",
    "end",
    "oom",
    "read",
    "republish",
    "revive",
    "reclaim",
    "finalizing",
    "published",
    "pause",
    "resume",
    "revoked",
)

# A job whose queue no worker serves, with no batch begun or released for this long, says so (its
# pending batches `stalled`) at once, without waiting for BATCHERY_STALLED_SECONDS: the short wait
# lets a job submitted while its pool's first worker starts not flash the message.
UNSERVED_SECONDS = 2.0

COUNTERS = ("total", "released", "succeeded", "failed", "failed_batches", "oom_batches", "skipped", "workers")
TIMES = ("created", "start", "end", "deadline", "time_sum", "last_delivery", "delivered_release")


@dataclass
class Outcome:
    """What a store call asks of its caller: batches to publish, and whether to run the finalizer."""

    released: list[str] = field(default_factory=list)
    finalize: bool = False
    next_entry: str = ""  # the bundle's next batch, taken by RECORD for the process to run now

    @classmethod
    def parse(cls, reply: list) -> Outcome:
        """An Outcome from RECORD's reply: the finalize flag, then the released batch entries."""
        return cls(released=[e.decode() for e in reply[1:]], finalize=bool(reply and reply[0] == 1))

    @classmethod
    def parse_bundled(cls, reply: list) -> Outcome:
        """An Outcome from the reply of RECORD given a bundle's head: the finalize flag, the
        bundle's next entry ('' for none), then the released batch entries."""
        next_entry = reply[1].decode() if len(reply) > 1 else ""
        finalize = bool(reply and reply[0] == 1)
        return cls(released=[e.decode() for e in reply[2:]], finalize=finalize, next_entry=next_entry)


@dataclass
class Appended:
    """What appending batches did: were they accepted, and which were released to run now."""

    accepted: bool = True
    released: list[str] = field(default_factory=list)


@dataclass
class Delivery:
    """The store's answer to a delivery: `run` it, `skip` it, or it is `dead` (out of deliveries)."""

    action: str
    number: int = 0
    reason: str = ""
    oom_kills: int = 0  # of a dead batch: how many of its deliveries the kernel killed for memory
    owner: str = ""  # of a delivery skipped as `owned`: the live process running another delivery of it
    # of a bundle's message delivered again: the batch it carried, which runs instead (common.lua)
    carried: tuple[str, int, str] | None = None  # (batch id, generation, body)


@dataclass
class FinalizerStart:
    """Whether a finalizer may run now; if not, `wait` names the live process (and its batch) it
    waits for, or is empty: the job ended, or another finalizer runs it."""

    run: bool
    wait: str = ""


@dataclass
class Resumed:
    """What resuming a job did: whether it was paused (`changed`), its status now, the batches held
    while it was paused to publish again (`(generation, entry)`), and what the refilled window released."""

    changed: bool
    status: str
    held: list[tuple[int, str]] = field(default_factory=list)
    outcome: Outcome = field(default_factory=Outcome)


@dataclass
class Revoked:
    """What counting a revoked delivery did: `again` (publish `again`, `(generation, entry)`),
    `failed` (it failed for good) or `ignored` (`why`: the job or the batch ended, or superseded)."""

    action: str
    attempt: int = 0
    again: list[tuple[int, str]] = field(default_factory=list)
    why: str = ""
    entry: str = ""  # the batch counted: a bundle's message names its first, not the one it carried


class JobStore:
    """Jobs in Redis; every operation costs O(1) in the number of the job's batches."""

    def __init__(
        self,
        client: redis.Redis,
        stalled_seconds: float = 600.0,
        broker_queue: str = "",
        lease_seconds: float = 30.0,
        job_log_lines: int = 10_000,
        max_in_broker: int = 1000,
        default_queue: str = "",
        retention_seconds: int = DEFAULT_JOB_RETENTION_SECONDS,
    ):
        """`broker_queue`: the Redis broker's list for batch messages, when the broker is this same
        Redis (database included); released batches are then pushed there by the release itself
        (`batch_message` in app/store/lua/common.lua) instead of returned to the caller to publish.
        `lease_seconds`: an enqueuer silent this long is presumed dead, and another one resumes
        from its cursor (BATCHERY_ENQUEUE_LEASE). `job_log_lines`: the lines a job's log keeps
        (BATCHERY_JOB_LOG_LINES; the store writes a job's last line). `max_in_broker`: a job's
        batches released and not yet begun by a process, at most (BATCHERY_MAX_IN_BROKER; stored
        with each job this store creates, so the API's setting is the one that counts).
        `default_queue`: the queue of a job whose spec names none (BATCHERY_QUEUE; default:
        `broker_queue`). `retention_seconds`: how long the keys of a job stored from now on are
        kept once it ends (BATCHERY_JOB_RETENTION_SECONDS)."""
        self.redis = client
        self.default_queue = default_queue or broker_queue
        self.stalled_seconds = stalled_seconds  # in flight this long with no delivery: `stalled`
        self.broker_queue = broker_queue
        self.lease_ms = int(lease_seconds * 1000)
        self.max_in_broker = max_in_broker
        self.retention_seconds = retention_seconds
        limits = {"LEASE_MS": self.lease_ms, "JOB_LOG_LINES": job_log_lines}
        self._scripts = {name: client.register_script(with_common(name, limits)) for name in SCRIPTS}

    def _call(
        self,
        script: str,
        spec_or_id: dict | str,
        api_name: str,
        *args: object,
        now: float,
        client: redis.Redis | None = None,
    ) -> Any:
        return self._prepare(script, spec_or_id, api_name, *args, now=now).run(self.redis if client is None else client)

    def _prepare(self, script: str, spec_or_id: dict | str, api_name: str, *args: object, now: float) -> Call:
        job_id = spec_or_id if isinstance(spec_or_id, str) else spec_or_id["job_id"]
        key_list = [
            keys.job(job_id),
            keys.backlog(job_id),
            keys.inflight(job_id),
            keys.deliveries(job_id),
            keys.procs(job_id),
            keys.api_active(api_name),
            keys.enqueuer(job_id),
            keys.api_statuses(api_name),
            keys.released(job_id),
            keys.unpublished(job_id),
            keys.job_log(job_id),
            keys.job_log_seq(job_id),
            keys.ended_inflight(job_id),
        ]
        if self.broker_queue:  # the job's own queue (its dedicated pool's); by id only, no call releases
            spec = spec_or_id if isinstance(spec_or_id, dict) else {}
            key_list.append(job_queue(spec, self.broker_queue))
        return Call(self._scripts[script], key_list, [job_id, repr(now), *args])

    def create(self, spec: dict, api: dict, now: float, source: dict | None = None) -> None:
        """Store a new job in `status_enqueuing`, with the API as deployed at submission and, for
        S3 inputs, the source its enqueuer reads."""
        max_deliveries, _ = retry_limits(spec)
        fields: dict[FieldT, EncodableT] = {
            "spec": json.dumps(spec),
            "api": json.dumps(api),
            "api_name": spec["api_name"],
            "status": status.ENQUEUING,
            "workers": spec["workers"],
            "max_in_broker": self.max_in_broker,  # common.lua `room_in_flight`
            "timeout": spec.get("timeout") or 0,
            "max_deliveries": max_deliveries,
            "created": repr(now),
            "deadline": repr(deadline(spec, now)),
            "source": json.dumps(source) if source else "",
            "enqueued": 0,
        }
        counters = ("total", "released", "succeeded", "failed", "failed_batches", "oom_batches", "skipped", "time_sum")
        fields.update({name: 0 for name in counters})
        if spec.get("webhook"):  # end_job queues the completion webhook of a job that has one
            fields.update(webhook_url=spec["webhook"]["url"], webhook_attempts=0, webhook_delivered=0)
        code = keys.code_keys(api)
        fields.update(retention=self.retention_seconds, code_refs=" ".join(code))  # read by end_job (keep_ended)
        pipe = self.redis.pipeline()
        for key in code:  # the job runs this code: kept while the job is (app/store/retention.py)
            pipe.hincrby(keys.code_refs(), key, 1)
        pipe.hset(keys.job(spec["job_id"]), mapping=fields)
        pipe.zadd(keys.api_jobs(spec["api_name"]), {spec["job_id"]: now})
        pipe.zadd(keys.api_active(spec["api_name"]), {spec["job_id"]: now})
        pipe.hincrby(keys.api_statuses(spec["api_name"]), status.ENQUEUING, 1)
        queue = job_queue(spec, self.default_queue)
        if queue:  # known, for the watchdog's turns and /metrics
            pipe.sadd(keys.queues(), queue)
        pipe.execute()

    def append(self, spec: dict, entries: list[str], now: float, cursor: str = "", token: str = "") -> Appended:
        """Add batches (`"<batch_id> <body>"`) to the backlog, with the enqueuer's cursor after them.

        Returns the batches released to run now, and whether the job still takes batches (it may
        have been stopped, or another enqueuer may have taken over the lease).
        """
        result = Appended()
        for start in range(0, len(entries), 1000):  # Lua's unpack() takes a few thousand at most
            chunk = entries[start : start + 1000]
            last = start + 1000 >= len(entries)
            call_id = uuid.uuid4().hex  # the same call sent again after a lost reply appends nothing (append.lua)
            after = cursor if last else ""
            reply = self._call("append", spec, spec["api_name"], after, token, call_id, *chunk, now=now)
            result.accepted = reply[0] == 1
            if not result.accepted:
                break
            result.released += [e.decode() for e in reply[1:]]
        return result

    def enqueued(self, spec: dict, now: float, token: str = "", empty_message: str = "") -> Outcome:
        """Mark enqueuing done (the job is `status_running`, or `status_enqueue_failed` if it has no
        batch); may release batches or finalize."""
        return Outcome.parse(self._call("enqueued", spec, spec["api_name"], token, empty_message, now=now))

    def take_lease(self, job_id: str, token: str) -> bool:
        """Become the job's enqueuer, unless a live one holds the lease."""
        return bool(self.redis.set(keys.enqueuer(job_id), token, nx=True, px=self.lease_ms))

    def count_enqueue_failure(self, job_id: str) -> int:
        """Count an enqueuer's unforeseen failure: how many the job has had."""
        return int(self.redis.hincrby(keys.job(job_id), "enqueue_failures", 1))

    def lease_held(self, job_id: str) -> bool:
        """Whether some enqueuer is alive (it renews its lease with every chunk of batches)."""
        return bool(self.redis.exists(keys.enqueuer(job_id)))

    def enqueue_state(self, job_id: str) -> tuple[dict | None, dict | None]:
        """The job's S3 source and the cursor where enqueuing resumes (None before the first chunk)."""
        source, cursor = self.redis.hmget(keys.job(job_id), "source", "cursor")
        return (json.loads(source) if source else None), (json.loads(cursor) if cursor else None)

    def begin(
        self, spec: dict, batch_id: str, proc: str, now: float, generation: int = 0, ready: bool = False
    ) -> Delivery:
        """Count a delivery of a batch and say whether to run it (`generation`: how many times the
        watchdog had published the batch again when this message was sent). `ready`: the process
        has the job's predictor loaded, so a `run` answer counts it as running at once and needs no
        `proceed` call."""
        flag = "1" if ready else "0"
        action, detail, *rest = self._call(
            "begin", spec, spec["api_name"], batch_id, proc, str(generation), flag, now=now
        )
        if action == b"skip":
            return Delivery("skip", reason=detail.decode(), owner=rest[0].decode() if rest else "")
        oom_kills = int(rest.pop(0)) if action == b"dead" else 0
        carried = None
        if rest:  # the batch a bundle's message carried: it runs (or is dead) instead
            batch, carried_generation, entry = (as_text(part) for part in rest)
            carried = (batch, int(carried_generation), split_backlog_entry(entry)[1])
        return Delivery(action.decode(), number=int(detail), oom_kills=oom_kills, carried=carried)

    def proceed(self, spec: dict, batch_id: str, proc: str, now: float) -> bool:
        """The last check before `predict` (the predictor may have taken minutes to load)."""
        return bool(self._call("proceed", spec, spec["api_name"], proc, batch_id, now=now))

    def record(self, spec: dict, batch_id: str, outcome: str, seconds: float, proc: str, now: float) -> Outcome:
        """Count a delivery's outcome: ok, retry (failed, will run again), failed, dead or oom (for
        good; oom: its workers were killed by the kernel for memory)."""
        return Outcome.parse(self.record_call(spec, batch_id, outcome, seconds, proc, now).run(self.redis))

    def record_call(
        self,
        spec: dict,
        batch_id: str,
        outcome: str,
        seconds: float,
        proc: str,
        now: float,
        head: str | None = None,
        take: bool = True,
    ) -> Call:
        """`record` as a script call, to run along with others (app/store/scripts.py); `Outcome.parse`
        reads its reply. `head`: the first batch of the message the batch ran in; with it, the call
        takes the bundle's next batch if `take` (and `head` is not ''), and `Outcome.parse_bundled`
        reads the reply. A call sent again after its reply was lost gives back the batch the first
        one took (give_back in app/store/lua/common.lua)."""
        bundle = () if head is None else (head, "1" if take else "0")
        return self._prepare("record", spec, spec["api_name"], batch_id, outcome, repr(seconds), proc, *bundle, now=now)

    def mark_oom(self, job_id: str, batch_id: str, now: float, generation: int = 0) -> bool:
        """Note that a delivery of a batch in flight was killed by the kernel for memory (the next
        delivery finds it dead); False if the job or the batch is no longer in progress. `batch_id`
        and `generation` are the message's: a bundle's names the batch it carried."""
        api_name = self.redis.hget(keys.job(job_id), "api_name")
        if api_name is None:
            return False
        return bool(self._call("oom", job_id, as_text(api_name), batch_id, str(generation), now=now))

    def revoked(self, spec: dict, batch_id: str, generation: int, began: bool, now: float) -> Revoked:
        """Count a revoked delivery of a batch as a failed attempt (`began`: it was terminated
        while it ran; else it was discarded before it started). Says whether to publish the batch
        again (a new generation), or that it failed for good (then `record` it `dead`), or that
        the revoke changed nothing."""
        _, attempts = retry_limits(spec)
        began_flag = "1" if began else "0"
        reply = self._call("revoked", spec, spec["api_name"], batch_id, generation, began_flag, attempts, now=now)
        action = as_text(reply[0])
        if action == "ignored":
            return Revoked(action, why=as_text(reply[1]))
        again = [_generation_entry(reply[2])] if action == "again" else []
        entry = as_text(reply[-1]) if len(reply) > (3 if action == "again" else 2) else ""
        return Revoked(action, attempt=int(reply[1]), again=again, entry=entry)

    def end(self, spec: dict, final_status: str, message: str, now: float) -> bool:
        """Give a job in progress its final status; False if it had one already."""
        return bool(self._call("end", spec, spec["api_name"], final_status, message, now=now))

    def revive(self, spec: dict, proc: str, now: float) -> list[tuple[int, str]]:
        """The process `proc` died: it no longer counts as the job's worker, and the batch it was
        running is returned as `(generation, "<batch_id> <body>")` to publish again (then call
        `published`); nothing if it held none of the job's batches."""
        reply = self._call("revive", spec, spec["api_name"], proc, now=now)
        return [_generation_entry(item) for item in reply]

    def republish(
        self, spec: dict, released_before: float, unpublished_before: float, now: float, limit: int = 1000
    ) -> list[tuple[int, str]]:
        """Batches whose message was lost, each as `(generation, "<batch_id> <body>")` to publish
        again (then call `published`): released before `unpublished_before` and never said to be
        published, or released before `released_before` and never delivered."""
        args = (repr(released_before), limit, repr(unpublished_before))
        reply = self._call("republish", spec, spec["api_name"], *args, now=now)
        return [_generation_entry(item) for item in reply]

    def reclaim_finalizer(self, spec: dict, claimed_before: float, unpublished_before: float, now: float) -> bool:
        """Claim again the finalizer of a job still in progress whose finalizer was claimed before
        `claimed_before`, or before `unpublished_before` and never said to be published (its message
        or its worker was lost); True: publish it again (then call `published`)."""
        args = (repr(claimed_before), repr(unpublished_before))
        return bool(self._call("reclaim", spec, spec["api_name"], *args, now=now))

    def finalizing(self, spec: dict, token: str, beaten_before: float, now: float) -> bool:
        """Take, or as its holder keep, the right to run a job's finalizer (`token`: the finalizer
        message's id); False if the job ended, or another finalizer holds it and beat its heartbeat
        after `beaten_before`. Each call is a heartbeat: it renews the finalizer's claim time,
        so the watchdog does not take a long `on_job_complete` for a lost one."""
        return bool(self._call("finalizing", spec, spec["api_name"], token, repr(beaten_before), now=now))

    def start_finalizing(self, spec: dict, token: str, beaten_before: float, now: float) -> FinalizerStart:
        """Take the right to run a job's finalizer, as `finalizing` does, unless a batch of the job
        is still owned by a live process (a delivery with no outcome yet): then `wait` names it,
        and the claim time is renewed so that the watchdog leaves the waiting finalizer alone."""
        reply = self._call("finalizing", spec, spec["api_name"], token, repr(beaten_before), "1", now=now)
        if isinstance(reply, list):
            return FinalizerStart(False, wait=f"{reply[1].decode()} ({reply[2].decode()})")
        return FinalizerStart(bool(reply))

    def published(self, spec: dict, entries: list[str], finalizer: bool = False) -> None:
        """Say that the messages of released backlog entries (`"<batch_id> <body>"`), and of the
        finalizer, were published: until then the watchdog takes them for lost after
        `unpublished_seconds`."""
        ids = [entry_batch_id(entry) for entry in entries]
        flag = "1" if finalizer else "0"
        for start in range(0, max(len(ids), 1), 1000):  # Lua's unpack() takes a few thousand at most
            self._call("published", spec, spec["api_name"], flag, *ids[start : start + 1000], now=0.0)
            flag = "0"

    def pause(self, spec: dict, now: float) -> tuple[bool, str]:
        """Pause a job in progress: (paused now, its status); (False, status) if it was paused
        already or has ended; (False, "") if there is no such job."""
        changed, *found = self._call("pause", spec, spec["api_name"], now=now)
        return bool(changed), (found[0].decode() if found else "")

    def resume(self, spec: dict, now: float) -> Resumed:
        """Resume a paused job: its held batches to publish again, and the window refilled
        (`Resumed.outcome`, for `follow`); `changed` False if it was not paused ("" status: no job)."""
        reply = self._call("resume", spec, spec["api_name"], now=now)
        if reply[0] == 0:
            return Resumed(False, reply[1].decode() if len(reply) > 1 else "")
        finalize, held = reply[2] == 1, int(reply[3])
        again = [_generation_entry(item) for item in reply[4 : 4 + held]]
        released = [entry.decode() for entry in reply[4 + held :]]
        return Resumed(True, reply[1].decode(), again, Outcome(released=released, finalize=finalize))

    def state(self, job_id: str, api_name: str, now: float) -> dict | None:
        """A job's state (timing it out if its deadline passed), or None if there is no such job."""
        job_hash, procs, inflight = self._call("read", job_id, api_name, now=now)
        state = _state_of(job_hash, procs, inflight, now - self.stalled_seconds, now)
        self._note_unserved([state], now)
        return state

    def states(self, jobs: list[tuple[str, str]], now: float) -> list[dict | None]:
        """The states of many `(job_id, api_name)` jobs, one READ call each, pipelined (redis-py
        checks the script is loaded first: two round trips in all)."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id, api_name in jobs:
            self._call("read", job_id, api_name, now=now, client=pipe)
        stalled_before = now - self.stalled_seconds
        states = [_state_of(h, p, n, stalled_before, now) for h, p, n in pipe.execute()]
        self._note_unserved(states, now)
        return states

    def _note_unserved(self, states: list[dict | None], now: float) -> None:
        """Jobs waiting on a queue no live worker serves: their pending batches `stalled` and their
        status saying which queue lacks workers, as soon as the store knows (UNSERVED_SECONDS)."""
        waiting = [state for state in states if state is not None and _waits_for_a_worker(state, now)]
        # a store that knows no default queue (a test's) cannot tell the queue of a spec naming none
        waiting = [state for state in waiting if job_queue(state["spec"], self.default_queue)]
        if not waiting:
            return
        queues = sorted({job_queue(state["spec"], self.default_queue) for state in waiting})
        processes = Pools(self.redis).processes(queues, now)
        for state in waiting:
            queue = job_queue(state["spec"], self.default_queue)
            if processes[queue]:
                continue
            counts = state["worker_counts"]
            counts["stalled"], counts["pending"] = counts["stalled"] + counts["pending"], 0
            state["message"] = state["message"] or no_worker_message(queue)

    def spec_and_api(self, job_id: str) -> tuple[dict, dict] | None:
        """The spec a job was submitted with and its API as deployed then; None if no such job."""
        spec, api = self.redis.hmget(keys.job(job_id), "spec", "api")
        return (json.loads(spec), json.loads(api)) if spec and api else None  # both, or neither

    def job_ids(self, api_name: str, recent: int) -> list[str]:
        """The API's jobs in progress, then its `recent` latest ones, newest first."""
        return self.job_ids_by_api([api_name], recent)[api_name]

    def job_ids_by_api(self, api_names: list[str], recent: int, active_limit: int = 0) -> dict[str, list[str]]:
        """For each API, its jobs in progress (the newest `active_limit`, 0: all), then its `recent`
        latest other ones, newest first; two round trips."""
        pipe = self.redis.pipeline(transaction=False)
        for api_name in api_names:
            pipe.zrevrange(keys.api_active(api_name), 0, -1)
        in_progress = [[j.decode() for j in reply] for reply in pipe.execute()]
        for api_name, active in zip(api_names, in_progress, strict=True):
            # every job is in api_jobs, those in progress too: read past them for `recent` others
            pipe.zrevrange(keys.api_jobs(api_name), 0, recent + len(active) - 1)
        found = {}
        for api_name, active, reply in zip(api_names, in_progress, pipe.execute(), strict=True):
            running = set(active)
            others = [job_id for job_id in (j.decode() for j in reply) if job_id not in running]
            found[api_name] = active[: active_limit or None] + others[:recent]
        return found

    def status_counts(self, api_names: list[str]) -> dict[str, dict[str, int]]:
        """For each API, how many of its jobs are in each status (statuses with no job left out)."""
        pipe = self.redis.pipeline(transaction=False)
        for api_name in api_names:
            pipe.hgetall(keys.api_statuses(api_name))
        counts = {}
        for api_name, reply in zip(api_names, pipe.execute(), strict=True):
            # jobs created before the count existed can take it below 0 when they end: not shown
            counts[api_name] = {k.decode(): int(v) for k, v in reply.items() if int(v) > 0}
        return counts


def _state_of(job_hash: list, procs: list, inflight: int, stalled_before: float, read_time: float) -> dict | None:
    """A READ reply as a job's state; None for no job, or for counters without a job (written by
    an older version's late outcome after Redis lost the job: a 500 for ever on its id).
    `read_time`: when it was read, the end of the window of the job's rate (app/model/progress.py)."""
    fields = _pairs(job_hash)
    if "spec" not in fields:
        return None
    state = _parse_state(fields, _pairs(procs), inflight, stalled_before)
    state["ends"] = progress.ends_by_second(fields)  # batches ended per second, lately
    state["read_time"] = read_time
    return state


def _waits_for_a_worker(state: dict, now: float) -> bool:
    """Whether a job in progress has batches (or an enqueuer) waiting for a worker, none begun or
    released for UNSERVED_SECONDS."""
    if state["status"] not in (status.ENQUEUING, status.RUNNING) or state["last_move"] > now - UNSERVED_SECONDS:
        return False
    return (
        bool(state["worker_counts"]["pending"] or state["worker_counts"]["stalled"])
        or state["status"] == status.ENQUEUING
    )


def _pairs(flat: list) -> dict:
    return {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}


def _generation_entry(raw: bytes) -> tuple[int, str]:
    """`b"<generation> <batch_id> <body>"` as `(generation, "<batch_id> <body>")`."""
    generation, _, entry = raw.decode().partition(" ")
    return int(generation), entry


def _parse_state(job_hash: dict, procs: dict, inflight: int, stalled_before: float) -> dict:
    state: dict = {
        "procs": procs,  # process name -> "running <batch_id>" or "initializing <batch_id>"
        "spec": json.loads(job_hash["spec"]),
        "api": job_hash.get("api"),  # JSON of the API as deployed at submission (only a job's status parses it)
        "status": job_hash["status"],
        "message": job_hash.get("message", ""),
        "oom_batch": job_hash.get("oom_batch", ""),  # the first batch that failed for good by OOM kills
        "retry_job_ids": job_hash.get("retry_job_ids", "").split(),  # the jobs retrying it, oldest first
    }
    state.update({name: int(job_hash.get(name, 0)) for name in COUNTERS})
    state.update({name: float(job_hash.get(name, 0)) for name in TIMES})
    if "webhook_url" in job_hash:  # the completion webhook's delivery (app/jobs/webhook.py)
        state["webhook"] = {
            "url": job_hash["webhook_url"],
            "delivered": job_hash.get("webhook_delivered") == "1",
            "attempts": int(job_hash.get("webhook_attempts", 0)),
            "last_error": job_hash.get("webhook_error") or None,
        }
    states = [parse_process_record(value)[0] for value in procs.values()]
    working = states.count(INITIALIZING) + states.count(RUNNING)
    pending = max(0, inflight - working)
    if job_hash["status"] == status.PAUSED:  # its batches wait for a resume, not for a worker
        pending = 0
    # No delivery began and no batch was released since `stalled_before`: no worker is taking the
    # job's batches (none consumes its queue, or all are busy), so its pending batches are stalled.
    last_move = max(float(job_hash.get("last_delivery", 0)), float(job_hash.get("last_release", 0)))
    stalled = pending if pending and last_move < stalled_before else 0
    state["last_move"] = max(last_move, float(job_hash.get("created", 0)))
    state["worker_counts"] = {
        "pending": pending - stalled,
        "initializing": states.count(INITIALIZING),
        "running": states.count(RUNNING),
        "succeeded": 0,
        "failed": 0,
        "stalled": stalled,
    }
    return state
