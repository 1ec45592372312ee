"""The SQLite store's log is checkpointed by a thread of its own, never inside a COMMIT
(gateway/store/wal_checkpoint.py: the automatic checkpoint put the store calls' p99
at 5-8 ms at half the peak submission rate)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

from gateway.store import wal_checkpoint
from gateway.store.base import Charge, Event
from gateway.store.sqlite import SQLiteStore


def checkpointers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "sqlite-checkpoint"]


def after_checkpoint(checkpointer: wal_checkpoint.Checkpointer, count: int, wal: Path) -> int:
    """The log's size once the checkpointer has run ``count`` times (10 s at most)."""
    deadline = time.monotonic() + 10
    while checkpointer.checkpoints < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return wal.stat().st_size


def test_commits_leave_the_log_to_the_checkpointer_which_keeps_it_bounded(tmp_path: Path):
    path = tmp_path / "state.db"
    wal = Path(f"{path}-wal")

    async def body() -> tuple[int, int, int, int, int]:
        store = SQLiteStore(path)
        try:
            autocheckpoint = await store._run(
                lambda db: db.execute("PRAGMA wal_autocheckpoint").fetchone()[0], writes=False)
            checkpointer = store._checkpointer
            assert checkpointer is not None
            payload = {"blob": "x" * 20_000}
            sizes = []
            # Twice: far more than 1000 pages of log (events with a large payload),
            # then a wait for the checkpointer.
            for phase in range(2):
                for i in range(300):
                    await store.log_event(Event(1.8e9 + i, "test", f"s{phase}.{i}", payload))
                sizes.append(await asyncio.to_thread(after_checkpoint, checkpointer, phase + 1, wal))
            seen = len(await store.events(limit=1000))
            return autocheckpoint, checkpointer.checkpoints, seen, *sizes
        finally:
            await store.close()

    autocheckpoint, checkpoints, seen, first, second = asyncio.run(body())
    assert autocheckpoint == 0  # no COMMIT checkpoints
    assert checkpoints >= 2
    assert seen == 600
    # Checkpointed, the log is written again from its start: the second phase's
    # 6 MB reuse the file instead of doubling it.
    assert first > wal_checkpoint.CHECKPOINT_BYTES and second < 1.5 * first, (first, second)
    assert not checkpointers()  # close() stopped it
    with sqlite3.connect(path) as db:  # everything is in the database file
        assert db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 600


def test_a_small_log_is_left_alone_and_close_stops_the_thread(tmp_path: Path):
    async def body() -> int:
        store = SQLiteStore(tmp_path / "state.db")
        try:
            await store.charge([Charge("k", 3600, None)], 1.8e9)
            await asyncio.sleep(wal_checkpoint.LOOK_EVERY * 3)
            assert store._checkpointer is not None and len(checkpointers()) == 1
            return store._checkpointer.checkpoints
        finally:
            await store.close()

    assert asyncio.run(body()) == 0
    assert not checkpointers()
