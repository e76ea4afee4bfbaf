-- job_log_read.lua: a job's log lines numbered above ARGV[1], oldest first, read from there and
-- not from the start (app/store/joblog.py `JobLog.read`): a reader following a job asks for the
-- few lines since its last poll, and a log of 10,000 lines is not read whole for them.
--
-- KEYS[1] job_log  list: the job's log lines, JSON objects that open with '{"seq":<n>', oldest first
-- ARGV[1] after: the number of the last line the reader has
-- ARGV[2] limit: at most this many lines
-- Touches: KEYS[1] (read only).
-- Returns the lines, as stored.
--
-- Every writer numbers its lines and appends them in one call (job_log_append.lua, log_end in
-- common.lua), and trimming drops the oldest: the numbers in the list run on by one. So the line
-- numbered `after + 1` sits `after + 1 - first` places after the first line. Should the numbers
-- not run on (a list written some other way), the lines are looked for one by one, as before.

local after, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local function seq(line) return tonumber(string.match(line, '^{"seq":%s*(%d+)')) end
local first, last = redis.call('LINDEX', KEYS[1], 0), redis.call('LINDEX', KEYS[1], -1)
if not last or (seq(last) or 0) <= after then return {} end  -- nothing new
local start = math.max(after + 1 - (seq(first) or 0), 0)
local lines = redis.call('LRANGE', KEYS[1], start, start + limit - 1)
if #lines > 0 and seq(lines[1]) == math.max(after + 1, seq(first) or 0) then return lines end
local found = {}
for _, line in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  if (seq(line) or 0) > after and #found < limit then found[#found + 1] = line end
end
return found
