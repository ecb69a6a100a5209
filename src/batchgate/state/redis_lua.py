"""Lua scripts of the Redis state (see `batchgate.state.redis` for the data layout).

Each transition is one script: the compare-and-set, its side records and the notice are
atomic, and the script answers with the job as it now stands, or nil when the compare
failed. The fences match the SQLite backend's SQL.

A job travels back as one string, its FIELDS in order, each `-` when absent or
`<length>:<bytes>`: parsing one string is far cheaper for the client than a reply of
thirty-odd RESP elements.
"""

from __future__ import annotations

FIELDS = (
    "f",
    "k",
    "s",
    "a",
    "pd",
    "pf",
    "pt",
    "et",
    "em",
    "c",
    "st",
    "fi",
    "o",
    "ik",
    "rh",
    "r",
    "rr",
)

_PACK = (
    "local FIELDS = {"
    + ", ".join(f"'{name}'" for name in FIELDS)
    + """}
local function packed(key)
  local values = redis.call('HMGET', key, unpack(FIELDS))
  if not values[3] then return false end
  local out = {}
  for i = 1, #FIELDS do
    local v = values[i]
    if v then out[i] = #v .. ':' .. v else out[i] = '-' end
  end
  return table.concat(out)
end
"""
)

# KEYS: 1 job.
GET_JOB = _PACK + "return packed(KEYS[1])\n"

# KEYS: 1 job, 2 finished, 3 chunks, 4 attempts. ARGV: 1 job id, 2 channel, then per script.
_TRANSITION = (
    _PACK
    + """
local function active(status) return status == 'queued' or status == 'running' end
local function publish(status)
  redis.call('PUBLISH', ARGV[2], status)
  return packed(KEYS[1])
end
local function companions()
  local keys = {KEYS[1], KEYS[3], KEYS[4]}
  local ix = redis.call('HGET', KEYS[1], 'ix')
  if ix and redis.call('GET', ix) == ARGV[1] then keys[4] = ix end
  return keys
end
-- A terminal record: indexed by finish time, and kept for the TTL with its companions.
local function retire(finished_at, ttl)
  redis.call('ZADD', KEYS[2], finished_at, ARGV[1])
  for _, key in ipairs(companions()) do redis.call('EXPIRE', key, ttl) end
end
"""
)

# KEYS: 1 job, 2 finished, 3 idempotency key (absent without one). ARGV: 1 job id,
# 2 job key prefix, 3 ttl s, 4 '1' if terminal, 5 finished_at or '', then field pairs.
# Returns {1} created, or {0, stored id, the job packed} for a repeated key or job id.
CREATE = (
    _PACK
    + """
if KEYS[3] then
  local existing = redis.call('GET', KEYS[3])
  if existing then
    local record = packed(ARGV[2] .. existing)
    if record then return {0, existing, record} end
  end
end
local same_id = packed(KEYS[1])
if same_id then return {0, ARGV[1], same_id} end  -- this write again (a lost reply)
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
if KEYS[3] then
  redis.call('SET', KEYS[3], ARGV[1])
  redis.call('HSET', KEYS[1], 'ix', KEYS[3])
end
if ARGV[5] ~= '' then redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1]) end
if ARGV[4] == '1' then
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  if KEYS[3] then redis.call('EXPIRE', KEYS[3], ARGV[3]) end
end
return {1}
"""
)

# A task's attempts (`batchgate.attempts.TaskAttempts`) are the attempts hash's field
# <task> = "started failed delivery running", with <task>:et and <task>:em its last error.
_ATTEMPTS = """
local function attempts(task)
  local r = redis.call('HMGET', KEYS[4], task, task .. ':et', task .. ':em')
  local a = {0, 0, 0, 0, r[2], r[3]}
  if r[1] then
    local s, f, d, x = string.match(r[1], '^(%d+) (%d+) (%d+) (%d)$')
    a = {tonumber(s), tonumber(f), tonumber(d), tonumber(x), r[2], r[3]}
  end
  return a
end
"""

# ARGV: 3 delivery, 4 task, 5 crash retries, 6 now. Mirrors `batchgate.attempts.start`.
# Returns nil (terminal, counted chunk, stale delivery), or {1 started | 0 over budget,
# the job packed, then the task's record before: started, failed, delivery, running,
# error type, error message}.
START_ATTEMPT = (
    _TRANSITION
    + _ATTEMPTS
    + """
local job = redis.call('HMGET', KEYS[1], 's', 'a')
if not active(job[1]) then return false end
local task = ARGV[4]
if tonumber(task) >= 0 and redis.call('SISMEMBER', KEYS[3], task) == 1 then return false end
local a = attempts(task)
if tonumber(ARGV[3]) < a[3] then return false end
if a[1] - a[2] > tonumber(ARGV[5]) then
  return {0, packed(KEYS[1]), a[1], a[2], a[3], a[4], a[5], a[6]}
end
redis.call('HSET', KEYS[4], task, (a[1] + 1) .. ' ' .. a[2] .. ' ' .. ARGV[3] .. ' 1')
local number = a[1] + 1
if tonumber(task) >= 0 then number = math.max(tonumber(job[2]), number) end
redis.call('HSET', KEYS[1], 's', 'running', 'a', number)
redis.call('HSETNX', KEYS[1], 'st', ARGV[6])
return {1, publish('running'), a[1], a[2], a[3], a[4], a[5], a[6]}
"""
)

