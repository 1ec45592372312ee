"""A new SQLite state file has small pages (gateway/store/sqlite.py: PAGE_SIZE, why);
a file an older version made with SQLite's default 4 KiB pages keeps them and works."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path

from gateway.store.base import Charge
from gateway.store.sqlite import PAGE_SIZE, SQLiteStore

T0 = 1.8e9


def page_size(path: Path) -> int:
    with closing(sqlite3.connect(path)) as db:
        return db.execute("PRAGMA page_size").fetchone()[0]


def charge_and_read(path: Path) -> tuple[bool, int]:
    async def body() -> tuple[bool, int]:
        store = SQLiteStore(path)
        try:
            found = await store.charge([Charge("messages:a", 3600, 5, 2)], T0)
            used = await store.usage([Charge("messages:a", 3600, 5)], T0 + 1)
            return found.accepted, used[0]
        finally:
            await store.close()

    return asyncio.run(body())


def test_a_new_state_file_has_small_pages(tmp_path: Path):
    path = tmp_path / "state.db"
    assert charge_and_read(path) == (True, 2)
    assert PAGE_SIZE == 1024
    assert page_size(path) == PAGE_SIZE


def test_a_file_with_the_default_pages_keeps_them_and_works(tmp_path: Path):
    path = tmp_path / "state.db"
    with closing(sqlite3.connect(path)) as db:  # as an older version left it: 4 KiB pages, WAL
        db.execute("PRAGMA page_size = 4096")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("CREATE TABLE older (x)")
    assert charge_and_read(path) == (True, 2)
    assert page_size(path) == 4096
    # Converted the way docs/quotas.md says, it has the small pages and its state.
    db = sqlite3.connect(path, isolation_level=None)
    for statement in ("PRAGMA journal_mode=DELETE", f"PRAGMA page_size={PAGE_SIZE}", "VACUUM",
                      "PRAGMA journal_mode=WAL"):
        db.execute(statement)
    db.close()
    assert page_size(path) == PAGE_SIZE
    assert charge_and_read(path) == (True, 4)
