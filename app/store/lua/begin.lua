-- begin.lua: a worker received a batch's message; count the delivery and say whether to run it.
--
-- KEYS[1..14]: the job's keys, as common.lua names them.
-- ARGV[1] job_id, ARGV[2] now: as every job store script (common.lua)
-- ARGV[3] id: the batch id
-- ARGV[4] proc: the worker process (as named in procs)
-- ARGV[5] generation: how many times the batch had been published again when this message was sent
-- ARGV[6] ready: '1' if the process has the job's predictor loaded (it runs the batch at once)
-- Touches: job (last_delivery, delivered_release, failed, skipped), inflight, deliveries
-- (<id>, <id>:b, <id>:g, <id>:r, <id>:oom, <id>:h, <id>:o), released, unpublished, procs; at the
-- deadline, what end_job touches. Reads the owner's liveness keys (owner_alive in common.lua).
-- A message of a bundle whose first batch has ended runs the batch it carried (`carried`, common.lua).
-- Returns {'run', delivery number} ({'run', number, batch id, generation, backlog entry} for the
-- batch a bundle's message carried; 'dead' likewise), {'skip', reason} ({'skip', 'owned', process} while another
-- delivery runs in a live process) or {'dead', deliveries, OOM kills among them}.

local id, proc, generation, ready = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if not redis.call('HGET', job, 'status') then return {'skip', 'missing'} end
if not in_progress() or past_deadline() then
  redis.call('HINCRBY', job, 'skipped', 1)
  return {'skip', redis.call('HGET', job, 'status')}
end
-- a bundle's message delivered again (its process died): it runs the batch it carried then
local switched = false
if redis.call('HEXISTS', inflight, id) == 0 then
  local cid, g = carried(id, generation)
  if not cid then return {'skip', 'duplicate'} end
  id, generation, switched = cid, g, true
end
-- the watchdog published this batch again (its message looked lost): only the newest message runs
if (redis.call('HGET', deliveries, id .. ':g') or '0') ~= generation then return {'skip', 'superseded'} end
-- another delivery of the batch runs in a live process: this one does not run, and is neither a
-- delivery nor a failed attempt (a max_receive_count of 1 does not dead-letter a running batch)
local owner = owned_elsewhere(id, proc)
if owner then return {'skip', 'owned', owner} end
redis.call('HSET', job, 'last_delivery', ARGV[2])
-- the latest release time of a message of the job delivered: since a queue is first in, first
-- out, the watchdog takes a message released well before it and still undelivered for lost
-- (+inf: the watchdog saw this batch delivered before)
local released_at = redis.call('ZSCORE', released, id)
if released_at and tonumber(released_at) < math.huge
    and tonumber(released_at) > tonumber(redis.call('HGET', job, 'delivered_release') or '0') then
  redis.call('HSET', job, 'delivered_release', released_at)
end
-- paused: the batch waits for RESUME, neither a delivery nor a failed attempt counted
if paused() then
  hold(id)
  return {'skip', 'paused'}
end
-- the same call sent again (Redis went away as it answered, and the client retried): the delivery
-- it began is this one, not one that died (a max_receive_count of 1 dead-lettered the batch)
local holding = redis.call('HGET', procs, proc)
if holding and string.match(holding, ' (.*)$') == id and redis.call('HGET', deliveries, id .. ':o') == proc
    and redis.call('HGET', deliveries, id .. ':b') == generation then
  local begun = tonumber(redis.call('HGET', deliveries, id))
  if switched then return {'run', begun, id, generation, redis.call('HGET', inflight, id)} end
  return {'run', begun}
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
  local oom_kills = tonumber(redis.call('HGET', deliveries, id .. ':oom') or '0')
  if switched then return {'dead', started, oom_kills, id, generation, redis.call('HGET', inflight, id)} end
  return {'dead', started, oom_kills}
end
-- a process whose predictor is already loaded runs the batch at once: no PROCEED call needed
redis.call('HSET', procs, proc, (ready == '1' and PROC_RUNNING or PROC_INITIALIZING) .. ' ' .. id)
redis.call('HSET', deliveries, id .. ':o', proc)  -- its owner, while the delivery runs
if switched then return {'run', started, id, generation, redis.call('HGET', inflight, id)} end
return {'run', started}
