"""The cluster store: one Redis shared by every gateway process on every host.

Each check-and-charge is one Lua script, which Redis runs atomically: no other
client's command runs between the script's reads and writes, so gateways on
several hosts share exact limits.

Layout (every key starts with the configured prefix):

    c:<key>        sorted set of charges, score = time, member = "<id>|<amount>|<member>"
    c:<key>:p      the held (uncommitted) ones among them, score = lease end
    c:<key>:n      running total of the live amounts
    c:<key>:m      live entries per member (distinct-member limits), hash
    h:<hold>       set of "<c:key>\\n<member>" a hold placed, for commit/release
    s:<key>        sorted set of connection leases, score = lease end
    f:<key>        sorted set of failed logins ("~<attempt>" while in flight), score = time
    l:<key>        lock end time
    suspensions    hash login → JSON
    events, events:<subject>   lists of JSON, newest first, capped
    j:<id>         a journal entry (JSON), expiring at the journal's max_age
    j:c:<cid>      sorted set of the ids of a connection's entries, score = time
    journal        sorted set of every entry id, score = time: the count bound
    series:<key>   hash bucket start → count
    series:<key>:sum  hash: top (latest bucket), floor and total (the running sum of
                   the buckets from floor on, moved bucket by bucket as reads ask)

The scripts touch several keys, so they need one Redis (or a primary with
replicas and Sentinel), not Redis Cluster, whose keys of one script must share
a hash slot.  Times come from the callers (``now``); Redis's own clock is used
only to let idle keys expire, with margins longer than any window.
"""

from __future__ import annotations

import itertools
import json
import math
import secrets
from collections.abc import Iterable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.store.base import (
    AttemptReservation,
    Charge,
    ChargeResult,
    Event,
    JournalEntry,
    MeterResult,
    MeterStep,
    Store,
    StoreUnavailable,
    Suspension,
    TakenReport,
)
from gateway.store.redis_pipe import ScriptPipe, speaks_plainly
from gateway.values.dmarc_reports import DAY, RETENTION

# Per counter key:  c:<key> (entries), c:<key>:p (held ones → lease end),
# c:<key>:n (running total of live amounts, so a check reads one number).
# The same counting as the SQLite backend: a charge is live while ts > now - window
# and, if held, while its lease end > now.
_PER_RUN = r"""
-- Per script run: the running totals read or written (c:<key>:n), the counters
-- already pruned at this ``now``, the expiries already set.  A charge then writes its
-- new total with one SET ... PX (instead of INCRBY + PEXPIRE), a read right after a
-- charge of the same counter does not prune it again, and a key touched twice gets
-- one PEXPIRE: each redis.call from Lua costs about a microsecond on its own.
local totals, pruned, expiring, numbers = {}, {}, {}, {}
-- A number argument is formatted by Redis with '%.17g' at every redis.call (the
-- largest single cost in a profile of redis-server running these scripts): format
-- each value once per run, the same way, so the scores stay exactly the same.
local function num(x)
  local s = numbers[x]
  if s == nil then s = string.format('%.17g', x); numbers[x] = s end
  return s
end
local function total_of(kn)
  local t = totals[kn]
  if t == nil then t = tonumber(redis.call('GET', kn) or '0'); totals[kn] = t end
  return t
end
local function add_total(kn, delta)
  totals[kn] = redis.call('INCRBY', kn, delta)
end
local function set_total(kn, value, ttl)
  redis.call('SET', kn, string.format('%d', value), 'PX', num(ttl))
  totals[kn] = value
end
local function pexpire(k, ttl)
  if expiring[k] ~= ttl then redis.call('PEXPIRE', k, num(ttl)); expiring[k] = ttl end
end
"""

