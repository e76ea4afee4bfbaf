-- expire_job.lua: take an expired job out of all that still names it, once (the retention sweep,
-- app/store/retention.py): its keys, the API's listings and status counts, the webhook outbox,
-- its references to its code, its dead letters; and keep a tombstone of it.
--
-- KEYS[1] ended         sorted set: notes on ended jobs, scored by when they expire (keys.retention_ended)
-- KEYS[2] expired       sorted set: job id -> when it expired, the tombstones (keys.retention_expired)
-- KEYS[3] code_refs     hash: code key -> the kept jobs that run it (keys.code_refs)
-- KEYS[4] outbox        sorted set: the completion webhooks due (keys.webhook_outbox)
-- KEYS[5] api_jobs      sorted set: the API's jobs
-- KEYS[6] api_active    sorted set: the API's jobs in progress
-- KEYS[7] statuses      hash: status -> how many of the API's jobs are in it
-- KEYS[8] dead_letters  list: the job's dead-letter queue on the Redis broker (none: a key never written)
-- KEYS[9..] the job's keys (keys.job_keys), then its Idempotency-Key record if it has one
-- ARGV[1] note: the job's member of KEYS[1]
-- ARGV[2] job_id
-- ARGV[3] expired_at: when it expired (its score in KEYS[1])
-- ARGV[4] final: the job's final status
-- ARGV[5] job_prefix: a job's key without its id (keys.job(''))
-- ARGV[6..] the code keys the job holds a reference on
-- Touches: all KEYS; the job hashes of the dead letters at the head of KEYS[8] (read).
-- Returns 1; 0 if another sweep took the job already.

if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
local job_id = ARGV[2]
-- A key written after the job ended (a late outcome's, a webhook's body) has no TTL: deleted here.
for i = 9, #KEYS do redis.call('DEL', KEYS[i]) end
redis.call('ZREM', KEYS[4], job_id)
redis.call('ZREM', KEYS[5], job_id)
redis.call('ZREM', KEYS[6], job_id)
if ARGV[4] ~= '' and redis.call('HINCRBY', KEYS[7], ARGV[4], -1) <= 0 then redis.call('HDEL', KEYS[7], ARGV[4]) end
for i = 6, #ARGV do
  if redis.call('HINCRBY', KEYS[3], ARGV[i], -1) <= 0 then redis.call('HDEL', KEYS[3], ARGV[i]) end
end
redis.call('ZADD', KEYS[2], ARGV[3], job_id)
-- Dead letters are appended in time order, many jobs' to one list: drop those at its head whose
-- job is no longer kept (this one's, and older ones' left behind a job kept longer).
for _ = 1, 1000 do
  local head = redis.call('LINDEX', KEYS[8], 0)
  if not head then break end
  local ok, letter = pcall(cjson.decode, head)
  if not ok or type(letter) ~= 'table' or type(letter['job_id']) ~= 'string' then break end
  if redis.call('EXISTS', ARGV[5] .. letter['job_id']) == 1 then break end
  redis.call('LPOP', KEYS[8])
end
return 1
