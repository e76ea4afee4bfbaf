-- read.lua: a job's state, timing it out first if its deadline passed.
--
-- KEYS[1..14]: the job's keys, as common.lua names them.
-- ARGV[1] job_id, ARGV[2] now: as every job store script (common.lua)
-- Touches: job, procs, inflight (read); at the deadline, what end_job touches.
-- Returns {the job hash, the procs hash (both flat lists), the number of batches in flight}.

past_deadline()
return {redis.call('HGETALL', job), redis.call('HGETALL', procs), redis.call('HLEN', inflight)}