_MEASURE = _PER_RUN + r"""
local function amount_of(e) return tonumber(string.match(e, '^[^|]*|(%d+)|')) end
local function member_of(e) return string.match(e, '^[^|]*|%d+|(.*)$') end

-- c:<key>:m counts live entries per member (distinct-member limits): HLEN is the
-- number of distinct members, without reading the entries.
local function forget_member(k, e)
  local m = member_of(e)
  if m ~= '' and redis.call('HINCRBY', k .. ':m', m, -1) <= 0 then redis.call('HDEL', k .. ':m', m) end
end

-- Entries that can never count again leave the set and the totals, oldest first.
local function prune(k, kp, kn, now, window)
  -- One ``now`` per script, and a key always has the same window (Charge.key).
  if pruned[k] == window then return end
  pruned[k] = window
  local gone = 0
  local cut = num(now - window)
  local old = redis.call('ZRANGEBYSCORE', k, '-inf', cut)
  for _, e in ipairs(old) do
    gone = gone + amount_of(e); redis.call('ZREM', kp, e); forget_member(k, e)
  end
  if #old > 0 then redis.call('ZREMRANGEBYSCORE', k, '-inf', cut) end
  local dead = redis.call('ZRANGEBYSCORE', kp, '-inf', num(now))
  for _, e in ipairs(dead) do
    if redis.call('ZREM', k, e) == 1 then gone = gone + amount_of(e); forget_member(k, e) end
  end
  if #dead > 0 then redis.call('ZREMRANGEBYSCORE', kp, '-inf', num(now)) end
  if gone > 0 then add_total(kn, -gone) end
end

-- Live entries, oldest first: {ts, amount, member}.  Used for distinct members
-- and, on a refusal only, for when to retry.
local function live_rows(k, kp, now, window)
  local rows = redis.call('ZRANGEBYSCORE', k, '(' .. (now - window), '+inf', 'WITHSCORES')
  local out = {}
  for j = 1, #rows, 2 do
    local e = rows[j]
    local lease_end = redis.call('ZSCORE', kp, e)
    if not lease_end or tonumber(lease_end) > now then
      out[#out + 1] = {tonumber(rows[j + 1]), amount_of(e), member_of(e)}
    end
  end
  return out
end

local function used_of(k, kp, kn, now, window, member, pruned)
  if member ~= '' and pruned then
    return redis.call('HLEN', k .. ':m'), nil
  end
  if pruned then return total_of(kn), nil end
  if member ~= '' then
    local seen, distinct = {}, 0
    for _, r in ipairs(live_rows(k, kp, now, window)) do
      if seen[r[3]] == nil then distinct = distinct + 1 end
      if seen[r[3]] == nil or seen[r[3]] < r[1] then seen[r[3]] = r[1] end
    end
    return distinct, seen
  end
  local total = tonumber(redis.call('GET', kn) or '0')
  if not pruned then  -- a read-only look: take off what a prune would
    for _, e in ipairs(redis.call('ZRANGEBYSCORE', k, '-inf', now - window)) do
      total = total - amount_of(e)
    end
    for _, e in ipairs(redis.call('ZRANGEBYSCORE', kp, '-inf', now)) do
      local ts = redis.call('ZSCORE', k, e)
      if ts and tonumber(ts) > now - window then total = total - amount_of(e) end
    end
  end
  return total, nil
end

-- used, fits, retry (-1: never)
local function measure(k, kp, kn, now, window, limit, amount, member)
  prune(k, kp, kn, now, window)
  local used = used_of(k, kp, kn, now, window, member, true)
  if limit < 0 then return used, true, -1 end
  if member ~= '' then
    if redis.call('HEXISTS', k .. ':m', member) == 1 or used + 1 <= limit then return used, true, -1 end
    if limit < 1 then return used, false, -1 end
    -- Refused: which distinct member leaves first (the one seen least recently)?
    local _, seen = used_of(k, kp, kn, now, window, member, false)
    local oldest = nil
    for _, ts in pairs(seen) do if oldest == nil or ts < oldest then oldest = ts end end
    return used, false, math.max(0, oldest + window - now)
  end
  if used + amount <= limit then return used, true, -1 end
  if amount > limit then return used, false, -1 end
  local need, dropped = used + amount - limit, 0
  for _, r in ipairs(live_rows(k, kp, now, window)) do
    dropped = dropped + r[2]
    if dropped >= need then return used, false, math.max(0, r[1] + window - now) end
  end
  return used, false, -1
end
"""

# charge_all(cs, now, lease, id): cs[i] = {k, kp, kn, h, window, limit (-1: none),
# amount, member ('' for none), held (true/false)}.  Returns {accepted, refused index,
# retry ('-1': never), used...}.
_CHARGE_ALL = r"""
local function charge_all(cs, now, lease, id)
  local out = {1, 0, '-1'}
  for i, c in ipairs(cs) do
    local used, fits, retry = measure(c[1], c[2], c[3], now, c[5], c[6], c[7], c[8])
    out[#out + 1] = used
    if not fits then
      out[1], out[2], out[3] = 0, i, tostring(retry)
      return out
    end
  end
  local holds, held = {}, {}  -- h -> its new items, in order of first use
  for i, c in ipairs(cs) do
    local k, kp, kn, h = c[1], c[2], c[3], c[4]
    local window, member = c[5], c[8]
    local amount = member ~= '' and 1 or c[7]
    local e = id .. ':' .. i .. '|' .. amount .. '|' .. member
    local ttl = math.ceil((window + lease) * 1000)
    redis.call('ZADD', k, num(now), e)
    pexpire(k, ttl)
    -- measure() read the total after its prune: the new one is that plus amount.
    set_total(kn, total_of(kn) + amount, ttl)
    if member ~= '' then
      redis.call('HINCRBY', k .. ':m', member, 1)
      pexpire(k .. ':m', ttl)
    end
    if c[9] then
      redis.call('ZADD', kp, num(now + lease), e)
      pexpire(kp, ttl)
      if held[h] == nil then held[h] = {}; holds[#holds + 1] = h end
      local items = held[h]
      items[#items + 1] = k .. '\n' .. e
    end
  end
  for _, h in ipairs(holds) do
    redis.call('SADD', h, unpack(held[h]))
    pexpire(h, math.ceil((lease + 60) * 1000))
  end
  return out
end
"""

# KEYS: per charge c:<key>, c:<key>:p, c:<key>:n, h:<hold>.  ARGV: now, lease, id,
# then per charge: window, limit (-1: none), amount, member ('' for none), held (0/1).
_CHARGE = _MEASURE + _CHARGE_ALL + r"""
local cs = {}
for i = 1, #KEYS / 4 do
  local a = 3 + (i - 1) * 5
  cs[i] = {KEYS[4*i-3], KEYS[4*i-2], KEYS[4*i-1], KEYS[4*i], tonumber(ARGV[a+1]),
           tonumber(ARGV[a+2]), tonumber(ARGV[a+3]), ARGV[a+4], ARGV[a+5] == '1'}
end
return charge_all(cs, tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3])
"""

