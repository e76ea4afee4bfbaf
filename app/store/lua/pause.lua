-- pause.lua: pause a job in progress: from now on no batch of it starts (BEGIN and PROCEED hold
-- them), none is released and no finalizer is claimed, until RESUME. Its timeout stands still:
-- the deadline is put aside (0: none) and RESUME sets it again, later by the time paused.
--
-- KEYS[1..14]: the job's keys, as common.lua names them.
-- ARGV[1] job_id, ARGV[2] now: as every job store script (common.lua)
-- Touches: job (status, paused, paused_deadline, deadline), statuses; at the deadline, what
-- end_job touches.
-- Returns {1, status}: paused now; {0, status}: nothing changed (already paused, or ended: its
-- final status); {0}: no such job.

local st = redis.call('HGET', job, 'status')
if not st then return {0} end
if past_deadline() then return {0, redis.call('HGET', job, 'status')} end
if st == STATUS_PAUSED or not in_progress() then return {0, st} end
move_status(st, STATUS_PAUSED)
local deadline = redis.call('HGET', job, 'deadline') or '0'
redis.call('HSET', job, 'status', STATUS_PAUSED, 'paused', ARGV[2], 'paused_deadline', deadline, 'deadline', '0')
return {1, STATUS_PAUSED}
