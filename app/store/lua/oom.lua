-- oom.lua: the worker's main process saw the pool process running a delivery of a batch killed
-- by the kernel's OOM killer; the next BEGIN counts that delivery as dead, and this says why.
--
-- KEYS[1..14]: the job's keys, as common.lua names them.
-- ARGV[1] job_id, ARGV[2] now: as every job store script (common.lua)
-- ARGV[3] id: the batch id
-- ARGV[4] generation (optional): the message's; a bundle's message names its first batch, and the
-- batch it carried is the one killed (`carried`, common.lua)
-- Touches: job (status), inflight, deliveries (<id>:oom).
-- Returns the batch's count of OOM kills; 0 if the job or the batch is no longer in progress.

local id = ARGV[3]
if not in_progress() then return 0 end
if redis.call('HEXISTS', inflight, id) == 0 then id = carried(id, ARGV[4] or '0') end
if not id then return 0 end
return redis.call('HINCRBY', deliveries, id .. ':oom', 1)