# KEYS: per charge c:<key>, c:<key>:p, c:<key>:n.  ARGV: now, windows..., members...
_USAGE = _MEASURE + r"""
local now = tonumber(ARGV[1])
local n = #KEYS / 3
local out = {}
for i = 1, n do
  out[i] = (used_of(KEYS[3*i-2], KEYS[3*i-1], KEYS[3*i], now, tonumber(ARGV[1 + i]), ARGV[1 + n + i], false))
end
return out
"""

# settle(holds, now, mode): mode 'commit' or 'release'.
_SETTLE_FN = r"""
local function settle(holds, now, mode)
for _, h in ipairs(holds) do
  for _, item in ipairs(redis.call('SMEMBERS', h)) do
    local k, e = string.match(item, '^(.-)\n(.*)$')
    local lease_end = redis.call('ZSCORE', k .. ':p', e)
    redis.call('ZREM', k .. ':p', e)
    -- A lease that already ran out stays dropped: its room may have been given away.
    if mode == 'release' or not lease_end or tonumber(lease_end) <= now then
      if redis.call('ZREM', k, e) == 1 then
        add_total(k .. ':n', -tonumber(string.match(e, '^[^|]*|(%d+)|')))
        local m = string.match(e, '^[^|]*|%d+|(.*)$')
        if m ~= '' and redis.call('HINCRBY', k .. ':m', m, -1) <= 0 then
          redis.call('HDEL', k .. ':m', m)
        end
      end
    end
  end
  redis.call('DEL', h)
end
end
"""

# KEYS: h:<hold>...  ARGV: now, mode ('commit' or 'release').
_SETTLE = _PER_RUN + _SETTLE_FN + r"""
settle(KEYS, tonumber(ARGV[1]), ARGV[2])
return 1
"""

# A session slot (sorted set k: lease -> its end) taken or renewed until now + ttl;
# refused (0) at ``limit`` live slots (-1: no limit) unless ``lease`` has one already.
_SLOT_FN = r"""
local function take_slot(k, now, ttl, limit, lease)
  redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
  if limit >= 0 and not redis.call('ZSCORE', k, lease) and redis.call('ZCARD', k) >= limit then
    return 0
  end
  redis.call('ZADD', k, now + ttl, lease)
  redis.call('PEXPIRE', k, math.ceil(ttl * 1000) + 60000)
  return 1
end
"""

_ACQUIRE = _SLOT_FN + r"""
return take_slot(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4])
"""

# f:<key> holds one member per failure, score = time: "~<attempt>" while the attempt
# is in flight, "<attempt>" once it failed.
# KEYS: f:<key>..., then l:<key>... (the same keys' locks).  ARGV: now, window,
# attempt, then each key's limit.  Returns {accepted, locked_until, full_until, counts...};
# times as strings ('' for none): Redis would cut a Lua number to an integer.
_RESERVE = r"""
local now, window, attempt = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local n = #KEYS / 2
local locked = nil
for i = 1, n do
  local v = tonumber(redis.call('GET', KEYS[n + i]) or '0')
  if v > now and (locked == nil or v > locked) then locked = v end
end
local counts, full = {}, nil
for i = 1, n do
  local k, limit = KEYS[i], tonumber(ARGV[3 + i])
  redis.call('ZREMRANGEBYSCORE', k, '-inf', now - window)
  local c = redis.call('ZCARD', k)
  counts[i] = c
  if c >= limit then
    -- One more fits once the (c - limit + 1) oldest entries have left the window.
    local row = redis.call('ZRANGE', k, c - limit, c - limit, 'WITHSCORES')
    local ends = row[2] and (tonumber(row[2]) + window) or (now + window)
    if full == nil or ends > full then full = ends end
  end
end
if locked ~= nil or full ~= nil then
  local out = {0, locked and tostring(locked) or '', full and tostring(full) or ''}
  for i = 1, n do out[#out + 1] = counts[i] end
  return out
end
local out = {1, '', ''}
for i = 1, n do
  redis.call('ZADD', KEYS[i], now, '~' .. attempt)
  redis.call('PEXPIRE', KEYS[i], math.ceil(window * 1000) + 60000)
  out[#out + 1] = counts[i] + 1
end
return out
"""

# KEYS: f:<key>...  ARGV: attempt.
_FAIL_ATTEMPT = r"""
for _, k in ipairs(KEYS) do
  local ts = redis.call('ZSCORE', k, '~' .. ARGV[1])
  if ts then
    redis.call('ZREM', k, '~' .. ARGV[1])
    redis.call('ZADD', k, ts, ARGV[1])
  end
end
return 1
"""

# KEYS: the attempt's f:<key>...  ARGV: attempt.
_GIVE_BACK = r"""
for i = 1, #KEYS do redis.call('ZREM', KEYS[i], '~' .. ARGV[1]) end
return 1
"""

_LOCK = r"""
local lock_end, now = tonumber(ARGV[1]), tonumber(ARGV[2])
local old = tonumber(redis.call('GET', KEYS[1]) or '0')
if lock_end > old then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', math.ceil(math.max(lock_end - now, 0) * 1000) + 60000)
end
return 1
"""

