"""Rate limits, quotas and connection slots in Redis: the local algorithms of ext.ratelimit,
as one Lua script, so every decision is one atomic round trip (EVALSHA, reloaded on NOSCRIPT
by engine.stores.redis).

One call decides a whole request: every check (each limit, the quota periods, the connection
slot) is evaluated first without writing, and only when none rejects are they all committed
(nginx limit_req's order: a request one limit refuses costs the other limits nothing).

Time: ARGV[1] is "now" in seconds. Production passes "" and the script reads Redis TIME, one
clock for every worker and every edgeproxy host (no skew between hosts); tests pass their
controlled clock. Every key expires once it is idle past its window, so Redis holds state only
for active clients.

Each check reads and writes ONE key (a hash or a sorted set). A check's key is hash-tagged on
that check's own partition (route, limit, client key), so on Redis Cluster the keys of a
route's single limit spread over slots; a route with several checks tags them all on the route
(one script may touch one slot only).
"""

import calendar
import time

ALLOW, DELAY, REJECT = 1, 2, 0

# Check codes (the script's dispatch keys) and their params p1, p2, p3.
FIXED_WINDOW = "fw"       # limit, window
SLIDING_LOG = "sl"        # limit, window
SLIDING_COUNTER = "sc"    # limit, window
TOKEN_BUCKET = "tb"       # rate, burst, delay
LEAKY_BUCKET = "lb"       # rate, burst, nodelay (0/1)
CALENDAR = "cal"          # limit, 1 = UTC day / 2 = UTC month
SLOT = "conn"             # max, slot ttl; extra = the request's slot id

