"""The rest of the shared state: connection slots, failed logins and locks,
suspensions, events, series; and a store that cannot be reached.

Every behaviour test runs against SQLite and against a real redis-server.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.store.base import Charge, Event, StoreUnavailable, Suspension
from gateway.store.redis import RedisStore
from gateway.store.sqlite import SQLiteStore
from tests.support import redis_server as _redis
from tests.support import stores
from tests.support.redis_server import RedisServer

# Fixtures used by name below (pytest finds them as module attributes).
redis_server = _redis.redis_server
any_store = stores.any_store

T0 = 1_800_000_000.0


def test_connection_slots_are_limited_and_freed(any_store):
    async def body(store):
        k = "conn:alice"
        got = [await store.acquire_slot(k, f"lease{i}", 2, T0, 300) for i in range(3)]
        renew = await store.acquire_slot(k, "lease0", 2, T0 + 100, 300)  # a holder renews
        await store.release_slot(k, "lease1")
        after_release = await store.acquire_slot(k, "lease2", 2, T0 + 101, 300)
        in_use = await store.slots_in_use(k, T0 + 102)
        return got, renew, after_release, in_use

    got, renew, after_release, in_use = any_store.run(body)
    assert got == [True, True, False]
    assert renew and after_release
    assert in_use == 2


def test_a_crashed_holder_frees_its_slot_when_the_lease_ends(any_store):
    async def body(store):
        k = "conn:bob"
        await store.acquire_slot(k, "crashed", 1, T0, 60)
        during = await store.acquire_slot(k, "next", 1, T0 + 59, 60)
        after = await store.acquire_slot(k, "next", 1, T0 + 60, 60)
        return during, after

    assert any_store.run(body) == (False, True)


def test_failures_count_per_key_in_a_sliding_window(any_store):
    limits = [("ip:192.0.2.1", 100), ("login:alice", 100)]

    async def fail(store, keys, now):
        found = await store.reserve_attempt([(k, 100) for k in keys], f"a{now}", 900, now)
        await store.fail_attempt(f"a{now}", keys)
        return found.counts

    async def body(store):
        counts = [await fail(store, [k for k, _ in limits], T0 + i) for i in range(3)]
        later = await fail(store, ["ip:192.0.2.1"], T0 + 900)  # the T0 one is out
        success = await store.reserve_attempt(limits, "ok", 900, T0 + 900)
        await store.give_back_attempt("ok", [k for k, _ in limits])
        kept = await fail(store, ["login:alice"], T0 + 901)
        return counts, later, success.counts, kept

    counts, later, success, kept = any_store.run(body)
    assert counts == [(1, 1), (2, 2), (3, 3)]
    assert later == (3,)
    assert success == (4, 3)
    # The right password took back only its own place; the failure at T0+2 is still in
    # the window at T0+901 and stays counted (a wiped count would say 1).
    assert kept == (2,)


def test_a_reservation_is_refused_at_the_limit_or_under_a_lock_and_says_until_when(any_store):
    async def body(store):
        keys = [("ip:192.0.2.9", 3), ("login:bob", 2)]
        first = [await store.reserve_attempt(keys, f"r{i}", 600, T0 + i) for i in range(3)]
        await store.give_back_attempt("r0", [k for k, _ in keys])  # never checked
        again = await store.reserve_attempt(keys, "r3", 600, T0 + 3)
        await store.lock("ip:192.0.2.9", T0 + 900, T0)
        other = await store.reserve_attempt([("ip:192.0.2.9", 3), ("login:carol", 2)], "r4", 600, T0 + 4)
        return first, again, other

    first, again, other = any_store.run(body)
    assert [r.accepted for r in first] == [True, True, False]
    assert first[1].counts == (2, 2)
    # At the limit: one more fits when the oldest entry leaves the window.
    assert first[2].counts == (2, 2) and first[2].full_until == pytest.approx(T0 + 600)
    assert again.accepted and again.counts == (2, 2)
    assert not other.accepted and other.locked_until == pytest.approx(T0 + 900)


def test_a_state_file_from_before_attempts_were_reserved_is_upgraded(tmp_path):
    import sqlite3

    path = tmp_path / "state.db"
    old = sqlite3.connect(path)
    old.executescript("CREATE TABLE failures (key TEXT NOT NULL, ts REAL NOT NULL);"
                      f"INSERT INTO failures VALUES ('login:alice', {T0});")
    old.close()

    async def body(store):
        return await store.reserve_attempt([("login:alice", 5)], "a", 900, T0 + 1)

    found = stores.sqlite_backend(path).run(body)
    assert found.accepted and found.counts == (2,)  # the old failure still counts


def test_locks_end_at_their_time_and_are_never_shortened(any_store):
    async def body(store):
        await store.lock("ip:192.0.2.1", T0 + 900, T0)
        await store.lock("ip:192.0.2.1", T0 + 300, T0 + 1)
        return (await store.locked_until(["ip:192.0.2.1", "login:x"], T0 + 899),
                await store.locked_until(["ip:192.0.2.1", "login:x"], T0 + 900),
                await store.locked_until(["login:x"], T0))

    during, after, other = any_store.run(body)
    assert during == pytest.approx(T0 + 900)
    assert after is None and other is None


def test_suspension_keeps_its_first_evidence_until_lifted(any_store):
    async def body(store):
        first = await store.suspend(Suspension("alice@acme.example", T0, "volume spike",
                                               {"last_hour": 900, "baseline": 12.5}))
        again = await store.suspend(Suspension("alice@acme.example", T0 + 5, "manual", {}))
        seen = await store.suspension("alice@acme.example")
        listed = await store.suspensions()
        lifted = await store.unsuspend("alice@acme.example")
        lifted_twice = await store.unsuspend("alice@acme.example")
        return first, again, seen, listed, lifted, lifted_twice, await store.suspension("alice@acme.example")

    first, again, seen, listed, lifted, lifted_twice, gone = any_store.run(body)
    assert first and not again
    assert seen == Suspension("alice@acme.example", T0, "volume spike", {"last_hour": 900, "baseline": 12.5})
    assert listed == [seen]
    assert lifted and not lifted_twice and gone is None


def test_events_are_kept_newest_first_and_by_subject(any_store):
    async def body(store):
        await store.log_event(Event(T0, "suspended", "alice", {"reason": "spike"}))
        await store.log_event(Event(T0 + 1, "lockout", "192.0.2.1", {"failures": 20}))
        await store.log_event(Event(T0 + 2, "unsuspended", "alice", {"by": "operator"}))
        return await store.events(), await store.events("alice"), await store.events(limit=1)

    everything, alice, newest = any_store.run(body)
    assert [e.kind for e in everything] == ["unsuspended", "lockout", "suspended"]
    assert [e.kind for e in alice] == ["unsuspended", "suspended"]
    assert alice[1].data == {"reason": "spike"}
    assert newest == everything[:1]


def test_series_sum_buckets_in_a_range(any_store):
    async def body(store):
        await store.add_to_series("rcpt:alice", 5, T0)
        await store.add_to_series("rcpt:alice", 7, T0 + 10)
        await store.add_to_series("rcpt:alice", 100, T0 + 7200)
        start = T0 - (T0 % 3600)
        return (await store.read_series("rcpt:alice", start, T0 + 100),
                await store.read_series("rcpt:alice", start, T0 + 7200),
                await store.read_series("rcpt:bob", start, T0 + 7200))

    assert any_store.run(body) == (12, 112, 0)


# --- unreachable stores ----------------------------------------------------------
def test_stopped_redis_raises_store_unavailable_never_passes():
    server = RedisServer().start()
    store = RedisStore(server.url, timeout=1.0)

    async def body():
        ok = await store.charge([Charge("k", 3600, 1)], T0)
        server.stop()
        with pytest.raises(StoreUnavailable):
            await store.charge([Charge("k", 3600, 1)], T0 + 1)
        with pytest.raises(StoreUnavailable):
            await store.suspension("alice")
        await store.close()
        return ok

    try:
        assert asyncio.run(asyncio.wait_for(body(), 20)).accepted
    finally:
        server.stop()


def test_redis_nobody_listens_raises_store_unavailable():
    from tests.support.redis_server import free_port

    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout=1.0)

    async def body():
        with pytest.raises(StoreUnavailable):
            await store.charge([Charge("k", 3600, 1)], T0)
        await store.close()

    asyncio.run(asyncio.wait_for(body(), 20))


def test_sqlite_file_that_cannot_be_opened_raises_store_unavailable(tmp_path):
    store = SQLiteStore(tmp_path / "no-such-dir" / "state.db")

    async def body():
        with pytest.raises(StoreUnavailable):
            await store.charge([Charge("k", 3600, 1)], T0)
        await store.close()

    asyncio.run(body())


def test_sqlite_locked_by_another_writer_past_busy_timeout_raises_store_unavailable(tmp_path):
    import sqlite3

    path = tmp_path / "state.db"
    asyncio.run(_touch(path))
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holding the write lock
    try:
        store = SQLiteStore(path, busy_timeout=0.2)

        async def body():
            with pytest.raises(StoreUnavailable):
                await store.charge([Charge("k", 3600, 1)], T0)
            await store.close()

        asyncio.run(body())
    finally:
        other.execute("ROLLBACK")
        other.close()


async def _touch(path):
    store = SQLiteStore(path)
    await store.usage([Charge("k", 3600, 1)], T0)
    await store.close()


def test_sqlite_calls_do_not_run_on_the_event_loop_thread(tmp_path):
    import threading

    store = SQLiteStore(tmp_path / "state.db")
    seen = []

    async def body():
        loop_thread = threading.get_ident()
        await store._run(lambda db: seen.append(threading.get_ident()))
        await store.close()
        return loop_thread

    loop_thread = asyncio.run(body())
    assert seen and seen[0] != loop_thread


def test_sqlite_uses_wal_mode(tmp_path):
    import sqlite3

    asyncio.run(_touch(tmp_path / "state.db"))
    mode = sqlite3.connect(tmp_path / "state.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
