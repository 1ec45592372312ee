"""Issue 16: the SQLite store commits in groups.

The store's thread runs every write call queued at that moment in one
``BEGIN IMMEDIATE ... COMMIT``, each inside its own savepoint.  What that must
not change: one call's failure is its own (its changes rolled back, its caller
alone told), limits stay exact across processes, a batch is bounded, and no
caller is ever left waiting (a lock held elsewhere, close() with calls queued).

To hold calls in the queue the tests first give the store's thread a call that
waits on an event; the SQL the connection runs is read with sqlite3's trace
callback, installed from inside the store's thread.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import sqlite3
import threading

import pytest

from gateway.store.base import Charge, StoreUnavailable
from gateway.store.sqlite import SQLiteStore
from tests.support.processes import race

T0 = 1_800_000_000.0


async def _hold_thread(store: SQLiteStore, statements: list[str] | None = None):
    """Block the store's thread until the returned event is set (a read: no transaction)."""
    release, holding = threading.Event(), threading.Event()

    def block(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS probe (n INTEGER)").close()
        if statements is not None:
            db.set_trace_callback(statements.append)
        holding.set()
        release.wait(timeout=30)

    blocked = asyncio.ensure_future(store._run(block, writes=False))
    assert await asyncio.to_thread(holding.wait, 10)
    return release, blocked


async def _queue(calls) -> list[asyncio.Task]:
    """Start the calls as tasks and let each reach the store's queue."""
    tasks = [asyncio.ensure_future(c) for c in calls]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    return tasks


def _insert(n: int, then_raise: BaseException | None = None):
    def call(db: sqlite3.Connection) -> int:
        db.execute("INSERT INTO probe (n) VALUES (?)", (n,)).close()
        if then_raise is not None:
            raise then_raise
        return n
    return call


def _probe(db: sqlite3.Connection) -> list[int]:
    return [n for (n,) in db.execute("SELECT n FROM probe ORDER BY n").fetchall()]


async def _failing_call_in_a_batch(path) -> None:
    store = SQLiteStore(path)
    statements: list[str] = []
    try:
        release, blocked = await _hold_thread(store, statements)
        tasks = await _queue([
            store._run(_insert(1)),
            store._run(_insert(2, ValueError("this call's own bug"))),
            store._run(_insert(3)),
            store._run(_insert(4, sqlite3.IntegrityError("this call's own constraint"))),
            store._run(_insert(5)),
        ])
        release.set()
        await blocked
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
        assert results[0] == 1 and results[2] == 3 and results[4] == 5
        assert isinstance(results[1], ValueError)
        assert isinstance(results[3], StoreUnavailable)  # sqlite3 errors reach callers as StoreUnavailable
        assert isinstance(results[3].__cause__, sqlite3.IntegrityError)
        # The failed calls' rows were rolled back; the others' were committed.
        assert await store._run(_probe, writes=False) == [1, 3, 5]
        # ... and all five ran in one transaction.
        batch = statements[:statements.index("COMMIT") + 1]
        assert batch.count("BEGIN IMMEDIATE") == 1
        assert batch.count("SAVEPOINT call") == 5
        assert batch.count("ROLLBACK TO call") == 2
    finally:
        await store.close()
    # Committed means on disk for another connection too.
    other = sqlite3.connect(path)
    try:
        assert [n for (n,) in other.execute("SELECT n FROM probe ORDER BY n")] == [1, 3, 5]
    finally:
        other.close()


def test_a_failing_call_in_a_batch_rolls_back_and_raises_only_its_own(tmp_path):
    asyncio.run(_failing_call_in_a_batch(str(tmp_path / "state.db")))


async def _bounded_batches(path) -> None:
    store = SQLiteStore(path)
    statements: list[str] = []
    try:
        release, blocked = await _hold_thread(store, statements)
        tasks = await _queue(store._run(_insert(i)) for i in range(200))
        release.set()
        await blocked
        assert await asyncio.wait_for(asyncio.gather(*tasks), 10) == list(range(200))
        sizes: list[int] = []
        for sql in statements:
            if sql == "BEGIN IMMEDIATE":
                sizes.append(0)
            elif sql == "SAVEPOINT call":
                sizes[-1] += 1
        assert sum(sizes) == 200
        assert len(sizes) >= 4 and max(sizes) <= 64, sizes  # 64 calls at most hold the write lock
        assert await store._run(_probe, writes=False) == list(range(200))  # in the order queued
    finally:
        await store.close()


def test_a_batch_holds_the_write_lock_for_at_most_64_calls_and_keeps_their_order(tmp_path):
    asyncio.run(_bounded_batches(str(tmp_path / "state.db")))


async def _close_with_calls_queued(path) -> None:
    store = SQLiteStore(path)
    release, blocked = await _hold_thread(store)
    tasks = await _queue(store.charge([Charge("acct:a:mph", 3600, 1000, hold=f"h{i}")], T0)
                         for i in range(100))
    closing = asyncio.ensure_future(store.close())
    await asyncio.sleep(0)
    with pytest.raises(StoreUnavailable):  # nothing is taken once close() began
        await store.usage([Charge("acct:a:mph", 3600, None)], T0)
    release.set()
    await blocked
    await asyncio.wait_for(closing, 10)
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
    for r in results:
        assert isinstance(r, StoreUnavailable) or r.accepted, r
    # Calls queued before close() ran and committed: a new store sees them.
    accepted = sum(1 for r in results if not isinstance(r, BaseException))
    again = SQLiteStore(path)
    try:
        assert await again.usage([Charge("acct:a:mph", 3600, None)], T0) == (accepted,)
    finally:
        await again.close()
    assert accepted == 100


@pytest.mark.timeout(60)
def test_close_with_calls_queued_answers_every_caller(tmp_path):
    asyncio.run(_close_with_calls_queued(str(tmp_path / "state.db")))


async def _lock_held_elsewhere(path) -> None:
    store = SQLiteStore(path, busy_timeout=0.2)
    await store.usage([Charge("k", 3600, None)], T0)  # create the file and schema
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process's writer, holding the lock
        results = await asyncio.wait_for(asyncio.gather(
            *(store.charge([Charge("k", 3600, 10)], T0) for _ in range(5)), return_exceptions=True), 10)
        assert all(isinstance(r, StoreUnavailable) for r in results), results
        other.execute("ROLLBACK")
        assert (await store.charge([Charge("k", 3600, 10)], T0)).accepted
        assert await store.usage([Charge("k", 3600, None)], T0) == (1,)
    finally:
        other.close()
        await store.close()


@pytest.mark.timeout(60)
def test_calls_queued_behind_a_lock_held_past_busy_timeout_each_hear_store_unavailable(tmp_path):
    asyncio.run(_lock_held_elsewhere(str(tmp_path / "state.db")))


LIMIT = 75
COROUTINES = 32
PER_COROUTINE = 6


async def _hammer(path: str, start) -> tuple[int, int]:
    store = SQLiteStore(path, busy_timeout=10)
    await store.usage([Charge("warm", 3600, 1)], T0)
    start.wait(timeout=30)
    accepted = refused = 0

    async def session(n: int) -> None:
        nonlocal accepted, refused
        for i in range(PER_COROUTINE):
            hold = f"{mp.current_process().pid}-{n}-{i}"
            now = T0 + i * 0.01
            result = await store.charge([Charge("acct:alice:mph", 3600, LIMIT, hold=hold),
                                         Charge("cust:acme:mph", 3600, 10 * LIMIT, hold=hold)], now)
            if result.accepted:
                await store.commit([hold], now)
                accepted += 1
            else:
                refused += 1

    # Many sessions at once: their calls queue up and share transactions.
    await asyncio.gather(*(session(n) for n in range(COROUTINES)))
    await store.close()
    return accepted, refused


def _process(path: str, start, out) -> None:
    out.put(asyncio.run(_hammer(path, start)))


@pytest.mark.timeout(120)
def test_two_processes_committing_in_groups_still_get_exactly_the_limit(tmp_path):
    results = race(_process, (str(tmp_path / "state.db"),), timeout=90)
    assert sum(a + r for a, r in results) == 2 * COROUTINES * PER_COROUTINE
    assert sum(a for a, _ in results) == LIMIT, results
