"""DMARC aggregate report counts in the store, both backends (docs/dmarc-reports.md).

Counts from several writers add up; a take moves a period's counts into exactly one
report; counts arriving after a take go into the next report, never lost; a report
is claimed before it is sent and never claimed again once finished.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from pathlib import Path

from gateway.store.redis import RedisStore
from gateway.store.sqlite import SQLiteStore
from gateway.values.dmarc_reports import DAY, RETENTION
from tests.support.redis_server import redis_server  # noqa: F401
from tests.support.stores import any_store  # noqa: F401

P = 20 * DAY  # a period begin


async def _add_many(store, n: int) -> None:
    for _ in range(n):
        await store.dmarc_add([(P, "example.org", "row-a", 1), (P, "example.org", "row-b", 2)])


def test_counts_from_many_writers_add_up(any_store):  # noqa: F811
    async def body(store):
        await asyncio.gather(*(_add_many(store, 25) for _ in range(4)))
        assert await store.dmarc_periods(P + DAY) == [(P, "example.org")]
        assert await store.dmarc_periods(P) == []  # not before the period's own begin
        rid = await store.dmarc_take(P, "example.org", now=P + DAY + 60)
        assert rid == f"{P}.0.example.org"
        (report,) = await store.dmarc_unsent()
        assert dict(report.rows) == {"row-a": 100, "row-b": 200}
        assert report.state == "taken"

    any_store.run(body)


def test_counts_after_a_take_go_into_the_next_report(any_store):  # noqa: F811
    async def body(store):
        await store.dmarc_add([(P, "example.org", "row-a", 3)])
        first = await store.dmarc_take(P, "example.org", now=P + DAY)
        await store.dmarc_add([(P, "example.org", "row-a", 2)])  # a late flush
        assert await store.dmarc_take(P, "example.org", now=P + DAY) == f"{P}.1.example.org"
        assert await store.dmarc_take(P, "example.org", now=P + DAY) is None  # nothing left
        reports = {r.report_id: dict(r.rows) for r in await store.dmarc_unsent()}
        assert reports == {first: {"row-a": 3}, f"{P}.1.example.org": {"row-a": 2}}
        assert await store.dmarc_periods(P + DAY) == []

    any_store.run(body)


def test_a_report_is_claimed_once_and_never_again_once_finished(any_store):  # noqa: F811
    async def body(store):
        await store.dmarc_add([(P, "example.org", "row-a", 1)])
        rid = await store.dmarc_take(P, "example.org", now=1000.0)
        assert await store.dmarc_claim(rid, now=1000.0, stale=600)
        assert not await store.dmarc_claim(rid, now=1001.0, stale=600)  # another run: hands off
        # The run that claimed it stopped: after `stale` seconds it may be sent again.
        assert await store.dmarc_claim(rid, now=1700.0, stale=600)
        # Given back unsent (DNS failure): the next run claims it at once.
        await store.dmarc_release(rid)
        assert (await store.dmarc_unsent())[0].state == "taken"
        assert await store.dmarc_claim(rid, now=1702.0, stale=600)
        await store.dmarc_finish(rid, "sent", now=1701.0)
        await store.dmarc_release(rid)  # a finished report stays finished
        assert not await store.dmarc_claim(rid, now=99999.0, stale=600)
        assert await store.dmarc_unsent() == []

    any_store.run(body)


def _writer(path: str, n: int) -> None:
    async def main() -> None:
        store = SQLiteStore(path)
        try:
            await _add_many(store, n)
        finally:
            await store.close()

    asyncio.run(main())


def test_sqlite_counts_from_several_processes_add_up(tmp_path: Path):
    """Workers of one host share the file: the upsert adds, never overwrites."""
    path = str(tmp_path / "state.db")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, 30)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0

    async def check() -> dict[str, int]:
        store = SQLiteStore(path)
        try:
            await store.dmarc_take(P, "example.org", now=P + DAY)
            return dict((await store.dmarc_unsent())[0].rows)
        finally:
            await store.close()

    assert asyncio.run(check()) == {"row-a": 90, "row-b": 180}


def test_redis_counts_from_two_nodes_add_up(redis_server):  # noqa: F811
    """Two gateway nodes: two clients on one Redis, HINCRBY adds."""
    redis_server.flush()

    async def main() -> dict[str, int]:
        a, b = RedisStore(redis_server.url, prefix="t:"), RedisStore(redis_server.url, prefix="t:")
        try:
            await asyncio.gather(_add_many(a, 20), _add_many(b, 20))
            await a.dmarc_take(P, "example.org", now=P + DAY)
            return dict((await b.dmarc_unsent())[0].rows)
        finally:
            await a.close()
            await b.close()

    assert asyncio.run(main()) == {"row-a": 40, "row-b": 80}


def test_counts_never_taken_expire_after_the_retention(any_store):  # noqa: F811
    """No report run for 14 days: the old counts go, the store does not grow forever."""
    async def body(store):
        await store.dmarc_add([(P, "example.org", "row-a", 1)])
        await store.dmarc_add([(P + RETENTION + DAY, "example.org", "row-a", 1)])
        if any_store.name == "sqlite":  # Redis: the hash's TTL, checked below
            assert await store.dmarc_periods(P + 100 * DAY) == [(P + RETENTION + DAY, "example.org")]
        else:
            ttl = await store._r.ttl(f"test:dmarc:c:{P}:example.org")
            assert 0 < ttl <= DAY + RETENTION

    any_store.run(body)
