"""Lua scripts of the Redis queue (see `batchgate.queue.redis` for the data layout).

Every script reads the clock with TIME, so leases and delays agree across hosts whatever
their clocks say. Times are integer milliseconds.
"""

from __future__ import annotations

_COMMON = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function fields(entry)
  local f, kv = {}, entry[2]
  for i = 1, #kv, 2 do f[kv[i]] = kv[i + 1] end
  return f
end
"""

# KEYS: 1 stream, 2 delayed. ARGV: 1 delay ms, then (id, body) pairs.
PUT = (
    _COMMON
    + """
local delay = tonumber(ARGV[1])
if delay <= 0 then
  for i = 2, #ARGV, 2 do
    redis.call('XADD', KEYS[1], '*', 'i', ARGV[i], 'b', ARGV[i + 1], 'a', 0)
  end
else
  local due = now_ms() + delay
  for i = 2, #ARGV, 2 do
    redis.call('ZADD', KEYS[2], due, '0|' .. ARGV[i] .. '|' .. ARGV[i + 1])
  end
end
return 1
"""
)

# KEYS: 1 stream, 2 leases, 3 expiry, 4 delayed.
# ARGV: 1 max, 2 lease ms, 3 token, 4 group, 5 consumer, 6 orphan idle ms (0: no scan),
#       7 promote limit, 8 orphan scan count.
# Returns {ms until the next delayed message or lease is due (-1: none; only when nothing
# was leased), then sid, id, body, attempt for each delivery}.
CLAIM = (
    _COMMON
    + """
local max, token, group, consumer = tonumber(ARGV[1]), ARGV[3], ARGV[4], ARGV[5]
local now = now_ms()
local leased_until = now + tonumber(ARGV[2])
local out, n = {-1}, 0
local function lease(sid, f, attempt)
  redis.call('HSET', KEYS[2], sid, attempt .. ' ' .. token)
  redis.call('ZADD', KEYS[3], leased_until, sid)
  out[#out + 1] = sid
  out[#out + 1] = f.i
  out[#out + 1] = f.b
  out[#out + 1] = attempt
  n = n + 1
end
local function forget(sid)
  redis.call('HDEL', KEYS[2], sid)
  redis.call('ZREM', KEYS[3], sid)
  redis.call('XACK', KEYS[1], group, sid)
end

-- Due delayed messages join the stream's tail.
local due = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, tonumber(ARGV[7]))
for _, m in ipairs(due) do
  local a = string.find(m, '|', 1, true)
  local b = string.find(m, '|', a + 1, true)
  redis.call('XADD', KEYS[1], '*', 'i', string.sub(m, a + 1, b - 1), 'b', string.sub(m, b + 1),
    'a', string.sub(m, 1, a - 1))
end
if #due > 0 then redis.call('ZREMRANGEBYRANK', KEYS[4], 0, #due - 1) end

-- Lapsed leases are delivered again, one attempt later.
for _, sid in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, max)) do
  local held = redis.call('HGET', KEYS[2], sid)
  local claimed = redis.call('XCLAIM', KEYS[1], group, consumer, 0, sid)
  if held and claimed[1] then
    lease(sid, fields(claimed[1]), tonumber(string.match(held, '^%d+')) + 1)
  else
    forget(sid)
  end
end

-- Orphans: handed out by a blocking read whose client vanished before leasing them.
if tonumber(ARGV[6]) > 0 and n < max then
  local idle = redis.call('XPENDING', KEYS[1], group, 'IDLE', ARGV[6], '-', '+', ARGV[8])
  for _, p in ipairs(idle) do
    if n >= max then break end
    if redis.call('HEXISTS', KEYS[2], p[1]) == 0 then
      local claimed = redis.call('XCLAIM', KEYS[1], group, consumer, 0, p[1])
      if claimed[1] then
        local f = fields(claimed[1])
        lease(p[1], f, tonumber(f.a) + 1)
      else
        forget(p[1])
      end
    end
  end
end

-- New messages.
if n < max then
  local got = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', max - n,
    'STREAMS', KEYS[1], '>')
  if got then
    for _, e in ipairs(got[1][2]) do
      local f = fields(e)
      lease(e[1], f, tonumber(f.a) + 1)
    end
  end
end

if n == 0 then
  for _, key in ipairs({KEYS[3], KEYS[4]}) do
    local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if first[2] then
      local wait = math.max(tonumber(first[2]) - now, 0)
      if out[1] < 0 or wait < out[1] then out[1] = wait end
    end
  end
end
return out
"""
)

# Lease entries a blocking XREADGROUP handed to this client, unless an orphan scan took
# them first. KEYS: 1 stream, 2 leases, 3 expiry. ARGV: 1 lease ms, 2 token, 3 group,
# 4 consumer, then (sid, attempts before) pairs. Returns the sids leased.
LEASE = (
    _COMMON
    + """
