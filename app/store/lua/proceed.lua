-- proceed.lua: the last check before `predict` (the predictor may have taken minutes to load).
--
-- KEYS[1..14]: the job's keys, as common.lua names them.
-- ARGV[1] job_id, ARGV[2] now: as every job store script (common.lua)
-- ARGV[3] proc: the worker process (as named in procs)
-- ARGV[4] id: the batch id
-- Touches: job (skipped), procs; paused: deliveries (<id>, <id>:h), released, unpublished; at the
-- deadline, what end_job touches.
-- Returns 1: run the batch; 0: the job ended or is paused, skip it.

if not in_progress() or past_deadline() then
  redis.call('HINCRBY', job, 'skipped', 1)
  return 0
end
if paused() then  -- paused while the predictor loaded: the batch did not start, BEGIN's count is undone
  -- once: the same call sent again (its reply lost) finds the process's record gone
  if redis.call('HDEL', procs, ARGV[3]) == 1 then redis.call('HINCRBY', deliveries, ARGV[4], -1) end
  hold(ARGV[4])
  return 0
end
redis.call('HSET', procs, ARGV[3], PROC_RUNNING .. ' ' .. ARGV[4])
return 1
