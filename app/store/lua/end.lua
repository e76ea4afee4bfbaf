-- end.lua: give a job in progress its final status (a stop, a failed enqueue, the finalizer).
--
-- KEYS[1..14]: the job's keys, as common.lua names them.
-- ARGV[1] job_id, ARGV[2] now: as every job store script (common.lua)
-- ARGV[3] final: the final status
-- ARGV[4] message: the job's message ('' for none)
-- Touches: what end_job touches (job, statuses, inflight, ended_inflight, backlog, deliveries,
-- procs, lease, released, unpublished, active, job_log, job_log_seq).
-- Returns 1; 0 if the job had a final status already.

return end_job(ARGV[3], ARGV[4])
