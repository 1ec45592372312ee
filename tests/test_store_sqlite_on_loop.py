"""Issue 16: the SQLite store runs a write batch on the event loop when it can.

The write calls of one turn of the loop run together, on the loop, when the
connection and the write lock are free at once; else the store's thread takes
them and waits, as before.  What that must not change: the loop never waits for
a lock (another process's writer holds it), a call's failure is its own, many
rows in one request still count exactly."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import threading
import time

from bench.quota import one_operation
from gateway.store import sqlite as sqlite_store
from gateway.store.base import Charge, StoreUnavailable
from gateway.store.sqlite import _ROWS_A_STATEMENT, SQLiteStore

T0 = 1_800_000_000.0


def _where(db: sqlite3.Connection) -> str:
    db.execute("INSERT INTO probe (n) VALUES (1)").close()
    return threading.current_thread().name


async def _trace(store: SQLiteStore, statements: list[str]) -> None:
    def install(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS probe (n INTEGER)").close()
        db.set_trace_callback(statements.append)
    await store._run(install, writes=False)


async def _tick(gaps: list[float], every: float) -> None:
    """Note the event loop's gaps between turns ``every`` seconds apart, until cancelled."""
    last = time.monotonic()
    while True:
        await asyncio.sleep(every)
        gaps.append(time.monotonic() - last)
        last = time.monotonic()


