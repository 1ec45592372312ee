"""The decision journal's writer: refusals, holds and suspensions go to the store
in the background, so no client waits for them.

Only decisions are journalled (gateway/smtp/records.py decides which): an accepted
message costs no store write.  Entries wait in a buffer and one task writes them,
as many as have gathered in one store call: under a storm of refusals (an AUTH
storm, a relay scan) the journal makes a few batched writes, not one per refusal
competing with the quota charges of accepted mail for the store.

A failed write is logged with the ids it would have kept, never dropped silently,
and so is an entry refused because the buffer is full (a store that stopped
answering must not grow the gateway's memory).  ``drain`` waits for what is
buffered before the store closes (gateway/serve.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from gateway.config.quota import JournalSettings
from gateway.store.base import JournalEntry, Store

log = logging.getLogger("portcullis.journal")

# Entries waiting for the store at once; past it, entries are logged as lost.
MAX_PENDING = 1000
# Entries per store call.
MAX_BATCH = 200
# Ids named in one log line about a failed write.
_NAMED = 20


class Journal:
    def __init__(self, store: Store, settings: JournalSettings,
                 clock: Callable[[], float] = time.time, max_pending: int = MAX_PENDING):
        self.store = store
        self.settings = settings
        self._clock = clock
        self._max_pending = max_pending
        self._buffer: list[JournalEntry] = []
        self._flush_task: asyncio.Task[None] | None = None

    def submit(self, kind: str, id: str, cid: str, record: Mapping[str, Any]) -> None:
        """Record a decision, later; returns at once."""
        if len(self._buffer) >= self._max_pending:
            log.error("journal: %d entries waiting for the store; %s %s not journalled",
                      len(self._buffer), kind, id)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            log.error("journal: no event loop; %s %s not journalled", kind, id)
            return
        self._buffer.append(JournalEntry(id, cid, self._clock(), kind, record))
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = loop.create_task(self._write())

    async def _write(self) -> None:
        while self._buffer:
            batch, self._buffer = self._buffer[:MAX_BATCH], self._buffer[MAX_BATCH:]
            try:
                await self.store.journal_add(batch, self.settings.max_entries, self.settings.max_age)
            except Exception as exc:  # StoreUnavailable, or anything else: said, with the ids
                log.error("journal: could not record %s: %s: %s", _named(batch), type(exc).__name__, exc)

    @property
    def pending(self) -> int:
        return len(self._buffer)

    async def drain(self, grace: float = 5.0) -> None:
        """Write what is buffered (shutdown, before the store closes)."""
        writer = self._flush_task
        if writer is None or writer.done():
            return
        _done, late = await asyncio.wait({writer}, timeout=grace)
        if late:
            writer.cancel()
            log.error("journal: writes unfinished after %.0fs at shutdown: %s not journalled",
                      grace, _named(self._buffer) if self._buffer else "the batch in flight")


def _named(entries: list[JournalEntry]) -> str:
    names = ", ".join(f"{e.kind} {e.id}" for e in entries[:_NAMED])
    more = len(entries) - _NAMED
    return names + (f" and {more} more" if more > 0 else "")