# ARGV: 3 attempt number, 4 error type, 5 error message, 6 task, 7 '1' if by the function.
# Mirrors `batchgate.attempts.fail`; a plain job goes back to queued.
REQUEUE = (
    _TRANSITION
    + _ATTEMPTS
    + """
if not active(redis.call('HGET', KEYS[1], 's')) then return false end
local task = ARGV[6]
local a = attempts(task)
if a[1] < 1 or a[1] ~= tonumber(ARGV[3]) then return false end
redis.call('HSET', KEYS[4], task, a[1] .. ' ' .. (a[2] + tonumber(ARGV[7])) .. ' ' .. a[3] .. ' 0',
  task .. ':et', ARGV[4], task .. ':em', ARGV[5])
if tonumber(task) >= 0 then return packed(KEYS[1]) end
redis.call('HSET', KEYS[1], 's', 'queued', 'et', ARGV[4], 'em', ARGV[5])
return publish('queued')
"""
)

# ARGV: 3 attempt or '' (unfenced), 4 status, 5 now, 6 ttl s, then the pairs of the
# outcome fields given (r, rr, et, em); the others are cleared.
FINISH = (
    _TRANSITION
    + """
local job = redis.call('HMGET', KEYS[1], 's', 'a')
if not active(job[1]) then return false end
if ARGV[3] ~= '' and tonumber(job[2]) ~= tonumber(ARGV[3]) then return false end
redis.call('HDEL', KEYS[1], 'r', 'rr', 'et', 'em')
redis.call('HSET', KEYS[1], 's', ARGV[4], 'fi', ARGV[5], unpack(ARGV, 7))
retire(ARGV[5], ARGV[6])
return publish(ARGV[4])
"""
)

REOPEN = (
    _TRANSITION
    + """
if redis.call('HGET', KEYS[1], 's') ~= 'failed' then return false end
redis.call('HSET', KEYS[1], 's', 'queued', 'a', 0)
redis.call('HDEL', KEYS[1], 'et', 'em', 'fi')
redis.call('DEL', KEYS[4])
redis.call('ZREM', KEYS[2], ARGV[1])
for _, key in ipairs(companions()) do redis.call('PERSIST', key) end
return publish('queued')
"""
)

# ARGV: 3 now, 4 ttl s.
CANCEL = (
    _TRANSITION
    + """
if not active(redis.call('HGET', KEYS[1], 's')) then return false end
redis.call('HSET', KEYS[1], 's', 'cancelled', 'fi', ARGV[3])
retire(ARGV[3], ARGV[4])
return publish('cancelled')
"""
)

# KEYS: 1 job, 2 chunks. ARGV: 1 channel, 2 chunk, 3 done, 4 failed.
# Returns {counted 1|0, done, failed, total}, or nil for an unknown job.
RECORD_CHUNK = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
if redis.call('SADD', KEYS[2], ARGV[2]) == 0 then
  local p = redis.call('HMGET', KEYS[1], 'pd', 'pf', 'pt')
  return {0, p[1], p[2], p[3]}
end
local ttl_ms = redis.call('PTTL', KEYS[1])
if ttl_ms > 0 then redis.call('PEXPIRE', KEYS[2], ttl_ms) end
local done = redis.call('HINCRBY', KEYS[1], 'pd', ARGV[3])
local failed = redis.call('HINCRBY', KEYS[1], 'pf', ARGV[4])
redis.call('PUBLISH', ARGV[1], 'progress')
return {1, done, failed, redis.call('HGET', KEYS[1], 'pt')}
"""

# KEYS: 1 finished. ARGV: 1 key prefix, then job ids.
DELETE = """
for i = 2, #ARGV do
  local id = ARGV[i]
  local key = ARGV[1] .. 'job:' .. id
  local ix = redis.call('HGET', key, 'ix')
  if ix and redis.call('GET', ix) == id then redis.call('DEL', ix) end
  redis.call('DEL', key, ARGV[1] .. 'chunks:' .. id, ARGV[1] .. 'attempts:' .. id)
  redis.call('ZREM', KEYS[1], id)
end
return #ARGV - 1
"""
