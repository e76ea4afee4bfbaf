-- oom.lua: the worker's main process saw the pool process running a delivery of a batch killed
-- by the kernel's OOM killer; the next BEGIN counts that delivery as dead, and this says why.
--
-- KEYS[1..14]: the job's keys, as common.lua names them.
-- ARGV[1] job_id, ARGV[2] now: as every job store script (common.lua)
-- ARGV[3] id: the batch id
-- Touches: job (status), inflight, deliveries (<id>:oom).
-- Returns the batch's count of OOM kills; 0 if the job or the batch is no longer in progress.

local id = ARGV[3]
if not in_progress() or redis.call('HEXISTS', inflight, id) == 0 then return 0 end
return redis.call('HINCRBY', deliveries, id .. ':oom', 1)
