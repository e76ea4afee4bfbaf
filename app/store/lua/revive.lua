-- revive.lua: a process died (its liveness keys expired) holding a delivery of the job: it no
-- longer counts as a worker, and the batch it was running, if that is still its newest message's
-- delivery, is published again (the next delivery's BEGIN counts the dead one as failed).
--
-- KEYS[1..14]: the job's keys, as common.lua names them.
-- ARGV[1] job_id, ARGV[2] now: as every job store script (common.lua)
-- ARGV[3] proc: the dead process (as named in procs)
-- Touches: job (status), procs, inflight, deliveries (<id>, <id>:b, <id>:g), released, unpublished.
-- Reads the process's liveness keys (owner_alive in common.lua): nothing is done if it lives.
-- Returns the "<generation> <batch_id> <body>" entry to publish again, or nothing.

local out = {}
if not in_progress() then return out end
local holding = redis.call('HGET', procs, ARGV[3])
if not holding then return out end
-- the watchdog's look at its keys is a moment old: a process renewed since is not dead
if owner_alive(ARGV[3]) then return out end
redis.call('HDEL', procs, ARGV[3])
local id = string.match(holding, ' (.*)$')
local entry = redis.call('HGET', inflight, id)
if entry and delivered(id) then publish_again(id, entry, out) end
return out