# series:<key> and its running sum series:<key>:sum (floor, total, top).  Bucket
# starts are whole seconds, written as integers ('%.0f': Lua's own %.14g would not).
_SERIES_FN = r"""
local function bucket_name(b) return string.format('%.0f', b) end

-- series_add(k, start, amount, oldest bucket kept, expiry ms)
local function series_add(k, start, amount, oldest, ttl)
  local ks = k .. ':sum'
  local st = redis.call('HMGET', ks, 'floor', 'top', 'total')
  local floor, top = tonumber(st[1]), tonumber(st[2])
  local delta = 0
  if floor and start >= floor then delta = amount end
  local fresh = redis.call('HINCRBY', k, bucket_name(start), amount) == amount
  pexpire(k, ttl)
  -- Buckets past retention go when a new bucket starts (once an hour, not per add).
  if fresh then
    for _, b in ipairs(redis.call('HKEYS', k)) do
      local bn = tonumber(b)
      if bn and bn < oldest then
        if floor and bn >= floor then delta = delta - tonumber(redis.call('HGET', k, b)) end
        redis.call('HDEL', k, b)
      end
    end
  end
  -- The new top and total in one HSET (the script is atomic: read, then write).
  local new_top = (top == nil or start > top) and bucket_name(start) or nil
  if new_top and delta ~= 0 then
    redis.call('HSET', ks, 'top', new_top, 'total', string.format('%d', (tonumber(st[3]) or 0) + delta))
  elseif new_top then redis.call('HSET', ks, 'top', new_top)
  elseif delta ~= 0 then redis.call('HINCRBY', ks, 'total', delta)
  end
  pexpire(ks, ttl)
end

-- Sum of the buckets starting in [lo, hi), reading the whole hash.
local function buckets_scan(k, lo, hi)
  local sum, rows = 0, redis.call('HGETALL', k)
  for j = 1, #rows, 2 do
    local bn = tonumber(rows[j])
    if bn and bn >= lo and bn < hi then sum = sum + tonumber(rows[j + 1]) end
  end
  return sum
end

-- The same, one HGET per bucket when they are few (the usual case: the floor moved
-- by a bucket or two since the last read).
local function buckets_between(k, lo, hi, bucket)
  local first = math.ceil(lo / bucket) * bucket
  if (hi - first) / bucket > 64 then return buckets_scan(k, lo, hi) end
  local sum, b = 0, first
  while b < hi do
    sum = sum + tonumber(redis.call('HGET', k, bucket_name(b)) or '0')
    b = b + bucket
  end
  return sum
end

-- series_sum(k, since (string, kept exact), upto, bucket, expiry ms): buckets in [since, upto].
local function series_sum(k, since_s, upto, bucket, ttl)
  local ks, since = k .. ':sum', tonumber(since_s)
  local st = redis.call('HMGET', ks, 'floor', 'total', 'top')
  local floor, total, top = tonumber(st[1]), tonumber(st[2]), tonumber(st[3])
  if top == nil then  -- a series written before the running sums: find its latest bucket
    for _, b in ipairs(redis.call('HKEYS', k)) do
      local bn = tonumber(b)
      if bn and (top == nil or bn > top) then top = bn end
    end
    if top ~= nil then redis.call('HSET', ks, 'top', bucket_name(top)) end
  end
  if floor == nil then
    total = top and buckets_scan(k, since, top + 1) or 0
  elseif since > floor then total = total - buckets_between(k, floor, since, bucket)
  elseif since < floor then total = total + buckets_between(k, since, floor, bucket)
  end
  redis.call('HSET', ks, 'floor', since_s, 'total', string.format('%d', total))
  pexpire(ks, ttl)
  local above = 0
  if top then above = buckets_between(k, math.floor(upto / bucket) * bucket + bucket, top + 1, bucket) end
  return total - above
end
"""

# KEYS: series hash.  ARGV: bucket start, amount, oldest bucket kept, expiry ms.
_SERIES = _PER_RUN + _SERIES_FN + r"""
series_add(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]))
return 1
"""

# One SMTP step (MeterStep) in one script.  ARGV[1]: the step as JSON, keys as the
# caller names them and the prefix once, "p" (as the journal script, it names keys
# it builds: one Redis, not Redis Cluster).  Charge rows: [key, window, limit (-1:
# none), amount, member ('' for none), hold (false: not held)].
# "begin" (present only at a transaction's first RCPT): [login, slot key, lease id
# ('' for none), ttl].  Returns {charge result..., '|', usage..., '|', sums...}, or
# {'S', the suspension's JSON} when begin finds the login suspended (nothing else done).
_METER = _MEASURE + _CHARGE_ALL + _SETTLE_FN + _SERIES_FN + _SLOT_FN + r"""
local step = cjson.decode(ARGV[1])
local P = step.p
local now, lease = tonumber(step.now), tonumber(step.lease)
if step.begin then
  local b = step.begin
  local body = redis.call('HGET', P .. 'suspensions', b[1])
  if b[3] ~= '' then take_slot(P .. 's:' .. b[2], now, tonumber(b[4]), -1, b[3]) end
  if body then return {'S', body} end
end
local function rows(list)
  local cs = {}
  for i, r in ipairs(list) do
    local k, hold = P .. 'c:' .. r[1], r[6]
    cs[i] = {k, k .. ':p', k .. ':n', P .. 'h:' .. ((hold == false or hold == '') and '-' or hold),
             r[2], r[3], r[4], r[5], hold ~= false}
  end
  return cs
end
if #step.settle > 0 then
  local hs = {}
  for i, h in ipairs(step.settle) do hs[i] = P .. 'h:' .. h end
  settle(hs, now, step.commit and 'commit' or 'release')
end
local charged = {1, 0, '-1'}
if #step.charges > 0 then
  charged = charge_all(rows(step.charges), now, lease, step.id .. 'c')
  if charged[1] == 0 and #step.if_refused > 0 then
    charge_all(rows(step.if_refused), now, lease, step.id .. 'r')
  end
end
if #step.counts > 0 then charge_all(rows(step.counts), now, 900, step.id .. 'n') end
for _, a in ipairs(step.series) do series_add(P .. 'series:' .. a[1], a[2], a[3], a[4], a[5]) end
local out = charged
out[#out + 1] = '|'
if step.read_when_refused and charged[1] == 1 then return out end
-- Read after a prune (the same count as the read-only look usage() takes, and a
-- counter this step charged is not pruned twice).
for _, c in ipairs(step.read) do
  local k = P .. 'c:' .. c[1]
  prune(k, k .. ':p', k .. ':n', now, c[2])
  out[#out + 1] = (used_of(k, k .. ':p', k .. ':n', now, c[2], c[3], true))
end
out[#out + 1] = '|'
for _, s in ipairs(step.sums) do
  out[#out + 1] = series_sum(P .. 'series:' .. s[1], s[2], s[3], s[4], s[5])
end
return out
"""


