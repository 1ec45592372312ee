"""Held mail in a real PostgreSQL (``hold.postgres``): the same guarantees as the
directory store (tests/test_held.py): byte for byte, claimed once by concurrent
releases from two stores (as two gateways), the rest kept after a partial release,
busy while being released, expiry by policy."""

from __future__ import annotations

import asyncio

import pytest

from gateway.store.held import HeldBusy, HeldNotFound
from gateway.store.held_postgres import PostgresHeldStore
from tests.support import postgres_server as _pg
from tests.test_held import DAY, MESSAGE, T0, downstream_for, mta  # noqa: F401

postgres_server = _pg.postgres_server

@pytest.fixture
def dsn(postgres_server):
    # The gateway's role may create its table here (CREATE on the schema).
    postgres_server.sql("GRANT CREATE ON SCHEMA public TO portcullis")
    postgres_server.sql("DROP TABLE IF EXISTS portcullis_held")
    return postgres_server.dsn


def run(dsn, body):
    """``body(store, other)`` with two stores on one database (two gateways)."""
    async def main():
        store, other = PostgresHeldStore(dsn), PostgresHeldStore(dsn)
        try:
            return await body(store, other)
        finally:
            await store.close()
            await other.close()

    return asyncio.run(main())


async def hold(store, recipients=("bob@example.org", "carol@example.net"), now=T0):
    return await store.hold(
        message=[b"X-Ours: 1\r\n", MESSAGE], sender="alice@acme.example", recipients=list(recipients),
        direction="outbound", reason="quota", reply="250 2.0.0 held", now=now,
        evidence={"limit": "messages_per_hour"}, login="alice@acme.example", txid="TX1.1",
        mail_options=["BODY=8BITMIME"])


def test_held_in_one_is_read_byte_for_byte_from_the_other(dsn):
    async def body(store, other):
        held = await hold(store)
        assert [h.id for h in await other.list()] == [held.id]
        got = await other.get(held.id)
        assert (got.reason, got.login, got.evidence, got.state) == (
            "quota", "alice@acme.example", {"limit": "messages_per_hour"}, "held")
        assert await other.message(held.id) == b"X-Ours: 1\r\n" + MESSAGE
        for unknown in ("20260101000000-0000000000", "x' OR '1'='1"):
            with pytest.raises(HeldNotFound):
                await other.get(unknown)

    run(dsn, body)


def test_concurrent_releases_from_two_gateways_send_once(dsn, mta):  # noqa: F811
    async def body(store, other):
        held = await hold(store)
        ds = downstream_for(mta)
        try:
            return await asyncio.gather(*(s.release(held.id, ds) for s in (store, other) * 3),
                                        return_exceptions=True)
        finally:
            await ds.close()

    results = run(dsn, body)
    assert sum(1 for r in results if not isinstance(r, Exception) and r.ok) == 1
    assert all(isinstance(r, HeldNotFound | HeldBusy) for r in results if isinstance(r, Exception))
    assert [m.content for m in mta.messages] == [b"X-Ours: 1\r\n" + MESSAGE]


def test_partial_release_keeps_the_rest_and_a_claimed_message_is_busy(dsn, mta, postgres_server):  # noqa: F811
    mta.behaviour.refuse_rcpt = {"carol@example.net": "450 4.2.0 mailbox busy"}

    async def body(store, other):
        held = await hold(store)
        ds = downstream_for(mta)
        try:
            first = await other.release(held.id, ds)
            assert first.delivered == ("bob@example.org",) and not first.removed
            [rest] = await store.list()
            assert (rest.id, rest.recipients, rest.state) == (held.id, ("carol@example.net",), "held")
            # A release interrupted by a crash leaves it claimed: busy, until forced.
            postgres_server.sql(f"UPDATE portcullis_held SET state = 'releasing' WHERE id = '{held.id}'")
            with pytest.raises(HeldBusy):
                await store.release(held.id, ds)
            with pytest.raises(HeldBusy):
                await store.delete(held.id)
            mta.behaviour.refuse_rcpt = {}
            assert (await store.release(held.id, ds, force=True)).removed
            assert await other.list() == []
        finally:
            await ds.close()

    run(dsn, body)
    assert [m.rcpt_tos for m in mta.messages] == [["bob@example.org"], ["carol@example.net"]]


def test_expiry_deletes_by_policy_only_what_is_old_enough(dsn, mta):  # noqa: F811
    async def body(store, other):
        old = await hold(store, now=T0)
        young = await hold(store, now=T0 + 6 * DAY)
        decisions = await other.expire(T0 + 7 * DAY + 1, 7 * DAY, "delete", {})
        assert [(d.id, d.action) for d in decisions] == [(old.id, "deleted")]
        assert [h.id for h in await store.list()] == [young.id]

    run(dsn, body)
    assert mta.messages == []
