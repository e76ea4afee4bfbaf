-- republish.lua: batches whose message was lost, to publish again. Released before ARGV[5] for a
-- process to publish that never said it did (it died in between), or released before ARGV[3]
-- and no delivery ever began (the broker lost the message; this takes longer to tell from a
-- message waiting behind a busy fleet). Each gets a new generation, so whichever older message
-- still turns up is skipped by BEGIN.
--
-- KEYS[1..14]: the job's keys, as common.lua names them.
-- ARGV[1] job_id, ARGV[2] now: as every job store script (common.lua)
-- ARGV[3] cutoff: released before this and never delivered: lost
-- ARGV[4] limit: at most this many batches of each kind
-- ARGV[5] unpublished_cutoff: released before this and never said published: lost
-- Touches: job (status), unpublished, released, inflight, deliveries (<id>, <id>:b, <id>:g).
-- Returns "<generation> <batch_id> <body>" entries, for the caller to publish and then say so
-- (PUBLISHED).

local cutoff, limit, unpublished_cutoff = ARGV[3], tonumber(ARGV[4]), ARGV[5]
local out = {}
if not in_progress() then return out end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', unpublished, '-inf', unpublished_cutoff, 'LIMIT', 0, limit)) do
  local entry = redis.call('HGET', inflight, id)
  if entry and not delivered(id) then
    publish_again(id, entry, out)
  else
    redis.call('ZREM', unpublished, id)  -- delivered or ended: it was published after all
  end
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', released, '-inf', cutoff, 'LIMIT', 0, limit)) do
  local entry = redis.call('HGET', inflight, id)
  if not entry then
    redis.call('ZREM', released, id)
  elseif not delivered(id) then
    publish_again(id, entry, out)
  else
    redis.call('ZADD', released, '+inf', id)  -- delivered: the broker redelivers it if need be
  end
end
return out