# KEYS: journal, then per entry j:<id>, j:c:<cid>.  ARGV: max_entries, max_age (s),
# the prefix (to name the entries the bounds drop), then per entry body, ts, id.
_JOURNAL_ADD = r"""
local max_entries, max_age = tonumber(ARGV[1]), tonumber(ARGV[2])
local ttl = math.ceil(max_age * 1000)
local newest = nil
for i = 1, (#KEYS - 1) / 2 do
  local a = 3 + (i - 1) * 3
  redis.call('SET', KEYS[2*i], ARGV[a+1], 'PX', ttl)
  redis.call('ZADD', KEYS[2*i+1], ARGV[a+2], ARGV[a+3])
  redis.call('PEXPIRE', KEYS[2*i+1], ttl)
  redis.call('ZADD', KEYS[1], ARGV[a+2], ARGV[a+3])
  local ts = tonumber(ARGV[a+2])
  if newest == nil or ts > newest then newest = ts end
end
-- Both bounds drop the entry itself, not only its index: expiry alone runs on
-- Redis's clock, and the callers' clock (``now``) is the one that counts.
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', newest - max_age)
local excess = redis.call('ZCARD', KEYS[1]) - #old - max_entries
if excess > 0 then
  for _, id in ipairs(redis.call('ZRANGE', KEYS[1], #old, #old + excess - 1)) do
    old[#old + 1] = id
  end
end
for _, id in ipairs(old) do
  redis.call('DEL', ARGV[3] .. 'j:' .. id)
  redis.call('ZREM', KEYS[1], id)
end
return 1
"""


def _member(c: Charge) -> str:
    # '' selects counting by amount in the scripts; an empty member (asking only for
    # the distinct count, as status does) becomes one no real member can equal.
    if c.member is None:
        return ""
    return c.member or "\x01"


# Connections of the pool for plain commands (slots released, lockouts read,
# suspensions, the journal, reports); the scripts share one (redis_pipe.py).
POOL_CONNECTIONS = 100


def _num(value: float) -> str:
    return repr(float(value))


