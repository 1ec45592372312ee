"""The SQLite store prunes a key only when something of it can have expired (issue 16).

Each totals row keeps lower bounds of its rows' times and leases; while they show
nothing expired, a check reads the total as it stands.  These tests hold that
shortcut to the sliding log's definition: a charge counts while t > now - W,
stops at t + W exactly, and a hold stops counting when its lease ends; a state
file from before the bounds (NULL: unknown) is upgraded and pruned."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from gateway.store.base import Charge, MeterStep, SeriesAdd, SeriesSum
from gateway.store.sqlite import SQLiteStore, _bucket_at_or_after
from tests.support import stores

T0 = 1_800_000_000.0
W = 3600.0


def rows(path: Path, key: str) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT COUNT(*) FROM charges WHERE key = ?", (key,)).fetchone()[0]


def test_a_charge_stops_counting_at_t_plus_w_exactly_with_and_without_a_prune(tmp_path):
    path = tmp_path / "state.db"

    async def body(store: SQLiteStore) -> list[tuple[int, tuple[int, ...]]]:
        seen = []
        await store.charge([Charge("k", W, 3)], T0)
        await store.charge([Charge("k", W, 3)], T0 + 10)
        for now in (T0 + W - 0.001, T0 + W, T0 + W + 10 - 0.001, T0 + W + 10):
            # usage() reads without pruning; meter() prunes what the bounds say may go.
            seen.append((1, await store.usage([Charge("k", W, 3)], now)))
            found = await store.meter(MeterStep(read=(Charge("k", W, 3),)), now)
            seen.append((2, found.usage))
        return seen

    seen = stores.sqlite_backend(path).run(body)
    assert [u for _, u in seen] == [(2,), (2,), (1,), (1,), (1,), (1,), (0,), (0,)]
    assert rows(path, "k") == 0  # both pruned, once each expired


def test_a_hold_stops_counting_when_its_lease_ends_and_a_late_commit_charges_nothing(tmp_path):
    async def body(store: SQLiteStore) -> list:
        held = await store.charge([Charge("k", W, 2, hold="h1")], T0, lease=60)
        full = await store.charge([Charge("k", W, 2, hold="h2")], T0 + 1, lease=600)
        at_limit = await store.charge([Charge("k", W, 2)], T0 + 2)
        # h1's lease ends at T0 + 60: its room is free again, and committing it then
        # charges nothing (the room may have been given away).
        freed = await store.charge([Charge("k", W, 2)], T0 + 60)
        await store.commit(["h1"], T0 + 61)
        return [held.accepted, full.accepted, at_limit.accepted, freed.accepted,
                await store.usage([Charge("k", W, 2)], T0 + 62)]

    assert stores.sqlite_backend(tmp_path / "s.db").run(body) == [True, True, False, True, (2,)]  # h2 and the last


def test_many_checks_with_nothing_expired_prune_nothing_and_stay_exact(tmp_path):
    """The shortcut must not skip a prune that is due: rows from a minute apart,
    checked every few seconds across their expiry, count exactly as the log says."""
    path = tmp_path / "state.db"
    times = [T0 + 60 * i for i in range(10)]

    async def body(store: SQLiteStore) -> list[int]:
        for t in times:
            await store.charge([Charge("k", W, None)], t)
        got = []
        now = times[-1]
        while now < times[-1] + W + 120:
            found = await store.meter(MeterStep(read=(Charge("k", W, None),)), now)
            got.append((now, found.usage[0]))
            now += 7.5
        return got

    for now, used in stores.sqlite_backend(path).run(body):
        assert used == sum(1 for t in times if t > now - W), now


def test_a_state_file_from_before_the_bounds_is_upgraded_and_pruned(tmp_path):
    path = tmp_path / "state.db"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE charges (key TEXT NOT NULL, ts REAL NOT NULL, amount INTEGER NOT NULL,"
        " member TEXT, hold TEXT, lease_until REAL);"
        "CREATE TABLE totals (key TEXT PRIMARY KEY, total INTEGER NOT NULL);"
        f"INSERT INTO charges VALUES ('k', {T0}, 1, NULL, NULL, NULL);"
        f"INSERT INTO charges VALUES ('k', {T0 + 100}, 1, NULL, 'h', {T0 + 200});"
        "INSERT INTO totals VALUES ('k', 2);")
    old.close()

    async def body(store: SQLiteStore) -> list:
        return [await store.usage([Charge("k", W, 5)], T0 + 150),
                (await store.meter(MeterStep(read=(Charge("k", W, 5),)), T0 + 250)).usage,
                (await store.charge([Charge("k", W, 5)], T0 + W + 1)).used]

    # Both count at first; the hold's lease has ended at T0 + 250; the first row has
    # slid out at T0 + W + 1.
    assert stores.sqlite_backend(path).run(body) == [(2,), (1,), (0,)]
    assert rows(path, "k") == 1  # the new charge only: both old rows were pruned
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT oldest FROM totals WHERE key = 'k'").fetchone()[0] == T0 + W + 1


def test_series_sums_read_from_any_start_agree_with_a_plain_read(tmp_path):
    """The running sum's floor moves a bucket at a time; a start inside a bucket,
    on its first second or just before it, reads the same buckets as read_series."""
    async def body(store: SQLiteStore) -> list[tuple[int, int]]:
        out = []
        for h in range(30):
            await store.meter(MeterStep(series=(SeriesAdd("s", h + 1),)), T0 + 3600 * h)
        end = T0 + 3600 * 29 + 5
        for since in (T0 + 3600 * 3, T0 + 3600 * 3 - 0.5, T0 + 3600 * 3 + 0.5, T0 + 3600 * 10 + 1799,
                      T0 + 3600 * 2, T0 + 3600 * 20):
            s = SeriesSum("s", since, end - 3600)
            out.append(((await store.meter(MeterStep(sums=(s,)), end)).sums[0],
                        await store.read_series("s", since, end - 3600)))
        return out

    for got, plain in stores.sqlite_backend(tmp_path / "s.db").run(body):
        assert got == plain


def test_bucket_at_or_after_is_exact():
    assert _bucket_at_or_after(7200.0, 3600) == 7200
    assert _bucket_at_or_after(7200.5, 3600) == 10800
    assert _bucket_at_or_after(7199.999, 3600) == 7200
    t = T0 + 0.1
    assert _bucket_at_or_after(t, 86400) >= t > _bucket_at_or_after(t, 86400) - 86400


def test_two_processes_keep_each_others_bounds(tmp_path):
    """Bounds live in the file: a charge another process made is seen, and pruned
    when it expires, by this one."""
    path = tmp_path / "state.db"

    async def one(now: float) -> None:
        store = SQLiteStore(path)
        try:
            await store.charge([Charge("k", W, None)], now)
        finally:
            await store.close()

    asyncio.run(one(T0))  # a first "process"

    async def body(store: SQLiteStore) -> list:
        before = (await store.meter(MeterStep(read=(Charge("k", W, None),)), T0 + 1)).usage
        await store.charge([Charge("k", W, None)], T0 + 2)
        after = (await store.meter(MeterStep(read=(Charge("k", W, None),)), T0 + W)).usage
        return [before, after]

    assert stores.sqlite_backend(path).run(body) == [(1,), (1,)]


def test_rows_of_counters_no_longer_charged_leave_an_older_state_file_once(tmp_path):
    """attempts_per_hour and downstream_tried are no longer charged, so nothing would
    prune their rows: opening a file from before that drops them, and only them."""
    path = tmp_path / "state.db"
    retired = [Charge("acct:a@x.example:attempts_per_hour", W, None),
               Charge("acct:a@x.example:downstream_tried", W, None, amount=3)]
    kept = [Charge("acct:a@x.example:recipients_per_hour", W, None),
            Charge("acct:a@x.example:not_sent", W, None)]

    async def charge(store: SQLiteStore) -> None:
        await store.charge([*retired, *kept], T0)

    stores.sqlite_backend(path).run(charge)
    with sqlite3.connect(path) as db:  # as a file written before the version
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2  # the version this store writes
        db.execute("PRAGMA user_version = 0")
    db.close()

    async def usage(store: SQLiteStore) -> tuple[int, ...]:
        return await store.usage([*retired, *kept], T0 + 1)

    assert stores.sqlite_backend(path).run(usage) == (0, 0, 1, 1)
    with sqlite3.connect(path) as db:
        assert sorted(k for (k,) in db.execute("SELECT key FROM charges")) == sorted(c.key for c in kept)
        assert sorted(k for (k,) in db.execute("SELECT key FROM totals")) == sorted(c.key for c in kept)
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    db.close()
    # Charged again after the upgrade (a node not yet upgraded), they count again.
    stores.sqlite_backend(path).run(charge)
    assert stores.sqlite_backend(path).run(usage) == (1, 3, 2, 2)
