"""The store's sweep: what nothing will charge or read again leaves the store.

SQLite prunes a key only when that key is charged or read, so the rows of a key
that never is again stayed for good: a deleted account's counters, a customer
aggregate limit taken away (issue 16 stopped charging aggregates nobody limits),
a complaint's once-only key, the failed logins of an address that guessed once.
Redis expires its keys itself.  The sweep removes such rows a slice at a time,
and never anything that counts."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import redis

import gateway.serve
import gateway.store.sqlite as sqlite_module
from gateway.metering import Metering
from gateway.store.base import Charge, MeterStep, SeriesAdd, SeriesSum
from gateway.store.redis import RedisStore
from gateway.store.sqlite import SWEEP_MARGIN, SQLiteStore
from tests.support import redis_server as _redis
from tests.support import stores, submission
from tests.support.submission import Clock

pytest_plugins = ("tests.support.authdns",)
make_gateway = submission.make_gateway
redis_server = _redis.redis_server

T0 = 1_800_000_000.0
HOUR, DAY = 3600.0, 86400.0


def keys_in(path: Path, table: str) -> set[str]:
    with sqlite3.connect(path) as db:
        found = {k for (k,) in db.execute(f"SELECT key FROM {table}")}
    db.close()
    return found


def test_a_counter_leaves_once_none_of_its_charges_is_in_its_window(tmp_path):
    path = tmp_path / "state.db"
    gone_hour = Charge("acct:gone@x.example:recipients_per_hour", HOUR, None)
    gone_domains = Charge("acct:gone@x.example:recipient_domains_per_hour", HOUR, None, member="y.example")
    gone_day = Charge("acct:gone@x.example:messages_per_day", DAY, 100)
    once = Charge("complaint-about:tx1", 30 * DAY, 1)  # a key charged once by design
    held = Charge("acct:gone@x.example:not_sent", HOUR, None, hold="tx2:m")  # never committed
    live = Charge("acct:here@x.example:recipients_per_hour", HOUR, 10)
    everything = [gone_hour, gone_domains, gone_day, once, held, live]

    async def body(store: SQLiteStore) -> list:
        await store.charge([gone_hour, gone_domains, gone_day, once, held], T0)
        await store.charge([live], T0 + HOUR)
        now = T0 + HOUR + SWEEP_MARGIN + 1
        before = await store.usage(everything, now)
        seen = [before, await store.sweep(now, 900), keys_in(path, "totals"), keys_in(path, "members")]
        after = await store.usage(everything, now)
        assert after == before, "the sweep changed a count"
        # A day later (and the margin), the day's counter goes too; the 30 days' stays.
        seen += [await store.sweep(T0 + DAY + SWEEP_MARGIN + 1, 900), keys_in(path, "charges")]
        # And a swept key counts from nothing when it is charged again.
        seen.append((await store.charge([gone_day], T0 + DAY + SWEEP_MARGIN + 2)).used)
        return seen

    before, removed, totals, members, removed_later, charges, used = stores.sqlite_backend(path).run(body)
    assert before == (0, 0, 1, 1, 0, 1)
    assert removed == 3  # the three hour counters' rows (the hold's included)
    assert totals == {gone_day.key, once.key, live.key}
    assert members == set()
    assert removed_later == 2  # the day counter's row, and the live one's by then
    assert charges == {once.key}
    assert used == (0,)


def test_a_charge_near_the_end_of_its_window_is_not_swept(tmp_path):
    """Two gateways' clocks are a little apart: a row stays SWEEP_MARGIN past the
    last moment it could count."""
    path = tmp_path / "state.db"
    c = Charge("acct:a@x.example:recipients_per_hour", HOUR, None)

    async def body(store: SQLiteStore) -> tuple[int, int]:
        await store.charge([c], T0)
        early = await store.sweep(T0 + HOUR + SWEEP_MARGIN - 1, 900)
        return early, await store.sweep(T0 + HOUR + SWEEP_MARGIN + 1, 900)

    assert stores.sqlite_backend(path).run(body) == (0, 1)


def test_the_sweep_goes_through_every_key_a_slice_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setattr(sqlite_module, "SWEEP_BATCH", 3)
    path = tmp_path / "state.db"
    dead = [Charge(f"acct:u{i}@x.example:recipients_per_hour", HOUR, None) for i in range(10)]
    live = [Charge(f"acct:v{i}@x.example:recipients_per_hour", HOUR, None) for i in range(4)]
    now = T0 + 2 * HOUR + SWEEP_MARGIN

    async def body(store: SQLiteStore) -> list[int]:
        await store.charge(dead, T0)
        await store.charge(live, now - 10)
        return [await store.sweep(now, 900) for _ in range(6)]

    removed = stores.sqlite_backend(path).run(body)
    # 14 keys, 3 a call: five calls go round once, the sixth starts again.
    assert all(n <= 3 for n in removed), removed
    assert sum(removed) == 10
    assert keys_in(path, "totals") == {c.key for c in live}


def test_series_buckets_past_retention_leave_and_the_running_sums_stay_exact(tmp_path):
    path = tmp_path / "state.db"
    retention = 2 * HOUR

    async def body(store: SQLiteStore) -> list:
        for h in range(6):  # a bucket an hour (each new one drops the expired), then none
            await store.meter(MeterStep(series=(SeriesAdd("sent:gone", h + 1, HOUR, retention),)), T0 + h * HOUR)
        # A running sum is read (its row made) from T0 on; one of a series with no bucket.
        step = MeterStep(sums=(SeriesSum("sent:gone", T0, T0 + 9 * HOUR, 3600),
                               SeriesSum("complaints:nobody", T0, T0 + 9 * HOUR, 3600)))
        first = (await store.meter(step, T0 + 5 * HOUR)).sums
        now = T0 + 7 * HOUR + SWEEP_MARGIN
        removed = await store.sweep(now, 900)
        sums = (await store.meter(step, now)).sums
        plain = await store.read_series("sent:gone", T0, T0 + 9 * HOUR)
        return [first, removed, sums, plain]

    first, removed, sums, plain = stores.sqlite_backend(path).run(body)
    # A bucket expires at its start + 1h + 2h: at T0 + 5h, those of T0 + 3h, 4h and 5h
    # are left (4 + 5 + 6); by T0 + 7h the first two have expired too.
    assert first == (15, 0)
    assert removed == 3  # two buckets, and the empty series' running sum
    assert sums == (plain, 0) == (6, 0)
    assert keys_in(path, "series") == {"sent:gone"}


def test_failed_logins_locks_and_slots_that_ran_out_leave(tmp_path):
    path = tmp_path / "state.db"
    window = 900.0

    async def body(store: SQLiteStore) -> list:
        await store.reserve_attempt([("ip:192.0.2.1", 10)], "a1", window, T0)
        await store.fail_attempt("a1", ["ip:192.0.2.1"])
        await store.lock("ip:192.0.2.1", T0 + window, T0)
        await store.acquire_slot("conn:gone@x.example", "s1", None, T0, 60)
        now = T0 + window + SWEEP_MARGIN + 1
        await store.reserve_attempt([("ip:192.0.2.2", 10)], "a2", window, now - 5)
        await store.fail_attempt("a2", ["ip:192.0.2.2"])
        await store.lock("ip:192.0.2.2", now + 600, now - 5)
        await store.acquire_slot("conn:here@x.example", "s2", None, now - 5, 60)
        removed = await store.sweep(now, window)
        counts = (await store.reserve_attempt([("ip:192.0.2.2", 10)], "a3", window, now)).counts
        return [removed, counts, await store.locked_until(["ip:192.0.2.2"], now),
                await store.slots_in_use("conn:here@x.example", now)]

    removed, counts, locked, slots = stores.sqlite_backend(path).run(body)
    assert removed == 3
    assert counts == (1,)  # the recent failure still counts (the address is locked: no new one)
    assert locked is not None and slots == 1
    assert keys_in(path, "failures") == {"ip:192.0.2.2"}
    assert keys_in(path, "locks") == {"ip:192.0.2.2"}
    assert keys_in(path, "slots") == {"conn:here@x.example"}


def test_a_file_from_before_the_sweep_gets_its_rate_counters_windows(tmp_path):
    """Totals rows from before version 2 have no window: the account and customer
    rate counters get theirs from their names (so a customer aggregate nothing
    charges any more is swept); any other key waits for its next charge."""
    path = tmp_path / "state.db"
    named = [Charge("cust:acme:recipients_per_day", DAY, None), Charge("acct:a@x.example:not_sent", HOUR, None),
             Charge("acct:a@x.example:messages_per_hour", HOUR, None)]
    other = Charge("complaint-about:tx1", 2 * HOUR, 1)

    async def charge(store: SQLiteStore) -> None:
        await store.charge([*named, other], T0)

    stores.sqlite_backend(path).run(charge)
    with sqlite3.connect(path) as db:  # as a file written before the version
        db.execute("UPDATE totals SET span = NULL")
        db.execute("PRAGMA user_version = 1")
    db.close()

    async def sweep(store: SQLiteStore) -> int:
        return await store.sweep(T0 + DAY + SWEEP_MARGIN + 1, 900)

    assert stores.sqlite_backend(path).run(sweep) == 3
    assert keys_in(path, "totals") == {other.key}
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    db.close()


def test_a_sweep_run_again_by_the_thread_sweeps_the_slice_it_was_given(tmp_path, monkeypatch):
    """A sweep interrupted on the event loop (past its time there) is rolled back and
    run again by the store's thread: it must sweep the same slice of keys, not move
    on past the one the rolled-back run had looked at."""
    monkeypatch.setattr(sqlite_module, "SWEEP_BATCH", 2)
    monkeypatch.setattr(sqlite_module, "_PROGRESS_STEPS", 1)
    deleting_on_the_loop = threading.Event()

    class RunsOutAtTheDelete(sqlite_module._Budget):
        def __call__(self) -> int:
            self.spent = self.spent or deleting_on_the_loop.is_set()
            return self.spent

    def trace(sql: str) -> None:
        if sql.startswith("DELETE FROM charges") and threading.current_thread() is threading.main_thread():
            deleting_on_the_loop.set()

    monkeypatch.setattr(sqlite_module, "_Budget", RunsOutAtTheDelete)
    path = tmp_path / "state.db"
    dead = [Charge(f"acct:{name}@x.example:recipients_per_hour", HOUR, None) for name in "ab"]
    live = [Charge(f"acct:{name}@x.example:recipients_per_hour", HOUR, None) for name in "cd"]

    async def body(store: SQLiteStore) -> tuple[int, bool, set[str]]:
        await store.charge(dead, T0)
        await store.charge(live, T0 + HOUR)
        await store._run(lambda db: db.set_trace_callback(trace), writes=False)
        removed = await store.sweep(T0 + HOUR + SWEEP_MARGIN + 1, 900)
        return removed, deleting_on_the_loop.is_set(), keys_in(path, "totals")

    removed, interrupted, totals = stores.sqlite_backend(path).run(body)
    assert interrupted  # the loop's run got as far as the delete, and was rolled back
    assert removed == 2
    assert totals == {c.key for c in live}


def test_every_key_redis_writes_expires_by_itself(redis_server):
    """What the SQLite sweep does, Redis does with an expiry on every key: a message,
    a failed login, a lock, a slot and a series leave nothing that stays for good
    but the store's own bookkeeping (its layout marker and the set of leases)."""
    redis_server.flush()
    prefix = "sweep:"

    async def body() -> int:
        store = RedisStore(redis_server.url, prefix=prefix)
        try:
            charges = (Charge("acct:a@x.example:recipients_per_hour", HOUR, 10, hold="t:r0"),
                       Charge("acct:a@x.example:recipient_domains_per_hour", HOUR, 10, member="y.example",
                              hold="t:r0"),
                       Charge("cust:acme:messages_per_day", DAY, 100, hold="t:m"))
            await store.meter(MeterStep(charges=charges), T0)
            await store.meter(MeterStep(settle=("t:r0", "t:m"), commit=True,
                                        series=(SeriesAdd("sent:a@x.example", 1),),
                                        sums=(SeriesSum("sent:a@x.example", T0 - DAY, T0, 3600),)), T0)
            await store.reserve_attempt([("ip:192.0.2.1", 10), ("login:a@x.example", 10)], "a1", 900, T0)
            await store.fail_attempt("a1", ["ip:192.0.2.1", "login:a@x.example"])
            await store.lock("ip:192.0.2.1", T0 + 900, T0)
            await store.acquire_slot("conn:a@x.example", "s1", 2, T0, 60)
            return await store.sweep(T0, 900)
        finally:
            await store.close()

    assert asyncio.run(body()) == 0
    r = redis.Redis.from_url(redis_server.url)
    keys = [k.decode() for k in r.keys(prefix + "*")]
    assert len(keys) > 10
    forever = sorted(k for k in keys if r.pttl(k) < 0)
    assert forever == sorted(k for k in keys if k in (f"{prefix}layout", f"{prefix}leases")), forever


