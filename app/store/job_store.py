"""The Redis job store: a job's spec, status and counters, its backlog and the batches in flight.

Every change that must be atomic is one Lua call. All scripts take the same KEYS (see `_keys`)
and `ARGV[1] = job_id, ARGV[2] = now`, so the shared Lua functions below can end a job or
release batches from any of them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import redis

from app.model import status
from app.model.job import deadline, retry_limits
from app.model.wire import INITIALIZING, RUNNING, parse_process_record
from app.store import keys
from app.store.joblog import MAX_LINES
from app.store.ready_message import LUA_BATCH_MESSAGE
from app.store.scripts import Call

LUA_COMMON = """
local job, backlog, inflight, deliveries, procs, active = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local lease, statuses, released, unpublished = KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local job_log, job_log_seq, ended_inflight = KEYS[11], KEYS[12], KEYS[13]
local broker_queue = KEYS[14]  -- set when the broker is this Redis: release pushes the messages
local job_id, now = ARGV[1], tonumber(ARGV[2])

-- The API's count of jobs per status (a gauge for /metrics), moved with each status change.
local function move_status(from, to)
  redis.call('HINCRBY', statuses, from, -1)
  redis.call('HINCRBY', statuses, to, 1)
end

local function in_progress()
  local st = redis.call('HGET', job, 'status')
  return st == 'status_enqueuing' or st == 'status_running'
end

-- The job's log says how it ended, whoever ended it (a stop, the timeout a reader noticed, a
-- failed enqueue, the finalizer): a line as app/store/joblog.py writes them, from the same call.
local function log_end(final, message)
  local text = 'job ' .. job_id .. ' ended: ' .. final .. (message ~= '' and (' (' .. message .. ')') or '')
  local seq = redis.call('INCR', job_log_seq)
  redis.call('RPUSH', job_log, '{"seq":' .. seq .. ',"time":' .. ARGV[2] .. ',"level":"info"'
    .. ',"logger":"app.store.job_store","message":' .. cjson.encode(text) .. ',"process":"job store","api_name":'
    .. cjson.encode(redis.call('HGET', job, 'api_name')) .. ',"job_id":' .. cjson.encode(job_id) .. '}')
  redis.call('LTRIM', job_log, -JOB_LOG_LINES, -1)
end

