-- batch_error.lua: keep the last error of a batch that failed for good, for the job's dead letters
-- (app/store/batch_errors.py); only the first ARGV[3] batches of a job, so its hash stays bounded.
-- Run alone (not with common.lua): atomic, so concurrent workers never keep more than ARGV[3].
--
-- KEYS[1] batch_errors  hash: batch id -> {"attempts", "error"} (JSON)
-- KEYS[2] deliveries    hash: the job's deliveries (common.lua); `<id>` -> deliveries begun
-- ARGV[1] batch id, ARGV[2] error, ARGV[3] how many batches a job keeps
-- Touches: batch_errors.
-- Returns 1 if the error was kept, 0 if the job keeps as many already.

if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) and redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return 0
end
-- the deliveries hash is still there: the job is in progress while a batch fails
local attempts = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode({attempts = attempts, error = ARGV[2]}))
return 1
