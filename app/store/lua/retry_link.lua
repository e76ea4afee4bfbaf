-- retry_link.lua: a job was retried: add the new job's id to the parent's list of retries
-- (app/store/retries.py), oldest first, in the parent's hash so that READ returns it as it is.
--
-- KEYS[1] job          hash: the parent job (app/store/keys.py `job`)
-- ARGV[1] child_id     the new job's id
-- Touches: KEYS[1] (retry_job_ids: the ids, separated by spaces).
-- Returns 1; 0 if the parent no longer exists.

if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local ids = redis.call('HGET', KEYS[1], 'retry_job_ids')
redis.call('HSET', KEYS[1], 'retry_job_ids', ids and (ids .. ' ' .. ARGV[1]) or ARGV[1])
return 1
