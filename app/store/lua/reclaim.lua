-- reclaim.lua: the finalizer was claimed and the job is still in progress: its message or the
-- worker running it was lost. Claim it again (now) and say so, if it was claimed before ARGV[3],
-- or before ARGV[4] and its claimant never said it published the message (it died in between).
--
-- KEYS[1..14]: the job's keys, as common.lua names them.
-- ARGV[1] job_id, ARGV[2] now: as every job store script (common.lua)
-- ARGV[3] claimed_before: a claim older than this was lost
-- ARGV[4] unpublished_before: a claim older than this, never said published, was lost
-- Touches: job (status, finalizer, finalizer_published, finalizing).
-- Returns 1: publish the finalizer again; 0: nothing to do.

if not in_progress() then return 0 end
local claimed = tonumber(redis.call('HGET', job, 'finalizer') or 'inf')
local cutoff = tonumber(ARGV[3])
if not redis.call('HGET', job, 'finalizer_published') then cutoff = tonumber(ARGV[4]) end
if claimed > cutoff then return 0 end
redis.call('HSET', job, 'finalizer', ARGV[2])
redis.call('HDEL', job, 'finalizer_published', 'finalizing')  -- its holder fell silent
return 1
