"""Two OS processes hammer one account through one store: exactly the limit gets through.

This is the property that lets several gateway processes (and, with Redis,
several hosts) share one account's limits.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp

import pytest

from gateway.store.base import Charge, Store
from tests.support.processes import race
from tests.support.redis_server import redis_server  # noqa: F401

T0 = 1_800_000_000.0
LIMIT = 60
ATTEMPTS_PER_PROCESS = 150
COROUTINES_PER_PROCESS = 4


def _open(backend: str, where: str) -> Store:
    if backend == "redis":
        from gateway.store.redis import RedisStore

        return RedisStore(where, prefix="conc:")
    from gateway.store.sqlite import SQLiteStore

    return SQLiteStore(where, busy_timeout=10)


async def _hammer(backend: str, where: str, start: mp.synchronize.Event) -> tuple[int, int]:
    store = _open(backend, where)
    await store.usage([Charge("warm", 3600, 1)], T0)  # connect before the race starts
    start.wait(timeout=30)
    accepted = refused = 0

    async def worker(n: int) -> None:
        nonlocal accepted, refused
        for i in range(n):
            # Each message carries the account's and the customer's limits, held and
            # then committed, as the submission path does it.
            hold = f"{mp.current_process().pid}-{id(asyncio.current_task())}-{i}"
            result = await store.charge([
                Charge("acct:alice:messages_per_hour", 3600, LIMIT, hold=hold),
                Charge("cust:acme:messages_per_hour", 3600, 10 * LIMIT, hold=hold),
                Charge("acct:alice:recipient_domains_per_hour", 3600, 5, member=f"d{i % 3}.example", hold=hold),
            ], T0 + i * 0.01)
            if result.accepted:
                await store.commit([hold], T0 + i * 0.01)
                accepted += 1
            else:
                refused += 1

    per = ATTEMPTS_PER_PROCESS // COROUTINES_PER_PROCESS
    await asyncio.gather(*(worker(per) for _ in range(COROUTINES_PER_PROCESS)))
    await store.close()
    return accepted, refused


def _process(backend: str, where: str, start: mp.synchronize.Event, out: mp.Queue) -> None:
    out.put(asyncio.run(_hammer(backend, where, start)))


def _race(backend: str, where: str) -> list[tuple[int, int]]:
    return race(_process, (backend, where))


def _check(results: list[tuple[int, int]]) -> None:
    accepted = sum(a for a, _ in results)
    attempts = sum(a + r for a, r in results)
    per = ATTEMPTS_PER_PROCESS // COROUTINES_PER_PROCESS * COROUTINES_PER_PROCESS
    assert attempts == 2 * per
    assert accepted == LIMIT, results


@pytest.mark.timeout(120)
def test_two_processes_share_one_sqlite_file_and_get_exactly_the_limit(tmp_path):
    results = _race("sqlite", str(tmp_path / "state.db"))
    _check(results)


@pytest.mark.timeout(120)
def test_two_processes_share_one_redis_and_get_exactly_the_limit(redis_server):  # noqa: F811
    redis_server.flush()
    results = _race("redis", redis_server.url)
    _check(results)
