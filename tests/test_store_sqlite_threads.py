"""Issue 14, defect 8a: the SQLite store under simultaneous calls, after a restart.

The first simultaneous successful AUTHs after a start with an existing state file
failed with ``sqlite3.InterfaceError: bad parameter or other API misuse`` in
``clear_failures`` (the client got 451 4.3.0).  Here: what each successful AUTH asks
of the store (reserve the attempt, give it back, take a session slot), many at once.  The store must answer every call,
every time, whatever runs at the same moment.
"""

from __future__ import annotations

import asyncio

from gateway.store.base import Event
from gateway.store.sqlite import SQLiteStore

T0 = 1_800_000_000.0
RESTARTS = 30
SESSIONS = 50


async def _successful_logins(path) -> list[BaseException]:
    """What SESSIONS simultaneous successful AUTHs ask of the store, on a fresh start."""
    store = SQLiteStore(path)
    try:
        async def login(i: int) -> None:
            keys = (f"authfail-ip:192.0.2.{i}", f"authfail-login:user{i % 4}@acme.example")
            await store.acquire_slot(f"conn:user{i % 4}", f"cid{i}", 100, T0, 1800)
            for n in range(3):  # a few logins per session, as mail clients reconnect
                attempt = f"{i}.{n}"
                await store.reserve_attempt([(k, 1000) for k in keys], attempt, 900, T0)
                await store.give_back_attempt(attempt, keys)
                await store.lock(keys[0], T0 + 60, T0)
                await store.log_event(Event(T0, "lockout", f"192.0.2.{i}", {"n": n}))
            await store.release_slot(f"conn:user{i % 4}", f"cid{i}")

        results = await asyncio.gather(*(login(i) for i in range(SESSIONS)), return_exceptions=True)
        return [r for r in results if isinstance(r, BaseException)]
    finally:
        await store.close()


def test_simultaneous_calls_after_restarts_with_an_existing_state_file_all_succeed(tmp_path):
    path = tmp_path / "state.db"
    asyncio.run(_successful_logins(path))  # the state file exists from now on
    errors: list[BaseException] = []
    for _ in range(RESTARTS):
        errors += asyncio.run(_successful_logins(path))
    assert errors == []

