-- job_log_append.lua: append lines to a job's log, numbered, keeping only the last ones
-- (app/store/joblog.py).
--
-- KEYS[1] job_log      list: the job's log lines, JSON objects, oldest first
-- KEYS[2] job_log_seq  counter: the number of the job's last line
-- KEYS[3] job          hash: the job (optional): once it ended (it has a TTL) the log gets the job's
--                      TTL, even one this line makes anew; with no job, a day (app/store/retention.py)
-- ARGV[1] max_lines: how many lines the log keeps (BATCHERY_JOB_LOG_LINES)
-- ARGV[2..] the lines, each a JSON object without its braces ('' for an empty one)
-- Touches: KEYS[1], KEYS[2]; KEYS[3] (read).
-- Returns the number of the last line written.

local count = #ARGV - 1
local seq = redis.call('INCRBY', KEYS[2], count) - count
for i = 2, #ARGV do
  seq = seq + 1
  local sep = ARGV[i] == '' and '' or ','
  redis.call('RPUSH', KEYS[1], '{"seq":' .. seq .. sep .. ARGV[i] .. '}')
end
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[1]), -1)
local ttl = KEYS[3] and redis.call('TTL', KEYS[3]) or -1
-- the job ended: its log expires with it. No job (it expired, and a message of it came up late):
-- the lines are kept a day, not for ever.
if ttl == -2 then ttl = 86400 end
if ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
end
return seq
