-- revoked.lua: a batch's task was revoked (Flower, `celery control revoke`): the delivery the
-- revoke ended, begun (terminated) or not (discarded before it started), counts as a failed
-- attempt, and the batch runs again with a new message if its job's policy has attempts left.
--
-- KEYS[1..14]: the job's keys, as common.lua names them.
-- ARGV[1] job_id, ARGV[2] now: as every job store script (common.lua)
-- ARGV[3] id: the batch id
-- ARGV[4] generation: the generation of the revoked message
-- ARGV[5] began: '1' if the revoke terminated a delivery that had begun, '0' if it never started
-- ARGV[6] attempts: the attempts a batch has before it fails for good (the job's max_receive_count
-- with a dead-letter queue, else 1: as for an exception in predict)
-- Touches: job (failed), deliveries (<id>, <id>:r, <id>:g), procs, released, unpublished.
-- A bundle's message names its first batch: terminated, the batch it carried is the one counted.
-- Returns {'again', attempt, "<generation> <batch_id> <body>" to publish, the batch's entry},
-- {'failed', attempt, the batch's entry}
-- (then RECORD it 'dead': its failed attempt is counted here), or {'ignored', why}: the job or the
-- batch ended, or the message was superseded by a newer one (it would not have run anyway).

local id, generation, began, attempts = ARGV[3], ARGV[4], ARGV[5] == '1', tonumber(ARGV[6])
if not in_progress() then return {'ignored', 'the job ended'} end
local entry = redis.call('HGET', inflight, id)
if not entry and began then
  -- a bundle's message: the batch it carried when its process was terminated (common.lua)
  local cid, g = carried(id, generation)
  if cid then id, generation, entry = cid, g, redis.call('HGET', inflight, cid) end
end
if not entry then return {'ignored', 'the batch ended'} end
if (redis.call('HGET', deliveries, id .. ':g') or '0') ~= generation then return {'ignored', 'superseded'} end
local recorded = tonumber(redis.call('HGET', deliveries, id .. ':r') or '0')
local started = tonumber(redis.call('HGET', deliveries, id) or '0')
if began then
  -- the delivery this message began is the one ended (unless its outcome was recorded already)
  if started <= recorded or redis.call('HGET', deliveries, id .. ':b') ~= generation then
    return {'ignored', 'the batch ended'}
  end
else
  started = redis.call('HINCRBY', deliveries, id, 1)  -- a delivery, though it never started
end
-- this attempt failed, and any earlier one that died unrecorded (as BEGIN counts them)
redis.call('HINCRBY', job, 'failed', started - recorded)
redis.call('HSET', deliveries, id .. ':r', started)
local working = redis.call('HGETALL', procs)  -- the process it ran in no longer works on it
for i = 1, #working, 2 do
  if string.match(working[i + 1], ' (.*)$') == id then redis.call('HDEL', procs, working[i]) end
end
if started >= attempts then return {'failed', started, entry} end
local out = {}
publish_again(id, entry, out)
return {'again', started, out[1], entry}