def test_the_redis_sweep_mends_the_failed_login_keys_an_older_gateway_left_for_good(redis_server):
    """Before e61df2d a failed login left its f:<key> set without an expiry.  The
    sweep makes one pass over the f:* keys, a SCAN step a call: a set with nothing
    left in the window goes, one with recent failures expires after the newest, and
    nothing else is touched (keys with an expiry, other keys, other prefixes)."""
    redis_server.flush()
    prefix = "mend[1]:"  # a glob character in the prefix matches itself only
    r = redis.Redis.from_url(redis_server.url)
    window = 900
    old = {f"{prefix}f:ip:192.0.2.{i}": T0 - 2 * window for i in range(1500)}  # past the window
    for key, ts in old.items():
        r.zadd(key, {"a-old": ts})  # as the old bug left them: no expiry
    recent = f"{prefix}f:login:a@x.example"
    r.zadd(recent, {"a1": T0 - 2 * window, "a2": T0 - 60})
    kept = f"{prefix}f:login:b@x.example"
    r.zadd(kept, {"b1": T0 - 2 * window})
    r.pexpire(kept, 3_600_000)
    other_prefix = "mend1:f:ip:192.0.2.1"
    r.zadd(other_prefix, {"x": T0 - 2 * window})
    marker = f"{prefix}layout"

    async def body() -> list[int]:
        store = RedisStore(redis_server.url, prefix=prefix)
        try:
            await store.usage([Charge("k", 3600, None)], T0)  # its layout marker written
            return [await store.sweep(T0, window) for _ in range(10)]
        finally:
            await store.close()

    mended = asyncio.run(body())
    assert sum(mended) == len(old) + 1 and mended[-1] == 0  # one pass, then nothing
    assert not any(r.exists(key) for key in old)
    assert [m.decode() for m in r.zrange(recent, 0, -1)] == ["a2"]
    assert (window - 60) * 1000 < r.pttl(recent) <= (window - 60 + 60) * 1000 + 1000
    assert 3_500_000 < r.pttl(kept) <= 3_600_000 and r.zcard(kept) == 1
    assert r.pttl(other_prefix) == -1 and r.pttl(marker) == -1


def test_a_running_gateway_sweeps_its_store(monkeypatch, make_gateway, tmp_path):
    """gateway/serve.py sweeps every SWEEP_INTERVAL, with the lockout window."""
    monkeypatch.setattr(gateway.serve, "SWEEP_INTERVAL", 0.05)
    clock = Clock()
    gw = make_gateway(clock=clock)
    path = tmp_path / "state.db"
    metering: Metering = gw.runtime.metering
    gw.run(metering.store.charge([Charge("acct:deleted@acme.example:recipients_per_hour", HOUR, None)],
                                 clock()))
    gw.run(metering.store.reserve_attempt([("ip:192.0.2.9", 10)], "a1", 900, clock()))
    assert "acct:deleted@acme.example:recipients_per_hour" in keys_in(path, "totals")
    clock.advance(HOUR + SWEEP_MARGIN + 1)
    deadline = time.monotonic() + 10
    while keys_in(path, "totals") or keys_in(path, "failures"):
        assert time.monotonic() < deadline, "the gateway did not sweep"
        time.sleep(0.05)


@pytest.fixture
def store_config(tmp_path):
    return {"backend": "sqlite", "path": str(tmp_path / "state.db")}
