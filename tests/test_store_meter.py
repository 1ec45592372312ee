"""One store round trip per SMTP step (issue 16): Store.meter, a transaction's first
RCPT's (with MeterStep.begin) and the end of DATA's.

The one-trip versions (one SQLite transaction, one Redis script) must give exactly
what the old multi-call path gives: the base class's default implementations, which
compose charge, commit/release, add_to_series, usage and read_series, are that path,
and each backend runs the same steps both ways on separate state.  The running sums
of the series (moved bucket by bucket) are held to read_series the same way."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace

import pytest

from gateway.store.base import (
    Charge,
    MessageBegin,
    MeterStep,
    SeriesAdd,
    SeriesSum,
    Store,
    Suspension,
)
from gateway.store.redis import RedisStore, _encoded
from gateway.store.sqlite import SQLiteStore
from tests.support import redis_server as _redis
from tests.support import stores

redis_server = _redis.redis_server
any_store = stores.any_store

T0 = 1_800_000_000.0
HOUR, DAY = 3600.0, 86400.0


def reference_of(any_store, request, tmp_path) -> Store:
    """A second store of the same backend on state of its own."""
    if any_store.name == "redis":
        return RedisStore(request.getfixturevalue("redis_server").url, prefix="ref:")
    return SQLiteStore(tmp_path / "reference.db")


def random_steps(rng: random.Random, n: int) -> list[tuple[float, MeterStep]]:
    """RCPT-like and DATA-like steps for two logins, time moving forward in jumps of
    seconds to days (and now and then a little back: two gateways' clocks), with the
    series read over windows whose start moves both ways."""
    steps: list[tuple[float, MeterStep]] = []
    now = T0
    holds: list[str] = []
    for i in range(n):
        now += rng.choice([0.5, 7, 600, 1799, 3600, 5000, 86400, 3 * 86400, -2.0])
        if rng.random() < 0.2:  # on a bucket's first second: the bounds are inclusive
            now = (now // HOUR + 1) * HOUR
        login = rng.choice(["alice", "bob"])
        limit = rng.choice([None, 2, 5, 40])
        reads = (Charge(f"acct:{login}:attempts", HOUR, None), Charge(f"acct:{login}:rph", HOUR, None),
                 Charge(f"acct:{login}:domains", HOUR, None, member=""))
        days = rng.choice([1, 7, 30])
        sums = (SeriesSum(f"sent:{login}", now - days * DAY, now - HOUR),
                SeriesSum(f"messages:{login}", now - rng.choice([1, 7]) * DAY, now, bucket=86400))
        if rng.random() < 0.6:
            hold = f"tx{i}"
            holds.append(hold)
            charges = (Charge(f"acct:{login}:rph", HOUR, limit, amount=rng.choice([1, 1, 3]), hold=hold),
                       Charge(f"acct:{login}:domains", HOUR, rng.choice([None, 2]),
                              member=rng.choice(["a.example", "b.example", "c.example"]), hold=hold),
                       Charge(f"acct:{login}:attempts", HOUR, None))
            if_refused = (Charge(f"acct:{login}:attempts", HOUR, None),
                          *([c.unlimited() for c in charges[:2]] if rng.random() < 0.3 else []))
            steps.append((now, MeterStep(charges=charges, lease=1800.0, if_refused=if_refused,
                                         read=reads, sums=sums, read_when_refused=rng.random() < 0.5)))
        else:
            settle = tuple(holds[-rng.randint(0, 2):]) if holds else ()
            commit = rng.random() < 0.7
            series = (SeriesAdd(f"sent:{login}", rng.randint(1, 4)),
                      SeriesAdd(f"messages:{login}", 1, bucket=86400)) if commit else ()
            counts = (Charge(f"acct:{login}:tried", HOUR, None, amount=2),
                      Charge(f"acct:{login}:refused", HOUR, None, amount=rng.randint(0, 2)))
            steps.append((now, MeterStep(settle=settle, commit=commit, counts=counts, series=series,
                                         read=reads, sums=sums)))
    return steps


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_one_trip_meter_gives_what_the_multi_call_path_gives(any_store, request, tmp_path, seed):
    steps = random_steps(random.Random(seed), 120)

    async def body(store: Store) -> None:
        reference = reference_of(any_store, request, tmp_path)
        try:
            refused = read = 0
            for now, step in steps:
                mine = await store.meter(step, now)
                theirs = await Store.meter(reference, step, now)  # the old path, call by call
                assert mine == theirs, (now, step)
                refused += not mine.charged.accepted
                read += bool(mine.sums)
                for s in step.sums:  # the running sum agrees with a plain read of the series
                    assert (await store.read_series(s.key, s.since, s.until, s.bucket)
                            == await reference.read_series(s.key, s.since, s.until, s.bucket))
            # The run exercised both outcomes and the reads (not a vacuous comparison).
            assert refused >= 3 and read > 20
        finally:
            await reference.close()

    any_store.run(body)


def test_running_sum_follows_the_window_both_ways_and_retention(any_store):
    async def body(store: Store) -> list[int]:
        out = []
        for h in range(0, 40 * 24, 5):  # 40 days of hourly buckets, every 5th hour
            await store.add_to_series("s", h + 1, T0 + h * HOUR)
        end = T0 + 40 * 24 * HOUR
        for since_days in (7, 3, 30, 1, 30, 7):  # the start moves forward and back
            step = MeterStep(sums=(SeriesSum("s", end - since_days * DAY, end - HOUR),))
            got = (await store.meter(step, end)).sums[0]
            assert got == await store.read_series("s", end - since_days * DAY, end - HOUR)
            out.append(got)
        return out

    sums = any_store.run(body)
    assert sums[0] > 0 and len(set(sums)) == 4  # 7, 3, 30 and 1 days differ


def test_buckets_past_retention_leave_the_running_sum_with_the_series(any_store):
    """The running sum is read from a floor; buckets that then pass retention are
    deleted when a new bucket starts, and what they held leaves the sum: reading
    from the same floor agrees with a plain sum of what is left, add after add."""
    async def body(store: Store) -> list[int]:
        out = []
        for h in range(0, 5 * 24, 3):  # five days of every 3rd hour, one day kept
            now = T0 + h * HOUR
            step = MeterStep(series=(SeriesAdd("s", h + 1, retention=DAY),),
                             sums=(SeriesSum("s", T0, now),))
            got = (await store.meter(step, now)).sums[0]
            assert got == await store.read_series("s", T0, now), h
            out.append(got)
        return out

    sums = any_store.run(body)
    # It grew for the first day, then lost the oldest buckets as it gained new ones.
    assert sums[8] == sum(h + 1 for h in range(0, 25, 3))
    # At the last add (hour 117) a bucket started at hour h is gone once it expired,
    # at h + 1 + 24 hours: those from hour 93 on are left.
    assert sums[-1] == sum(h + 1 for h in range(0, 5 * 24, 3) if h + 1 + 24 > 117)


def test_a_steps_begin_reads_the_suspension_renews_the_slot_and_stops_a_suspended_login(any_store):
    charge = Charge("acct:alice:rph", HOUR, 10, hold="h1")

    async def body(store: Store):
        assert await store.acquire_slot("conn:alice", "cid1", 1, T0, 100)
        first = await store.meter(MeterStep(begin=MessageBegin("alice", "conn:alice", "cid1", 100),
                                            charges=(charge,), lease=1800.0), T0 + 90)
        # Renewed at T0+90 until T0+190: still held at T0+150, so a second session is refused.
        busy = not await store.acquire_slot("conn:alice", "cid2", 1, T0 + 150, 100)
        await store.suspend(Suspension("alice", T0, "volume spike", {"n": 3}))
        then = await store.meter(MeterStep(begin=MessageBegin("alice", "conn:alice", None, 100),
                                           charges=(replace(charge, hold="h2"),), lease=1800.0,
                                           counts=(Charge("acct:alice:tried", HOUR, None),),
                                           series=(SeriesAdd("sent:alice", 1),)), T0 + 160)
        used = await store.usage([charge, Charge("acct:alice:tried", HOUR, None)], T0 + 161)
        sent = await store.read_series("sent:alice", T0 - DAY, T0 + 161)
        return first, busy, then, used, sent

    first, busy, then, used, sent = any_store.run(body)
    assert first.suspension is None and first.charged.accepted and first.charged.used == (0,)
    assert busy
    assert then.suspension == Suspension("alice", T0, "volume spike", {"n": 3})
    # Suspended: the rest of the step was not done (only the first charge counts).
    assert used == (1, 0) and sent == 0 and not then.charged.accepted


def test_meter_is_atomic_across_clients(any_store):
    """Twenty clients charging one counter of limit 7 through meter: exactly 7 fit."""
    async def one(store: Store, i: int) -> bool:
        step = MeterStep(charges=(Charge("acct:x:rph", HOUR, 7, hold=f"h{i}"),), lease=1800.0,
                         read=(Charge("acct:x:rph", HOUR, None),), sums=(SeriesSum("s:x", T0 - DAY, T0),))
        return (await store.meter(step, T0 + i * 0.01)).charged.accepted

    async def body(_store: Store) -> int:
        stores = [any_store.make() for _ in range(20)]
        try:
            return sum(await asyncio.gather(*(one(s, i) for i, s in enumerate(stores))))
        finally:
            for s in stores:
                await s.close()

    assert any_store.run(body) == 7


def test_a_member_outside_ascii_is_one_member_whichever_call_charges_it(any_store):
    """Redis's meter step travels as JSON (orjson: raw UTF-8), a plain charge as
    arguments: an internationalised domain must be the same member both ways."""
    key = "acct:a@x.example:recipient_domains_per_hour"

    def domain(member: str, hold: str) -> Charge:
        return Charge(key, HOUR, 2, member=member, hold=hold)

    async def body(store: Store) -> list:
        metered = await store.meter(MeterStep(charges=(domain("bücher.example", "t1"),)), T0)
        again = await store.charge([domain("bücher.example", "t2")], T0 + 1)
        second = await store.meter(MeterStep(charges=(domain("δοκιμή.example", "t3"),)), T0 + 2)
        full = await store.charge([domain("third.example", "t4")], T0 + 3)
        return [metered.charged.used, again.used, second.charged.used, full.accepted]

    assert any_store.run(body) == [(0,), (1,), (1,), False]


def test_a_step_orjson_refuses_is_written_by_the_json_module():
    """A lone surrogate (bytes the SMTP layer could not decode): orjson refuses it,
    so the step's JSON is the json module's, escapes and all."""
    assert _encoded({"k": "bücher"}) == '{"k":"bücher"}'.encode()
    assert _encoded({"k": "x\udcff"}) == '{"k": "x\\udcff"}'
