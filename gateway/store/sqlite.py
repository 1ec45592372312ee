"""The embedded store: one SQLite file in WAL mode.

State survives a restart, and every process on this host that opens the same
file shares exact limits: each check-and-charge is one ``BEGIN IMMEDIATE``
transaction, which takes SQLite's write lock before reading, so two processes
can never both read "9 of 10 used" and both charge the 10th.

Write calls commit in groups: the write calls of one turn of the event loop run
in one transaction, each in its own savepoint, on the loop itself when the write
lock is free at once (see _run), else in a thread of the store's own, which waits
for the lock (see _serve) and runs the reads.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import math
import os
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from gateway.store.base import (
    AttemptReservation,
    Charge,
    ChargeResult,
    Event,
    JournalEntry,
    MessageBegin,
    MeterResult,
    MeterStep,
    SeriesAdd,
    SeriesSum,
    Store,
    StoreUnavailable,
    Suspension,
    TakenReport,
    retry_after_for,
)
from gateway.store.wal_checkpoint import WAL_SIZE_LIMIT, Checkpointer
from gateway.store.wal_index import WalIndex
from gateway.values.dmarc_reports import RETENTION, report_id

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (
    key TEXT NOT NULL, ts REAL NOT NULL, amount INTEGER NOT NULL,
    member TEXT, hold TEXT, lease_until REAL);
CREATE INDEX IF NOT EXISTS charges_by_key ON charges (key, ts);
CREATE INDEX IF NOT EXISTS charges_by_hold ON charges (hold) WHERE hold IS NOT NULL;
CREATE INDEX IF NOT EXISTS charges_by_lease ON charges (key, lease_until) WHERE lease_until IS NOT NULL;
CREATE INDEX IF NOT EXISTS charges_by_member ON charges (key, member) WHERE member IS NOT NULL;
-- oldest, lease_end: lower bounds of the key's rows' ts and lease_until (see _live_totals);
-- span: the key's window, so the sweep knows when none of its rows can count again.
CREATE TABLE IF NOT EXISTS totals (
    key TEXT PRIMARY KEY, total INTEGER NOT NULL, oldest REAL, lease_end REAL, span REAL);
CREATE TABLE IF NOT EXISTS members (
    key TEXT NOT NULL, member TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (key, member));
CREATE TABLE IF NOT EXISTS slots (
    key TEXT NOT NULL, lease_id TEXT NOT NULL, until REAL NOT NULL, PRIMARY KEY (key, lease_id));
-- attempt: the AUTH attempt still in flight that this entry reserves (NULL once settled).
CREATE TABLE IF NOT EXISTS failures (key TEXT NOT NULL, ts REAL NOT NULL, attempt TEXT);
CREATE INDEX IF NOT EXISTS failures_by_key ON failures (key, ts);
CREATE TABLE IF NOT EXISTS locks (key TEXT PRIMARY KEY, until REAL NOT NULL);
CREATE TABLE IF NOT EXISTS suspensions (
    login TEXT PRIMARY KEY, since REAL NOT NULL, reason TEXT NOT NULL, evidence TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, kind TEXT NOT NULL,
    subject TEXT NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_subject ON events (subject, id);
-- The decision journal: seq orders entries, so the count bound is one range delete.
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, cid TEXT NOT NULL,
    ts REAL NOT NULL, kind TEXT NOT NULL, record TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS journal_by_id ON journal (id);
CREATE INDEX IF NOT EXISTS journal_by_cid ON journal (cid);
CREATE INDEX IF NOT EXISTS journal_by_ts ON journal (ts);
CREATE TABLE IF NOT EXISTS series (
    key TEXT NOT NULL, bucket INTEGER NOT NULL, amount INTEGER NOT NULL,
    expires REAL NOT NULL, PRIMARY KEY (key, bucket));
-- A running sum per series: its buckets that start at or after `floor` (the last
-- `since` read), so reading a sum moves the floor over a few buckets, not the series.
CREATE TABLE IF NOT EXISTS series_sums (key TEXT PRIMARY KEY, floor REAL NOT NULL, total INTEGER NOT NULL);
-- DMARC aggregate report counts (gateway/ops/dmarc_commands.py)
CREATE TABLE IF NOT EXISTS dmarc_counts (
    period INTEGER NOT NULL, domain TEXT NOT NULL, row TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (period, domain, row));
CREATE TABLE IF NOT EXISTS dmarc_reports (
    id TEXT PRIMARY KEY, period INTEGER NOT NULL, domain TEXT NOT NULL, seq INTEGER NOT NULL,
    rows TEXT NOT NULL, state TEXT NOT NULL, claimed REAL NOT NULL, finished REAL);
CREATE INDEX IF NOT EXISTS dmarc_reports_open ON dmarc_reports (state) WHERE finished IS NULL;

"""

# Group commit bounds: one transaction holds SQLite's write lock for at most this many
# calls or about this long, so another process sharing the file is not starved.
# Pages of a new state file.  A COMMIT appends every page it changed to the log
# whole (and checksums it), and a submitted message changes a few rows in each of
# several tables and indexes (its keys' rows, totals, holds): small pages make
# that log write a quarter of SQLite's default 4 KiB one.  bench/quota.py's
# "message" row: 0.70-0.80x the CPU per message of 4 KiB pages.
PAGE_SIZE = 1024

_BATCH_CALLS = 64
_BATCH_SECONDS = 0.002

# How long, and how many turns, write calls wait on the event loop, trying again each
# turn, for a write lock another process holds before they go to the store's thread
# (_try_again_soon).
_LOOP_PATIENCE = 0.002
_LOOP_TRIES = 8

# How long a write batch may hold the event loop.  A batch is 50-150 us, but one
# call can be much more: the first charge of an account idle for a day prunes the
# day's rows (python -m bench.loop_stall, 20,000 messages: 109 ms; the loop's worst
# gap 3.2 ms with the budget).  Past this the batch is interrupted
# (SQLite's progress handler, looked at every _PROGRESS_STEPS virtual machine
# steps), rolled back whole and handed to the store's thread (_OverBudget).
_LOOP_BUDGET = 0.003
_PROGRESS_STEPS = 1000

# The sweep (SQLiteStore.sweep) looks at this many keys of each table a call, about a
# millisecond of the store's thread, and leaves a row this long past the last moment
# it could count (two gateways' clocks a little apart).
SWEEP_BATCH = 200
SWEEP_MARGIN = 600.0


@dataclass(slots=True)
class _Call:
    """One store call queued for the store's thread; ``fn`` None asks it to close."""

    fn: Callable[[sqlite3.Connection], Any] | None
    writes: bool
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future


_Outcome = tuple[_Call, object, "BaseException | None"]


class _ForTheThread(Exception):
    """A write batch that must not run on the event loop: the store's thread runs it."""


class _OverBudget(_ForTheThread):
    """A write batch on the event loop ran past _LOOP_BUDGET: it was rolled back, and
    its calls are back at the head of the queue, for the store's thread."""


class _Budget:
    """SQLite's progress handler for a batch on the loop: interrupts the statement
    running when the batch's time is up, and says so (``spent``)."""

    __slots__ = ("deadline", "spent")

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds
        self.spent = False

    def __call__(self) -> int:
        if time.monotonic() > self.deadline:
            self.spent = True
        return self.spent


def _busy(exc: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY: another connection holds the lock asked for."""
    return "locked" in str(exc) or "busy" in str(exc)


def _deliver(outcomes: list[_Outcome]) -> None:
    """Hand results to their callers: one wake-up per event loop per batch."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].loop, []).append(outcome)
    for loop, mine in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve, mine)
        except RuntimeError:  # that loop is closed: nobody is waiting any more
            pass


def _resolve(outcomes: list[_Outcome]) -> None:
    for call, result, error in outcomes:
        if call.future.done():  # the caller was cancelled
            continue
        if error is not None:
            call.future.set_exception(error)
        else:
            call.future.set_result(result)