local leased_until = now_ms() + tonumber(ARGV[1])
local out = {}
for i = 5, #ARGV, 2 do
  local sid = ARGV[i]
  if redis.call('HEXISTS', KEYS[2], sid) == 0
      and #redis.call('XCLAIM', KEYS[1], ARGV[3], ARGV[4], 0, sid, 'JUSTID') > 0 then
    redis.call('HSET', KEYS[2], sid, (tonumber(ARGV[i + 1]) + 1) .. ' ' .. ARGV[2])
    redis.call('ZADD', KEYS[3], leased_until, sid)
    out[#out + 1] = sid
  end
end
return out
"""
)

# The fence: the caller's "attempt token" is the lease's current one, and it has not
# lapsed. KEYS: 1 stream, 2 leases, 3 expiry. ARGV: 1 sid, 2 "attempt token", 3 group.
_FENCE = (
    _COMMON
    + """
local now = now_ms()
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
local leased_until = redis.call('ZSCORE', KEYS[3], ARGV[1])
if not leased_until or tonumber(leased_until) <= now then return 0 end
local function drop()
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  local e = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
  redis.call('XACK', KEYS[1], ARGV[3], ARGV[1])
  redis.call('XDEL', KEYS[1], ARGV[1])
  return e[1] and fields(e[1])
end
local attempt = string.match(ARGV[2], '^%d+')
"""
)

ACK = _FENCE + "drop()\nreturn 1\n"

# ARGV: 4 consumer, 5 lease ms. The JUSTID claim resets the entry's idle time, so
# XPENDING shows a heartbeating entry as fresh.
EXTEND = (
    _FENCE
    + """
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[5]), ARGV[1])
redis.call('XCLAIM', KEYS[1], ARGV[3], ARGV[4], 0, ARGV[1], 'JUSTID')
return 1
"""
)

# KEYS: 4 delayed. ARGV: 4 delay ms.
RETRY = (
    _FENCE
    + """
local f = drop()
if not f then return 0 end
local delay = tonumber(ARGV[4])
if delay <= 0 then
  redis.call('XADD', KEYS[1], '*', 'i', f.i, 'b', f.b, 'a', attempt)
else
  redis.call('ZADD', KEYS[4], now + delay, attempt .. '|' .. f.i .. '|' .. f.b)
end
return 1
"""
)

# KEYS: 4 dead stream, 5 dead ids (message id -> dead stream id). ARGV: 4 reason.
DEAD_LETTER = (
    _FENCE
    + """
local f = drop()
if not f then return 0 end
local t = redis.call('TIME')
local failed_at = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
local dsid = redis.call('XADD', KEYS[4], '*', 'i', f.i, 'b', f.b, 'a', attempt,
  'r', ARGV[4], 't', failed_at)
redis.call('HSET', KEYS[5], f.i, dsid)
return 1
"""
)

# Every live lease lapses now, its attempt not counted. KEYS: 1 leases, 2 expiry.
RELEASE_ALL = """
local n = 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local attempt, token = string.match(all[i + 1], '^(%d+) (.*)$')
  if token ~= '' then
    redis.call('HSET', KEYS[1], all[i], math.max(tonumber(attempt) - 1, 0) .. ' ')
    redis.call('ZADD', KEYS[2], 0, all[i])
    n = n + 1
  end
end
return n
"""

# KEYS: 1 stream, 2 expiry, 3 delayed, 4 dead. ARGV: 1 group.
# The stream holds exactly the undelivered and the pending (leased) entries.
DEPTH = (
    _COMMON
    + """
local now = now_ms()
local pending = redis.call('XPENDING', KEYS[1], ARGV[1])[1]
local lapsed = redis.call('ZCOUNT', KEYS[2], '-inf', now)
local due = redis.call('ZCOUNT', KEYS[3], '-inf', now)
return {redis.call('XLEN', KEYS[1]) - pending + lapsed + due, pending - lapsed,
  redis.call('ZCARD', KEYS[3]) - due, redis.call('XLEN', KEYS[4])}
"""
)

# KEYS: 1 stream, 2 dead stream, 3 dead ids. ARGV: 1 'all' or 'some', 2 limit (for
# 'all'), then the message ids (for 'some'). Returns how many moved.
REDRIVE = (
    _COMMON
    + """
local n = 0
local function back(e)
  local f = fields(e)
  redis.call('XADD', KEYS[1], '*', 'i', f.i, 'b', f.b, 'a', 0)
  redis.call('XDEL', KEYS[2], e[1])
  redis.call('HDEL', KEYS[3], f.i)
  n = n + 1
end
if ARGV[1] == 'all' then
  for _, e in ipairs(redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', ARGV[2])) do back(e) end
else
  for i = 3, #ARGV do
    local dsid = redis.call('HGET', KEYS[3], ARGV[i])
    if dsid then
      local e = redis.call('XRANGE', KEYS[2], dsid, dsid)
      if e[1] then back(e[1]) end
    end
  end
end
return n
"""
)