def test_a_write_runs_on_the_loop_when_the_lock_is_free_and_in_the_thread_when_not(tmp_path):
    path = str(tmp_path / "state.db")

    async def body() -> tuple[str, str, float]:
        store = SQLiteStore(path, busy_timeout=5)
        statements: list[str] = []
        try:
            await _trace(store, statements)
            free = await store._run(_where)
            other = sqlite3.connect(path, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")  # another process's writer
            # While it holds the lock, the loop keeps turning: a ticker sees no gap.
            gaps: list[float] = []
            ticker = asyncio.ensure_future(_tick(gaps, 0.01))
            waiting = asyncio.ensure_future(store._run(_where))
            await asyncio.sleep(0.5)
            assert not waiting.done()
            other.execute("COMMIT")
            other.close()
            taken = await asyncio.wait_for(waiting, 10)
            ticker.cancel()
            return free, taken, max(gaps)
        finally:
            await store.close()

    free, taken, worst_gap = asyncio.run(body())
    assert free == "MainThread"
    assert taken == "sqlite-store"
    assert worst_gap < 0.2, worst_gap


def test_a_write_that_finds_the_lock_taken_tries_again_on_the_loop_for_a_while(tmp_path, monkeypatch):
    """Another process's batch holds the lock for about a tenth of a millisecond:
    a write that finds it taken tries again at the loop's next turns, within
    _LOOP_PATIENCE and _LOOP_TRIES (made large here, so the test does not race the
    clock), instead of going to the store's thread at once; calls made meanwhile
    join it."""
    monkeypatch.setattr(sqlite_store, "_LOOP_PATIENCE", 30.0)
    monkeypatch.setattr(sqlite_store, "_LOOP_TRIES", 1000)
    path = str(tmp_path / "state.db")

    async def body() -> tuple[list[str], int]:
        store = SQLiteStore(path, busy_timeout=5)
        statements: list[str] = []
        try:
            await _trace(store, statements)
            await store._run(_where)
            other = sqlite3.connect(path, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            first = asyncio.ensure_future(store._run(_where))
            for _ in range(20):
                await asyncio.sleep(0)
            second = asyncio.ensure_future(store._run(_where))
            for _ in range(20):
                await asyncio.sleep(0)
            assert not first.done() and not second.done()
            statements.clear()
            other.execute("COMMIT")
            other.close()
            taken = await asyncio.wait_for(asyncio.gather(first, second), 10)
            return taken, statements.count("COMMIT")
        finally:
            await store.close()

    taken, commits = asyncio.run(body())
    assert taken == ["MainThread", "MainThread"]
    assert commits == 1  # the call made while the first waited went in its batch


def _worst_gap_while(store: SQLiteStore, rows: int, budget: float, monkeypatch) -> tuple:
    """A key with ``rows`` charges, and the event loop's worst gap while a write
    call prunes them all (with a probe insert before and after it in its batch),
    the loop's budget for a write batch being ``budget``."""
    monkeypatch.setattr(sqlite_store, "_LOOP_BUDGET", budget)

    async def body() -> tuple:
        await _trace(store, [])  # makes the probe table
        for start in range(0, rows, 500):
            found = await store.charge([Charge("k", 3600, None)] * min(500, rows - start), T0)
            assert found.accepted
        later = T0 + 7200  # every row has slid out of its window

        def prune(db: sqlite3.Connection) -> tuple[int, str]:
            return store._prune(db, "k", 3600, later), threading.current_thread().name

        gaps: list[float] = []
        ticker = asyncio.ensure_future(_tick(gaps, 0.001))
        await asyncio.sleep(0.05)
        gaps.clear()
        # The prune's 20,000 rows can set off a full collection of the test process's
        # heap, which holds the GIL, loop or not: what is measured is the store.
        gc.disable()
        try:
            done = await asyncio.gather(store._run(_where), store._run(prune), store._run(_where))
        finally:
            gc.enable()
        ticker.cancel()
        probes = await store._run(lambda db: db.execute("SELECT COUNT(*) FROM probe").fetchone()[0],
                                  writes=False)
        return done, probes, max(gaps)

    return asyncio.run(body())


def test_a_write_batch_past_its_time_on_the_loop_goes_to_the_thread_whole(tmp_path, monkeypatch):
    """The first charge of an account idle for a day prunes the day's rows: 20,000
    messages took 175 ms, all of it on the event loop.  A batch on the loop is
    interrupted past _LOOP_BUDGET, rolled back whole, and run by the store's
    thread: each of its calls once, the loop turning meanwhile."""
    rows = 20000
    unbounded = SQLiteStore(str(tmp_path / "unbounded.db"))
    (_, pruned, _), _, stalled = _worst_gap_while(unbounded, rows, 1e9, monkeypatch)
    asyncio.run(unbounded.close())
    assert pruned == (0, "MainThread")

    bounded = SQLiteStore(str(tmp_path / "bounded.db"))
    (before, pruned, after), probes, worst = _worst_gap_while(bounded, rows, 0.002, monkeypatch)
    asyncio.run(bounded.close())
    assert pruned == (0, "sqlite-store")
    assert before == after == "sqlite-store"  # the batch went whole
    assert probes == 2  # each call ran once: the loop's try was rolled back
    assert worst < stalled / 3, (worst, stalled)


def test_a_call_that_breaks_its_batch_mid_way_is_answered(tmp_path):
    """A call that rolls the transaction back itself makes its batch's RELEASE fail:
    nothing in the batch happened, and every call in it hears so, the one in flight
    included (it used to wait for ever)."""
    path = str(tmp_path / "state.db")

    def rolls_back(db: sqlite3.Connection) -> None:
        db.execute("ROLLBACK")

    async def body() -> list:
        store = SQLiteStore(path)
        try:
            await _trace(store, [])
            calls = [store._run(_where), store._run(rolls_back), store._run(_where)]
            first = await asyncio.wait_for(asyncio.gather(*calls[:2], return_exceptions=True), 10)
            last = await asyncio.wait_for(calls[2], 10)
            probes = await store._run(lambda db: db.execute("SELECT COUNT(*) FROM probe").fetchone()[0],
                                      writes=False)
            return [*first, last, probes]
        finally:
            await store.close()

    first, broken, last, probes = asyncio.run(body())
    assert isinstance(first, StoreUnavailable) and isinstance(broken, StoreUnavailable)
    assert last == "MainThread"  # the next batch
    assert probes == 1  # the first call's row went with its batch


def test_a_loop_with_nothing_else_to_do_stops_trying_after_a_few_turns(tmp_path, monkeypatch):
    """Past _LOOP_TRIES turns the batch goes to the store's thread even within
    _LOOP_PATIENCE: a loop with nothing else to do would spin on the lock."""
    monkeypatch.setattr(sqlite_store, "_LOOP_PATIENCE", 30.0)
    path = str(tmp_path / "state.db")

    async def body() -> str:
        store = SQLiteStore(path, busy_timeout=5)
        try:
            await _trace(store, [])
            await store._run(_where)
            other = sqlite3.connect(path, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            waiting = asyncio.ensure_future(store._run(_where))
            for _ in range(3 * sqlite_store._LOOP_TRIES):
                await asyncio.sleep(0)
            assert not store._pending  # handed to the thread, which waits for the lock
            other.execute("COMMIT")
            other.close()
            return await asyncio.wait_for(waiting, 10)
        finally:
            await store.close()

    assert asyncio.run(body()) == "sqlite-store"


def test_the_write_that_starts_the_log_afresh_runs_in_the_thread(tmp_path):
    """The first write after the whole log was checkpointed starts it over: it syncs
    the log's new header to disk (and truncates a log grown past its limit), so it
    goes to the store's thread; the writes after it run on the loop again."""
    path = str(tmp_path / "state.db")

    def salts() -> bytes:  # a fresh start gives the log new salts (WAL header bytes 16-23)
        with open(path + "-wal", "rb") as wal:
            return wal.read(24)[16:]

    async def body() -> tuple[list[str], list[bool]]:
        store = SQLiteStore(path)
        try:
            await _trace(store, [])
            where = [await store._run(_where), await store._run(_where)]
            other = sqlite3.connect(path, isolation_level=None)
            busy, frames, copied = other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            other.close()
            assert busy == 0 and frames == copied > 0  # the whole log is in the database
            before = salts()
            where.append(await store._run(_where))
            started_afresh = salts() != before
            where.append(await store._run(_where))
            return where, [started_afresh, salts() != before]
        finally:
            await store.close()

    where, afresh = asyncio.run(body())
    assert where == ["MainThread", "MainThread", "sqlite-store", "MainThread"]
    assert afresh == [True, True]


def test_a_call_alone_that_fails_rolls_back_only_itself(tmp_path):
    """A call alone in its batch has no savepoint: the transaction is its own."""
    path = str(tmp_path / "state.db")

    def insert(n: int, fail: bool = False):
        def call(db: sqlite3.Connection) -> int:
            db.execute("INSERT INTO probe (n) VALUES (?)", (n,)).close()
            if fail:
                raise ValueError("this call's own bug")
            return n
        return call

    async def body() -> tuple[list, list[int], list[str]]:
        store = SQLiteStore(path)
        statements: list[str] = []
        try:
            await _trace(store, statements)
            results = []
            for call in (insert(1), insert(2, fail=True), insert(3)):
                try:
                    results.append(await store._run(call))
                except ValueError as exc:
                    results.append(str(exc))
            probe = await store._run(lambda db: [n for (n,) in db.execute("SELECT n FROM probe ORDER BY n")],
                                     writes=False)
            return results, probe, statements
        finally:
            await store.close()

    results, probe, statements = asyncio.run(body())
    assert results == [1, "this call's own bug", 3]
    assert probe == [1, 3]
    assert "SAVEPOINT call" not in statements
    assert statements.count("BEGIN IMMEDIATE") == 3 and statements.count("ROLLBACK") == 1


def test_the_calls_of_one_turn_of_the_loop_commit_together(tmp_path):
    path = str(tmp_path / "state.db")

    async def body() -> tuple[tuple, list[str]]:
        store = SQLiteStore(path)
        statements: list[str] = []
        try:
            await _trace(store, statements)
            statements.clear()
            charges = [store.charge([Charge("k", 3600, 10, hold=f"h{i}")], T0) for i in range(5)]
            done = await asyncio.gather(*charges)
            assert all(r.accepted for r in done)
            return await store.usage([Charge("k", 3600, None)], T0), statements
        finally:
            await store.close()

    used, statements = asyncio.run(body())
    assert used == (5,)
    assert statements.count("BEGIN IMMEDIATE") == 1 and statements.count("COMMIT") == 1
    assert statements.count("SAVEPOINT call") == 5


def test_a_request_of_more_rows_than_one_statement_takes_counts_them_all(tmp_path):
    path = str(tmp_path / "state.db")
    n = 2 * _ROWS_A_STATEMENT + 7
    charges = [Charge(f"k{i % 3}", 3600, None, hold="h") for i in range(n)]

    async def body() -> tuple:
        store = SQLiteStore(path)
        try:
            await store.charge(charges, T0)
            before = await store.usage([Charge(f"k{i}", 3600, None) for i in range(3)], T0 + 1)
            await store.commit(["h"], T0 + 1)
            return before, await store.usage([Charge(f"k{i}", 3600, None) for i in range(3)], T0 + 2)
        finally:
            await store.close()

    before, after = asyncio.run(body())
    assert before == after == (len(range(0, n, 3)), len(range(1, n, 3)), len(range(2, n, 3)))


def test_a_closed_store_refuses_a_call_and_answers_those_made_before(tmp_path):
    path = str(tmp_path / "state.db")

    async def body() -> list:
        store = SQLiteStore(path)
        await store.usage([Charge("k", 3600, None)], T0)  # the connection is open
        made = [asyncio.ensure_future(store.charge([Charge("k", 3600, 10)], T0)) for _ in range(3)]
        await asyncio.sleep(0)  # made: pending for the end of this turn of the loop
        await store.close()
        outcomes = await asyncio.gather(*made, return_exceptions=True)
        try:
            await store.charge([Charge("k", 3600, 10)], T0)
        except StoreUnavailable as exc:
            outcomes.append(exc)
        return outcomes

    outcomes = asyncio.run(body())
    assert [getattr(o, "accepted", None) for o in outcomes[:3]] == [True] * 3
    assert isinstance(outcomes[3], StoreUnavailable)


def test_a_submitted_message_runs_at_most_15_statements(tmp_path):
    """What a message costs SQLite, as bench/quota.py's "message" row meters it, one
    message at a time (each step its own BEGIN ... COMMIT): each statement is a
    Python call on the event loop.  34 before the request's rows and totals went in
    one statement each, the sums in one, the series adds in two, a commit in one
    and the session's slot renewed once a quarter of its lease."""
    path = str(tmp_path / "state.db")
    messages = 40

    async def body() -> list[str]:
        store = SQLiteStore(path)
        statements: list[str] = []
        message = one_operation("message", store, T0)
        try:
            for i in range(2):  # the session's slot taken, the schema and the series' buckets made
                await message(0, i)
            await _trace(store, statements)
            statements.clear()
            for i in range(2, messages + 2):
                await message(0, i)
            return statements
        finally:
            await store.close()

    statements = asyncio.run(body())
    assert len(statements) / messages <= 15, sorted(set(s.split("(")[0][:60] for s in statements))
    assert statements.count("COMMIT") == 2 * messages  # one at RCPT, one at the end of DATA
