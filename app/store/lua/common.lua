-- common.lua: what every job store script shares; the loader (app/store/scripts.py) puts it
-- before each of them, so the scripts below can end a job or release batches from any call.
--
-- Every job store script takes the same KEYS and the same first two ARGV:
-- KEYS[1]  job             hash: the job's spec, status, counters and times
-- KEYS[2]  backlog         list: backlog entries not yet released
-- KEYS[3]  inflight        hash: batch id -> backlog entry, for batches released and not finished
-- KEYS[4]  deliveries      hash: per batch, deliveries begun, recorded, generation, OOM kills, owner
-- KEYS[5]  procs           hash: process -> "initializing <batch_id>" or "running <batch_id>"
-- KEYS[6]  active          sorted set: the API's jobs in progress
-- KEYS[7]  lease           string: the enqueuer's lease
-- KEYS[8]  statuses        hash: status -> how many of the API's jobs are in it
-- KEYS[9]  released        sorted set: batch id -> when it was released and not yet delivered
-- KEYS[10] unpublished     sorted set: batch id -> when it was released for the caller to publish
-- KEYS[11] job_log         list: the job's log lines
-- KEYS[12] job_log_seq     counter: the number of the job's last log line
-- KEYS[13] ended_inflight  set: batches in flight when the job ended
-- KEYS[14] broker_queue    list: the Redis broker's queue, when the broker is this Redis (else absent)
-- ARGV[1]  job_id
-- ARGV[2]  now             epoch seconds
-- ARGV[3..] are each script's own (see its header).
-- Key names: app/store/keys.py, built by JobStore._prepare (app/store/job_store.py).
--
-- Names in capitals stand for values defined once, in Python; the loader writes the values in
-- their place as it reads the files (a constant, as cheap as before: no local, no upvalue):
-- STATUS_ENQUEUING, STATUS_RUNNING, ... (app/model/status.py: one per status, its value upper-cased),
-- RUN_BATCH_TASK and BUNDLED_ENTRY_BYTES (app/model/wire.py), LEASE_MS and JOB_LOG_LINES (Settings, given to JobStore),
-- WEBHOOK_OUTBOX (app/store/keys.py: the sorted set of the completion webhooks due),
-- JOB_KEY_SUFFIXES, RETENTION_ENDED and DEFAULT_JOB_RETENTION_SECONDS (the retention: keep_ended).

local job, backlog, inflight, deliveries, procs, active = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local lease, statuses, released, unpublished = KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local job_log, job_log_seq, ended_inflight = KEYS[11], KEYS[12], KEYS[13]
local broker_queue = KEYS[14]  -- set when the broker is this Redis: release pushes the messages
local job_id, now = ARGV[1], tonumber(ARGV[2])

-- A backlog entry is "<batch_id> <body>" (app/model/wire.py): the first space ends the id, and
-- the body starts after it, at #id + 2.
local function entry_batch_id(entry)
  return string.sub(entry, 1, string.find(entry, ' ', 1, true) - 1)
end