-- `ended_at`: when the job ended, if not now (a timeout noticed late ended at its deadline).
local function end_job(final, message, ended_at)
  if not in_progress() then return 0 end
  move_status(redis.call('HGET', job, 'status'), final)
  redis.call('HSET', job, 'status', final, 'end', ended_at or ARGV[2])
  if message ~= '' then redis.call('HSET', job, 'message', message) end
  -- the batches still in flight may yet report (those inside predict at a stop): each counts once
  local flying = redis.call('HKEYS', inflight)
  for i = 1, #flying, 5000 do
    redis.call('SADD', ended_inflight, unpack(flying, i, math.min(i + 4999, #flying)))
  end
  redis.call('DEL', backlog, inflight, deliveries, procs, lease, released, unpublished)
  redis.call('ZREM', active, job_id)
  log_end(final, message)
  return 1
end

local function past_deadline()
  local deadline = redis.call('HGET', job, 'deadline') or '0'
  local d = tonumber(deadline)
  if d > 0 and now >= d then
    local timeout = redis.call('HGET', job, 'timeout')
    end_job('status_timed_out', 'the job ran past its timeout of ' .. timeout .. ' seconds', deadline)
    return true
  end
  return false
end

-- Whether the batch's current message (its generation) began a delivery (batches begun before
-- deliveries noted their generation: whether any began).
local function delivered(id)
  local begun = redis.call('HGET', deliveries, id .. ':b')
  if not begun then return redis.call('HEXISTS', deliveries, id) == 1 end
  return begun == (redis.call('HGET', deliveries, id .. ':g') or '0')
end

-- Publish a batch again (its message was lost, or its delivery with its process): a new
-- generation, so that only the newest message runs (BEGIN skips the others). Adds
-- `"<generation> <batch_id> <body>"` to `out`, for the caller to publish and say so (PUBLISHED).
local function publish_again(id, entry, out)
  local generation = redis.call('HINCRBY', deliveries, id .. ':g', 1)
  redis.call('ZADD', released, now, id)
  redis.call('ZADD', unpublished, now, id)
  out[#out + 1] = generation .. ' ' .. entry
end

-- Move batches from the backlog into flight until `workers` are in flight: the job's parallelism.
-- Returns the entries the caller must publish (none when it pushed their messages itself).
local function release()
  local out = {}
  if not in_progress() then return out end
  local room = tonumber(redis.call('HGET', job, 'workers')) - redis.call('HLEN', inflight)
  local count = tonumber(redis.call('HGET', job, 'released'))
  local moved = 0
  while room > 0 do
    local entry = redis.call('LPOP', backlog)
    if not entry then break end
    local id = string.sub(entry, 1, string.find(entry, ' ', 1, true) - 1)
    redis.call('HSET', inflight, id, entry)
    redis.call('ZADD', released, now, id)  -- when it went to the broker: the watchdog finds lost ones
    moved = moved + 1
    if broker_queue then
      redis.call('LPUSH', broker_queue, batch_message(broker_queue, job_id, entry, count + moved))
    else
      redis.call('ZADD', unpublished, now, id)  -- until the caller says it published it (PUBLISHED)
      out[#out + 1] = entry
    end
    room = room - 1
  end
  if moved > 0 then
    redis.call('HINCRBY', job, 'released', moved)
    redis.call('HSETNX', job, 'start', ARGV[2])
    redis.call('HSET', job, 'last_release', ARGV[2])
  end
  return out
end

-- 1 for the single caller that sees the job's last batch end (HSETNX, as Celery's chord counter).
local function claim_finalizer()
  if not in_progress() then return 0 end
  local v = redis.call('HMGET', job, 'enqueued', 'total', 'succeeded', 'failed_batches')
  if v[1] ~= '1' or tonumber(v[3]) + tonumber(v[4]) < tonumber(v[2]) then return 0 end
  -- the claim time: the watchdog finds lost ones (sooner while `finalizer_published` is not set)
  return redis.call('HSETNX', job, 'finalizer', ARGV[2])
end

-- An enqueuer may write only while it holds the job's lease; each write renews it (the heartbeat).
local function holds_lease(token)
  if token == '' then return true end
  if redis.call('GET', lease) ~= token then return false end
  redis.call('PEXPIRE', lease, LEASE_MS)
  return true
end

local function release_and_claim()
  local out = release()
  table.insert(out, 1, claim_finalizer())
  return out
end
"""

APPEND = """
local cursor, token = ARGV[3], ARGV[4]
if not in_progress() or past_deadline() then return {0} end
if not holds_lease(token) then return {-1} end
redis.call('RPUSH', backlog, unpack(ARGV, 5))
redis.call('HINCRBY', job, 'total', #ARGV - 4)
if cursor ~= '' then redis.call('HSET', job, 'cursor', cursor) end
local out = release()
table.insert(out, 1, 1)
return out
"""

ENQUEUED = """
local token, empty_message = ARGV[3], ARGV[4]
if not in_progress() then return {0} end
if not holds_lease(token) then return {-1} end
if redis.call('HGET', job, 'total') == '0' then
  end_job('status_enqueue_failed', empty_message)
  return {0}
end
if redis.call('HGET', job, 'status') == 'status_enqueuing' then move_status('status_enqueuing', 'status_running') end
redis.call('HSET', job, 'enqueued', '1', 'status', 'status_running')
redis.call('DEL', lease)
return release_and_claim()
"""

BEGIN = """
local id, proc, generation, ready = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if not redis.call('HGET', job, 'status') then return {'skip', 'missing'} end
if not in_progress() or past_deadline() then
  redis.call('HINCRBY', job, 'skipped', 1)
  return {'skip', redis.call('HGET', job, 'status')}
end
if redis.call('HEXISTS', inflight, id) == 0 then return {'skip', 'duplicate'} end
-- the watchdog published this batch again (its message looked lost): only the newest message runs
if (redis.call('HGET', deliveries, id .. ':g') or '0') ~= generation then return {'skip', 'superseded'} end
redis.call('HSET', job, 'last_delivery', ARGV[2])
-- the latest release time of a message of the job delivered: since a queue is first in, first
-- out, the watchdog takes a message released well before it and still undelivered for lost
-- (+inf: the watchdog saw this batch delivered before)
local released_at = redis.call('ZSCORE', released, id)
if released_at and tonumber(released_at) < math.huge
    and tonumber(released_at) > tonumber(redis.call('HGET', job, 'delivered_release') or '0') then
  redis.call('HSET', job, 'delivered_release', released_at)
end
local started = redis.call('HINCRBY', deliveries, id, 1)
redis.call('HSET', deliveries, id .. ':b', generation)  -- this generation's delivery began
local recorded = tonumber(redis.call('HGET', deliveries, id .. ':r') or '0')
if started - 1 > recorded then
  -- earlier deliveries that never reported an outcome died with their worker: failed attempts
  redis.call('HINCRBY', job, 'failed', started - 1 - recorded)
  redis.call('HSET', deliveries, id .. ':r', started - 1)
  local working = redis.call('HGETALL', procs)  -- the dead process no longer counts as a worker
  for i = 1, #working, 2 do
    if string.match(working[i + 1], ' (.*)$') == id then redis.call('HDEL', procs, working[i]) end
  end
end
if started > tonumber(redis.call('HGET', job, 'max_deliveries')) then
  redis.call('HSET', deliveries, id .. ':r', started)
  -- how many of the deliveries that died were killed by the kernel for memory (OOM below)
  return {'dead', started, tonumber(redis.call('HGET', deliveries, id .. ':oom') or '0')}
end
-- a process whose predictor is already loaded runs the batch at once: no PROCEED call needed
redis.call('HSET', procs, proc, (ready == '1' and 'running ' or 'initializing ') .. id)
return {'run', started}
"""

PROCEED = """
if not in_progress() or past_deadline() then
  redis.call('HINCRBY', job, 'skipped', 1)
  return 0
end
redis.call('HSET', procs, ARGV[3], 'running ' .. ARGV[4])
return 1
"""

RECORD = """
local id, outcome, seconds, proc = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local live = in_progress()
if live then
  -- the process no longer runs it (an outcome recorded late: unless it has moved on to another)
  local holding = redis.call('HGET', procs, proc)
  if holding and string.sub(holding, -#id - 1) == ' ' .. id then redis.call('HDEL', procs, proc) end
  if outcome ~= 'dead' and outcome ~= 'oom' then redis.call('HINCRBY', deliveries, id .. ':r', 1) end
  if outcome == 'retry' then
    redis.call('HINCRBY', job, 'failed', 1)
    return {0}
  end
  -- a second delivery of a batch that already finished (at-least-once) is not counted twice
  if redis.call('HDEL', inflight, id) == 0 then return {0} end
  redis.call('ZREM', released, id)
else
  -- The job ended (or this store never had it: a Redis that lost its data, where a count would
  -- make a job hash of counters alone): count an outcome once, of a batch in flight at the end.
  if redis.call('SREM', ended_inflight, id) == 0 then return {0} end
  if outcome == 'retry' then outcome = 'failed' end  -- it will not run again
end
if outcome == 'ok' then
  redis.call('HINCRBY', job, 'succeeded', 1)
  redis.call('HINCRBYFLOAT', job, 'time_sum', seconds)
else
  if outcome == 'failed' then redis.call('HINCRBY', job, 'failed', 1) end
  redis.call('HINCRBY', job, 'failed_batches', 1)
  if outcome == 'oom' then  -- its workers were killed for memory: the job ends status_worker_oom
    redis.call('HINCRBY', job, 'oom_batches', 1)
    redis.call('HSETNX', job, 'oom_batch', id)
  end
end
if not live then return {0} end
return release_and_claim()
"""

# The worker's main process saw the pool process running a delivery of batch ARGV[3] killed by the
# kernel's OOM killer; the next BEGIN counts that delivery as dead, and this says why.
OOM = """
local id = ARGV[3]
if not in_progress() or redis.call('HEXISTS', inflight, id) == 0 then return 0 end
return redis.call('HINCRBY', deliveries, id .. ':oom', 1)
"""

END = """
return end_job(ARGV[3], ARGV[4])
"""

# Batches whose message was lost: released before ARGV[5] for a process to publish that never said
# it did (it died in between), or released before ARGV[3] and no delivery ever began (the broker
# lost the message; this takes longer to tell from a message waiting behind a busy fleet). Each
# gets a new generation, so whichever older message still turns up is skipped by BEGIN; returns
# `"<generation> <batch_id> <body>"` entries, for the caller to publish and then say so (PUBLISHED).
REPUBLISH = """
local cutoff, limit, unpublished_cutoff = ARGV[3], tonumber(ARGV[4]), ARGV[5]
local out = {}
if not in_progress() then return out end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', unpublished, '-inf', unpublished_cutoff, 'LIMIT', 0, limit)) do
  local entry = redis.call('HGET', inflight, id)
  if entry and not delivered(id) then
    publish_again(id, entry, out)
  else
    redis.call('ZREM', unpublished, id)  -- delivered or ended: it was published after all
  end
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', released, '-inf', cutoff, 'LIMIT', 0, limit)) do
  local entry = redis.call('HGET', inflight, id)
  if not entry then
    redis.call('ZREM', released, id)
  elseif not delivered(id) then
    publish_again(id, entry, out)
  else
    redis.call('ZADD', released, '+inf', id)  -- delivered: the broker redelivers it if need be
  end
end
return out
"""

# The process ARGV[3] died (its liveness key expired) holding a delivery of the job: it no longer
# counts as a worker, and the batch it was running, if that is still its newest message's
# delivery, is published again (the next delivery's BEGIN counts the dead one as failed).
REVIVE = """
local out = {}
if not in_progress() then return out end
local holding = redis.call('HGET', procs, ARGV[3])
if not holding then return out end
redis.call('HDEL', procs, ARGV[3])
local id = string.match(holding, ' (.*)$')
local entry = redis.call('HGET', inflight, id)
if entry and delivered(id) then publish_again(id, entry, out) end
return out
"""

# The finalizer was claimed and the job is still in progress: its message or the worker running it
# was lost. Claim it again (now) and say so, if it was claimed before ARGV[3], or before ARGV[4] and
# its claimant never said it published the message (it died in between).
RECLAIM = """
if not in_progress() then return 0 end
local claimed = tonumber(redis.call('HGET', job, 'finalizer') or 'inf')
local cutoff = tonumber(ARGV[3])
if not redis.call('HGET', job, 'finalizer_published') then cutoff = tonumber(ARGV[4]) end
if claimed > cutoff then return 0 end
redis.call('HSET', job, 'finalizer', ARGV[2])
redis.call('HDEL', job, 'finalizer_published', 'finalizing')  -- its holder fell silent
return 1
"""

# A finalizer message (token ARGV[3]) asks to run the job's finalizer, or its runner says it is
# alive: 1 if it may (the job is in progress, and no other finalizer holds it with a claim time,
# its last heartbeat, after ARGV[4]). Each call renews the claim time RECLAIM looks at, so a long
# on_job_complete is not taken for lost. The same token may take over its own stale run: a
# message whose worker died.
FINALIZING = """
if not in_progress() then return 0 end
local holder = redis.call('HGET', job, 'finalizing')
if holder and holder ~= ARGV[3] and tonumber(redis.call('HGET', job, 'finalizer')) > tonumber(ARGV[4]) then
  return 0
end
redis.call('HSET', job, 'finalizing', ARGV[3], 'finalizer', ARGV[2])
return 1
"""

# The caller published the messages of the batches ARGV[4..] (and of the finalizer, if ARGV[3] is
# '1') that a call before asked it to publish: the watchdog need not publish them again soon.
PUBLISHED = """
if not in_progress() then return 0 end
if #ARGV > 3 then redis.call('ZREM', unpublished, unpack(ARGV, 4)) end
if ARGV[3] == '1' then redis.call('HSET', job, 'finalizer_published', '1') end
return 1
"""

READ = """
past_deadline()
return {redis.call('HGETALL', job), redis.call('HGETALL', procs), redis.call('HLEN', inflight)}
"""

# An enqueuer silent this long is presumed dead; another one resumes from its cursor.
LEASE_MS = int(float(os.environ.get("BATCHERY_ENQUEUE_LEASE", "30")) * 1000)
COUNTERS = ("total", "released", "succeeded", "failed", "failed_batches", "oom_batches", "skipped", "workers")
TIMES = ("created", "start", "end", "deadline", "time_sum", "last_delivery", "delivered_release")


@dataclass
class Outcome:
    """What a store call asks of its caller: batches to publish, and whether to run the finalizer."""

    released: list[str] = field(default_factory=list)
    finalize: bool = False

    @classmethod
    def parse(cls, reply: list) -> Outcome:
        """An Outcome from RECORD's reply: the finalize flag, then the released batch entries."""
        return cls(released=[e.decode() for e in reply[1:]], finalize=bool(reply and reply[0] == 1))


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


class JobStore:
    """Jobs in Redis; every operation costs O(1) in the number of the job's batches."""

    def __init__(self, client: redis.Redis, stalled_seconds: float = 600.0, broker_queue: str = ""):
        """`broker_queue`: the Redis broker's list for batch messages, when the broker is this same
        Redis (database included); released batches are then pushed there by the release itself
        (app/store/ready_message.py) instead of returned to the caller to publish."""
        self.redis = client
        self.stalled_seconds = stalled_seconds  # in flight this long with no delivery: `stalled`
        self.broker_queue = broker_queue
        common = LUA_BATCH_MESSAGE + LUA_COMMON.replace("LEASE_MS", str(LEASE_MS)).replace(
            "JOB_LOG_LINES", str(MAX_LINES)
        )
        self._scripts = {
            name: client.register_script(common + body)
            for name, body in {
                "append": APPEND,
                "enqueued": ENQUEUED,
                "begin": BEGIN,
                "proceed": PROCEED,
                "record": RECORD,
                "end": END,
                "oom": OOM,
                "read": READ,
                "republish": REPUBLISH,
                "revive": REVIVE,
                "reclaim": RECLAIM,
                "finalizing": FINALIZING,
                "published": PUBLISHED,
            }.items()
        }

    def _call(
        self, script: str, spec_or_id: dict | str, api_name: str, *args: object, now: float, client: object = None
    ) -> list:
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
        if self.broker_queue:
            key_list.append(self.broker_queue)
        return Call(self._scripts[script], key_list, [job_id, repr(now), *args])

    def create(self, spec: dict, api: dict, now: float, source: dict | None = None) -> None:
        """Store a new job in `status_enqueuing`, with the API as deployed at submission and, for
        S3 inputs, the source its enqueuer reads."""
        max_deliveries, _ = retry_limits(spec)
        fields = {
            "spec": json.dumps(spec),
            "api": json.dumps(api),
            "api_name": spec["api_name"],
            "status": status.ENQUEUING,
            "workers": spec["workers"],
            "timeout": spec.get("timeout") or 0,
            "max_deliveries": max_deliveries,
            "created": repr(now),
            "deadline": repr(deadline(spec, now)),
            "source": json.dumps(source) if source else "",
            "enqueued": 0,
        }
        counters = ("total", "released", "succeeded", "failed", "failed_batches", "oom_batches", "skipped", "time_sum")
        fields.update({name: 0 for name in counters})
        pipe = self.redis.pipeline()
        pipe.hset(keys.job(spec["job_id"]), mapping=fields)
        pipe.zadd(keys.api_jobs(spec["api_name"]), {spec["job_id"]: now})
        pipe.zadd(keys.api_active(spec["api_name"]), {spec["job_id"]: now})
        pipe.hincrby(keys.api_statuses(spec["api_name"]), status.ENQUEUING, 1)
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
            reply = self._call("append", spec, spec["api_name"], cursor if last else "", token, *chunk, now=now)
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
        return bool(self.redis.set(keys.enqueuer(job_id), token, nx=True, px=LEASE_MS))

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
            return Delivery("skip", reason=detail.decode())
        return Delivery(action.decode(), number=int(detail), oom_kills=int(rest[0]) if rest else 0)

    def proceed(self, spec: dict, batch_id: str, proc: str, now: float) -> bool:
        """The last check before `predict` (the predictor may have taken minutes to load)."""
        return bool(self._call("proceed", spec, spec["api_name"], proc, batch_id, now=now))

    def record(self, spec: dict, batch_id: str, outcome: str, seconds: float, proc: str, now: float) -> Outcome:
        """Count a delivery's outcome: ok, retry (failed, will run again), failed, dead or oom (for
        good; oom: its workers were killed by the kernel for memory)."""
        return Outcome.parse(self.record_call(spec, batch_id, outcome, seconds, proc, now).run(self.redis))

    def record_call(self, spec: dict, batch_id: str, outcome: str, seconds: float, proc: str, now: float) -> Call:
        """`record` as a script call, to run along with others (app/store/scripts.py); `Outcome.parse`
        reads its reply."""
        return self._prepare("record", spec, spec["api_name"], batch_id, outcome, repr(seconds), proc, now=now)

    def mark_oom(self, job_id: str, batch_id: str, now: float) -> bool:
        """Note that a delivery of a batch in flight was killed by the kernel for memory (the next
        delivery finds it dead); False if the job or the batch is no longer in progress."""
        api_name = self.redis.hget(keys.job(job_id), "api_name")
        if api_name is None:
            return False
        return bool(self._call("oom", job_id, api_name.decode(), batch_id, now=now))

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

    def published(self, spec: dict, entries: list[str], finalizer: bool = False) -> None:
        """Say that the messages of released backlog entries (`"<batch_id> <body>"`), and of the
        finalizer, were published: until then the watchdog takes them for lost after
        `unpublished_seconds`."""
        ids = [entry.partition(" ")[0] for entry in entries]
        flag = "1" if finalizer else "0"
        for start in range(0, max(len(ids), 1), 1000):  # Lua's unpack() takes a few thousand at most
            self._call("published", spec, spec["api_name"], flag, *ids[start : start + 1000], now=0.0)
            flag = "0"

    def state(self, job_id: str, api_name: str, now: float) -> dict | None:
        """A job's state (timing it out if its deadline passed), or None if there is no such job."""
        job_hash, procs, inflight = self._call("read", job_id, api_name, now=now)
        return _state_of(job_hash, procs, inflight, now - self.stalled_seconds)

    def states(self, jobs: list[tuple[str, str]], now: float) -> list[dict | None]:
        """The states of many `(job_id, api_name)` jobs, one READ call each, pipelined (redis-py
        checks the script is loaded first: two round trips in all)."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id, api_name in jobs:
            self._call("read", job_id, api_name, now=now, client=pipe)
        stalled_before = now - self.stalled_seconds
        return [_state_of(h, p, n, stalled_before) for h, p, n in pipe.execute()]

    def spec_and_api(self, job_id: str) -> tuple[dict, dict] | None:
        """The spec a job was submitted with and its API as deployed then; None if no such job."""
        spec, api = self.redis.hmget(keys.job(job_id), "spec", "api")
        return (json.loads(spec), json.loads(api)) if spec else None

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


def _state_of(job_hash: list, procs: list, inflight: int, stalled_before: float) -> dict | None:
    """A READ reply as a job's state; None for no job, or for counters without a job (written by
    an older version's late outcome after Redis lost the job: a 500 for ever on its id)."""
    fields = _pairs(job_hash)
    if "spec" not in fields:
        return None
    return _parse_state(fields, _pairs(procs), inflight, stalled_before)


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
    }
    state.update({name: int(job_hash.get(name, 0)) for name in COUNTERS})
    state.update({name: float(job_hash.get(name, 0)) for name in TIMES})
    states = [parse_process_record(value)[0] for value in procs.values()]
    working = states.count(INITIALIZING) + states.count(RUNNING)
    pending = max(0, inflight - working)
    # No delivery began and no batch was released since `stalled_before`: no worker is taking the
    # job's batches (none consumes its queue, or all are busy), so its pending batches are stalled.
    last_move = max(float(job_hash.get("last_delivery", 0)), float(job_hash.get("last_release", 0)))
    stalled = pending if pending and last_move < stalled_before else 0
    state["worker_counts"] = {
        "pending": pending - stalled,
        "initializing": states.count(INITIALIZING),
        "running": states.count(RUNNING),
        "succeeded": 0,
        "failed": 0,
        "stalled": stalled,
    }
    return state
