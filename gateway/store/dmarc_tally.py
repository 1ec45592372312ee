"""The DMARC report counter of one worker: counts in memory, written in batches.

The inbound path calls :meth:`DmarcTally.add` once per message that met a DMARC
record: a dict increment, no store call, no await.  A background task writes
what has gathered every ``interval`` seconds as one ``dmarc_add`` (an upsert in
SQLite, HINCRBY in Redis), so the counts of every worker and node add up in the
store.  Identical rows collapse in memory first: a busy sender is one row.

Nothing is lost at shutdown: ``drain`` writes what is buffered before the store
closes (gateway/serve.py).  A failed write keeps the counts in memory and tries
again at the next flush; only when the buffer holds more than ``max_rows``
distinct rows are new ones refused, each refusal logged (a store that stopped
answering must not grow the gateway's memory).  A process killed with SIGKILL
loses at most its last ``interval`` seconds of counts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from gateway.store.base import Store
from gateway.values.dmarc_reports import DAY, Observation, period_begin

log = logging.getLogger("portcullis.dmarc")

MAX_ROWS = 50_000


class DmarcTally:
    def __init__(self, store: Store, *, interval: float = 5.0, period: int = DAY,
                 clock: Callable[[], float] = time.time, max_rows: int = MAX_ROWS):
        self.store = store
        self.interval = interval
        self._period = period
        self._clock = clock
        self._max_rows = max_rows
        self._counts: dict[tuple[int, str, str], int] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._writing = False
        self._lost = 0

    def add(self, observation: Observation) -> None:
        """Count one message, later; returns at once."""
        key = (period_begin(self._clock(), self._period), observation.policy_domain,
               observation.row.key())
        counts = self._counts
        if key in counts:
            counts[key] += 1
            return
        if len(counts) >= self._max_rows:
            self._lost += 1
            log.error("dmarc: %d report rows wait for the store; a message from %s is not counted "
                      "(%d so far)", len(counts), observation.row.source_ip, self._lost)
            return
        counts[key] = 1
        if not self._stopping and (self._task is None or self._task.done()):
            try:
                self._task = asyncio.get_running_loop().create_task(self._flush_every())
            except RuntimeError:  # no loop (a test calling add directly): drain() writes it
                pass

    @property
    def pending(self) -> int:
        return sum(self._counts.values())

    async def _flush_every(self) -> None:
        while self._counts and not self._stopping:
            await asyncio.sleep(self.interval)
            await self.flush()

    async def flush(self) -> bool:
        """Write what has gathered in one store call; False (counts kept) if the store failed."""
        if not self._counts:
            return True
        batch, self._counts = self._counts, {}
        self._writing = True
        try:
            await self.store.dmarc_add([(p, d, r, n) for (p, d, r), n in batch.items()])
        except Exception as exc:  # StoreUnavailable or anything else: keep them for the next try
            for key, n in batch.items():
                self._counts[key] = self._counts.get(key, 0) + n
            log.error("dmarc: could not write %d report counts, kept for the next try: %s: %s",
                      sum(batch.values()), type(exc).__name__, exc)
            return False
        finally:
            self._writing = False
        return True

    async def drain(self) -> None:
        """At shutdown, before the store closes: write everything buffered."""
        self._stopping = True
        task = self._task
        if task is not None and not task.done():
            if not self._writing:  # asleep between writes: nothing in flight, stop it now
                task.cancel()
            # A write in flight is never cancelled (it may have reached the store):
            # wait for it, then write what is left.
            await asyncio.gather(task, return_exceptions=True)
        if not await self.flush():
            log.error("dmarc: %d report counts not written at shutdown", self.pending)