-- A batch's Celery message, built here by the call that releases the batch.
--
-- On the Redis broker, kombu keeps a queue's messages as JSON strings in a list named after the
-- queue (priority 0), and the workers BRPOP them. When the job store and the broker are the same
-- Redis, `release` pushes each released batch's message itself, in the same atomic call that
-- moves the batch into flight. So the worker that counted a batch's outcome publishes nothing
-- (`send_task` was a third of a pool process's CPU per batch: docs/benchmarks.md), and no batch
-- can be lost between its release and its publish. On SQS, or with a broker on another Redis,
-- the caller publishes the released batches with `send_task` (app/broker/dispatch.py).
--
-- The message is Celery's protocol 2 as `send_task` writes it (tests/test_ready_message.py
-- compares them, field by field), except that its body is JSON, not base64 (kombu takes a body
-- with no `body_encoding` as it is). Its ids, the task id and the delivery tag, are the batch's
-- first message's, `<job_id>.b<batch_id>.a1` (app/model/wire.py `batch_task_id`): unique, since
-- a batch is released once, and they say which batch a task in Flower is. `queue`: the broker list
-- it goes to; `id`: the entry's batch id, which the caller has read already.
local function batch_message(queue, job_id, id, entry)
  local task_id = cjson.encode(job_id .. '.b' .. id .. '.a1')
  local args = cjson.encode({job_id, id, string.sub(entry, #id + 2)})
  local body = '[' .. args .. ',{},{"callbacks":null,"errbacks":null,"chain":null,"chord":null}]'
  return '{"body":' .. cjson.encode(body) .. ',"content-encoding":"utf-8","content-type":"application/json",'
    .. '"headers":{"lang":"py","task":"' .. RUN_BATCH_TASK .. '","id":' .. task_id .. ',"shadow":null,"eta":null,'
    .. '"expires":null,"group":null,"group_index":null,"retries":0,"timelimit":[null,null],'
    .. '"root_id":' .. task_id .. ',"parent_id":null,'
    .. '"argsrepr":' .. cjson.encode("['" .. job_id .. "', '" .. id .. "', ...]") .. ',"kwargsrepr":"{}",'
    .. '"origin":"batchery-store","ignore_result":null,"replaced_task_nesting":0,"stamped_headers":null,'
    .. '"stamps":{}},"properties":{"correlation_id":' .. task_id .. ',"delivery_mode":2,'
    .. '"delivery_info":{"exchange":"","routing_key":' .. cjson.encode(queue) .. '},"priority":0,'
    .. '"delivery_tag":' .. task_id .. '}}'
end

-- The API's count of jobs per status (a gauge for /metrics), moved with each status change.
local function move_status(from, to)
  redis.call('HINCRBY', statuses, from, -1)
  redis.call('HINCRBY', statuses, to, 1)
end

local function in_progress()
  local st = redis.call('HGET', job, 'status')
  return st == STATUS_ENQUEUING or st == STATUS_RUNNING or st == STATUS_PAUSED
end

-- A paused job is in progress, but releases no batch, starts none and claims no finalizer
-- (pause.lua, resume.lua).
local function paused()
  return redis.call('HGET', job, 'status') == STATUS_PAUSED
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

-- The batches that never ran to an outcome outlive the job's end, for a retry of them
-- (`{"include": "unfinished"}`, app/jobs/retry.py): the backlog and the in-flight hash are
-- renamed, O(1), to keys named as app/store/keys.py `unfinished_backlog` and `unfinished_inflight`
-- (the job's key and a suffix). A late outcome of a batch in flight at the end takes it out
-- (record.lua).
local function keep_unfinished()
  if redis.call('EXISTS', backlog) == 1 then redis.call('RENAME', backlog, job .. ':unfinished:backlog') end
  if redis.call('EXISTS', inflight) == 1 then redis.call('RENAME', inflight, job .. ':unfinished:inflight') end
end

-- Retention (app/store/retention.py): every key of an ended job expires `retention` seconds
-- (BATCHERY_JOB_RETENTION_SECONDS when the job was submitted) after its end: each family of
-- app/store/keys.py `job_keys`, named as the job's key and a suffix (JOB_KEY_SUFFIXES); its
-- Idempotency-Key record no later. A note on the job goes to RETENTION_ENDED, scored by when it
-- expires, for the sweep that then takes it out of the listings, drops its references to its
-- code and its dead letters, and keeps a tombstone (its id answers 404 saying it expired).
local function keep_ended(final)
  local f = redis.call('HMGET', job, 'api_name', 'retention', 'idempotency', 'code_refs', 'spec')
  local keep = tonumber(f[2]) or DEFAULT_JOB_RETENTION_SECONDS
  for _, suffix in ipairs(JOB_KEY_SUFFIXES) do  -- never lengthened: a lock keeps its own short TTL
    local ttl = redis.call('TTL', job .. suffix)
    if ttl == -1 or ttl > keep then redis.call('EXPIRE', job .. suffix, keep) end
  end
  local idempotency = f[3] or ''
  if idempotency ~= '' then
    local ttl = redis.call('TTL', idempotency)
    if ttl == -1 or ttl > keep then redis.call('EXPIRE', idempotency, keep) end
  end
  local dead_letters = ''  -- the queue name ends the ARN (app/broker/dead_letters.py `queue_name`)
  if f[5] and string.find(f[5], 'sqs_dead_letter_queue', 1, true) then
    local dlq = cjson.decode(f[5])['sqs_dead_letter_queue']
    if type(dlq) == 'table' and type(dlq['arn']) == 'string' then dead_letters = string.match(dlq['arn'], '([^:]*)$') end
  end
  local note = cjson.encode({job_id, f[1] or '', final, f[4] or '', idempotency, dead_letters})
  redis.call('ZADD', RETENTION_ENDED, now + keep, note)
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
  keep_unfinished()
  redis.call('DEL', backlog, inflight, deliveries, procs, lease, released, unpublished)
  redis.call('ZREM', active, job_id)
  log_end(final, message)
  keep_ended(final)
  -- A job with a completion webhook has it due now, written by the call that sets the final
  -- status, so no way of ending misses it (app/jobs/webhook.py delivers it). The outbox is one
  -- key for all jobs, named by WEBHOOK_OUTBOX and not in KEYS: fine on one Redis (and Sentinel),
  -- as every script here is; Redis Cluster is not supported.
  if redis.call('HEXISTS', job, 'webhook_url') == 1 then redis.call('ZADD', WEBHOOK_OUTBOX, ARGV[2], job_id) end
  return 1
end

local function past_deadline()
  local deadline = redis.call('HGET', job, 'deadline') or '0'
  local d = tonumber(deadline)
  if d > 0 and now >= d then
    local timeout = redis.call('HGET', job, 'timeout')
    end_job(STATUS_TIMED_OUT, 'the job ran past its timeout of ' .. timeout .. ' seconds', deadline)
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

-- How many more batches may go into flight now: at most `workers` in flight (the job's
-- parallelism), and at most `max_in_broker` of them waiting in the broker (BATCHERY_MAX_IN_BROKER,
-- stored with the job when it is created; a job stored before it has no such bound). A batch in
-- flight is waiting unless a process holds it in `procs` (BEGIN put it there): so `workers: 1000000`
-- no longer puts a job's whole input into the broker, and a stop leaves at most `max_in_broker`
-- messages to skip. Each batch that ends tops the waiting ones up to the bound again.
local function room_in_flight()
  local limits = redis.call('HMGET', job, 'workers', 'max_in_broker')
  local flying = redis.call('HLEN', inflight)
  local room = tonumber(limits[1]) - flying
  if not limits[2] then return room end
  local waiting = flying - redis.call('HLEN', procs)
  return math.min(room, tonumber(limits[2]) - waiting)
end

-- Move batches from the backlog into flight while `room_in_flight` allows.
-- Returns the entries the caller must publish (none when it pushed their messages itself).
local function release()
  local out = {}
  if not in_progress() or paused() then return out end
  local room = room_in_flight()
  local moved = 0
  while room > 0 do
    local entry = redis.call('LPOP', backlog)
    if not entry then break end
    local id = entry_batch_id(entry)
    redis.call('HSET', inflight, id, entry)
    redis.call('ZADD', released, now, id)  -- when it went to the broker: the watchdog finds lost ones
    moved = moved + 1
    if broker_queue then
      redis.call('LPUSH', broker_queue, batch_message(broker_queue, job_id, id, entry))
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
  if not in_progress() or paused() then return 0 end
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

-- A batch delivered while its job is paused does not start, and its delivery is not counted: it
-- is held, in flight (its place in the `workers` window kept), until RESUME publishes it again.
-- Waiting for a resume is not being lost: the watchdog's lost-release scan leaves it (+inf).
local function hold(id)
  redis.call('HSET', deliveries, id .. ':h', '1')
  redis.call('ZADD', released, '+inf', id)
  redis.call('ZREM', unpublished, id)
end

-- Whether the pool process `proc` (as named in procs: "<host>:<pid>:<token>") is alive: its own
-- liveness key exists, or its worker's main process lists its pid among its live children. The
-- main process renews both every few seconds (workers/liveness.py), so a
-- process whose predictor holds the GIL stays alive, and a Redis that lost one of the two keys
-- does not make it dead. Both keys are outside KEYS, like WEBHOOK_OUTBOX (fine on one Redis).
local function owner_alive(proc)
  if redis.call('EXISTS', PROC_ALIVE_PREFIX .. proc .. PROC_ALIVE_SUFFIX) == 1 then return true end
  local host, pid, token = string.match(proc, '^(.*):(%d+):([^:]*)$')
  if not pid then return false end
  local children = redis.call('GET', WORKER_CHILDREN_PREFIX .. host .. ':' .. token .. WORKER_CHILDREN_SUFFIX)
  if not children then return false end
  return string.find(' ' .. children .. ' ', ' ' .. pid .. ' ', 1, true) ~= nil
end

-- Whether another delivery of batch `id` is still owned: begun by a live process other than
-- `proc` and not yet recorded (a duplicate message: SQS's visibility ran out while a predictor
-- held the GIL, or the watchdog published it again). Returns that process's name, or nil.
local function owned_elsewhere(id, proc)
  local owner = redis.call('HGET', deliveries, id .. ':o')
  if not owner or owner == proc then return nil end
  local begun = tonumber(redis.call('HGET', deliveries, id) or '0')
  if begun <= tonumber(redis.call('HGET', deliveries, id .. ':r') or '0') then return nil end
  if owner_alive(owner) then return owner end
  return nil
end

-- Bundles (issue 22): a message carries its own batch and, when the batches are short, the next
-- ones of the job's backlog, run one after the other by the process that took the message. The
-- process that records batch k takes batch k+1 in the same call (`take_next`, from RECORD), as the
-- broker would have: a batch taken that way is released and begun at once (a delivery counted,
-- owned by the process), without a message of its own. So the `workers` cap is the one it always
-- was, batches in flight, and a bundle never holds a slot that another process could use. The
-- message remembers, in `<head>:c` of deliveries ("<generation> <batch_id>"), the batch it
-- carries now: a message delivered again after its process died runs that batch (`carried`).

-- The batch a message carries, if its first batch `id` (of `generation`) has ended: the batch it
-- carried last, as long as that one is still in flight and was not published again since.
-- Returns the batch's id and generation, or nil.
local function carried(id, generation)
  if (redis.call('HGET', deliveries, id .. ':g') or '0') ~= generation then return nil end
  local g, cid = string.match(redis.call('HGET', deliveries, id .. ':c') or '', '^(%d+) (.+)$')
  if not cid or redis.call('HEXISTS', inflight, cid) == 0 then return nil end
  if (redis.call('HGET', deliveries, cid .. ':g') or '0') ~= g then return nil end
  return cid, g
end

-- The next batch of the bundle whose message's first batch is `head`, run by `proc` right after
-- the batch it just recorded: released from the backlog and begun, as BEGIN would (its first
-- delivery), when the job runs, is not paused nor past its deadline, and has room in `workers`,
-- and the batch is no larger than BUNDLED_ENTRY_BYTES.
-- Backlog entries were never released (append.lua), so this is always the batch's first delivery.
-- Returns the batch's backlog entry, or nil (nothing to take: the message ends).
local function take_next(head, proc)
  if not in_progress() or paused() or past_deadline() then return nil end
  if redis.call('HLEN', inflight) >= tonumber(redis.call('HGET', job, 'workers')) then return nil end
  local entry = redis.call('LPOP', backlog)
  if not entry then return nil end
  if #entry > BUNDLED_ENTRY_BYTES then  -- a large batch goes in a message of its own (app/model/wire.py)
    redis.call('LPUSH', backlog, entry)
    return nil
  end
  local id = entry_batch_id(entry)
  redis.call('HSET', inflight, id, entry)
  redis.call('HINCRBY', job, 'released', 1)
  redis.call('HINCRBY', job, 'bundled', 1)  -- batches that travelled in another batch's message
  redis.call('HSET', job, 'last_release', ARGV[2], 'last_delivery', ARGV[2])
  redis.call('HINCRBY', deliveries, id, 1)
  redis.call('HSET', deliveries, id .. ':b', '0', id .. ':o', proc, head .. ':c', '0 ' .. id)
  redis.call('HSET', procs, proc, PROC_RUNNING .. ' ' .. id)
  return entry
end

-- Undo the `take_next` of a RECORD whose reply was lost (Redis went away as it answered): the
-- process never learnt of the batch it was given, so that batch would stay owned by a live
-- process that does not run it, and its job would never end. `id` is the batch that RECORD
-- recorded, `head` its message's first batch and `proc` the process. The batch taken goes back to
-- the front of the backlog, its delivery uncounted, as if it had never been taken.
local function give_back(head, id, proc)
  local cid = string.match(redis.call('HGET', deliveries, head .. ':c') or '', '^0 (.+)$')
  if not cid or cid == id then return end  -- the lost call took nothing
  local taken = redis.call('HMGET', deliveries, cid, cid .. ':o', cid .. ':r', cid .. ':g')
  -- still as take_next left it: its first delivery, owned by `proc`, not recorded nor published again
  if taken[1] ~= '1' or taken[2] ~= proc or taken[3] or (taken[4] or '0') ~= '0' then return end
  local entry = redis.call('HGET', inflight, cid)
  if not entry then return end
  redis.call('HDEL', inflight, cid)
  redis.call('LPUSH', backlog, entry)
  redis.call('HINCRBY', job, 'released', -1)
  redis.call('HINCRBY', job, 'bundled', -1)
  redis.call('HDEL', deliveries, cid, cid .. ':b', cid .. ':o', head .. ':c')
  if redis.call('HGET', procs, proc) == PROC_RUNNING .. ' ' .. cid then redis.call('HDEL', procs, proc) end
end
