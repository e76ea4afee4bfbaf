-- resume.lua: a paused job goes on where it stopped: running again (enqueuing, if its enqueuer had
-- not finished), its deadline later by the time paused, the batches held while it was paused
-- published again (each with a new generation), and the `workers` window refilled.
--
-- KEYS[1..14]: the job's keys, as common.lua names them.
-- ARGV[1] job_id, ARGV[2] now: as every job store script (common.lua)
-- Touches: job (status, paused, paused_deadline, paused_seconds, deadline, last_release),
-- statuses, deliveries (<id>:h, <id>:g), released, unpublished, and what release and
-- claim_finalizer touch.
-- Returns {1, status, finalize (1: the caller runs the finalizer), n, n "<generation> <batch_id>
-- <body>" entries to publish again, then the released entries to publish}; {0, status}: nothing
-- changed (not paused: its status); {0}: no such job.

local st = redis.call('HGET', job, 'status')
if not st then return {0} end
if st ~= STATUS_PAUSED then return {0, st} end
local to = STATUS_ENQUEUING
if redis.call('HGET', job, 'enqueued') == '1' then to = STATUS_RUNNING end
local paused_for = now - tonumber(redis.call('HGET', job, 'paused'))
local deadline = tonumber(redis.call('HGET', job, 'paused_deadline') or '0')
if deadline > 0 then deadline = deadline + paused_for end
move_status(STATUS_PAUSED, to)
-- last_release: the job moves again (its pending batches are not stalled for having waited)
redis.call('HSET', job, 'status', to, 'deadline', string.format('%.6f', deadline), 'last_release', ARGV[2])
redis.call('HDEL', job, 'paused', 'paused_deadline')
redis.call('HINCRBYFLOAT', job, 'paused_seconds', string.format('%.6f', paused_for))
local again = {}
for _, id in ipairs(redis.call('HKEYS', inflight)) do  -- at most `workers`
  if redis.call('HDEL', deliveries, id .. ':h') == 1 then
    publish_again(id, redis.call('HGET', inflight, id), again)
  end
end
local out = release_and_claim()
local reply = {1, to, out[1], #again}
for _, entry in ipairs(again) do reply[#reply + 1] = entry end
for i = 2, #out do reply[#reply + 1] = out[i] end
return reply
