-- finalizing.lua: a finalizer message asks to run the job's finalizer, or its runner says it is
-- alive. Each call renews the claim time RECLAIM looks at, so a long on_job_complete is not
-- taken for lost. The same token may take over its own stale run: a message whose worker died.
-- A finalizer starting waits while a batch of the job is owned by a live process (a delivery
-- with no outcome yet: its batch was counted by another delivery of it, which ended first).
--
-- KEYS[1..14]: the job's keys, as common.lua names them.
-- ARGV[1] job_id, ARGV[2] now: as every job store script (common.lua)
-- ARGV[3] token: the finalizer message's id
-- ARGV[4] beaten_before: another holder whose last heartbeat is older than this has gone
-- ARGV[5] starting: '1' when the finalizer is about to start (absent for a heartbeat)
-- Touches: job (status, finalizing, finalizer). Reads the liveness keys of the processes in procs
-- (owner_alive in common.lua) when starting.
-- Returns 1 if it may run (the job is in progress, and no other finalizer holds it with a claim
-- time, its last heartbeat, after ARGV[4]); {2, process, its procs record} if it must wait for
-- that live process's delivery to end; else 0.

if not in_progress() then return 0 end
local holder = redis.call('HGET', job, 'finalizing')
if holder and holder ~= ARGV[3] and tonumber(redis.call('HGET', job, 'finalizer')) > tonumber(ARGV[4]) then
  return 0
end
if ARGV[5] == '1' then
  local working = redis.call('HGETALL', procs)
  for i = 1, #working, 2 do
    if owner_alive(working[i]) then
      -- waiting, not lost: the claim time is renewed, so the watchdog does not publish it again
      redis.call('HSET', job, 'finalizer', ARGV[2])
      return {2, working[i], working[i + 1]}
    end
  end
end
redis.call('HSET', job, 'finalizing', ARGV[3], 'finalizer', ARGV[2])
return 1
