-- published.lua: the caller published the messages a call before asked it to publish: the
-- watchdog need not publish them again soon.
--
-- KEYS[1..14]: the job's keys, as common.lua names them.
-- ARGV[1] job_id, ARGV[2] now (unused here): as every job store script (common.lua)
-- ARGV[3] finalizer: '1' if the finalizer's message was published too
-- ARGV[4..] the ids of the batches whose messages were published
-- Touches: job (status, finalizer_published), unpublished.
-- Returns 1; 0 if the job is no longer in progress.

if not in_progress() then return 0 end
if #ARGV > 3 then redis.call('ZREM', unpublished, unpack(ARGV, 4)) end
if ARGV[3] == '1' then redis.call('HSET', job, 'finalizer_published', '1') end
return 1
