"""Redis: one lease per hold and script run, in the store's ``leases`` set.

Leases used to be a sorted set per counter (c:<key>:p, entry → lease end), written,
expired, pruned and asked about each held entry: about 45 of the 140-odd commands a
submitted message ran in Redis.  What a gateway from before left is converted on
first use.  Against a real redis-server; the counting itself is tested against
both stores in tests/test_store_limits.py and tests/test_store_meter.py.
"""

from __future__ import annotations

import asyncio

import redis

from bench.quota import one_operation, redis_commands
from gateway.store.base import Charge
from gateway.store.redis import LAYOUT, RedisStore
from tests.support import redis_server as _redis

redis_server = _redis.redis_server

HOUR = 3600.0
T0 = 1_800_000_000.0
KEY = "acct:alice:messages_per_hour"


def per_hour(hold: str | None = None) -> Charge:
    return Charge(KEY, HOUR, None, hold=hold, name="messages_per_hour")


def raw(server) -> redis.Redis:
    return redis.Redis.from_url(server.url, decode_responses=True)


def test_a_submitted_message_runs_at_most_66_commands_in_redis(redis_server):
    """What a message costs redis-server, as bench/quota.py's "message" row meters
    it (every limit, the commit, the series and the compromise facts, with the same
    limits): each command a script runs costs redis-server about a microsecond beyond
    its own work.  146 with a lease set per counter; 102 with one; 72 once only
    the account's own counters and the customer's set aggregates were charged; 67
    once a series moved its expiry once a bucket, not with every add and read; 64
    now that a session's slot is renewed once a quarter of its lease, not by every
    transaction."""
    redis_server.flush()
    r = raw(redis_server)
    messages = 50

    async def body() -> None:
        store = RedisStore(redis_server.url, prefix="cost:")
        message = one_operation("message", store, T0)
        try:
            for i in range(messages + 1):
                if i == 1:  # the first one also loads the scripts and converts the layout
                    r.config_resetstat()
                await message(0, i)
        finally:
            await store.close()

    asyncio.run(body())
    stats = r.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 2 * messages  # one at RCPT, one at the end of DATA
    assert redis_commands(r) / messages <= 66, sorted((n, v["calls"]) for n, v in stats.items())
    assert not list(r.scan_iter("cost:c:*:p")) and r.zcard("cost:leases") == 0


def test_a_lease_that_ran_out_is_ended_by_the_next_script_whatever_it_counts(redis_server):
    """A hold whose gateway went away is ended by the next script any gateway runs,
    for another account too: its entries leave their counters and its totals."""
    redis_server.flush()
    r = raw(redis_server)

    async def body() -> None:
        crashed = RedisStore(redis_server.url, prefix="t:")
        other = RedisStore(redis_server.url, prefix="t:")
        try:
            await crashed.charge([per_hour("gone")], T0, lease=600)
            assert r.zcard("t:c:" + KEY) == 1 and r.zcard("t:leases") == 1
            await other.charge([Charge("acct:bob:messages_per_hour", HOUR, None)], T0 + 601)
        finally:
            await crashed.close()
            await other.close()

    asyncio.run(body())
    assert r.zcard("t:c:" + KEY) == 0 and r.get(f"t:c:{KEY}:n") == "0"
    assert r.zcard("t:leases") == 0 and not r.exists("t:h:gone")


def test_what_an_older_gateway_left_is_converted_on_first_use(redis_server):
    """Keys as the per-counter lease layout wrote them: a hold still leased keeps its
    lease (it runs out at the same time, and a commit keeps it), one whose lease ran
    out leaves its counter, a committed charge stays; c:<key>:p goes."""
    redis_server.flush()
    r = raw(redis_server)
    k = "old:c:" + KEY
    r.zadd(k, {"a1.1c:1|1|": T0, "a1.2c:1|1|": T0 + 10, "a1.3c:1|1|": T0 + 20})
    r.set(k + ":n", "3")
    # Held: .1c (its lease ended at T0 + 100), .2c (ends at T0 + 2000).  .3c was committed.
    r.zadd(k + ":p", {"a1.1c:1|1|": T0 + 100, "a1.2c:1|1|": T0 + 2000})
    r.sadd("old:h:crashed", f"{k}\na1.1c:1|1|")
    r.sadd("old:h:open", f"{k}\na1.2c:1|1|")
    now = T0 + 1000

    async def body() -> tuple:
        store = RedisStore(redis_server.url, prefix="old:")
        try:
            # The conversion runs at the wall clock, before T0 (2027): both old leases
            # are still running then and move to ``leases``.  A look at ``now``:
            at_now = await store.usage([per_hour()], now)
            before_end = await store.usage([per_hour()], T0 + 1999)
            after_end = await store.usage([per_hour()], T0 + 2001)  # looks write nothing
            await store.commit(["open"], T0 + 1500)
            committed = await store.usage([per_hour()], T0 + 2500)
            return at_now, before_end, after_end, committed
        finally:
            await store.close()

    at_now, before_end, after_end, committed = asyncio.run(body())
    assert r.get("old:layout") == LAYOUT and not r.exists(k + ":p")
    assert at_now == (2,)  # .3c committed, .2c still leased; .1c's lease ran out
    assert (before_end, after_end) == ((2,), (1,))
    assert committed == (2,)  # committed in time, .2c stays
    assert r.zcard("old:leases") == 0