def _bucket_at_or_after(t: float, size: int) -> float:
    """The first multiple of ``size`` that is >= ``t`` (exact, whatever the rounding
    of the division)."""
    k = math.ceil(t / size)
    if k * size < t:
        k += 1
    elif (k - 1) * size >= t:
        k -= 1
    return k * size


def _insert_rows(db: sqlite3.Connection, head: str, rows: Sequence[tuple], tail: str = "") -> None:
    """``head`` VALUES (...), (...) ``tail``: many rows in one statement, in the order
    given, at most _ROWS_A_STATEMENT at a time (SQLite bounds a statement's parameters)."""
    for i in range(0, len(rows), _ROWS_A_STATEMENT):
        part = rows[i:i + _ROWS_A_STATEMENT]
        marks = "(" + ",".join("?" * len(part[0])) + ")"
        db.execute(head + ",".join((marks,) * len(part)) + tail, [v for row in part for v in row]).close()


_ROWS_A_STATEMENT = 500

# A bound no time reaches: a key with no rows (or no leases) has nothing to expire.
_NEVER = 1e300

# A live charge at `now`: inside its window and not a reservation whose lease ran out.
_LIVE = "key = ? AND ts > ? AND (lease_until IS NULL OR lease_until > ?)"


class SQLiteStore(Store):
    def __init__(self, path: str | Path, busy_timeout: float = 5.0):
        self._path = str(path)
        self._busy_ms = int(busy_timeout * 1000)
        # One thread owns the connection: sqlite3 objects stay in the thread that uses
        # them.  It starts with the first call and drains _queue (see _serve).
        self._queue: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._db: sqlite3.Connection | None = None
        self._turn: int | None = None  # the turnstile's file descriptor (see _begin)
        self._checkpointer: Checkpointer | None = None
        # Whether the next write starts the log afresh (a sync to disk): see _write_batch_now.
        self._wal_index: WalIndex | None = None
        self._closed = False
        # Where each table's sweep goes on from (see sweep): its last key swept.
        self._swept: dict[str, str] = {}
        # The connection is the store thread's or, for a write batch run at once on
        # the event loop (see _run), the loop's: whoever holds this lock.
        self._db_lock = threading.Lock()
        # Write calls made during this turn of the event loop, run together at its end.
        self._pending: list[_Call] = []
        # When the batch at the head of _pending first found the write lock taken, and
        # how many times it has tried again since.
        self._busy_since: float | None = None
        self._tries = 0

    # --- plumbing --------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            # No busy handler: SQLite's sleeps 1, 2, 5, 10... ms between tries, and
            # the write lock is waited for in turn instead (_begin; reads retry in
            # _patiently), up to busy_timeout all the same.
            db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False, timeout=0)
            if self._turn is None and self._path != ":memory:":
                try:
                    self._turn = os.open(self._path + "-turn", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                except OSError as exc:
                    db.close()
                    raise sqlite3.OperationalError(f"cannot open {self._path}-turn: {exc}") from exc
            # Set before the file has a table; a file made with other pages keeps them.
            db.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            # WAL: readers never wait for the writer; NORMAL sync is durable across a
            # process crash (only an OS crash can lose the last transactions).
            self._retry_locked(db, "PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            # The log is checkpointed by a thread of its own, not inside a COMMIT
            # (gateway/store/wal_checkpoint.py says why).
            db.execute("PRAGMA wal_autocheckpoint = 0")
            db.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
            self._retry_locked(db, _SCHEMA)
            self._migrate(db)
            self._db = db
            if self._path != ":memory:" and self._checkpointer is None:
                self._checkpointer = Checkpointer(self._path)
                self._checkpointer.start()
            if self._path != ":memory:" and self._wal_index is None:
                self._wal_index = WalIndex.open(self._path)
        return self._db

    def _migrate(self, db: sqlite3.Connection) -> None:
        """Bring a state file written by an older version up to the schema."""
        self._add_column(db, "failures", "attempt TEXT")
        # NULL bounds: unknown, so each key is pruned once and gets its bounds then.
        self._add_column(db, "totals", "oldest REAL")
        self._add_column(db, "totals", "lease_end REAL")
        # NULL: a key of a file from before the sweep, left alone until charged again.
        self._add_column(db, "totals", "span REAL")
        self._retry_locked(db, "CREATE INDEX IF NOT EXISTS failures_by_attempt "
                               "ON failures (attempt) WHERE attempt IS NOT NULL")
        # Counters no longer charged (gateway/metering.py: the compromise signals
        # split the recipients since version 1): a key never charged again is never
        # pruned, so their last hour of rows would stay in the file for good.  Once.
        if db.execute("PRAGMA user_version").fetchone()[0] < 1:
            retired = ("key GLOB 'acct:*:attempts_per_hour' OR key GLOB 'acct:*:downstream_tried'")
            self._retry_locked(db, f"BEGIN IMMEDIATE; DELETE FROM charges WHERE {retired}; "
                                   f"DELETE FROM totals WHERE {retired}; PRAGMA user_version = 1; COMMIT")
        # The sweep (version 2) needs each key's window; a file from before has none,
        # and the keys nothing charges again (a customer's aggregate counters once its
        # limit is gone) would never get one.  The account and customer rate counters
        # are named for their windows (gateway/rules/quota.py, RATE_LIMITS; the
        # compromise counters are per hour).  Other keys wait for their next charge.
        if db.execute("PRAGMA user_version").fetchone()[0] < 2:
            self._retry_locked(db, (
                "BEGIN IMMEDIATE; "
                "UPDATE totals SET span = 3600 WHERE span IS NULL AND (key GLOB '*_per_hour' "
                "OR key GLOB 'acct:*:not_sent' OR key GLOB 'acct:*:downstream_refused'); "
                "UPDATE totals SET span = 86400 WHERE span IS NULL AND key GLOB '*_per_day'; "
                "PRAGMA user_version = 2; COMMIT"))

    def _add_column(self, db: sqlite3.Connection, table: str, column: str) -> None:
        columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})").fetchall()}
        if column.split()[0] not in columns:
            try:
                self._retry_locked(db, f"ALTER TABLE {table} ADD COLUMN {column}")
            except sqlite3.OperationalError as exc:  # another process added it first
                if "duplicate column" not in str(exc):
                    raise

    def _retry_locked(self, db: sqlite3.Connection, sql: str) -> None:
        """Run set-up SQL that two processes opening a new file at once can collide on.

        SQLite answers "database is locked" at once, without waiting in the busy
        handler, when waiting could deadlock (two connections each holding a lock
        the other needs, as when both switch a new file to WAL and create the
        schema).  The failed statement drops its locks, so trying again after a
        pause succeeds; up to busy_timeout, as for any other lock.
        """
        deadline = time.monotonic() + self._busy_ms / 1000
        pause = 0.005
        while True:
            try:
                db.executescript(sql)
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)  # in the store's own thread, never on the event loop
            pause = min(pause * 2, 0.1)

    async def _run(self, fn: Callable[[sqlite3.Connection], T], writes: bool = True) -> T:
        """Run ``fn`` on the connection and wait for its result.

        ``writes``: the call changes state, so it runs inside a ``BEGIN IMMEDIATE``
        transaction with the other write calls of the moment (group commit, see
        _serve), on the event loop when the write lock is free at once (see
        _run_at_once), else in the store's thread, which waits for it.  A read runs
        in the store's thread, outside any write transaction when no write is queued
        before it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        call = _Call(fn, writes, loop, future)
        with self._lock:  # closed-check and enqueue as one step: close() cannot slip between
            if self._closed:
                raise StoreUnavailable("the SQLite store is closed")
            if self._worker is None:
                self._worker = threading.Thread(target=self._serve, name="sqlite-store", daemon=True)
                self._worker.start()
            # The pending calls are one loop's: it answers them at once (_resolve).
            if writes and self._db is not None and (not self._pending or self._pending[0].loop is loop):
                self._pending.append(call)
                if len(self._pending) == 1:
                    loop.call_soon(self._run_at_once)
            else:
                self._queue.put(call)
        return await future

    # --- write batches on the event loop -----------------------------------------------
    # A write call handed to the store's thread cost more than its SQL: the thread's
    # wake-up and the loop's, and the GIL, which the thread takes back after each of
    # a message's ~30 statements while the loop runs Python, each time a hand-over
    # (a futex, a context switch).  In the submission path a message's metering cost
    # 450 us of CPU more than none (`python -m bench.submission`, "nothing metered"),
    # three times what the same calls cost the thread flat out (`python -m
    # bench.quota`).  A batch's SQL runs in 50-150 us with nothing to wait for when
    # the write lock is free (WAL, synchronous NORMAL: a COMMIT appends to the log,
    # the fsync is the checkpointer's): about what parsing a message costs the loop,
    # as a DKIM signature is made on the loop for the same reason (gateway/dkim/sign.py).
    # So the write calls of one turn of the loop run together at its end, on the
    # loop, if the lock is free at once: the turnstile and BEGIN IMMEDIATE are only
    # tried, never waited for.  When another process holds the lock (or the store's
    # thread holds the connection) the batch goes to the thread, which waits for it
    # as before, up to busy_timeout: the loop never waits for a lock.

    def _run_at_once(self) -> None:
        with self._lock:
            calls, self._pending = deque(self._pending), []
        failed = False
        while calls:
            try:
                outcomes = self._write_batch_now(calls)
            except Exception:  # _ForTheThread, or BEGIN failed otherwise than busy (the
                outcomes, failed = None, True  # thread says how, to each): the thread runs them
            if outcomes is None:
                break
            self._busy_since = None
            _resolve(outcomes)
        if calls:
            with self._lock:
                if self._closed:  # the thread stopped on a bug (_serve); close() moves pending first
                    _resolve([(c, None, StoreUnavailable("the SQLite store is closed")) for c in calls])
                    return
                if not failed and self._try_again_soon(calls[0].loop):
                    self._pending[:0] = calls  # ahead of any call made since
                    return
                self._busy_since = None
                for call in calls:
                    self._queue.put(call)

    def _try_again_soon(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether a batch that found the write lock taken tries again on the loop at
        its next turn (True, scheduled) or goes to the store's thread, which waits in
        turn (False).  Another process's batch holds the lock for about a tenth of a
        millisecond: retrying costs the loop a try a turn, the thread a hand-over of
        every call and its result (`--workers auto`, bench.submission).  Past
        _LOOP_TRIES tries or _LOOP_PATIENCE the thread's turnstile keeps the
        processes fair, and a loop with nothing else to do stops spinning on the lock
        (bench.quota's "message, 2 processes": 1.39x the CPU a message, unbounded)."""
        now = time.monotonic()
        if self._busy_since is None:
            self._busy_since, self._tries = now, 0
        elif now - self._busy_since > _LOOP_PATIENCE or self._tries >= _LOOP_TRIES:
            return False
        self._tries += 1
        loop.call_soon(self._run_at_once)
        return True

    def _write_batch_now(self, calls: deque[_Call]) -> list[_Outcome] | None:
        """A write batch from the head of ``calls`` run here and now, or None (nothing
        run) when the connection or the write lock is not free at once."""
        if not self._db_lock.acquire(blocking=False):
            return None
        try:
            db = self._db
            if db is None:
                return None
            if self._wal_index is not None and self._wal_index.fresh_start_due():
                # Its COMMIT would sync the log's new header, and maybe truncate the
                # log, waiting for the disk (gateway/store/wal_index.py).
                raise _ForTheThread("the write-ahead log starts afresh")
            if not self._begin_now(db):
                return None
            budget = _Budget(_LOOP_BUDGET)
            db.set_progress_handler(budget, _PROGRESS_STEPS)
            try:
                return self._batch(db, calls, budget)
            finally:
                db.set_progress_handler(None, 0)
        finally:
            self._db_lock.release()

    def _begin_now(self, db: sqlite3.Connection) -> bool:
        """BEGIN IMMEDIATE if the turnstile and the write lock are free; False if not."""
        turn = self._turn
        try:
            if turn is not None:
                self._take_turn()
            db.execute("BEGIN IMMEDIATE")
            return True
        except sqlite3.OperationalError as exc:
            if _busy(exc):
                return False
            raise
        finally:
            if turn is not None:
                fcntl.flock(turn, fcntl.LOCK_UN)

    # --- the store's thread: group commit ------------------------------------------
    # Every call used to be a thread hop plus its own BEGIN IMMEDIATE ... COMMIT, and
    # COMMIT was the largest single cost of the submission path (py-spy, issue 16).
    # The thread now takes every call queued at that moment (up to _BATCH_CALLS, or
    # _BATCH_SECONDS of work, so another process sharing the file gets the write lock
    # in turn) and runs them in order in ONE transaction, each inside its own
    # SAVEPOINT: a call that fails rolls back only its own changes and raises only
    # to its own caller.  Callers hear their result only after COMMIT, so nothing
    # uncommitted is ever acted on; BEGIN IMMEDIATE still takes the write lock before
    # the first read, so limits stay exact across processes.

    def _serve(self) -> None:
        calls: deque[_Call] = deque()
        try:
            while True:
                if not calls:
                    calls.append(self._queue.get())
                while len(calls) < _BATCH_CALLS:
                    try:
                        calls.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                with self._db_lock:
                    if calls[0].fn is None:  # close(): everything queued before it has run
                        self._shut(calls)
                        return
                    outcomes = self._run_reads(calls) if not calls[0].writes else self._run_writes(calls)
                _deliver(outcomes)
        except BaseException as exc:  # a bug here must not leave callers waiting forever
            with self._lock:
                self._closed = True
            while True:
                try:
                    calls.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            _deliver([(c, None, StoreUnavailable(f"SQLite store {self._path}: {exc!r}")) for c in calls])
            raise

    def _shut(self, calls: deque[_Call]) -> None:
        closing = calls.popleft()
        error: BaseException | None = None
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        try:
            if self._db is not None:
                self._db.close()  # the last connection to close checkpoints what is left
                self._db = None
        except sqlite3.Error as exc:
            error = self._unavailable(exc)
        if self._turn is not None:
            os.close(self._turn)
            self._turn = None
        self._wal_index = None  # its descriptor stays open (gateway/store/wal_index.py)
        # Nothing is queued after close() (the lock refuses it); answer anything anyway.
        late = [(c, None, StoreUnavailable("the SQLite store is closed")) for c in calls]
        calls.clear()
        _deliver([*late, (closing, None, error)])

    def _unavailable(self, exc: sqlite3.Error) -> StoreUnavailable:
        # Locked past busy_timeout, I/O error, not a database, misuse.
        unavailable = StoreUnavailable(f"SQLite store {self._path}: {exc}")
        unavailable.__cause__ = exc
        return unavailable

    def _failure(self, exc: Exception) -> Exception:
        """What a call's caller hears when it raised: sqlite3's errors as StoreUnavailable."""
        return self._unavailable(exc) if isinstance(exc, sqlite3.Error) else exc

    def _call(self, db: sqlite3.Connection, call: _Call) -> object:
        result = call.fn(db)
        # No sqlite3 object may outlive its call (issue 14, defect 8a): a cursor
        # freed later (on another thread, or once _db_lock is let go) resets its
        # prepared statement, which the connection's statement cache may already
        # have handed to the next call: "InterfaceError: bad parameter or other API
        # misuse".
        assert not isinstance(result, sqlite3.Cursor), "a store call returned a cursor"
        return result

    def _run_reads(self, calls: deque[_Call]) -> list[_Outcome]:
        """The reads at the head of the queue, each on its own, no write lock taken."""
        outcomes: list[_Outcome] = []
        while calls and calls[0].fn is not None and not calls[0].writes:
            call = calls.popleft()
            try:
                outcomes.append((call, self._patiently(lambda c=call: self._call(self._connect(), c)), None))
            except Exception as exc:
                outcomes.append((call, None, self._failure(exc)))
        return outcomes

    # --- the write lock, taken in turn -----------------------------------------------
    # With two workers (or gateways) on one file, SQLite's own busy handler let the
    # process that had just committed take the lock again, over and over, while the
    # other slept 1, 2, 5, 10... ms between tries: `--workers auto` metered slower
    # than one worker (issue 16).  Here a process that finds the lock taken first
    # takes the turnstile, a flock on "<file>-turn", and keeps it while it tries
    # (every 50 us, backing off to 0.5 ms); every process passes the turnstile
    # before it asks for the lock, so the one that just committed waits behind the
    # one already waiting.  Uncontended, that costs two flock calls a transaction.

    _FIRST_PAUSE = 50e-6
    _LAST_PAUSE = 0.0005

    def _begin(self, db: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE, in turn with the other processes, up to busy_timeout."""
        deadline = time.monotonic() + self._busy_ms / 1000
        turn = self._turn
        if turn is not None:
            self._patiently(self._take_turn, deadline)
        try:
            self._patiently(lambda: db.execute("BEGIN IMMEDIATE"), deadline)
        finally:
            if turn is not None:
                fcntl.flock(turn, fcntl.LOCK_UN)

    def _take_turn(self) -> None:
        """The turnstile, or busy (as SQLite says it) while another process holds it."""
        try:
            fcntl.flock(self._turn, fcntl.LOCK_EX | fcntl.LOCK_NB)  # type: ignore[arg-type]
        except BlockingIOError as exc:
            raise sqlite3.OperationalError("database is locked (turnstile)") from exc
        except OSError as exc:
            raise sqlite3.OperationalError(f"turnstile: {exc}") from exc

    def _patiently(self, fn: Callable[[], T], deadline: float | None = None) -> T:
        """``fn`` tried again while SQLite answers busy (another process's lock, WAL
        recovery after a crash, a writer in exclusive mode), every 50 us backing off
        to 0.5 ms, up to ``deadline`` (busy_timeout from now by default)."""
        if deadline is None:
            deadline = time.monotonic() + self._busy_ms / 1000
        pause = self._FIRST_PAUSE
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not _busy(exc) or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)  # in the store's own thread, never on the event loop
            pause = min(pause * 2, self._LAST_PAUSE)

    def _run_writes(self, calls: deque[_Call]) -> list[_Outcome]:
        """One BEGIN IMMEDIATE ... COMMIT over the calls at the head of the queue."""
        try:
            db = self._connect()
            self._begin(db)
        except sqlite3.Error as exc:  # e.g. locked past busy_timeout: so is every queued call
            failed = self._unavailable(exc)
            outcomes = []
            while calls and calls[0].fn is not None:
                outcomes.append((calls.popleft(), None, failed))
            return outcomes
        return self._batch(db, calls)

    def _batch(self, db: sqlite3.Connection, calls: deque[_Call],
               budget: _Budget | None = None) -> list[_Outcome]:
        """The calls at the head of ``calls``, in the transaction just begun, each in its
        own savepoint, then COMMIT.  A call alone needs no savepoint: the transaction
        is its own (two statements fewer, and a call is often alone on the loop).
        With a ``budget`` spent, nothing is committed and every call taken goes back
        to the head of ``calls`` (_OverBudget)."""
        outcomes: list[_Outcome] = []
        started = time.monotonic()
        call: _Call | None = None  # taken from ``calls``, its outcome not yet known
        try:
            if len(calls) == 1 and calls[0].fn is not None:
                call = calls.popleft()
                try:
                    result = self._call(db, call)
                except Exception as exc:
                    self._within(db, budget, calls, outcomes, call)
                    outcomes.append((call, None, self._failure(exc)))
                    call = None
                    db.execute("ROLLBACK")
                    return outcomes
                outcomes.append((call, result, None))
                call = None
            while (calls and calls[0].fn is not None and len(outcomes) < _BATCH_CALLS
                   and time.monotonic() - started < _BATCH_SECONDS):
                call = calls.popleft()
                db.execute("SAVEPOINT call")
                try:
                    result = self._call(db, call)
                except Exception as exc:
                    self._within(db, budget, calls, outcomes, call)
                    # ROLLBACK TO keeps the transaction and the calls before this one.
                    db.execute("ROLLBACK TO call")
                    db.execute("RELEASE call")
                    outcomes.append((call, None, self._failure(exc)))
                    call = None
                    continue
                db.execute("RELEASE call")
                outcomes.append((call, result, None))
                call = None
            if budget is not None:
                db.set_progress_handler(None, 0)  # a COMMIT is never interrupted
                self._within(db, budget, calls, outcomes, None)
            db.execute("COMMIT")
        except sqlite3.Error as exc:  # the transaction itself failed: nothing in it happened
            self._within(db, budget, calls, outcomes, call)  # unless it ran out of time
            if db.in_transaction:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            failed = self._unavailable(exc)
            outcomes = [(c, None, e if e is not None else failed) for c, _, e in outcomes]
            if call is not None:  # caught between its SAVEPOINT and its outcome: it hears too
                outcomes.append((call, None, failed))
        return outcomes

    @staticmethod
    def _within(db: sqlite3.Connection, budget: _Budget | None, calls: deque[_Call],
                outcomes: list[_Outcome], call: _Call | None) -> None:
        """Raise _OverBudget, with the batch rolled back and its calls put back in
        order, if the budget is spent (the call that failed may have failed of it)."""
        if budget is None or not budget.spent:
            return
        db.set_progress_handler(None, 0)  # else the ROLLBACK would be interrupted too
        if db.in_transaction:  # an interrupted write rolls the transaction back itself
            db.execute("ROLLBACK")
        taken = [c for c, _, _ in outcomes] + ([call] if call is not None else [])
        calls.extendleft(reversed(taken))
        raise _OverBudget(f"a write batch ran past {_LOOP_BUDGET * 1000:g} ms on the event loop")

    @staticmethod
    def _write(db: sqlite3.Connection, sql: str, args: Sequence | list[tuple]) -> None:
        """One statement whose rows nobody reads; its cursor is closed here, within
        the call (a list of tuples runs the statement once per tuple)."""
        if isinstance(args, list):
            db.executemany(sql, args).close()
        else:
            db.execute(sql, args).close()

    # --- limits ----------------------------------------------------------------
    # Counters keep a running total (table `totals`) so a check reads one row, not
    # the whole window: rows leave the total when they slide out or their lease ends,
    # oldest first through the (key, ts) index.  Distinct-member limits keep one row
    # per live member (table `members`), so their count is one indexed COUNT.
    #
    # Each totals row also keeps two lower bounds: `oldest` (no row of the key is
    # older) and `lease_end` (no lease of the key ends sooner).  While the window's
    # start is before `oldest` and `now` before `lease_end`, nothing of the key can
    # have expired and the total is exact as it stands: the check is one SELECT for
    # every key of the request, with nothing to prune (issue 16: the pruning scans
    # were most of the metering's ~117 statements a message).  Inserts keep the
    # bounds with MIN(); deletes and commits only make them lower than they need be;
    # NULL (a file from before the bounds) means "unknown", and prunes.

    @staticmethod
    def _remove(db: sqlite3.Connection, where: str, args: tuple) -> None:
        """Delete rows and take them off the running totals and member counts."""
        rows = db.execute(f"DELETE FROM charges WHERE {where} RETURNING key, member, amount", args).fetchall()
        if not rows:
            return
        totals: dict[str, int] = {}
        members: dict[tuple[str, str], int] = {}
        for key, member, amount in rows:
            totals[key] = totals.get(key, 0) + amount
            if member is not None:
                members[(key, member)] = members.get((key, member), 0) + 1
        for (key, member), count in members.items():
            db.execute("UPDATE members SET n = n - ? WHERE key = ? AND member = ?", (count, key, member))
            db.execute("DELETE FROM members WHERE key = ? AND member = ? AND n <= 0", (key, member))
        db.executemany("UPDATE totals SET total = total - ? WHERE key = ?",
                       [(n, k) for k, n in totals.items()])

    @classmethod
    def _prune(cls, db: sqlite3.Connection, key: str, window: float, now: float) -> int:
        """Drop the key's rows that can never count again, set its bounds afresh and
        return its total."""
        # Two indexed range deletes: by (key, ts) and by (key, lease_until).
        cls._remove(db, "key = ? AND ts <= ?", (key, now - window))
        cls._remove(db, "key = ? AND lease_until <= ?", (key, now))
        row = db.execute(
            "UPDATE totals SET "
            "oldest = COALESCE((SELECT MIN(ts) FROM charges WHERE key = ?1), ?2), "
            "lease_end = COALESCE((SELECT MIN(lease_until) FROM charges "
            "WHERE key = ?1 AND lease_until IS NOT NULL), ?2) "
            "WHERE key = ?1 RETURNING total", (key, _NEVER)).fetchone()
        return row[0] if row else 0

    @classmethod
    def _live_totals(cls, db: sqlite3.Connection, charges: Sequence[Charge], now: float) -> dict[str, int]:
        """Every key's live total at ``now`` (pruning the keys that need it), in one
        SELECT when nothing has expired."""
        windows = {c.key: c.window for c in charges}
        keys = list(windows)
        marks = ",".join("?" * len(keys))
        found = {k: (t, o, e) for k, t, o, e in db.execute(
            f"SELECT key, total, oldest, lease_end FROM totals WHERE key IN ({marks})", keys)}
        live: dict[str, int] = {}
        for key in keys:
            if key not in found:
                live[key] = 0  # a key without a totals row has no rows (both are written together)
                continue
            total, oldest, lease_end = found[key]
            if (oldest is None or lease_end is None or oldest <= now - windows[key]
                    or lease_end <= now):
                total = cls._prune(db, key, windows[key], now)
            live[key] = total
        return live

    @staticmethod
    def _members(db: sqlite3.Connection, c: Charge) -> tuple[int, bool]:
        """(distinct live members, is ``c.member`` one of them) of a pruned key."""
        count, seen = db.execute("SELECT COUNT(*), COALESCE(MAX(member = ?), 0) FROM members WHERE key = ?",
                                 (c.member, c.key)).fetchone()
        return count, bool(seen)

    @staticmethod
    def _used(db: sqlite3.Connection, c: Charge, now: float) -> int:
        """The live usage, read without pruning (no write lock held)."""
        row = db.execute("SELECT total, oldest, lease_end FROM totals WHERE key = ?", (c.key,)).fetchone()
        if row is None:
            return 0
        total, oldest, lease_end = row
        fresh = (oldest is not None and lease_end is not None and oldest > now - c.window
                 and lease_end > now)
        if c.member is not None:
            if fresh:  # nothing expired: the member table is exact
                return db.execute("SELECT COUNT(*) FROM members WHERE key = ?", (c.key,)).fetchone()[0]
            return db.execute(f"SELECT COUNT(DISTINCT member) FROM charges WHERE {_LIVE}",
                              (c.key, now - c.window, now)).fetchone()[0]
        if fresh:
            return total
        # Rows not pruned yet are taken off here.
        (stale,) = db.execute(
            "SELECT COALESCE(SUM(amount), 0) FROM charges WHERE key = ? AND (ts <= ? OR lease_until <= ?)",
            (c.key, now - c.window, now)).fetchone()
        return total - stale

    @staticmethod
    def _retry_after(db: sqlite3.Connection, c: Charge, used: int, now: float) -> float | None:
        """When the refused charge ``c`` would fit, from the live rows."""
        if c.member is not None:
            if c.limit is not None and c.limit < 1:
                return None
            # One distinct member must slide out entirely: the one seen least recently.
            (oldest,) = db.execute(
                f"SELECT MIN(last) FROM (SELECT MAX(ts) AS last FROM charges WHERE {_LIVE} GROUP BY member)",
                (c.key, now - c.window, now)).fetchone()
            return max(0.0, oldest + c.window - now)
        rows = db.execute(f"SELECT ts, amount FROM charges WHERE {_LIVE} ORDER BY ts",
                          (c.key, now - c.window, now)).fetchall()
        return retry_after_for(rows, used, c.amount, c.limit, c.window, now)  # type: ignore[arg-type]

    @classmethod
    def _charge_in(cls, db: sqlite3.Connection, charges: Sequence[Charge], now: float,
                   lease: float) -> ChargeResult:
        """Check every charge, then charge them all, or none if one does not fit."""
        used: list[int] = []
        live = cls._live_totals(db, charges, now)
        for c in charges:
            if c.member is not None:
                n, seen = cls._members(db, c)
                fits = c.limit is None or seen or n + 1 <= c.limit
            else:
                n = live[c.key]
                fits = c.limit is None or n + c.amount <= c.limit
            used.append(n)
            if not fits:
                return ChargeResult(False, tuple(used), c, cls._retry_after(db, c, n, now))
        rows, totals, members = [], [], []
        for c in charges:
            amount = 1 if c.member is not None else c.amount
            until = now + lease if c.hold is not None else None
            rows.append((c.key, now, amount, c.member, c.hold, until))
            totals.append((c.key, amount, now, _NEVER if until is None else until, c.window))
            if c.member is not None:
                members.append((c.key, c.member))
        # One statement for the rows, one for their totals (_insert_rows): each
        # statement is a Python call more, and these were ten of a message's ~30.
        _insert_rows(db, "INSERT INTO charges (key, ts, amount, member, hold, lease_until) VALUES ",
                     rows)
        # min() of NULL is NULL: an unknown bound stays unknown until the next prune.
        # (A key twice in the request: its second row updates the first's.)
        _insert_rows(db, "INSERT INTO totals (key, total, oldest, lease_end, span) VALUES ", totals,
                     " ON CONFLICT (key) DO UPDATE SET total = total + excluded.total, "
                     "oldest = min(oldest, excluded.oldest), "
                     "lease_end = min(lease_end, excluded.lease_end), span = excluded.span")
        if members:
            db.executemany("INSERT INTO members (key, member, n) VALUES (?, ?, 1) "
                           "ON CONFLICT (key, member) DO UPDATE SET n = n + 1", members)
        return ChargeResult(True, tuple(used))

    @classmethod
    def _read_in(cls, db: sqlite3.Connection, charges: Sequence[Charge], now: float) -> tuple[int, ...]:
        """Live usage of counters inside a write transaction: pruned, so exact and cheap."""
        if not charges:
            return ()
        live = cls._live_totals(db, charges, now)
        return tuple(cls._members(db, c)[0] if c.member is not None else live[c.key] for c in charges)

    async def charge(self, charges: Sequence[Charge], now: float, lease: float = 900.0) -> ChargeResult:
        return await self._run(lambda db: self._charge_in(db, charges, now, lease))

    @classmethod
    def _drop_holds(cls, db: sqlite3.Connection, holds: list[str], extra: str, args: tuple) -> None:
        if holds:
            marks = ",".join("?" * len(holds))
            cls._remove(db, f"hold IN ({marks}) {extra}", (*holds, *args))

    @classmethod
    def _commit_in(cls, db: sqlite3.Connection, ids: list[str], now: float) -> None:
        # Only the holds still live become charges.  A lease that already ran out stays
        # out (its room may have been given away): its rows count no more, and leave
        # with the next prune of their key, as any expired lease's (its totals row's
        # lease_end is already at or before it).  One statement, not a DELETE first.
        if ids:
            marks = ",".join("?" * len(ids))
            db.execute(f"UPDATE charges SET lease_until = NULL, hold = NULL WHERE hold IN ({marks}) "
                       "AND lease_until > ?", (*ids, now)).close()

    async def commit(self, holds: Iterable[str], now: float) -> None:
        ids = list(holds)
        await self._run(lambda db: self._commit_in(db, ids, now))

    async def release(self, holds: Iterable[str], now: float) -> None:
        ids = list(holds)
        await self._run(lambda db: self._drop_holds(db, ids, "", ()))

    async def usage(self, charges: Sequence[Charge], now: float) -> tuple[int, ...]:
        return await self._run(lambda db: tuple(self._used(db, c, now) for c in charges), writes=False)

    @staticmethod
    def _take_slot_in(db: sqlite3.Connection, key: str, lease_id: str, limit: int | None, now: float,
                      ttl: float) -> bool:
        """The slot ``lease_id`` of ``key`` taken or renewed until now + ``ttl``; refused
        at ``limit`` live slots (None: no limit) unless it already has one."""
        db.execute("DELETE FROM slots WHERE key = ? AND until <= ?", (key, now))
        if limit is not None:
            mine = db.execute("SELECT 1 FROM slots WHERE key = ? AND lease_id = ?", (key, lease_id)).fetchone()
            if not mine:
                (count,) = db.execute("SELECT COUNT(*) FROM slots WHERE key = ?", (key,)).fetchone()
                if count >= limit:
                    return False
        db.execute("INSERT OR REPLACE INTO slots (key, lease_id, until) VALUES (?,?,?)",
                   (key, lease_id, now + ttl))
        return True

    async def acquire_slot(self, key: str, lease_id: str, limit: int | None, now: float, ttl: float) -> bool:
        return await self._run(lambda db: self._take_slot_in(db, key, lease_id, limit, now, ttl))

    async def release_slot(self, key: str, lease_id: str) -> None:
        await self._run(lambda db: self._write(
            db, "DELETE FROM slots WHERE key = ? AND lease_id = ?", (key, lease_id)))

    async def slots_in_use(self, key: str, now: float) -> int:
        return await self._run(lambda db: db.execute(
            "SELECT COUNT(*) FROM slots WHERE key = ? AND until > ?", (key, now)).fetchone()[0], writes=False)

    # --- failed logins and lockouts -------------------------------------------
    async def reserve_attempt(self, limits: Sequence[tuple[str, int]], attempt: str, window: float,
                              now: float) -> AttemptReservation:
        keys = [key for key, _ in limits]

        def body(db: sqlite3.Connection) -> AttemptReservation:
            marks = ",".join("?" * len(keys))
            (locked,) = db.execute(f"SELECT MAX(until) FROM locks WHERE key IN ({marks}) AND until > ?",
                                   (*keys, now)).fetchone()
            counts: list[int] = []
            full: float | None = None
            for key, limit in limits:
                db.execute("DELETE FROM failures WHERE key = ? AND ts <= ?", (key, now - window))
                (n,) = db.execute("SELECT COUNT(*) FROM failures WHERE key = ?", (key,)).fetchone()
                counts.append(n)
                if n >= limit:
                    # One more fits once the (n - limit + 1) oldest entries have left the window.
                    row = db.execute("SELECT ts FROM failures WHERE key = ? ORDER BY ts LIMIT 1 OFFSET ?",
                                     (key, n - limit)).fetchone()
                    ends = row[0] + window if row else now + window
                    full = ends if full is None else max(full, ends)
            if locked is not None or full is not None:
                return AttemptReservation(False, tuple(counts), locked, full)
            db.executemany("INSERT INTO failures (key, ts, attempt) VALUES (?, ?, ?)",
                           [(key, now, attempt) for key in keys])
            return AttemptReservation(True, tuple(n + 1 for n in counts))

        return await self._run(lambda db: body(db))

    async def fail_attempt(self, attempt: str, keys: Sequence[str]) -> None:
        await self._run(lambda db: self._write(
            db, "UPDATE failures SET attempt = NULL WHERE attempt = ?", (attempt,)))

    async def give_back_attempt(self, attempt: str, keys: Sequence[str]) -> None:
        await self._run(lambda db: self._write(db, "DELETE FROM failures WHERE attempt = ?", (attempt,)))

    async def lock(self, key: str, until: float, now: float) -> None:
        await self._run(lambda db: self._write(
            db, "INSERT INTO locks (key, until) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET until = MAX(until, excluded.until)", (key, until)))

    async def locked_until(self, keys: Sequence[str], now: float) -> float | None:
        if not keys:
            return None
        marks = ",".join("?" * len(keys))
        return await self._run(lambda db: db.execute(
            f"SELECT MAX(until) FROM locks WHERE key IN ({marks}) AND until > ?", (*keys, now)).fetchone()[0],
            writes=False)

    # --- suspensions -------------------------------------------------------------
    async def suspend(self, suspension: Suspension) -> bool:
        s = suspension
        return await self._run(lambda db: db.execute(
            "INSERT OR IGNORE INTO suspensions (login, since, reason, evidence) VALUES (?,?,?,?)",
            (s.login, s.since, s.reason, json.dumps(dict(s.evidence), sort_keys=True))).rowcount == 1)

    async def unsuspend(self, login: str) -> bool:
        return await self._run(lambda db: db.execute(
            "DELETE FROM suspensions WHERE login = ?", (login,)).rowcount == 1)

    async def suspension(self, login: str) -> Suspension | None:
        row = await self._run(lambda db: db.execute(
            "SELECT login, since, reason, evidence FROM suspensions WHERE login = ?", (login,)).fetchone(),
            writes=False)
        return None if row is None else Suspension(row[0], row[1], row[2], json.loads(row[3]))

    async def suspensions(self) -> list[Suspension]:
        rows = await self._run(lambda db: db.execute(
            "SELECT login, since, reason, evidence FROM suspensions ORDER BY login").fetchall(), writes=False)
        return [Suspension(r[0], r[1], r[2], json.loads(r[3])) for r in rows]

    # --- events --------------------------------------------------------------------
    async def log_event(self, event: Event) -> None:
        await self._run(lambda db: self._write(
            db, "INSERT INTO events (ts, kind, subject, data) VALUES (?,?,?,?)",
            (event.ts, event.kind, event.subject, json.dumps(dict(event.data), sort_keys=True))))

    async def events(self, subject: str | None = None, limit: int = 100) -> list[Event]:
        if subject is None:
            sql, args = "SELECT ts, kind, subject, data FROM events ORDER BY id DESC LIMIT ?", (limit,)
        else:
            sql = "SELECT ts, kind, subject, data FROM events WHERE subject = ? ORDER BY id DESC LIMIT ?"
            args = (subject, limit)
        rows = await self._run(lambda db: db.execute(sql, args).fetchall(), writes=False)
        return [Event(r[0], r[1], r[2], json.loads(r[3])) for r in rows]

    # --- the decision journal -----------------------------------------------------------
    async def journal_add(self, entries: Sequence[JournalEntry], max_entries: int, max_age: float) -> None:
        if not entries:
            return
        rows = [(e.id, e.cid, e.ts, e.kind, json.dumps(dict(e.record), sort_keys=True, default=str))
                for e in entries]
        newest = max(e.ts for e in entries)

        def write(db: sqlite3.Connection) -> None:
            self._write(db, "INSERT INTO journal (id, cid, ts, kind, record) VALUES (?,?,?,?,?)", rows)
            (seq,) = db.execute("SELECT MAX(seq) FROM journal").fetchone()
            # Rows only ever leave from the old end, so seq - max_entries is the count bound.
            self._write(db, "DELETE FROM journal WHERE seq <= ? OR ts <= ?",
                        (seq - max_entries, newest - max_age))

        await self._run(lambda db: write(db))

    async def journal_find(self, key: str) -> list[JournalEntry]:
        rows = await self._run(lambda db: db.execute(
            "SELECT id, cid, ts, kind, record FROM journal WHERE id = ? OR cid = ? ORDER BY ts, seq",
            (key, key)).fetchall(), writes=False)
        return [JournalEntry(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]

    # --- series ----------------------------------------------------------------------
    @staticmethod
    def _add_series_in(db: sqlite3.Connection, adds: Sequence[SeriesAdd], now: float) -> None:
        """Each add to its bucket and its running sum (series_sums covers the buckets
        from its floor on: what enters there enters it), in two statements for all (a
        message adds to two series) when their keys differ, else one add at a time."""
        if len({a.key for a in adds}) < len(adds):
            for add in adds:
                SQLiteStore._add_series_in(db, (add,), now)
            return
        if not adds:
            return
        starts = [int(now // a.bucket) * a.bucket for a in adds]
        found = dict(db.execute(
            "INSERT INTO series (key, bucket, amount, expires) VALUES "
            + ",".join(("(?,?,?,?)",) * len(adds))
            + " ON CONFLICT (key, bucket) DO UPDATE SET amount = amount + excluded.amount "
            "RETURNING key, amount",
            [v for a, start in zip(adds, starts, strict=True)
             for v in (a.key, start, a.amount, start + a.bucket + a.retention)]).fetchall())
        moved = [(a, start) for a, start in zip(adds, starts, strict=True) if a.amount]
        if moved:
            db.execute("UPDATE series_sums SET total = total + CASE key "
                       + " ".join(("WHEN ? THEN ?",) * len(moved)) + " END WHERE "
                       + " OR ".join(("(key = ? AND floor <= ?)",) * len(moved)),
                       [*(v for a, _ in moved for v in (a.key, a.amount)),
                        *(v for a, start in moved for v in (a.key, start))]).close()
        for add in adds:
            if found[add.key] == add.amount:
                SQLiteStore._new_bucket(db, add, now)

    @staticmethod
    def _new_bucket(db: sqlite3.Connection, add: SeriesAdd, now: float) -> None:
        key = add.key
        # A new bucket (as Redis's series_add, once a bucket, not per add): buckets
        # past retention go.  A bucket expires at start + bucket + retention: the
        # expired ones are the oldest, one range of the (key, bucket) key, with a
        # bucket to spare for rounding (expires decides); what leaves from the
        # floor on leaves the running sum.
        SQLiteStore._off_running_sums(db, db.execute(
            "DELETE FROM series WHERE key = ? AND bucket <= ? AND expires <= ? RETURNING key, bucket, amount",
            (key, now - add.retention, now)).fetchall())

    @staticmethod
    def _off_running_sums(db: sqlite3.Connection, gone: list[tuple]) -> None:
        """Buckets deleted (key, bucket, amount) leave their running sums, each from
        the sum whose floor is at or before it."""
        if gone:
            db.executemany("UPDATE series_sums SET total = total - ? WHERE key = ? AND floor <= ?",
                           [(amount, key, bucket) for key, bucket, amount in gone])

    @staticmethod
    def _sums_series_in(db: sqlite3.Connection, sums: Sequence[SeriesSum]) -> tuple[int, ...]:
        """Each sum: the buckets starting in [since, until], from the running sum, its
        floor moved to ``since`` over the few buckets in between, less the buckets
        after ``until``.  The running sums are read in one statement (a step reads
        three) when their keys differ, else one sum at a time (one moves another's
        floor).

        Buckets start at multiples of ``s.bucket``, so ``since`` is taken up to the
        first bucket start at or after it: the same buckets, and a floor that moves
        once a bucket, not with every call."""
        if len({s.key for s in sums}) < len(sums):
            return tuple(SQLiteStore._sums_series_in(db, (s,))[0] for s in sums)
        if not sums:
            return ()
        found = db.execute(
            "WITH q(i, key, until) AS (VALUES " + ",".join(("(?,?,?)",) * len(sums)) + ") "
            "SELECT q.i, t.floor, t.total, (SELECT COALESCE(SUM(amount), 0) FROM series "
            "WHERE key = q.key AND bucket > q.until) FROM q JOIN series_sums t ON t.key = q.key",
            [v for i, s in enumerate(sums) for v in (i, s.key, s.until)]).fetchall()
        rows: dict[int, tuple] = {i: (floor, total, above) for i, floor, total, above in found}
        return tuple(SQLiteStore._sum_series_from(db, s, rows.get(i)) for i, s in enumerate(sums))

    @staticmethod
    def _sum_series_from(db: sqlite3.Connection, s: SeriesSum, row: tuple | None) -> int:
        """The sum, from its running sum's row as read (floor, total, what is above
        ``until``), or None: it has none yet."""
        def between(lo: float, hi: float) -> int:
            return db.execute("SELECT COALESCE(SUM(amount), 0) FROM series "
                              "WHERE key = ? AND bucket >= ? AND bucket < ?", (s.key, lo, hi)).fetchone()[0]

        since = _bucket_at_or_after(s.since, s.bucket)
        if row is None:
            (total,) = db.execute("SELECT COALESCE(SUM(amount), 0) FROM series WHERE key = ? AND bucket >= ?",
                                  (s.key, since)).fetchone()
            db.execute("INSERT INTO series_sums (key, floor, total) VALUES (?, ?, ?)", (s.key, since, total))
            (above,) = db.execute("SELECT COALESCE(SUM(amount), 0) FROM series WHERE key = ? AND bucket > ?",
                                  (s.key, s.until)).fetchone()
            return total - above
        floor, total, above = row
        if since != floor:
            total += between(since, floor) if since < floor else -between(floor, since)
            db.execute("UPDATE series_sums SET floor = ?, total = ? WHERE key = ?", (since, total, s.key))
        return total - above

    async def add_to_series(self, key: str, amount: int, now: float, bucket: int = 3600,
                            retention: float = 31 * 86400) -> None:
        add = SeriesAdd(key, amount, bucket, retention)
        await self._run(lambda db: self._add_series_in(db, (add,), now))

    async def read_series(self, key: str, since: float, now: float, bucket: int = 3600) -> int:
        return await self._run(lambda db: db.execute(
            "SELECT COALESCE(SUM(amount), 0) FROM series WHERE key = ? AND bucket >= ? AND bucket <= ?",
            (key, since, now)).fetchone()[0], writes=False)

    # --- one round trip per SMTP step ----------------------------------------------------
    @classmethod
    def _begin_in(cls, db: sqlite3.Connection, begin: MessageBegin, now: float) -> Suspension | None:
        row = db.execute("SELECT login, since, reason, evidence FROM suspensions WHERE login = ?",
                         (begin.login,)).fetchone()
        if begin.lease_id is not None:
            cls._take_slot_in(db, begin.slot_key, begin.lease_id, None, now, begin.ttl)
        return None if row is None else Suspension(row[0], row[1], row[2], json.loads(row[3]))

    @classmethod
    def _meter_in(cls, db: sqlite3.Connection, step: MeterStep, now: float) -> MeterResult:
        if step.begin is not None:
            suspension = cls._begin_in(db, step.begin, now)
            if suspension is not None:
                return MeterResult(ChargeResult(False, ()), suspension=suspension)
        if step.settle:
            if step.commit:
                cls._commit_in(db, list(step.settle), now)
            else:
                cls._drop_holds(db, list(step.settle), "", ())
        charged = ChargeResult(True, ())
        if step.charges:
            charged = cls._charge_in(db, step.charges, now, step.lease)
            if not charged.accepted and step.if_refused:
                cls._charge_in(db, step.if_refused, now, step.lease)
        if step.counts:  # unlimited, but measured all the same: that prunes what expired
            cls._charge_in(db, step.counts, now, 900.0)
        cls._add_series_in(db, step.series, now)
        if step.read_when_refused and charged.accepted:
            return MeterResult(charged)
        return MeterResult(charged, cls._read_in(db, step.read, now),
                           cls._sums_series_in(db, step.sums))

    async def meter(self, step: MeterStep, now: float) -> MeterResult:
        # One BEGIN IMMEDIATE transaction, one hop to the store's thread.
        return await self._run(lambda db: self._meter_in(db, step, now))

    # --- the sweep ---------------------------------------------------------------------
    # A key is pruned when it is charged or read; a key that never is again (a deleted
    # account, a customer aggregate limit taken away, a complaint's once-only key, an
    # address that guessed passwords once) would keep its rows for good.  Redis
    # expires such keys itself; here the sweep takes them out, a slice at a time.

    @staticmethod
    def _next_keys(db: sqlite3.Connection, table: str, batch: int, swept: dict[str, str]) -> list[str]:
        """The next ``batch`` distinct keys of ``table`` after ``swept``'s (which moves
        on to the last of them), each one seek of the index its key leads; from the
        first key again after the last."""
        after = swept.get(table, "")
        keys = [k for (k,) in db.execute(
            f"WITH RECURSIVE k(key, n) AS ("
            f"SELECT (SELECT key FROM {table} WHERE key > ?1 ORDER BY key LIMIT 1), 1 UNION ALL "
            f"SELECT (SELECT key FROM {table} WHERE key > k.key ORDER BY key LIMIT 1), n + 1 "
            f"FROM k WHERE k.key IS NOT NULL AND n < ?2) "
            f"SELECT key FROM k WHERE key IS NOT NULL", (after, batch))]
        swept[table] = keys[-1] if len(keys) == batch else ""
        return keys

    def _sweep_in(self, db: sqlite3.Connection, now: float, failure_window: float,
                  batch: int) -> tuple[int, dict[str, str]]:
        """The rows removed, and where the next sweep goes on from: kept by ``sweep``
        once this has committed, so a run rolled back (a batch over its time on the
        loop, run again by the thread; a failed transaction) skips no keys."""
        removed = 0
        swept = dict(self._swept)

        def gone(sql: str, keys: list[str], *args: object) -> list[tuple]:
            marks = ",".join("?" * len(keys))
            return db.execute(sql.format(keys=marks), (*keys, *args)).fetchall() if keys else []

        # Counters: a key none of whose charges is inside its window any more.
        keys = self._next_keys(db, "totals", batch, swept)
        dead = [k for (k,) in gone(
            "SELECT key FROM totals t WHERE key IN ({keys}) AND span IS NOT NULL AND "
            "COALESCE((SELECT MAX(ts) FROM charges c WHERE c.key = t.key), -1e300) <= ? - span",
            keys, now - SWEEP_MARGIN)]
        if dead:
            removed += len(gone("DELETE FROM charges WHERE key IN ({keys}) RETURNING 1", dead))
            gone("DELETE FROM members WHERE key IN ({keys})", dead)
            gone("DELETE FROM totals WHERE key IN ({keys})", dead)
        # Series: buckets past their retention, off their running sums; a running sum
        # with no bucket left is 0 whether it is there or not.
        out = gone("DELETE FROM series WHERE key IN ({keys}) AND expires <= ? RETURNING key, bucket, amount",
                   self._next_keys(db, "series", batch, swept), now - SWEEP_MARGIN)
        removed += len(out)
        self._off_running_sums(db, out)
        removed += len(gone("DELETE FROM series_sums WHERE key IN ({keys}) AND NOT EXISTS "
                            "(SELECT 1 FROM series s WHERE s.key = series_sums.key) RETURNING 1",
                            self._next_keys(db, "series_sums", batch, swept)))
        # Failed logins out of the window, locks and session slots that ran out.
        removed += len(gone("DELETE FROM failures WHERE key IN ({keys}) AND ts <= ? RETURNING 1",
                            self._next_keys(db, "failures", batch, swept),
                            now - failure_window - SWEEP_MARGIN))
        for table in ("locks", "slots"):
            removed += len(gone(f"DELETE FROM {table} WHERE key IN ({{keys}}) AND until <= ? RETURNING 1",
                                self._next_keys(db, table, batch, swept), now - SWEEP_MARGIN))
        return removed, swept

    async def sweep(self, now: float, failure_window: float) -> int:
        removed, self._swept = await self._run(lambda db: self._sweep_in(db, now, failure_window, SWEEP_BATCH))
        return removed

    async def close(self) -> None:
        """Stop taking calls; the ones already queued run (and commit) first."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._worker is None:
                return
            for call in self._pending:  # made before close(): they run first
                self._queue.put(call)
            self._pending = []
            self._queue.put(_Call(None, True, loop, done))
        await done

    # --- DMARC aggregate report counts ----------------------------------------------------
    async def dmarc_add(self, counts: Sequence[tuple[int, str, str, int]]) -> None:
        if not counts:
            return
        rows = [(p, d, r, n) for p, d, r, n in counts]
        expired = min(p for p, _, _, _ in counts) - RETENTION

        def write(db: sqlite3.Connection) -> None:
            # An upsert: every process on the host adds to the same row.
            self._write(db, "INSERT INTO dmarc_counts (period, domain, row, n) "
                        "VALUES (?,?,?,?) ON CONFLICT (period, domain, row) DO UPDATE SET n = n + excluded.n",
                        rows)
            # The primary key leads with period: a range delete, usually of nothing.
            self._write(db, "DELETE FROM dmarc_counts WHERE period < ?", (expired,))

        await self._run(write)

    async def dmarc_periods(self, before: int) -> list[tuple[int, str]]:
        rows = await self._run(lambda db: db.execute(
            "SELECT DISTINCT period, domain FROM dmarc_counts WHERE period < ? ORDER BY period, domain",
            (before,)).fetchall(), writes=False)
        return [(int(p), str(d)) for p, d in rows]

    async def dmarc_take(self, period: int, domain: str, now: float) -> str | None:
        def body(db: sqlite3.Connection) -> str | None:
            rows = db.execute("SELECT row, n FROM dmarc_counts WHERE period = ? AND domain = ? ORDER BY row",
                              (period, domain)).fetchall()
            if not rows:
                return None
            (seq,) = db.execute("SELECT COUNT(*) FROM dmarc_reports WHERE period = ? AND domain = ?",
                                (period, domain)).fetchone()
            rid = report_id(period, seq, domain)
            self._write(db, "INSERT INTO dmarc_reports (id, period, domain, seq, rows, state, claimed) "
                        "VALUES (?,?,?,?,?, 'taken', 0)", (rid, period, domain, seq, json.dumps(rows)))
            self._write(db, "DELETE FROM dmarc_counts WHERE period = ? AND domain = ?", (period, domain))
            return rid

        return await self._run(body)

    async def dmarc_unsent(self) -> list[TakenReport]:
        rows = await self._run(lambda db: db.execute(
            "SELECT id, period, domain, seq, rows, state, claimed FROM dmarc_reports "
            "WHERE finished IS NULL ORDER BY period, domain, seq").fetchall(), writes=False)
        return [TakenReport(r[0], r[1], r[2], r[3], tuple((k, n) for k, n in json.loads(r[4])), r[5], r[6])
                for r in rows]

    async def dmarc_claim(self, report_id: str, now: float, stale: float) -> bool:
        def body(db: sqlite3.Connection) -> bool:
            cur = db.execute("UPDATE dmarc_reports SET state = 'sending', claimed = ? WHERE id = ? AND "
                             "finished IS NULL AND (state = 'taken' OR claimed <= ?)",
                             (now, report_id, now - stale))
            changed = cur.rowcount
            cur.close()
            return changed == 1

        return await self._run(body)

    async def dmarc_release(self, report_id: str) -> None:
        await self._run(lambda db: self._write(
            db, "UPDATE dmarc_reports SET state = 'taken', claimed = 0 "
            "WHERE id = ? AND finished IS NULL", (report_id,)))

    async def dmarc_finish(self, report_id: str, state: str, now: float, keep: float = 31 * 86400) -> None:
        def body(db: sqlite3.Connection) -> None:
            self._write(db, "UPDATE dmarc_reports SET state = ?, finished = ? WHERE id = ?",
                        (state, now, report_id))
            # Finished reports are kept a while (their seq numbers the follow-ups), then go.
            self._write(db, "DELETE FROM dmarc_reports WHERE finished IS NOT NULL AND finished < ?",
                        (now - keep,))

        await self._run(body)
