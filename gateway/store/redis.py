"""The cluster store: one Redis shared by every gateway process on every host.

Each check-and-charge is one Lua script, which Redis runs atomically: no other
client's command runs between the script's reads and writes, so gateways on
several hosts share exact limits.

Layout (every key starts with the configured prefix):

    c:<key>        sorted set of charges, score = time, member = "<run>:<i>|<amount>|<member>"
    c:<key>:n      running total of the live amounts
    c:<key>:m      live entries per member (distinct-member limits), hash
    h:<hold>       set of "<c:key>\\n<member>" a hold placed, for commit/release
    leases         sorted set of "<h:hold>\\n<run>" (what one script run held under
                   that hold), score = lease end: ended by the first script after it
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

import asyncio
import itertools
import json
import math
import re
import secrets
import time
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
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

# Per counter key:  c:<key> (entries → ts), c:<key>:n (running total of live
# amounts, so a check reads one number), c:<key>:m (live entries per member).
# Per hold:  h:<hold>, the set of its entries ("c:<key>\n<entry>").  One sorted set
# for the store, ``leases``: "<h:hold>\n<run>" → the lease end of the entries that
# one script run charged under that hold (an entry is named "<run>:<i>|amount|member").
# The same counting as the SQLite backend: a charge is live while ts > now - window
# and, if held, while its lease end > now.
#
# Leases used to be a sorted set per counter (c:<key>:p, entry → lease end): every
# held charge wrote and expired it, every check pruned it, and every commit asked it
# about each entry: 44 of the 146 commands a submitted message ran in Redis
# (`python -m bench.quota`'s "commands" column), each a microsecond or more
# of redis-server's time.  One lease per hold and run makes a commit three commands
# a hold, and a check asks the store's one ``leases`` set once per script run:
# 102 commands, and `python -m bench.quota`'s "message" row 0.89x the CPU (this
# process and redis-server) at 1.20x the rate.
_PER_RUN = r"""
-- Per script run: the running totals read or written (c:<key>:n), the counters
-- already pruned at this ``now``, the expiries already set.  A charge then writes its
-- new total with one SET ... PX (instead of INCRBY + PEXPIRE), a read right after a
-- charge of the same counter does not prune it again, and a key touched twice gets
-- one PEXPIRE: each redis.call from Lua costs about a microsecond on its own.
local totals, pruned, expiring, numbers = {}, {}, {}, {}
local leases_checked = false
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
local function amount_of(e) return tonumber(string.match(e, '^[^|]*|(%d+)|')) end
local function member_of(e) return string.match(e, '^[^|]*|%d+|(.*)$') end
local function run_of(e) return string.match(e, '^([^:|]*):') end
local function split_item(item) return string.match(item, '^(.-)\n(.*)$') end

-- c:<key>:m counts live entries per member (distinct-member limits): HLEN is the
-- number of distinct members, without reading the entries.
local function forget_member(k, e)
  local m = member_of(e)
  if m ~= '' and redis.call('HINCRBY', k .. ':m', m, -1) <= 0 then redis.call('HDEL', k .. ':m', m) end
end

-- An entry leaves its counter: its amount leaves the total, its member the count.
-- Only once (it may already have left the window).
local function drop_entry(k, e)
  if redis.call('ZREM', k, e) == 1 then
    local amount = amount_of(e)
    if amount > 0 then add_total(k .. ':n', -amount) end  -- INCRBY refuses '-0'
    forget_member(k, e)
  end
end

