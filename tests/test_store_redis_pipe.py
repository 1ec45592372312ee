"""The Redis store's per-message scripts on one pipelined connection (redis_pipe.py).

Store.meter writes every call at once on one connection and
match replies to calls by order: these tests hold that to real redis-servers under
concurrency, a flushed script cache, a server that stops answering, and the
password and database of the URL."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time

import pytest

from gateway.store import redis as redis_store
from gateway.store.base import Charge, MessageBegin, MeterStep, Store, StoreUnavailable, Suspension
from gateway.store.redis import RedisStore
from tests.support.redis_server import RedisServer

T0 = 1_800_000_000.0


def command(server: RedisServer, *args: str, password: str = "") -> bytes:
    """One command on a fresh socket (after AUTH with ``password``): the raw reply."""
    def resp(*words: str) -> bytes:
        return (f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)).encode()

    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        if password:
            s.sendall(resp("AUTH", password))
            assert s.recv(64).startswith(b"+OK")
        s.sendall(resp(*args))
        time.sleep(0.05)
        return s.recv(65536)


async def begin(store: Store, login: str, lease_id: str | None, now: float) -> Suspension | None:
    """A transaction's first step: the login's suspension, its session slot renewed."""
    return (await store.meter(MeterStep(begin=MessageBegin(login, f"conn:{login}", lease_id, 60)), now)).suspension


def connected_clients(server: RedisServer) -> int:
    info = command(server, "INFO", "clients").decode()
    return int(info.split("connected_clients:")[1].split()[0])


@pytest.fixture
def server():
    s = RedisServer().start()
    try:
        yield s
    finally:
        if s.proc is not None:
            os.kill(s.proc.pid, signal.SIGCONT)
        s.stop()


def test_concurrent_calls_on_one_connection_each_get_their_own_answer(server):
    store = RedisStore(server.url, prefix="pipe:")
    logins = [f"user{i}@acme.example" for i in range(60)]

    async def body():
        for login in logins[::3]:
            await store.suspend(Suspension(login, T0, f"why {login}"))
        # Each counter charged with its own amount twice: the second answer must be
        # the first amount, of that counter, whatever order the calls finish in.
        steps = [MeterStep(charges=(Charge(f"k{i}", 3600, None, amount=i + 1),)) for i in range(60)]
        await asyncio.gather(*(store.meter(s, T0) for s in steps))
        during = []

        async def watch():
            await asyncio.sleep(0)
            during.append(await asyncio.to_thread(connected_clients, server))

        met, begun, _ = await asyncio.gather(
            asyncio.gather(*(store.meter(s, T0 + 1) for s in steps)),
            asyncio.gather(*(begin(store, x, "lease", T0) for x in logins)),
            watch())
        await store.close()
        return met, begun, during

    met, begun, during = asyncio.run(body())
    assert [m.charged.used for m in met] == [(i + 1,) for i in range(60)]
    assert [b.reason if b else None for b in begun] == [
        f"why {x}" if i % 3 == 0 else None for i, x in enumerate(logins)]
    # 120 calls in flight on one pipelined connection (plus redis-py's for suspend,
    # and the watcher's own): a pool would have opened one per call in flight.
    assert during[0] <= 3


def test_a_flushed_script_cache_is_loaded_again(server):
    store = RedisStore(server.url, prefix="pipe:")
    step = MeterStep(charges=(Charge("k", 3600, 2),))

    async def one(now):
        return (await store.meter(step, now)).charged

    # Two event loops, one store (as the tests and the CLI run it): the second loop
    # connects anew.
    assert asyncio.run(one(T0)).accepted
    assert b"OK" in command(server, "SCRIPT", "FLUSH")
    second = asyncio.run(one(T0 + 1))
    third = asyncio.run(one(T0 + 2))
    asyncio.run(store.close())
    assert (second.accepted, second.used) == (True, (1,))
    # Run once each: the NOSCRIPT answer did not run it, the load and run did.
    assert (third.accepted, third.used) == (False, (2,))


def test_a_server_that_stops_answering_fails_the_waiting_calls_then_recovers(server):
    store = RedisStore(server.url, prefix="pipe:", timeout=0.5)
    step = MeterStep(charges=(Charge("k", 3600, None),))

    async def body():
        await store.meter(step, T0)
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            outcomes = await asyncio.gather(*(store.meter(step, T0 + 1) for _ in range(5)),
                                            begin(store, "a@acme.example", None, T0),
                                            return_exceptions=True)
            waited = time.monotonic() - started
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        after = await begin(store, "a@acme.example", None, T0)
        usage = await store.usage([Charge("k", 3600, None)], T0 + 2)
        await store.close()
        return outcomes, waited, after, usage

    outcomes, waited, after, usage = asyncio.run(asyncio.wait_for(body(), 20))
    assert all(isinstance(o, StoreUnavailable) for o in outcomes), outcomes
    assert waited < 3
    assert after is None and usage[0] >= 1


def test_the_password_and_database_of_the_url_are_used(server):
    assert b"OK" in command(server, "CONFIG", "SET", "requirepass", "s3cret")
    url = f"redis://:s3cret@127.0.0.1:{server.port}/3"
    store = RedisStore(url, prefix="pipe:")
    wrong = RedisStore(f"redis://:nope@127.0.0.1:{server.port}/3", prefix="pipe:")

    async def body():
        # Written through redis-py's pool, read back through the pipe: the same database.
        await store.suspend(Suspension("a@acme.example", T0, "stolen"))
        found = await begin(store, "a@acme.example", "lease", T0)
        with pytest.raises(StoreUnavailable):
            await begin(wrong, "a@acme.example", "lease", T0)
        await store.close()
        await wrong.close()
        return found

    found = asyncio.run(body())
    assert found is not None and found.reason == "stolen"
    def keys_in(db: str) -> bytes:
        return command(server, "EVAL", f"redis.call('SELECT', {db}) return redis.call('KEYS', 'pipe:*')",
                       "0", password="s3cret")

    assert keys_in("0").startswith(b"*0"), keys_in("0")
    assert b"pipe:s:conn:a@acme.example" in keys_in("3")


def test_a_burst_of_plain_commands_waits_for_a_connection_instead_of_failing(server):
    """Three times as many plain commands at once as the pool has connections (a
    restart's sessions all closing: each releases its slot): every one is answered.
    redis-py's default pool failed two thirds of them ("Too many connections"), and
    a slot not released stays taken until its lease ends."""
    store = RedisStore(server.url, prefix="burst:")
    n = 3 * redis_store.POOL_CONNECTIONS

    async def body():
        for i in range(n):
            assert await store.acquire_slot(f"conn:a{i}", "lease", 1, T0, 600)
        released = await asyncio.gather(*(store.release_slot(f"conn:a{i}", "lease") for i in range(n)),
                                        return_exceptions=True)
        locks = await asyncio.gather(*(store.locked_until([f"a{i}"], T0) for i in range(n)),
                                     return_exceptions=True)
        # Released: each slot can be taken again by another session.
        again = [await store.acquire_slot(f"conn:a{i}", "other", 1, T0 + 1, 600) for i in range(n)]
        await store.close()
        return released, locks, again

    released, locks, again = asyncio.run(asyncio.wait_for(body(), 60))
    assert [r for r in released if r is not None] == []
    assert locks == [None] * n
    assert all(again)
