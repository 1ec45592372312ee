"""The per-worker DMARC counter (gateway/store/dmarc_tally.py): batched writes,
nothing lost when the store fails for a while, everything written at shutdown."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.store.base import StoreUnavailable
from gateway.store.dmarc_tally import DmarcTally
from gateway.store.sqlite import SQLiteStore
from gateway.values.dmarc_reports import DAY, Observation, ReportRow

ROW = ReportRow("192.0.2.1", "example.org", "example.org", "pass", True, True,
                ("example.org", "mfrom", "pass"))
OTHER = ReportRow("192.0.2.2", "example.org", "example.org", "reject", False, False,
                  ("example.org", "mfrom", "fail"))
NOW = 100 * DAY + 5


class FlakyStore(SQLiteStore):
    """The real SQLite store, whose dmarc_add fails while ``down`` and counts its calls."""

    def __init__(self, path: Path):
        super().__init__(path)
        self.down = False
        self.calls = 0

    async def dmarc_add(self, counts):
        self.calls += 1
        if self.down:
            raise StoreUnavailable("down for the test")
        await super().dmarc_add(counts)


async def _counts(store: SQLiteStore) -> dict[str, int]:
    await store.dmarc_take(100 * DAY, "example.org", NOW)
    (report,) = await store.dmarc_unsent()
    return {ReportRow.from_key(k).source_ip: n for k, n in report.rows}


def test_many_messages_are_one_batched_write_and_all_are_counted(tmp_path):
    async def main():
        store = FlakyStore(tmp_path / "s.db")
        tally = DmarcTally(store, interval=0.05, clock=lambda: NOW)
        for _ in range(500):
            tally.add(Observation("example.org", ROW))
        tally.add(Observation("example.org", OTHER))
        await asyncio.sleep(0.3)
        assert tally.pending == 0
        assert store.calls == 1  # 501 messages, one store call
        got = await _counts(store)
        await store.close()
        return got

    assert asyncio.run(main()) == {"192.0.2.1": 500, "192.0.2.2": 1}


def test_counts_are_kept_while_the_store_is_down_and_written_at_shutdown(tmp_path):
    async def main():
        store = FlakyStore(tmp_path / "s.db")
        tally = DmarcTally(store, interval=0.05, clock=lambda: NOW)
        store.down = True
        for _ in range(3):
            tally.add(Observation("example.org", ROW))
        await asyncio.sleep(0.2)
        assert store.calls >= 1 and tally.pending == 3  # failed, kept
        tally.add(Observation("example.org", ROW))
        store.down = False
        await tally.drain()  # what serve.py does before the store closes
        assert tally.pending == 0
        got = await _counts(store)
        await store.close()
        return got

    assert asyncio.run(main()) == {"192.0.2.1": 4}


def test_the_buffer_is_bounded_and_says_what_it_drops(tmp_path, caplog):
    async def main():
        store = FlakyStore(tmp_path / "s.db")
        store.down = True
        tally = DmarcTally(store, interval=10, clock=lambda: NOW, max_rows=1)
        tally.add(Observation("example.org", ROW))
        tally.add(Observation("example.org", ROW))  # the same row: counted
        tally.add(Observation("example.org", OTHER))  # a new row past the bound: refused, logged
        assert tally.pending == 2
        store.down = False
        await tally.drain()
        await store.close()

    asyncio.run(main())
    assert "192.0.2.2 is not counted" in caplog.text