DECIDE = r"""
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local floor = math.floor
-- Redis passes a Lua number argument on as "%.14g": any non-integer that must survive
-- (times, token levels) is formatted with %.17g first.

local function expire(key, seconds)
  redis.call('PEXPIRE', key, floor(seconds * 1000) + 1000)
end

local function num(v, default)
  if v then return tonumber(v) end
  return default
end

-- Each function returns verdict, remaining, reset_after, wait, commit (a closure, or nil
-- when rejected). Same arithmetic, in the same order, as ext/ratelimit.pyx: the results are
-- the same doubles (tests/engine/filters/test_ratelimit_redis.py compares them).
local INF = math.huge
local MIN_WAIT = 1e-9
local function at_least(x, lo)
  if x > lo then return x end
  return lo
end
local function units(x)
  if x > 0 then return floor(x) end
  return 0
end

local A = {}

A.fw = function(key, limit, window, _, cost)
  local idx = floor(now / window)
  local left = at_least(window - (now - idx * window), 0)
  local h = redis.call('HMGET', key, 's', 'c')
  local curr = 0
  if num(h[1]) == idx then curr = num(h[2], 0) end
  if cost > limit - curr then
    local wait = at_least(left, MIN_WAIT)
    if cost > limit then wait = INF end
    return 0, limit - curr, left, wait
  end
  return 1, limit - curr - cost, left, 0, function()
    redis.call('HSET', key, 's', idx, 'c', curr + cost)
    expire(key, left)
  end
end

-- One member per admitted unit, scored by its time; expired when t <= now - window.
A.sl = function(key, limit, window, _, cost)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local size = redis.call('ZCARD', key)
  local function newest_reset(live)
    if live == 0 then return 0 end
    local e = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    return at_least(tonumber(e[2]) + window - now, 0)
  end
  if cost > limit - size then
    local wait = INF
    if cost <= limit then
      local i = size + cost - limit - 1
      local e = redis.call('ZRANGE', key, i, i, 'WITHSCORES')
      wait = at_least(tonumber(e[2]) + window - now, MIN_WAIT)
    end
    return 0, limit - size, newest_reset(size), wait
  end
  local reset = at_least(now + window - now, 0)
  return 1, limit - size - cost, reset, 0, function()
    local stamp = string.format('%.17g', now)
    for j = 1, cost do
      redis.call('ZADD', key, stamp, stamp .. ':' .. (size + j))
    end
    expire(key, window)
  end
end

A.sc = function(key, limit, w, _, cost)
  local idx = floor(now / w)
  local elapsed = now - idx * w
  local h = redis.call('HMGET', key, 's', 'c', 'p')
  local s, curr, prev = num(h[1]), 0, 0
  if s == idx then
    curr, prev = num(h[2], 0), num(h[3], 0)
  elseif s == idx - 1 then
    prev = num(h[2], 0)
  end
  local function reset(c)
    if c > 0 then return at_least(2 * w - elapsed, 0) end
    if prev > 0 then return at_least(w - elapsed, 0) end
    return 0
  end
  local room = limit - (prev * (w - elapsed) / w + curr)
  if cost > room then
    local wait
    if cost > limit then
      wait = INF
    elseif curr + cost <= limit then
      wait = at_least((w - elapsed) - (limit - cost - curr) * w / prev, MIN_WAIT)
    else
      wait = at_least((w - elapsed) + (w - (limit - cost) * w / curr), MIN_WAIT)
    end
    return 0, units(room), reset(curr), wait
  end
  local after = curr + cost
  return 1, units(limit - (prev * (w - elapsed) / w + after)), reset(after), 0, function()
    redis.call('HSET', key, 's', idx, 'c', after, 'p', prev)
    expire(key, 2 * w - elapsed)
  end
end

A.tb = function(key, rate, burst, delay, cost)
  local h = redis.call('HMGET', key, 't', 'ts')
  local tokens = burst
  local last = num(h[2])
  if last then
    tokens = num(h[1], 0) + rate * at_least(now - last, 0)
    if tokens >= burst then tokens = burst end
  end
  local avail = tokens + delay
  if cost > avail then
    local wait = INF
    if cost <= burst + delay then wait = at_least((cost - avail) / rate, MIN_WAIT) end
    return 0, units(avail), (burst - tokens) / rate, wait
  end
  tokens = tokens - cost
  local verdict, wait = 1, 0
  if tokens < 0 then verdict, wait = 2, -tokens / rate end
  return verdict, units(tokens + delay), (burst - tokens) / rate, wait, function()
    redis.call('HSET', key, 't', string.format('%.17g', tokens), 'ts', string.format('%.17g', now))
    expire(key, (burst - tokens) / rate)
  end
end

-- nginx limit_req (ngx_http_limit_req_lookup), see ext/ratelimit.pyx LeakyBucket.
A.lb = function(key, rate, burst, nodelay, cost)
  local h = redis.call('HMGET', key, 'e', 'ts')
  local level = -1
  local last = num(h[2])
  if last then
    level = num(h[1], 0) - rate * at_least(now - last, 0)
    if level <= -1 then level = -1 end
  end
  local room = burst - level
  if cost > room then
    local wait = INF
    if cost <= burst + 1 then wait = at_least((cost - room) / rate, MIN_WAIT) end
    return 0, units(room), (level + 1) / rate, wait
  end
  level = level + cost
  local verdict, wait = 1, 0
  if nodelay == 0 and level > 0 then verdict, wait = 2, level / rate end
  return verdict, units(burst - level), (level + 1) / rate, wait, function()
    redis.call('HSET', key, 'e', string.format('%.17g', level), 'ts', string.format('%.17g', now))
    expire(key, (level + 1) / rate)
  end
end

-- Howard Hinnant's days -> civil date (proleptic Gregorian, UTC).
local function civil(days)
  local z = days + 719468
  local era = floor(z / 146097)
  local doe = z - era * 146097
  local yoe = floor((doe - floor(doe / 1460) + floor(doe / 36524) - floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + floor(yoe / 4) - floor(yoe / 100))
  local mp = floor((5 * doy + 2) / 153)
  local d = doy - floor((153 * mp + 2) / 5) + 1
  local m = mp + 3
  if mp >= 10 then m = mp - 9 end
  if m <= 2 then y = y + 1 end
  return y, m, d
end

local MONTH_DAYS = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31}

A.cal = function(key, limit, period, _, cost)
  local days = floor(now / 86400)
  local start, stop
  if period == 1 then
    start, stop = days * 86400, (days + 1) * 86400
  else
    local y, m, d = civil(days)
    local len = MONTH_DAYS[m]
    if m == 2 and (y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0)) then len = 29 end
    start = (days - d + 1) * 86400
    stop = start + len * 86400
  end
  local h = redis.call('HMGET', key, 's', 'c')
  local count = 0
  if num(h[1]) == start then count = num(h[2], 0) end
  local reset = stop - now
  if count + cost > limit then
    return 0, math.max(limit - count, 0), reset, reset
  end
  return 1, limit - count - cost, reset, 0, function()
    redis.call('HSET', key, 's', start, 'c', count + cost)
    expire(key, reset)
  end
end

-- A connection slot: a sorted set of request ids scored by when the slot lapses, so a
-- worker that dies holding slots leaks them for at most the slot ttl.
A.conn = function(key, max, ttl, _, _, id)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local n = redis.call('ZCARD', key)
  if n + 1 > max then
    return 0, 0, 0, 1
  end
  return 1, max - n - 1, 0, 0, function()
    redis.call('ZADD', key, string.format('%.17g', now + ttl), id)
    expire(key, ttl)
  end
end

local out, commits = {}, {}
local admitted = true
local n = tonumber(ARGV[2])
for i = 1, n do
  local b = 2 + (i - 1) * 6
  local v, rem, reset, wait, commit = A[ARGV[b + 1]](
    KEYS[i], tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4]),
    tonumber(ARGV[b + 5]), ARGV[b + 6])
  if v == 0 then admitted = false end
  commits[i] = commit
  out[#out + 1] = v
  out[#out + 1] = floor(rem)
  out[#out + 1] = string.format('%.17g', reset)
  out[#out + 1] = string.format('%.17g', wait)
end
if admitted then
  for i = 1, n do commits[i]() end
end
return out
"""

