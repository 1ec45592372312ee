"""The decision journal in both stores: found by transaction and by connection id,
bounded by age and by count; and its writer, which never loses an entry silently."""

from __future__ import annotations

import asyncio
import logging

from gateway.config.quota import JournalSettings
from gateway.store.base import JournalEntry
from gateway.store.journal import Journal
from gateway.store.sqlite import SQLiteStore
from tests.support import redis_server as _redis
from tests.support import stores

redis_server = _redis.redis_server
any_store = stores.any_store

T0 = 1_800_000_000.0
DAY = 86400.0


def entry(id: str, ts: float, kind: str = "transaction", **record: object) -> JournalEntry:
    return JournalEntry(id, id.partition(".")[0], ts, kind, {"txid": id, **record})


def test_an_entry_is_found_by_its_transaction_id_with_its_record(any_store):
    async def body(store):
        await store.journal_add([entry("AAAAAAAAAAAA.1", T0, rule="relay", facts={"domain": "x.example"})],
                                100, DAY)
        found = await store.journal_find("AAAAAAAAAAAA.1")
        assert [(e.id, e.cid, e.ts, e.kind) for e in found] == [("AAAAAAAAAAAA.1", "AAAAAAAAAAAA", T0,
                                                                 "transaction")]
        assert found[0].record == {"txid": "AAAAAAAAAAAA.1", "rule": "relay",
                                   "facts": {"domain": "x.example"}}
        assert await store.journal_find("AAAAAAAAAAAA.2") == []

    any_store.run(body)


def test_a_connection_id_finds_the_connection_and_its_transactions_oldest_first(any_store):
    async def body(store):
        await store.journal_add([entry("CCCCCCCCCCCC.2", T0 + 2)], 100, DAY)
        await store.journal_add([entry("CCCCCCCCCCCC.1", T0 + 1)], 100, DAY)
        await store.journal_add([entry("CCCCCCCCCCCC", T0 + 3, kind="connection")], 100, DAY)
        await store.journal_add([entry("DDDDDDDDDDDD.1", T0 + 1)], 100, DAY)  # another connection
        found = await store.journal_find("CCCCCCCCCCCC")
        assert sorted(e.id for e in found) == ["CCCCCCCCCCCC", "CCCCCCCCCCCC.1", "CCCCCCCCCCCC.2"]
        assert [e.ts for e in found] == sorted(e.ts for e in found)
        # A transaction id finds only its own entry.
        assert [e.id for e in await store.journal_find("CCCCCCCCCCCC.1")] == ["CCCCCCCCCCCC.1"]

    any_store.run(body)


def test_entries_older_than_max_age_go_when_a_newer_one_is_written(any_store):
    async def body(store):
        await store.journal_add([entry("OOOOOOOOOOOO.1", T0)], 100, DAY)
        await store.journal_add([entry("OOOOOOOOOOOO.2", T0 + DAY / 2)], 100, DAY)
        assert len(await store.journal_find("OOOOOOOOOOOO")) == 2
        await store.journal_add([entry("NNNNNNNNNNNN.1", T0 + DAY + 1)], 100, DAY)
        assert await store.journal_find("OOOOOOOOOOOO.1") == []
        assert [e.id for e in await store.journal_find("OOOOOOOOOOOO")] == ["OOOOOOOOOOOO.2"]
        assert len(await store.journal_find("NNNNNNNNNNNN.1")) == 1

    any_store.run(body)


def test_only_the_newest_max_entries_are_kept(any_store):
    async def body(store):
        for n in range(1, 13):
            await store.journal_add([entry(f"KKKKKKKKKKKK.{n}", T0 + n)], 5, DAY)
        kept = [e.id for e in await store.journal_find("KKKKKKKKKKKK")]
        assert kept == [f"KKKKKKKKKKKK.{n}" for n in range(8, 13)]
        assert await store.journal_find("KKKKKKKKKKKK.7") == []

    any_store.run(body)


def test_a_batch_is_bounded_like_single_writes(any_store):
    async def body(store):
        await store.journal_add([entry(f"BBBBBBBBBBBB.{n}", T0 + n) for n in range(1, 8)], 5, DAY)
        assert [e.id for e in await store.journal_find("BBBBBBBBBBBB")] == [
            f"BBBBBBBBBBBB.{n}" for n in range(3, 8)]

    any_store.run(body)


class CountingStore(SQLiteStore):
    """A real SQLite store that counts its journal writes."""

    def __init__(self, path):
        super().__init__(path)
        self.journal_writes = 0

    async def journal_add(self, entries, max_entries, max_age):
        self.journal_writes += 1
        await super().journal_add(entries, max_entries, max_age)


def test_a_burst_of_refusals_costs_a_few_batched_store_writes(tmp_path):
    async def body():
        store = CountingStore(tmp_path / "state.db")
        try:
            journal = Journal(store, JournalSettings(), clock=lambda: T0)
            for n in range(1, 501):
                journal.submit("transaction", f"SSSSSSSSSSSS.{n}", "SSSSSSSSSSSS", {"rule": "relay"})
            await journal.drain()
            return store.journal_writes, len(await store.journal_find("SSSSSSSSSSSS"))
        finally:
            await store.close()

    writes, kept = asyncio.run(body())
    assert kept == 500
    assert writes == 3  # batches of at most MAX_BATCH (200)


def test_a_journal_write_that_fails_is_logged_with_its_id(tmp_path, caplog):
    caplog.set_level(logging.ERROR, logger="portcullis.journal")

    async def body():
        store = SQLiteStore(tmp_path / "state.db")
        await store.close()  # every call now raises StoreUnavailable
        journal = Journal(store, JournalSettings(), clock=lambda: T0)
        journal.submit("transaction", "FFFFFFFFFFFF.1", "FFFFFFFFFFFF", {"rule": "relay"})
        await journal.drain()
        assert journal.pending == 0

    asyncio.run(body())
    assert "could not record transaction FFFFFFFFFFFF.1" in caplog.text


def test_entries_past_the_pending_bound_are_logged_not_kept_in_memory(tmp_path, caplog):
    caplog.set_level(logging.ERROR, logger="portcullis.journal")

    async def body():
        store = SQLiteStore(tmp_path / "state.db")
        try:
            journal = Journal(store, JournalSettings(), clock=lambda: T0, max_pending=2)
            for n in range(1, 5):  # no write has run yet: two wait, two are refused
                journal.submit("transaction", f"PPPPPPPPPPPP.{n}", "PPPPPPPPPPPP", {})
            assert journal.pending == 2
            await journal.drain()
            return [e.id for e in await store.journal_find("PPPPPPPPPPPP")]
        finally:
            await store.close()

    assert asyncio.run(body()) == ["PPPPPPPPPPPP.1", "PPPPPPPPPPPP.2"]
    assert "PPPPPPPPPPPP.3 not journalled" in caplog.text
    assert "PPPPPPPPPPPP.4 not journalled" in caplog.text
