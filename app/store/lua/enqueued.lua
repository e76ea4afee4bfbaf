-- enqueued.lua: the job's input is all in its backlog; it runs, or fails if it has no batch.
--
-- KEYS[1..14]: the job's keys, as common.lua names them.
-- ARGV[1] job_id, ARGV[2] now: as every job store script (common.lua)
-- ARGV[3] token: the enqueuer's lease token ('' for none)
-- ARGV[4] empty_message: the job's message if it ends with no batch (status_enqueue_failed)
-- Touches: job (enqueued, status, finalizer), statuses, lease, and what release and end_job touch.
-- Returns {finalize (1: the caller runs the finalizer), entries to publish...}; {0}: the job
-- ended; {-1}: another enqueuer holds the lease.

local token, empty_message = ARGV[3], ARGV[4]
if not in_progress() then return {0} end
if not holds_lease(token) then return {-1} end
if redis.call('HGET', job, 'total') == '0' then
  end_job(STATUS_ENQUEUE_FAILED, empty_message)
  return {0}
end
if redis.call('HGET', job, 'status') == STATUS_ENQUEUING then move_status(STATUS_ENQUEUING, STATUS_RUNNING) end
redis.call('HSET', job, 'enqueued', '1')
if not paused() then redis.call('HSET', job, 'status', STATUS_RUNNING) end  -- RESUME makes it running
redis.call('DEL', lease)
return release_and_claim()
