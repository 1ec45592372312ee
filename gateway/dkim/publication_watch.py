"""The background task that looks every selector's TXT record up and keeps the
verdict table (gateway/dkim/publication.py) current.

One round asks for every pending, active and retiring selector at once, through a
resolver made from the gateway's ``dns:`` settings with no cache of its own: the
point is to see the record as it is now (a cached NXDOMAIN would hide a fix for
its negative TTL).  Rounds run every ``dkim.check_interval`` seconds, and at most a
minute apart while some selector is unknown or unpublished.  Nothing here is on
the message path: signing only reads the table.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from gateway.config.dkim import DkimSettings
from gateway.dkim.keystore import KeyStore, Selector
from gateway.dkim.publication import (
    KeyVerdicts,
    Publication,
    held_back,
    judge_records,
    needs_checking,
    signing_selectors,
)

log = logging.getLogger("portcullis.dkim")

RETRY_SECONDS = 60.0


# The resolver and the metrics are passed in by gateway/serve.py (checks/ and ops/
# import dkim/, so dkim/ may not import them back): these say what is used of them.
class TxtAnswer(Protocol):
    nxdomain: bool

    def texts(self) -> list[bytes]: ...


class Lookup(Protocol):
    async def lookup(self, name: str, rdtype: str) -> TxtAnswer: ...


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
        self._clock = clock
        self._metrics = metrics
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        """One round: look every selector up, then swap the new table in."""
        store = self._keystore()
        if store is None or not self._settings().check_published:
            return
        now = self._clock()
        selectors = [s for s in store.selectors() if needs_checking(s, now, store.grace)]
        found: Sequence[Publication | None] = await asyncio.gather(
            *(self._judge(s, now) for s in selectors))
        old = self.verdicts.table
        table = {}
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
            self._metrics.set_dkim_held_back(len(held_back(selectors, table, now)))

    async def _judge(self, selector: Selector, now: float) -> Publication | None:
        try:
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

    def wake(self) -> None:
        """Look now rather than at the next round (after a reload)."""
        self._wake.set()

    def _next_delay(self) -> float:
        interval = self._settings().check_interval
        store = self._keystore()
        if store is None:
            return interval
        now = self._clock()
        wanted = [s for s in store.selectors() if needs_checking(s, now, store.grace)]
        table = self.verdicts.table
        settled = all((v := table.get((s.domain, s.selector))) is not None and v.published
                      for s in wanted)
        return interval if settled else min(interval, RETRY_SECONDS)

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self._next_delay())
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.refresh()
            except Exception:  # never let one bad round end the watch
                log.exception("dkim: key publication check failed; retrying")
