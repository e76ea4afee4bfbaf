-- record.lua: count a delivery's outcome, release the next batches, claim the finalizer if it was
-- the job's last batch.
--
-- KEYS[1..14]: the job's keys, as common.lua names them.
-- ARGV[1] job_id, ARGV[2] now: as every job store script (common.lua)
-- ARGV[3] id: the batch id
-- ARGV[4] outcome: ok, retry (failed, runs again), failed, dead or oom (failed for good)
-- ARGV[5] seconds: how long the delivery ran
-- ARGV[6] proc: the worker process (as named in procs)
-- ARGV[7] head (optional): the first batch of the message this batch ran in (a bundle, common.lua)
-- ARGV[8] take (with ARGV[7]): '1' if the process would run another batch in that message: an
-- `ok` outcome then takes it ('0', or an empty head: take none)
-- Touches: job (succeeded, time_sum, failed, failed_batches, oom_batches, oom_batch, ends:<slot>), procs,
-- job:throughput, deliveries (<id>:r; a batch given back: its own fields and <head>:c), backlog, inflight, released, ended_inflight, the kept failed batches and unfinished
-- in-flight ones (keys.failed_batches, keys.unfinished_inflight), and what release touches.
-- Returns {finalize (1: the caller runs the finalizer), entries to publish...}; {0}: nothing to do.
-- With ARGV[7]: {finalize, the next batch's backlog entry to run now ('' for none), entries...}.
-- The same call made again (its reply was lost, and the client, or the worker's kept outcomes,
-- sent it again) takes nothing, and gives back the batch the first call took (give_back).

local id, outcome, seconds, proc = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local entry  -- the batch's backlog entry, read when it failed for good
local live = in_progress()
if live then
  -- the process no longer runs it (an outcome recorded late: unless it has moved on to another)
  local holding = redis.call('HGET', procs, proc)
  if holding and string.sub(holding, -#id - 1) == ' ' .. id then redis.call('HDEL', procs, proc) end
  if outcome ~= 'dead' and outcome ~= 'oom' then redis.call('HINCRBY', deliveries, id .. ':r', 1) end
  if outcome == 'retry' then
    -- every delivery begun has its outcome already: the same call sent again (its reply lost)
    local recorded = tonumber(redis.call('HGET', deliveries, id .. ':r'))
    if recorded > tonumber(redis.call('HGET', deliveries, id) or '0') then
      redis.call('HINCRBY', deliveries, id .. ':r', -1)
      return {0}
    end
    redis.call('HINCRBY', job, 'failed', 1)
    return {0}
  end
  -- a batch that failed for good is kept, its entry with it, for a retry (below)
  if outcome ~= 'ok' then entry = redis.call('HGET', inflight, id) end
  -- a second delivery of a batch that already finished (at-least-once) is not counted twice
  if redis.call('HDEL', inflight, id) == 0 then
    if not ARGV[7] then return {0} end
    give_back(ARGV[7], id, proc)
    local out = release_and_claim()  -- publishes the batch given back, if any
    table.insert(out, 2, '')
    return out
  end
  redis.call('ZREM', released, id)
else
  -- The job ended (or this store never had it: a Redis that lost its data, where a count would
  -- make a job hash of counters alone): count an outcome once, of a batch in flight at the end.
  if redis.call('SREM', ended_inflight, id) == 0 then return {0} end
  if outcome == 'retry' then outcome = 'failed' end  -- it will not run again
  -- it ran to an outcome after all: no longer unfinished (keep_unfinished in common.lua)
  entry = redis.call('HGET', job .. ':unfinished:inflight', id)
  redis.call('HDEL', job .. ':unfinished:inflight', id)
end
if outcome == 'ok' then
  redis.call('HINCRBY', job, 'succeeded', 1)
  redis.call('HINCRBYFLOAT', job, 'time_sum', seconds)
else
  if outcome == 'failed' then redis.call('HINCRBY', job, 'failed', 1) end
  redis.call('HINCRBY', job, 'failed_batches', 1)
  -- by batch number: a retry takes them in the job's order, on_job_complete the first 10,000
  -- ids (named as app/store/keys.py `failed_batches`: the job's key and a suffix)
  if entry then redis.call('ZADD', job .. ':failed', tonumber(id) or 0, entry) end
  if outcome == 'oom' then  -- its workers were killed for memory: the job ends status_worker_oom
    redis.call('HINCRBY', job, 'oom_batches', 1)
    redis.call('HSETNX', job, 'oom_batch', id)
  end
end
if not live then return {0} end
-- The job's rate (app/model/progress.py): one more batch ended this second, in a ring of
-- PROGRESS_SLOTS per-second buckets in the job hash, `ends:<slot>` = "<second> <count>". A bucket
-- left from an older second is started again; the status read ignores those past its window.
local second = math.floor(now)
local bucket = 'ends:' .. (second % PROGRESS_SLOTS)
local at, count = string.match(redis.call('HGET', job, bucket) or '', '^(%d+) (%d+)$')
if tonumber(at) ~= second then count = 0 end
redis.call('HSET', job, bucket, second .. ' ' .. (count + 1))
-- The job's throughput over its life (GET .../throughput, app/store/throughput.py): batches ended
-- per 10-s bucket, in a hash kept with the job, `<bucket's first second>` -> count: one command.
redis.call('HINCRBY', job .. ':throughput', second - second % 10, 1)
if not ARGV[7] then return release_and_claim() end
-- taken before the release, so that the slot this batch frees goes to the bundle's next batch
local next_entry = ''
if outcome == 'ok' and ARGV[7] ~= '' and ARGV[8] ~= '0' then next_entry = take_next(ARGV[7], proc) or '' end
local out = release_and_claim()
table.insert(out, 2, next_entry)
return out