class RedisStore(Store):
    def __init__(self, url: str, prefix: str = "portcullis:", timeout: float = 2.0):
        self._prefix = prefix
        # No automatic retry: a charge whose reply was lost must not be charged twice.
        # A blocking pool: past POOL_CONNECTIONS calls at once (every session closing
        # at once releases its slot), a call waits up to ``timeout`` for a connection;
        # redis-py's default pool fails it at once ("Too many connections").
        self._r = aioredis.Redis.from_pool(BlockingConnectionPool.from_url(
            url, max_connections=POOL_CONNECTIONS, timeout=timeout,
            decode_responses=True, socket_timeout=timeout, socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0), retry_on_timeout=False))
        self._charge = self._r.register_script(_CHARGE)
        self._usage = self._r.register_script(_USAGE)
        self._settle = self._r.register_script(_SETTLE)
        self._acquire = self._r.register_script(_ACQUIRE)
        self._reserve = self._r.register_script(_RESERVE)
        self._fail_attempt = self._r.register_script(_FAIL_ATTEMPT)
        self._give_back = self._r.register_script(_GIVE_BACK)
        self._lock = self._r.register_script(_LOCK)
        self._series = self._r.register_script(_SERIES)
        self._journal_add = self._r.register_script(_JOURNAL_ADD)
        self._meter = self._r.register_script(_METER)
        # The scripts (every message runs some) go on one pipelined connection
        # (redis_pipe.py); plain commands on redis-py's pool.
        self._pipe = ScriptPipe(url, timeout) if speaks_plainly(url) else None
        # A charge's entries are named by its call's id, unique among every writer
        # of the store: 64 random bits of this store object, then a count (a uuid4
        # a call cost a getrandom() and an object, 1% of a submitted message).
        self._ids = f"{secrets.token_hex(8)}."
        self._count = itertools.count()

    async def _call(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"Redis store: {exc}") from exc

    async def _run(self, script: Any, keys: list[str], args: list[str]) -> Any:
        if self._pipe is None:
            return await self._call(script(keys=keys, args=args))
        try:
            return await self._pipe.run_script(script.sha, script.script, keys, args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"Redis store: {exc}") from exc

    def _new_id(self) -> str:
        return f"{self._ids}{next(self._count):x}"

    def _k(self, kind: str, key: str) -> str:
        return f"{self._prefix}{kind}:{key}"

    # --- limits ----------------------------------------------------------------
    async def charge(self, charges: Sequence[Charge], now: float, lease: float = 900.0) -> ChargeResult:
        if not charges:
            return ChargeResult(True, ())
        keys: list[str] = []
        args: list[str] = [_num(now), _num(lease), self._new_id()]
        for c in charges:
            k = self._k("c", c.key)
            keys += [k, k + ":p", k + ":n", self._k("h", c.hold or "-")]
            args += [_num(c.window), str(-1 if c.limit is None else c.limit), str(c.amount),
                     _member(c), "1" if c.hold is not None else "0"]
        out = await self._run(self._charge, keys, args)
        used = tuple(int(u) for u in out[3:])
        if int(out[0]) == 1:
            return ChargeResult(True, used)
        retry = float(out[2])
        return ChargeResult(False, used, charges[int(out[1]) - 1], None if retry < 0 else retry)

    async def commit(self, holds: Iterable[str], now: float) -> None:
        keys = [self._k("h", h) for h in holds]
        if keys:
            await self._run(self._settle, keys, [_num(now), "commit"])

    async def release(self, holds: Iterable[str], now: float) -> None:
        keys = [self._k("h", h) for h in holds]
        if keys:
            await self._run(self._settle, keys, [_num(now), "release"])

    async def usage(self, charges: Sequence[Charge], now: float) -> tuple[int, ...]:
        if not charges:
            return ()
        keys: list[str] = []
        for c in charges:
            k = self._k("c", c.key)
            keys += [k, k + ":p", k + ":n"]
        args = [_num(now)] + [_num(c.window) for c in charges] + [_member(c) for c in charges]
        out = await self._run(self._usage, keys, args)
        return tuple(int(u) for u in out)

    # --- concurrent connections ------------------------------------------------
    async def acquire_slot(self, key: str, lease_id: str, limit: int | None, now: float, ttl: float) -> bool:
        got = await self._run(self._acquire, [self._k("s", key)],
                              [_num(now), _num(ttl), str(-1 if limit is None else limit), lease_id])
        return int(got) == 1

    async def release_slot(self, key: str, lease_id: str) -> None:
        await self._call(self._r.zrem(self._k("s", key), lease_id))

    async def slots_in_use(self, key: str, now: float) -> int:
        return int(await self._call(self._r.zcount(self._k("s", key), f"({_num(now)}", "+inf")))

    # --- failed logins and lockouts ----------------------------------------------
    async def reserve_attempt(self, limits: Sequence[tuple[str, int]], attempt: str, window: float,
                              now: float) -> AttemptReservation:
        keys = [self._k("f", k) for k, _ in limits] + [self._k("l", k) for k, _ in limits]
        out = await self._run(self._reserve, keys,
                              [_num(now), _num(window), attempt, *(str(n) for _, n in limits)])
        counts = tuple(int(c) for c in out[3:])
        return AttemptReservation(int(out[0]) == 1, counts, float(out[1]) if out[1] else None,
                                  float(out[2]) if out[2] else None)

    async def fail_attempt(self, attempt: str, keys: Sequence[str]) -> None:
        if keys:
            await self._run(self._fail_attempt, [self._k("f", k) for k in keys], [attempt])

    async def give_back_attempt(self, attempt: str, keys: Sequence[str]) -> None:
        if keys:
            await self._run(self._give_back, [self._k("f", k) for k in keys], [attempt])

    async def lock(self, key: str, until: float, now: float) -> None:
        await self._run(self._lock, [self._k("l", key)], [_num(until), _num(now)])

    async def locked_until(self, keys: Sequence[str], now: float) -> float | None:
        if not keys:
            return None
        values = await self._call(self._r.mget([self._k("l", k) for k in keys]))
        ends = [float(v) for v in values if v is not None and float(v) > now]
        return max(ends) if ends else None

    # --- suspensions ---------------------------------------------------------------
    async def suspend(self, suspension: Suspension) -> bool:
        s = suspension
        body = json.dumps({"since": s.since, "reason": s.reason, "evidence": dict(s.evidence)},
                          sort_keys=True)
        return bool(await self._call(self._r.hsetnx(self._prefix + "suspensions", s.login, body)))

    async def unsuspend(self, login: str) -> bool:
        return int(await self._call(self._r.hdel(self._prefix + "suspensions", login))) == 1

    async def suspension(self, login: str) -> Suspension | None:
        body = await self._call(self._r.hget(self._prefix + "suspensions", login))
        if body is None:
            return None
        d = json.loads(body)
        return Suspension(login, d["since"], d["reason"], d["evidence"])

    async def suspensions(self) -> list[Suspension]:
        rows = await self._call(self._r.hgetall(self._prefix + "suspensions"))
        out = []
        for login in sorted(rows):
            d = json.loads(rows[login])
            out.append(Suspension(login, d["since"], d["reason"], d["evidence"]))
        return out

    # --- events ------------------------------------------------------------------------
    async def log_event(self, event: Event) -> None:
        body = json.dumps({"ts": event.ts, "kind": event.kind, "subject": event.subject,
                           "data": dict(event.data)}, sort_keys=True)
        pipe = self._r.pipeline(transaction=True)
        pipe.lpush(self._prefix + "events", body)
        pipe.ltrim(self._prefix + "events", 0, 9999)
        pipe.lpush(self._prefix + "events:" + event.subject, body)
        pipe.ltrim(self._prefix + "events:" + event.subject, 0, 999)
        await self._call(pipe.execute())

    async def events(self, subject: str | None = None, limit: int = 100) -> list[Event]:
        key = self._prefix + "events" + ("" if subject is None else ":" + subject)
        rows = await self._call(self._r.lrange(key, 0, limit - 1))
        out = []
        for body in rows:
            d = json.loads(body)
            out.append(Event(d["ts"], d["kind"], d["subject"], d["data"]))
        return out

    # --- the decision journal ------------------------------------------------------------
    async def journal_add(self, entries: Sequence[JournalEntry], max_entries: int, max_age: float) -> None:
        if not entries:
            return
        keys = [self._prefix + "journal"]
        args = [str(max_entries), _num(max_age), self._prefix]
        for e in entries:
            keys += [self._k("j", e.id), self._k("j:c", e.cid)]
            args += [json.dumps({"id": e.id, "cid": e.cid, "ts": e.ts, "kind": e.kind,
                                 "record": dict(e.record)}, sort_keys=True, default=str),
                     _num(e.ts), e.id]
        await self._run(self._journal_add, keys, args)

    async def journal_find(self, key: str) -> list[JournalEntry]:
        ids = await self._call(self._r.zrange(self._k("j:c", key), 0, -1))
        names = [key, *(i for i in ids if i != key)]
        bodies = await self._call(self._r.mget([self._k("j", i) for i in names]))
        # An id the count bound dropped is still in its connection's index: skipped.
        entries = [json.loads(b) for b in bodies if b is not None]
        entries.sort(key=lambda d: d["ts"])
        return [JournalEntry(d["id"], d["cid"], d["ts"], d["kind"], d["record"]) for d in entries]

    # --- series -------------------------------------------------------------------------
    async def add_to_series(self, key: str, amount: int, now: float, bucket: int = 3600,
                            retention: float = 31 * 86400) -> None:
        start = int(now // bucket) * bucket
        await self._run(self._series, [self._k("series", key)], [
            str(start), str(amount), _num(start - retention), str(math.ceil((bucket + retention) * 1000))])

    async def read_series(self, key: str, since: float, now: float, bucket: int = 3600) -> int:
        rows = await self._call(self._r.hgetall(self._k("series", key)))
        return sum(int(v) for b, v in rows.items() if since <= int(b) <= now)

    # --- one round trip per SMTP step -------------------------------------------------
    @staticmethod
    def _charge_rows(charges: Sequence[Charge]) -> list[list[Any]]:
        # The script adds the prefix and derives the counter's other keys: less to
        # encode here and to decode there.
        return [[c.key, c.window, -1 if c.limit is None else c.limit, c.amount, _member(c),
                 False if c.hold is None else c.hold] for c in charges]

    async def meter(self, step: MeterStep, now: float) -> MeterResult:
        def expiry(bucket: int, retention: float) -> int:
            return math.ceil((bucket + retention) * 1000)

        rows = self._charge_rows
        body = {
            "p": self._prefix, "now": _num(now), "lease": _num(step.lease), "id": self._new_id(),
            "settle": list(step.settle), "commit": step.commit,
            "charges": rows(step.charges), "if_refused": rows(step.if_refused), "counts": rows(step.counts),
            "series": [[a.key, int(now // a.bucket) * a.bucket, a.amount,
                        int(now // a.bucket) * a.bucket - a.retention, expiry(a.bucket, a.retention)]
                       for a in step.series],
            "read_when_refused": step.read_when_refused,
            "read": [[c.key, c.window, _member(c)] for c in step.read],
            # since as a string: the running sum's floor is kept exactly as given.
            "sums": [[s.key, _num(s.since), s.until, s.bucket, expiry(s.bucket, 31 * 86400)]
                     for s in step.sums],
        }
        begin = step.begin
        if begin is not None:
            body["begin"] = [begin.login, begin.slot_key, begin.lease_id or "", _num(begin.ttl)]
        # cjson turns an empty list into an object; '#' of an empty table is 0 either way.
        out = await self._run(self._meter, [], [json.dumps(body)])
        if out[0] == "S":
            assert begin is not None
            d = json.loads(out[1])
            return MeterResult(ChargeResult(False, ()),
                               suspension=Suspension(begin.login, d["since"], d["reason"], d["evidence"]))
        bar = out.index("|", 3)
        charged = tuple(int(u) for u in out[3:bar])
        if int(out[0]) == 1:
            result = ChargeResult(True, charged)
        else:
            retry = float(out[2])
            result = ChargeResult(False, charged, step.charges[int(out[1]) - 1], None if retry < 0 else retry)
        if bar == len(out) - 1:
            return MeterResult(result)
        rest = out[bar + 1:]
        second = rest.index("|")
        return MeterResult(result, tuple(int(u) for u in rest[:second]),
                           tuple(int(u) for u in rest[second + 1:]))

    async def close(self) -> None:
        if self._pipe is not None:
            self._pipe.close()
        try:
            await self._r.aclose()
        except (RedisError, OSError):
            pass

    # --- DMARC aggregate report counts ----------------------------------------------------
    # dmarc:c:<period>:<domain> is a hash row → count (HINCRBY: every node adds to it);
    # dmarc:open the set of "<period> <domain>" with counts; dmarc:r:<id> one taken
    # report; dmarc:unsent the ids not finished; dmarc:seq the follow-up numbers.
    def _dmarc_script(self, name: str, source: str) -> Any:
        scripts = self.__dict__.setdefault("_dmarc_scripts", {})
        if name not in scripts:
            scripts[name] = self._r.register_script(source)
        return scripts[name]

    async def dmarc_add(self, counts: Sequence[tuple[int, str, str, int]]) -> None:
        if not counts:
            return
        pipe = self._r.pipeline(transaction=True)
        for period, domain, row, n in counts:
            key = self._k("dmarc:c", f"{period}:{domain}")
            pipe.hincrby(key, row, n)
            # Never taken within RETENTION after its period: gone (a take of a missing
            # hash drops it from dmarc:open).
            pipe.expire(key, DAY + RETENTION)
            pipe.sadd(self._prefix + "dmarc:open", f"{period} {domain}")
        await self._call(pipe.execute())

    async def dmarc_periods(self, before: int) -> list[tuple[int, str]]:
        members = await self._call(self._r.smembers(self._prefix + "dmarc:open"))
        found = []
        for m in members:
            period, _, domain = m.partition(" ")
            if int(period) < before:
                found.append((int(period), domain))
        return sorted(found)

    async def dmarc_take(self, period: int, domain: str, now: float) -> str | None:
        script = self._dmarc_script("take", _DMARC_TAKE)
        rid = await self._call(script(
            keys=[self._k("dmarc:c", f"{period}:{domain}"), self._prefix + "dmarc:open",
                  self._prefix + "dmarc:seq", self._prefix + "dmarc:unsent"],
            args=[str(period), domain, self._prefix]))
        return rid or None

    async def dmarc_unsent(self) -> list[TakenReport]:
        ids = sorted(await self._call(self._r.smembers(self._prefix + "dmarc:unsent")))
        reports = []
        for rid in ids:
            h = await self._call(self._r.hgetall(self._k("dmarc:r", rid)))
            if not h:
                continue
            rows = json.loads(h["rows"])
            # cjson turns an empty hash into {}; HGETALL's flat list is [k1, v1, k2, v2 ...].
            pairs = tuple((rows[i], int(rows[i + 1])) for i in range(0, len(rows), 2)) if rows else ()
            reports.append(TakenReport(rid, int(h["period"]), h["domain"], int(h["seq"]),
                                       tuple(sorted(pairs)), h["state"], float(h["claimed"])))
        return sorted(reports, key=lambda r: (r.period, r.domain, r.seq))

    async def dmarc_claim(self, report_id: str, now: float, stale: float) -> bool:
        script = self._dmarc_script("claim", _DMARC_CLAIM)
        return bool(await self._call(script(keys=[self._k("dmarc:r", report_id)],
                                            args=[_num(now), _num(now - stale)])))

    async def dmarc_release(self, report_id: str) -> None:
        script = self._dmarc_script("release", _DMARC_RELEASE)
        await self._call(script(keys=[self._k("dmarc:r", report_id)]))

    async def dmarc_finish(self, report_id: str, state: str, now: float, keep: float = 31 * 86400) -> None:
        pipe = self._r.pipeline(transaction=True)
        key = self._k("dmarc:r", report_id)
        pipe.hset(key, mapping={"state": state, "finished": _num(now)})
        pipe.expire(key, max(1, int(keep)))
        pipe.srem(self._prefix + "dmarc:unsent", report_id)
        await self._call(pipe.execute())


# Take a period's counts into a report, atomically: a count added after this runs
# starts the hash anew and goes into the next report.
_DMARC_TAKE = r"""
local member = ARGV[1] .. ' ' .. ARGV[2]
local rows = redis.call('HGETALL', KEYS[1])
if #rows == 0 then
  redis.call('SREM', KEYS[2], member)
  return false
end
local seq = redis.call('HINCRBY', KEYS[3], member, 1) - 1
local id = ARGV[1] .. '.' .. seq .. '.' .. ARGV[2]
redis.call('HSET', ARGV[3] .. 'dmarc:r:' .. id, 'rows', cjson.encode(rows), 'period', ARGV[1],
           'domain', ARGV[2], 'seq', seq, 'state', 'taken', 'claimed', '0')
redis.call('SADD', KEYS[4], id)
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], member)
return id
"""

# taken → sending; or sending again when the run that claimed it stopped long ago.
_DMARC_CLAIM = r"""
if redis.call('HEXISTS', KEYS[1], 'finished') == 1 then return 0 end
local state = redis.call('HGET', KEYS[1], 'state')
local claimed = tonumber(redis.call('HGET', KEYS[1], 'claimed') or '0')
if state == 'taken' or (state == 'sending' and claimed <= tonumber(ARGV[2])) then
  redis.call('HSET', KEYS[1], 'state', 'sending', 'claimed', ARGV[1])
  return 1
end
return 0
"""

_DMARC_RELEASE = r"""
if redis.call('EXISTS', KEYS[1]) == 1 and redis.call('HEXISTS', KEYS[1], 'finished') == 0 then
  redis.call('HSET', KEYS[1], 'state', 'taken', 'claimed', '0')
end
return 0
"""
