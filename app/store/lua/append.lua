-- append.lua: an enqueuer adds batches to the job's backlog, and the first of them are released.
--
-- KEYS[1..14]: the job's keys, as common.lua names them.
-- ARGV[1] job_id, ARGV[2] now: as every job store script (common.lua)
-- ARGV[3] cursor: the enqueuer's cursor after these batches (JSON; '' to keep the last one)
-- ARGV[4] token: the enqueuer's lease token ('' for an enqueuer without a lease: the API)
-- ARGV[5] call: this call's id, new for each call (the same call sent again appends nothing twice)
-- ARGV[6..] backlog entries, "<batch_id> <body>"
-- Touches: job (total, cursor, last_append, released, start, last_release), lease, backlog, inflight,
-- released, unpublished, broker_queue; at the deadline, what end_job touches.
-- Returns {1, entries to publish...}; {0}: the job ended; {-1}: another enqueuer holds the lease.

local cursor, token, call = ARGV[3], ARGV[4], ARGV[5]
if not in_progress() or past_deadline() then return {0} end
if not holds_lease(token) then return {-1} end
-- The same call sent again (Redis went away as it answered, and the client retried): its batches
-- are in already. A job's appends come one after the other (one enqueuer at a time), so the last
-- call's id is enough. What the first call released is published again by the watchdog.
if redis.call('HGET', job, 'last_append') == call then return {1} end
redis.call('HSET', job, 'last_append', call)
redis.call('RPUSH', backlog, unpack(ARGV, 6))
redis.call('HINCRBY', job, 'total', #ARGV - 5)
if cursor ~= '' then redis.call('HSET', job, 'cursor', cursor) end
local out = release()
table.insert(out, 1, 1)
return out
