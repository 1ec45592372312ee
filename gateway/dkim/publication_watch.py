"""The background task that looks every selector's TXT record up and keeps the
verdict table (gateway/dkim/publication.py) current.

A full round asks for every pending, active and retiring selector, through a
resolver made from the gateway's ``dns:`` settings with no cache of its own: the
point is to see the record as it is now (a cached NXDOMAIN would hide a fix for
its negative TTL).  Full rounds run every ``dkim.check_interval`` seconds (and
after a reload); selectors not seen published are retried every minute between
them.  Nothing here is on the message path: signing only reads the table.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from gateway.config.dkim import DkimSettings
from gateway.dkim.keystore import KeyStore, Selector
from gateway.dkim.publication import (
    Key,
    KeyVerdicts,
    Publication,
    held_back,
    judge_records,
    needs_checking,
    signing_selectors,
)

log = logging.getLogger("portcullis.dkim")

RETRY_SECONDS = 60.0
# Look-ups in flight at once: a hosting gateway may hold a selector for each of
# 100,000 domains, and the recursive resolver is shared with the inbound checks.
MAX_IN_FLIGHT = 64
# How long start-up waits for the first round before the listeners open anyway
# (keys it has not seen published by then do not sign until it ends).
FIRST_ROUND_WAIT = 5.0


# The resolver and the metrics are passed in by gateway/serve.py (checks/ and ops/
# import dkim/, so dkim/ may not import them back): these say what is used of them.
class TxtAnswer(Protocol):
    nxdomain: bool

    def texts(self) -> list[bytes]: ...


class Lookup(Protocol):
    async def lookup(self, name: str, rdtype: str) -> TxtAnswer: ...

    async def close(self) -> None: ...


class Counts(Protocol):
    def dkim_key_check(self, outcome: str) -> None: ...

    def set_dkim_held_back(self, count: int) -> None: ...


class PublicationWatch:
    def __init__(self, verdicts: KeyVerdicts, keystore: Callable[[], KeyStore | None],
                 settings: Callable[[], DkimSettings], resolver: Lookup,
                 temp_error: type[Exception], *, clock: Callable[[], float],
                 metrics: Counts | None = None):
        """``keystore``, ``settings``: the current ones (a reload may bring new
        selectors, or turn the check on or off); ``resolver``: a gateway/checks/dns.py
        Resolver without a cache; ``temp_error``: what it raises when DNS does not
        answer (DnsTempError)."""
        self.verdicts = verdicts
        self._keystore = keystore
        self._settings = settings
        self.resolver = resolver
        self._temp_error = temp_error
        self._wake = asyncio.Event()
        self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.first_round = asyncio.Event()  # set once the first round has ended
        self._clock = clock
        self._metrics = metrics
        self._task: asyncio.Task[None] | None = None

    async def refresh(self, full: bool = True) -> None:
        """One round: look selectors up, then swap the new table in.  ``full``: every
        pending, active and retiring selector (the table forgets the others); else
        only those not seen published yet (the one-minute retries)."""
        store = self._keystore()
        if store is None or not self._settings().check_published:
            return
        now = self._clock()
        wanted = [s for s in store.selectors() if needs_checking(s, now, store.grace)]
        old = self.verdicts.table
        if full:
            selectors, table = wanted, {}
        else:
            selectors = [s for s in wanted if not _is_published(old, s)]
            table = dict(old)
        found: Sequence[Publication | None] = await asyncio.gather(
            *(self._judge(s, now) for s in selectors))
        changed = []
        for selector, verdict in zip(selectors, found, strict=True):
            key = (selector.domain, selector.selector)
            if verdict is None:  # DNS failed: the last verdict stands (none: not published)
                if key in old:
                    table[key] = old[key]
                continue
            table[key] = verdict
            before = old.get(key)
            if before is None or before.published != verdict.published or before.detail != verdict.detail:
                changed.append((selector, verdict))
        self.verdicts.table = table  # one assignment: a signing step sees old or new
        for selector, verdict in changed:
            self._log_change(store, selector, verdict, table, now)
        if self._metrics is not None:
            self._metrics.set_dkim_held_back(len(held_back(wanted, table, now)))

    async def _judge(self, selector: Selector, now: float) -> Publication | None:
        try:
            async with self._in_flight:
                answer = await self.resolver.lookup(selector.dns_name, "TXT")
        except self._temp_error as exc:
            log.warning("dkim: %s: DNS failed (%s): keeping the last verdict",
                        selector.dns_name, exc)
            self._count("temperror")
            return None
        verdict = judge_records(selector, None if answer.nxdomain else answer.texts(), now)
        self._count(verdict.outcome)
        return verdict

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.dkim_key_check(outcome)

    def _log_change(self, store: KeyStore, selector: Selector, verdict: Publication,
                    table: dict, now: float) -> None:
        if verdict.published:
            log.info("dkim: %s %s: %s", selector.dns_name, selector.state(now, store.grace),
                     verdict.detail)
            return
        signing = signing_selectors(store.selectors(selector.domain), table, now, store.grace)
        instead = ", ".join(s.selector for s in signing) or "no key (missing_key applies)"
        log.error("dkim: %s %s is not published: %s; signing %s with %s",
                  selector.dns_name, selector.state(now, store.grace), verdict.detail,
                  selector.domain, instead)

    # --- the loop ------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self.resolver.close()

    def wake(self) -> None:
        """Look now rather than at the next round (after a reload)."""
        self._wake.set()

    def _is_settled(self) -> bool:
        store = self._keystore()
        if store is None:
            return True
        now = self._clock()
        return all(_is_published(self.verdicts.table, s) for s in store.selectors()
                   if needs_checking(s, now, store.grace))

    async def wait_first_round(self) -> bool:
        """Start-up (gateway/serve.py): wait for the first round, FIRST_ROUND_WAIT at most."""
        try:
            await asyncio.wait_for(self.first_round.wait(), FIRST_ROUND_WAIT)
        except TimeoutError:
            return False
        return True

    async def _run(self) -> None:
        try:
            await self.refresh()
        except Exception:
            log.exception("dkim: key publication check failed; retrying")
        self.first_round.set()
        # Selectors not seen published are retried every minute meanwhile.
        next_full = time.monotonic() + self._settings().check_interval
        while True:
            interval = self._settings().check_interval
            delay = next_full - time.monotonic()
            if not self._is_settled():
                delay = min(delay, RETRY_SECONDS)
            try:
                await asyncio.wait_for(self._wake.wait(), max(delay, 0.0))
            except TimeoutError:
                pass
            full = self._wake.is_set() or time.monotonic() >= next_full  # woken: a reload
            self._wake.clear()
            try:
                await self.refresh(full=full)
            except Exception:  # never let one bad round end the watch
                log.exception("dkim: key publication check failed; retrying")
            if full:
                next_full = time.monotonic() + interval


def _is_published(table: Mapping[Key, Publication], s: Selector) -> bool:
    v = table.get((s.domain, s.selector))
    return v is not None and v.published