RELEASE = r"""
redis.call('ZREM', KEYS[1], ARGV[1])
return 0
"""


def period_bounds(now: float, period: int) -> tuple[float, float]:
    """[start, end) of the UTC calendar day (period 1) or month (2) holding wall time now."""
    days = int(now // 86400)
    if period == 1:
        return days * 86400.0, (days + 1) * 86400.0
    t = time.gmtime(days * 86400)
    start = (days - t.tm_mday + 1) * 86400.0
    return start, start + calendar.monthrange(t.tm_year, t.tm_mon)[1] * 86400.0


class Check:
    """One check of a decision: which script function, its params and how a key is named."""

    __slots__ = ("code", "p1", "p2", "p3", "tag", "name", "args")

    def __init__(self, code: str, p1, p2, p3, tag: str, name: str):
        self.code = code
        self.p1, self.p2, self.p3 = p1, p2, p3
        self.tag = tag      # the limit's identity: "route:limit"
        self.name = name
        self.args = [code, str(p1), str(p2), str(p3)]  # the script arguments, made once


async def decide(store, checks: list, keys: list, costs: list, now, extra: str = "") -> list:
    """Run the checks (``keys[i]`` is check i's client key, ``costs[i]`` its cost) in one
    EVALSHA; returns [(verdict, remaining, reset_after, wait), ...]. Raises
    engine.stores.redis.StoreUnavailable. ``now`` None reads Redis TIME."""
    args = ["" if now is None else repr(float(now)), str(len(checks))]
    rkeys = []
    single = len(checks) == 1
    for c, k, cost in zip(checks, keys, costs, strict=True):
        rkeys.append(redis_key(store, c, k, single))
        args += c.args
        args += (str(cost), extra if c.code == SLOT else "")
    flat = await store.run(DECIDE, rkeys, args)
    return [(int(flat[i]), int(flat[i + 1]), float(flat[i + 2]), float(flat[i + 3]))
            for i in range(0, len(flat), 4)]


def redis_key(store, check: Check, key: str, single: bool) -> str:
    """Check ``check``'s key for client key ``key``: hash-tagged on the check itself when it
    is the decision's only one, else on the route (a script may touch one Cluster slot)."""
    tag = check.tag + ":" + key
    if single:
        return store.key("rl:" + tag)
    return store.key("rl:" + check.tag.partition(":")[0], tag)


async def release(store, redis_key: str, slot_id: str) -> None:
    await store.run(RELEASE, [redis_key], [slot_id])