-- The leases (hold and run) of a hold's items: "<h>\n<run>", each once.
local function leases_of(h, items)
  local seen, out = {}, {}
  for _, item in ipairs(items) do
    local _, e = split_item(item)
    local run = run_of(e)
    if run and not seen[run] then seen[run] = true; out[#out + 1] = h .. '\n' .. run end
  end
  return out
end

-- ZREM or SREM of many members, a thousand a call (unpack's stack is bounded).
local function remove_all(command, k, members)
  for i = 1, #members, 1000 do
    redis.call(command, k, unpack(members, i, math.min(i + 999, #members)))
  end
end

-- Every lease that ran out, of any counter, ends before this run reads or writes a
-- count: its entries leave their counters and its hold.  Once per script run.
local function expire_leases(L, now)
  if leases_checked then return end
  leases_checked = true
  local dead = redis.call('ZRANGEBYSCORE', L, '-inf', num(now))
  if #dead == 0 then return end
  for _, lease in ipairs(dead) do
    local h, run = split_item(lease)
    local gone = {}
    for _, item in ipairs(redis.call('SMEMBERS', h)) do
      local k, e = split_item(item)
      if run_of(e) == run then drop_entry(k, e); gone[#gone + 1] = item end
    end
    remove_all('SREM', h, gone)
  end
  remove_all('ZREM', L, dead)
end

-- The runs whose lease ran out, read only (for a look that writes nothing).
local function dead_runs(L, now)
  local out = {}
  for _, lease in ipairs(redis.call('ZRANGEBYSCORE', L, '-inf', num(now))) do
    local _, run = split_item(lease)
    out[run] = true
  end
  return out
end
"""

_MEASURE = _PER_RUN + r"""
-- Entries that left the window leave the set and the totals, oldest first (leases
-- that ran out are expire_leases's).
local function prune(k, kn, now, window)
  -- One ``now`` per script, and a key always has the same window (Charge.key).
  if pruned[k] == window then return end
  pruned[k] = window
  local cut = num(now - window)
  local old = redis.call('ZRANGEBYSCORE', k, '-inf', cut)
  if #old == 0 then return end
  local gone = 0
  for _, e in ipairs(old) do gone = gone + amount_of(e); forget_member(k, e) end
  redis.call('ZREMRANGEBYSCORE', k, '-inf', cut)
  if gone > 0 then add_total(kn, -gone) end
end

-- Live entries, oldest first: {ts, amount, member}.  Used for distinct members
-- and, on a refusal only, for when to retry.  ``dead``: runs whose lease ran out
-- (none once expire_leases ran).
local function live_rows(k, now, window, dead)
  local rows = redis.call('ZRANGEBYSCORE', k, '(' .. num(now - window), '+inf', 'WITHSCORES')
  local out = {}
  for j = 1, #rows, 2 do
    local e = rows[j]
    if not dead[run_of(e)] then
      out[#out + 1] = {tonumber(rows[j + 1]), amount_of(e), member_of(e)}
    end
  end
  return out
end

local NONE = {}

-- ``dead`` nil: after expire_leases and prune; else a read-only look, which takes
-- off what they would.
local function used_of(k, kn, now, window, member, dead)
  if member ~= '' and dead == nil then
    return redis.call('HLEN', k .. ':m'), nil
  end
  if dead == nil then return total_of(kn), nil end
  if member ~= '' then
    local seen, distinct = {}, 0
    for _, r in ipairs(live_rows(k, now, window, dead)) do
      if seen[r[3]] == nil then distinct = distinct + 1 end
      if seen[r[3]] == nil or seen[r[3]] < r[1] then seen[r[3]] = r[1] end
    end
    return distinct, seen
  end
  if next(dead) ~= nil then  -- a lease ran out: count what is live
    local total = 0
    for _, r in ipairs(live_rows(k, now, window, dead)) do total = total + r[2] end
    return total, nil
  end
  local total = tonumber(redis.call('GET', kn) or '0')
  for _, e in ipairs(redis.call('ZRANGEBYSCORE', k, '-inf', num(now - window))) do
    total = total - amount_of(e)
  end
  return total, nil
end

-- used, fits, retry (-1: never).  After expire_leases.
local function measure(k, kn, now, window, limit, amount, member)
  prune(k, kn, now, window)
  local used = used_of(k, kn, now, window, member, nil)
  if limit < 0 then return used, true, -1 end
  if member ~= '' then
    if redis.call('HEXISTS', k .. ':m', member) == 1 or used + 1 <= limit then return used, true, -1 end
    if limit < 1 then return used, false, -1 end
    -- Refused: which distinct member leaves first (the one seen least recently)?
    local _, seen = used_of(k, kn, now, window, member, NONE)
    local oldest = nil
    for _, ts in pairs(seen) do if oldest == nil or ts < oldest then oldest = ts end end
    return used, false, math.max(0, oldest + window - now)
  end
  if used + amount <= limit then return used, true, -1 end
  if amount > limit then return used, false, -1 end
  local need, dropped = used + amount - limit, 0
  for _, r in ipairs(live_rows(k, now, window, NONE)) do
    dropped = dropped + r[2]
    if dropped >= need then return used, false, math.max(0, r[1] + window - now) end
  end
  return used, false, -1
end
"""

# charge_all(cs, now, lease, id, L): cs[i] = {k, kn, h, window, limit (-1: none),
# amount, member ('' for none), held (true/false)}.  Returns {accepted, refused index,
# retry ('-1': never), used...}.  After expire_leases.
_CHARGE_ALL = r"""
local function charge_all(cs, now, lease, id, L)
  local out = {1, 0, '-1'}
  for i, c in ipairs(cs) do
    local used, fits, retry = measure(c[1], c[2], now, c[4], c[5], c[6], c[7])
    out[#out + 1] = used
    if not fits then
      out[1], out[2], out[3] = 0, i, tostring(retry)
      return out
    end
  end
  local holds, held, keep = {}, {}, {}  -- h -> its new items (in order of first use), ttl
  for i, c in ipairs(cs) do
    local k, kn, h = c[1], c[2], c[3]
    local window, member = c[4], c[7]
    local amount = member ~= '' and 1 or c[6]
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
    if c[8] then
      if held[h] == nil then held[h] = {}; holds[#holds + 1] = h; keep[h] = ttl end
      local items = held[h]
      items[#items + 1] = k .. '\n' .. e
      if ttl > keep[h] then keep[h] = ttl end
    end
  end
  for _, h in ipairs(holds) do
    redis.call('SADD', h, unpack(held[h]))
    -- As long as its entries' counters: a lease that runs out while no script runs
    -- is ended by the next one, which needs the hold to find them.
    pexpire(h, keep[h])
    redis.call('ZADD', L, num(now + lease), h .. '\n' .. id)
  end
  return out
end
"""

# KEYS: per charge c:<key>, c:<key>:n, h:<hold>; then leases.  ARGV: now, lease, id,
# then per charge: window, limit (-1: none), amount, member ('' for none), held (0/1).
_CHARGE = _MEASURE + _CHARGE_ALL + r"""
local L = KEYS[#KEYS]
local now = tonumber(ARGV[1])
expire_leases(L, now)
local cs = {}
for i = 1, (#KEYS - 1) / 3 do
  local a = 3 + (i - 1) * 5
  cs[i] = {KEYS[3*i-2], KEYS[3*i-1], KEYS[3*i], tonumber(ARGV[a+1]),
           tonumber(ARGV[a+2]), tonumber(ARGV[a+3]), ARGV[a+4], ARGV[a+5] == '1'}
end
return charge_all(cs, now, tonumber(ARGV[2]), ARGV[3], L)
"""

# KEYS: per charge c:<key>, c:<key>:n; then leases.  ARGV: now, windows..., members...
# A look that writes nothing: it takes off what a prune and expire_leases would.
_USAGE = _MEASURE + r"""
local L = KEYS[#KEYS]
local now = tonumber(ARGV[1])
local dead = dead_runs(L, now)
local n = (#KEYS - 1) / 2
local out = {}
for i = 1, n do
  out[i] = (used_of(KEYS[2*i-1], KEYS[2*i], now, tonumber(ARGV[1 + i]), ARGV[1 + n + i], dead))
end
return out
"""

# settle(holds, mode, L): mode 'commit' or 'release'.  After expire_leases: a
# lease that already ran out stays dropped (its room may have been given away), so
# a commit keeps what is left and ends its leases.
_SETTLE_FN = r"""
local function settle(holds, mode, L)
for _, h in ipairs(holds) do
  local items = redis.call('SMEMBERS', h)
  if #items > 0 then
    if mode == 'release' then
      for _, item in ipairs(items) do
        local k, e = split_item(item)
        drop_entry(k, e)
      end
    end
    remove_all('ZREM', L, leases_of(h, items))
    redis.call('DEL', h)
  end
end
end
"""

# KEYS: h:<hold>..., then leases.  ARGV: now, mode ('commit' or 'release').
_SETTLE = _PER_RUN + _SETTLE_FN + r"""
local L = table.remove(KEYS)
expire_leases(L, tonumber(ARGV[1]))
settle(KEYS, ARGV[2], L)
return 1
"""

# The layout this code writes, in <prefix>layout once what an older one left is converted.
LAYOUT = "leases"

# What a gateway from before the ``leases`` set left: a lease per entry in
# c:<key>:p.  Converted once per store (RedisStore._layout), a SCAN step per run
# (no run holds Redis long).  KEYS: <prefix>layout, leases.  ARGV: now, phase,
# cursor, MATCH pattern.  Phases:
#   check  'done' when converted; 'todo' to the one process that takes
#          <prefix>layout:converting (for ten minutes); 'busy' to the others
#   h      hold sets: an entry still leased gets its lease in ``leases``, one whose
#          lease ran out leaves its counter, as the old layout's next check would
#   p      c:<key>:p: what no hold names any more and ran out leaves its counter;
#          then the set goes
#   mark   converted
# h and p return SCAN's next cursor ('0': the end).
_UPGRADE = _PER_RUN + r"""
local marker, L = KEYS[1], KEYS[2]
local now, phase = tonumber(ARGV[1]), ARGV[2]
if phase == 'check' then
  if redis.call('GET', marker) == '""" + LAYOUT + r"""' then return 'done' end
  -- One process converts; the others count at once (an old lease not yet moved
  -- is counted to its window's end meanwhile: more refused, never less).
  if redis.call('SET', marker .. ':converting', '1', 'NX', 'PX', 600000) then return 'todo' end
  return 'busy'
end
if phase == 'mark' then
  redis.call('SET', marker, '""" + LAYOUT + r"""')
  redis.call('DEL', marker .. ':converting')
  return 'done'
end
local found = redis.call('SCAN', ARGV[3], 'MATCH', ARGV[4], 'COUNT', 1000)
for _, key in ipairs(found[2]) do
  if phase == 'h' then
    for _, item in ipairs(redis.call('SMEMBERS', key)) do
      local k, e = split_item(item)
      local lease_end = redis.call('ZSCORE', k .. ':p', e)
      if lease_end and tonumber(lease_end) <= now then
        drop_entry(k, e)
        redis.call('SREM', key, item)
      elseif lease_end and run_of(e) then
        redis.call('ZADD', L, lease_end, key .. '\n' .. run_of(e))
      end
    end
  else
    local k = string.sub(key, 1, -3)
    for _, e in ipairs(redis.call('ZRANGEBYSCORE', key, '-inf', num(now))) do drop_entry(k, e) end
    redis.call('DEL', key)
  end
end
return found[1]
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
    -- Added before the reservation goes: a set emptied by ZREM is deleted with its
    -- expiry, and the ZADD after made it again without one, for good (an address
    -- that failed once kept its key forever).
    redis.call('ZADD', k, ts, ARGV[1])
    redis.call('ZREM', k, '~' .. ARGV[1])
  end
end
return 1
"""

# What the failed-login bug fixed in e61df2d left: f:<key> sets without an expiry
# (an address that failed once kept its key for good).  One SCAN step of the f:*
# keys; each one without an expiry loses what is out of the window and expires as
# _RESERVE would have set it, or goes if nothing is left.  ARGV: now, window,
# cursor, MATCH pattern.  Returns {next cursor ('0': the end), keys mended}.
_MEND_FAILURES = r"""
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local found = redis.call('SCAN', ARGV[3], 'MATCH', ARGV[4], 'COUNT', 1000)
local mended = 0
for _, k in ipairs(found[2]) do
  if redis.call('TYPE', k).ok == 'zset' and redis.call('PTTL', k) == -1 then
    redis.call('ZREMRANGEBYSCORE', k, '-inf', now - window)
    local newest = redis.call('ZRANGE', k, -1, -1, 'WITHSCORES')[2]
    if newest then
      redis.call('PEXPIRE', k, math.ceil((tonumber(newest) + window - now) * 1000) + 60000)
    else
      redis.call('DEL', k)
    end
    mended = mended + 1
  end
end
return {found[1], mended}
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
  -- Buckets past retention go when a new bucket starts (once an hour, not per add),
  -- and the expiry moves then: set at the newest bucket's start, it outlasts it.
  if fresh then
    pexpire(k, ttl)
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
  if fresh or new_top then pexpire(ks, ttl) end
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
  -- The sum lives as long as its series: series_add moves both expiries with each
  -- new bucket, so a read sets it only on a sum it starts.
  if floor == nil then pexpire(ks, ttl) end
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
local L = P .. 'leases'
expire_leases(L, now)
local function rows(list)
  local cs = {}
  for i, r in ipairs(list) do
    local k, hold = P .. 'c:' .. r[1], r[6]
    cs[i] = {k, k .. ':n', P .. 'h:' .. ((hold == false or hold == '') and '-' or hold),
             r[2], r[3], r[4], r[5], hold ~= false}
  end
  return cs
end
if #step.settle > 0 then
  local hs = {}
  for i, h in ipairs(step.settle) do hs[i] = P .. 'h:' .. h end
  settle(hs, step.commit and 'commit' or 'release', L)
end
local charged = {1, 0, '-1'}
if #step.charges > 0 then
  charged = charge_all(rows(step.charges), now, lease, step.id .. 'c', L)
  if charged[1] == 0 and #step.if_refused > 0 then
    charge_all(rows(step.if_refused), now, lease, step.id .. 'r', L)
  end
end
if #step.counts > 0 then charge_all(rows(step.counts), now, 900, step.id .. 'n', L) end
for _, a in ipairs(step.series) do series_add(P .. 'series:' .. a[1], a[2], a[3], a[4], a[5]) end
local out = charged
out[#out + 1] = '|'
if step.read_when_refused and charged[1] == 1 then return out end
-- Read after a prune (the same count as the read-only look usage() takes, and a
-- counter this step charged is not pruned twice).
for _, c in ipairs(step.read) do
  local k = P .. 'c:' .. c[1]
  prune(k, k .. ':n', now, c[2])
  out[#out + 1] = (used_of(k, k .. ':n', now, c[2], c[3], nil))
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


# What SCAN's MATCH reads as a pattern, escaped in the prefix.
_GLOB = re.compile(r"[*?\[\]\\]")


def _encoded(body: dict[str, Any]) -> bytes | str:
    """A meter step's JSON for its script: orjson writes it in a tenth of the json
    module's time (two a message, bench/quota.py); cjson reads UTF-8 and \\u
    escapes alike.  A string orjson refuses (a lone surrogate) goes the slow way."""
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError:
        return json.dumps(body)


def _num(value: float) -> str:
    return repr(float(value))


class RedisStore(Store):
    def __init__(self, url: str, prefix: str = "portcullis:", timeout: float = 2.0):
        self._prefix = prefix
        self._leases = f"{prefix}leases"
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
        self._upgrade = self._r.register_script(_UPGRADE)
        self._mend_failures = self._r.register_script(_MEND_FAILURES)
        # Where the sweep's one pass over the f:* keys goes on from ('' once done).
        self._mend_cursor = "0"
        self._layout_ready = False
        self._layout_lock = asyncio.Lock()
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

    async def _run(self, script: Any, keys: list[str], args: list[str | bytes]) -> Any:
        if self._pipe is None:
            return await self._call(script(keys=keys, args=args))
        try:
            return await self._pipe.run_script(script.sha, script.script, keys, args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"Redis store: {exc}") from exc

    async def _layout(self) -> None:
        """Convert, once, what a gateway from before the ``leases`` set left (leases
        per entry, c:<key>:p), before this store counts anything: a hold a crashed
        gateway left keeps its lease.  One process converts (every worker of every
        gateway starts at once after an upgrade, and each step would only give the
        same result again); the others count at once.  <prefix>layout then says it
        is done.  Scripts only, so it rides the scripts' connection (redis_pipe.py)."""
        if self._layout_ready:
            return
        async with self._layout_lock:
            if self._layout_ready:
                return
            keys = [f"{self._prefix}layout", self._leases]
            now = _num(time.time())
            if await self._run(self._upgrade, keys, [now, "check", "0", ""]) == "todo":
                literal = self._literal_prefix()
                for phase, pattern in (("h", "h:*"), ("p", "c:*:p")):
                    cursor = "0"
                    while True:
                        cursor = await self._run(self._upgrade, keys, [now, phase, cursor, literal + pattern])
                        if cursor == "0":
                            break
                await self._run(self._upgrade, keys, [now, "mark", "0", ""])
            self._layout_ready = True

    def _literal_prefix(self) -> str:
        """The key prefix as a SCAN MATCH pattern matches it, character for character."""
        return _GLOB.sub(r"\\\g<0>", self._prefix)

    def _new_id(self) -> str:
        return f"{self._ids}{next(self._count):x}"

    def _k(self, kind: str, key: str) -> str:
        return f"{self._prefix}{kind}:{key}"

    # --- limits ----------------------------------------------------------------
    async def charge(self, charges: Sequence[Charge], now: float, lease: float = 900.0) -> ChargeResult:
        await self._layout()
        if not charges:
            return ChargeResult(True, ())
        keys: list[str] = []
        args: list[str] = [_num(now), _num(lease), self._new_id()]
        for c in charges:
            k = self._k("c", c.key)
            keys += [k, k + ":n", self._k("h", c.hold or "-")]
            args += [_num(c.window), str(-1 if c.limit is None else c.limit), str(c.amount),
                     _member(c), "1" if c.hold is not None else "0"]
        keys.append(self._leases)
        out = await self._run(self._charge, keys, args)
        used = tuple(int(u) for u in out[3:])
        if int(out[0]) == 1:
            return ChargeResult(True, used)
        retry = float(out[2])
        return ChargeResult(False, used, charges[int(out[1]) - 1], None if retry < 0 else retry)

    async def commit(self, holds: Iterable[str], now: float) -> None:
        await self._settle_holds(holds, now, "commit")

    async def release(self, holds: Iterable[str], now: float) -> None:
        await self._settle_holds(holds, now, "release")

    async def _settle_holds(self, holds: Iterable[str], now: float, mode: str) -> None:
        await self._layout()
        keys = [self._k("h", h) for h in holds]
        if keys:
            await self._run(self._settle, [*keys, self._leases], [_num(now), mode])

    async def usage(self, charges: Sequence[Charge], now: float) -> tuple[int, ...]:
        await self._layout()
        if not charges:
            return ()
        keys: list[str] = []
        for c in charges:
            k = self._k("c", c.key)
            keys += [k, k + ":n"]
        keys.append(self._leases)
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
        await self._layout()
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
        out = await self._run(self._meter, [], [_encoded(body)])
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

    async def sweep(self, now: float, failure_window: float) -> int:
        """Every key this store writes has an expiry of its own; what is left to do is
        one pass, a SCAN step a call, over the failed-login keys an older gateway
        may have left without one (_MEND_FAILURES).  Returns the keys mended."""
        if not self._mend_cursor:
            return 0
        pattern = self._literal_prefix() + "f:*"
        cursor, mended = await self._run(self._mend_failures, [],
                                         [_num(now), _num(failure_window), self._mend_cursor, pattern])
        self._mend_cursor = "" if cursor == "0" else cursor
        return int(mended)

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
