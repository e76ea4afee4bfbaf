-- forget_code.lua: remove stored code (a project's files or its packed folder) that no kept job
-- runs and no deployed API was seen with since a cut-off (the retention sweep, app/store/retention.py).
--
-- KEYS[1] code_refs    hash: code key -> the kept jobs that run it (keys.code_refs)
-- KEYS[2] code_stored  sorted set: code key -> when it was last seen deployed (keys.code_stored)
-- KEYS[3] code         the code key (keys.code or keys.project)
-- ARGV[1] cutoff: code seen deployed at or after this is kept (a submission may be reading it)
-- Touches: KEYS[1..3].
-- Returns 1 if it was removed; 0 if it is kept.

local seen = tonumber(redis.call('ZSCORE', KEYS[2], KEYS[3]))
if not seen or seen >= tonumber(ARGV[1]) then return 0 end
if tonumber(redis.call('HGET', KEYS[1], KEYS[3]) or '0') > 0 then return 0 end
redis.call('DEL', KEYS[3])
redis.call('ZREM', KEYS[2], KEYS[3])
redis.call('HDEL', KEYS[1], KEYS[3])
return 1