def test_the_conversion_of_an_older_layout_drops_what_ran_out_by_the_wall_clock(redis_server):
    """At conversion time (the wall clock), an old lease already over leaves its
    counter and its hold; a second store finds the layout converted and does nothing."""
    redis_server.flush()
    r = raw(redis_server)
    k = "w:c:" + KEY
    r.zadd(k, {"b.1c:1|1|": 1000.0, "b.2c:1|1|": 1000.0})
    r.set(k + ":n", "2")
    r.zadd(k + ":p", {"b.1c:1|1|": 1600.0})  # ran out in 1970
    r.sadd("w:h:tx", f"{k}\nb.1c:1|1|")

    async def body() -> None:
        for _ in range(2):
            store = RedisStore(redis_server.url, prefix="w:")
            try:
                await store.usage([per_hour()], 1700.0)
            finally:
                await store.close()

    asyncio.run(body())
    assert r.zrange(k, 0, -1) == ["b.2c:1|1|"] and r.get(k + ":n") == "1"
    assert r.scard("w:h:tx") == 0 and not r.exists(k + ":p") and r.get("w:layout") == LAYOUT


def test_a_hold_an_older_gateway_places_after_the_conversion_is_counted_never_less(redis_server):
    """docs/quotas.md: gateways sharing a Redis are upgraded together.  If an older
    one still runs, a hold it places (its lease in c:<key>:p, which this code does
    not read) is not ended by its lease here: it counts until its window ends, so
    a mixed cluster refuses more, never less."""
    redis_server.flush()
    r = raw(redis_server)

    async def body() -> tuple:
        store = RedisStore(redis_server.url, prefix="mix:")
        try:
            await store.charge([per_hour()], T0)  # converts (nothing to convert) and counts
            k = "mix:c:" + KEY
            # What the older gateway's charge script writes for a held charge.
            r.zadd(k, {"old.1c:1|1|": T0 + 1})
            r.zadd(k + ":p", {"old.1c:1|1|": T0 + 601})
            r.incrby(k + ":n", 1)
            r.sadd("mix:h:old-tx", f"{k}\nold.1c:1|1|")
            after_its_lease = await store.charge([per_hour()], T0 + 700)
            after_its_window = await store.usage([per_hour()], T0 + HOUR + 2)
            return after_its_lease.used, after_its_window
        finally:
            await store.close()

    after_its_lease, after_its_window = asyncio.run(body())
    assert after_its_lease == (2,)  # ours and the older gateway's, lease over or not
    assert after_its_window == (1,)  # the window has let both first charges go


def test_one_process_converts_and_the_others_count_at_once(redis_server):
    """Every worker of every gateway starts at once after an upgrade: the one that
    takes <prefix>layout:converting converts; another counts at once, the old
    lease set left as it is until then (counted, never less)."""
    redis_server.flush()
    r = raw(redis_server)
    k = "busy:c:" + KEY
    r.zadd(k, {"c.1c:1|1|": 1000.0})
    r.set(k + ":n", "1")
    r.zadd(k + ":p", {"c.1c:1|1|": 1600.0})  # ran out in 1970
    r.sadd("busy:h:tx", f"{k}\nc.1c:1|1|")
    r.set("busy:layout:converting", "1")  # another process is converting

    async def look() -> tuple[int, ...]:
        store = RedisStore(redis_server.url, prefix="busy:")
        try:
            return await store.usage([per_hour()], 1700.0)
        finally:
            await store.close()

    assert asyncio.run(look()) == (1,)  # not converted yet: the old hold still counts
    assert r.exists(k + ":p") and r.get("busy:layout") is None
    r.delete("busy:layout:converting")  # that process went away; its lock ran out
    assert asyncio.run(look()) == (0,)
    assert not r.exists(k + ":p") and r.get("busy:layout") == LAYOUT
    assert not r.exists("busy:layout:converting")


def test_series_keys_always_expire_and_move_their_expiry_with_each_new_bucket(redis_server):
    """A series and its running sum expire a bucket plus retention after the newest
    bucket began (Redis's clock): series_add sets both when a bucket starts, a read
    sets the sum's only when it starts it; adds and reads within a bucket leave them."""
    from gateway.store.base import MeterStep, SeriesAdd, SeriesSum

    redis_server.flush()
    r = raw(redis_server)
    day, retention = 86400, 2 * 86400
    ttl_ms = (day + retention) * 1000

    async def body() -> None:
        store = RedisStore(redis_server.url, prefix="x:")
        try:
            # A read first starts the sum (no series yet): it expires all the same.
            await store.meter(MeterStep(sums=(SeriesSum("s", T0 - 7 * day, T0, bucket=day),)), T0)
            assert 0 < r.pttl("x:series:s:sum") <= (day + 31 * 86400) * 1000
            await store.meter(MeterStep(series=(SeriesAdd("s", 1, bucket=day, retention=retention),)), T0)
            assert ttl_ms - 60_000 < r.pttl("x:series:s") <= ttl_ms
            assert ttl_ms - 60_000 < r.pttl("x:series:s:sum") <= ttl_ms
            r.pexpire("x:series:s", 5_000_000)
            r.pexpire("x:series:s:sum", 5_000_000)
            # Same bucket, an add and a read: the expiries stay as they are.
            await store.meter(MeterStep(series=(SeriesAdd("s", 1, bucket=day, retention=retention),),
                                        sums=(SeriesSum("s", T0 - 7 * day, T0 + 10, bucket=day),)), T0 + 10)
            assert r.pttl("x:series:s") <= 5_000_000 and r.pttl("x:series:s:sum") <= 5_000_000
            # A new bucket moves both.
            await store.meter(MeterStep(series=(SeriesAdd("s", 1, bucket=day, retention=retention),)),
                              T0 + day)
            assert ttl_ms - 60_000 < r.pttl("x:series:s") <= ttl_ms
            assert ttl_ms - 60_000 < r.pttl("x:series:s:sum") <= ttl_ms
        finally:
            await store.close()

    asyncio.run(body())
