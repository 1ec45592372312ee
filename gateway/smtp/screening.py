"""MX screening, applied: gather the facts at connect, ask gateway/rules/screening.py,
apply its verdicts at the greeting (per-client limits), at MAIL (message rate)
and at RCPT (lists, dynamic ranges, early talkers, recipient rate).

At the greeting (the client address is known, also behind a PROXY header):

1. an allowlisted network skips every limit;
2. new connections per minute (counted in this process);
3. concurrent connections per address and per /24 or /64: a slot each in the
   shared store, exact across worker processes (per process without one);
4. the DNS look-ups start, all at once, and run while the client says EHLO;
5. with ``greeting.delay``, ``220-`` goes out at once and the rest after the
   delay; a client that talks in between is an early talker (pregreet).

A refusal at the greeting is ``421 4.7.0`` and the connection closes.  The rest
waits for RCPT, so that abuse@ and postmaster@ always get in.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
import time
from typing import TYPE_CHECKING, Any

from gateway.checks.dns import Resolver
from gateway.checks.screening import ask_iprev, ask_list
from gateway.config.screening import CustomerScreening, ScreeningSettings
from gateway.replies import Verdict
from gateway.rules import screening as rules
from gateway.runtime import Runtime
from gateway.store.base import StoreUnavailable
from gateway.values.charges import Event
from gateway.values.screening import DYNAMIC_EVENT, ClientFacts, Iprev, ZoneAnswer

if TYPE_CHECKING:
    from gateway.smtp.protocol import GatewaySMTP

log = logging.getLogger("portcullis.screening")

WINDOW = 60.0  # seconds: the "per minute" of the rate limits
# A slot outlives a worker that died without releasing it for this long at most.
SLOT_TTL = 3600.0
# Addresses remembered by the per-process rate counters; the oldest go first.
MAX_TRACKED = 100_000


class RecentCounts:
    """Events per address in the last ``WINDOW`` seconds, in this process only."""

    def __init__(self) -> None:
        self._seen: dict[str, collections.deque[float]] = {}

    def add(self, key: str, now: float, amount: int = 1) -> int:
        """Count ``amount`` events now; the count within the window, these included."""
        times = self._seen.get(key)
        if times is None:
            if len(self._seen) >= MAX_TRACKED:
                del self._seen[next(iter(self._seen))]
            times = self._seen[key] = collections.deque(maxlen=100_000)
        while times and times[0] <= now - WINDOW:
            times.popleft()
        times.extend([now] * amount)
        return len(times)


class ClientScreening:
    """The long-lived part, one per MX listener: the counters of this process and
    the resolver.  Settings are read from the runtime in force at each use, so a
    reload changes them."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._resolver: Resolver | None = None
        self.connections = RecentCounts()
        self.messages = RecentCounts()
        self.recipients = RecentCounts()
        # Without a store: concurrent connections per key, this process only.
        self._open: collections.Counter[str] = collections.Counter()
        # What the look-ups found per address, until the first of their answers
        # expires: a regular sender's connection then costs no look-up and no task.
        self._known: collections.OrderedDict[str, tuple[float, ClientFacts]] = (
            collections.OrderedDict())
        self._known_for: ScreeningSettings | None = None

    def known(self, settings: ScreeningSettings, ip: str) -> ClientFacts | None:
        if settings is not self._known_for:  # a reload: other lists, other weights
            self._known.clear()
            self._known_for = settings
            return None
        hit = self._known.get(ip)
        if hit is None:
            return None
        if hit[0] <= time.monotonic():
            del self._known[ip]
            return None
        return hit[1]

    def remember(self, settings: ScreeningSettings, resolver: Resolver,
                 names: list[tuple[str, str]], facts: ClientFacts) -> None:
        """Keep ``facts`` until the earliest of the answers behind them expires (the
        resolver's clock); not at all if one of them is not cached (a failure)."""
        if settings is not self._known_for:
            self._known.clear()
            self._known_for = settings
        expires = None
        for name, rdtype in names:
            entry = resolver.peek_entry(name, rdtype)
            if entry is None:
                return
            expires = entry[0] if expires is None else min(expires, entry[0])
        if expires is None:
            return
        self._known[facts.client_ip] = (expires, facts)
        if len(self._known) > MAX_TRACKED:
            self._known.popitem(last=False)

    def resolver(self, rt: Runtime) -> Resolver:
        """The inbound checks' resolver; our own (same settings) when they are off."""
        if rt.resolver is not None:
            return rt.resolver
        if self._resolver is None:
            self._resolver = Resolver.from_settings(rt.config.dns)
        return self._resolver

    def connection(self, settings: ScreeningSettings) -> ConnectionScreen:
        return ConnectionScreen(self, settings)

    # --- concurrent connections ------------------------------------------------
    async def take_slot(self, rt: Runtime, key: str, cid: str, limit: int, now: float) -> bool:
        store = rt.metering.store if rt.metering is not None else None
        if store is None:
            if self._open[key] >= limit:
                return False
            self._open[key] += 1
            return True
        try:
            return await store.acquire_slot(key, cid, limit, now, SLOT_TTL)
        except StoreUnavailable:
            log.warning("store unavailable: connection limit %s not checked", key)
            return True  # a store outage must not close the MX

    async def give_back(self, rt: Runtime, key: str, cid: str) -> None:
        store = rt.metering.store if rt.metering is not None else None
        if store is None:
            self._open[key] -= 1
            if self._open[key] <= 0:
                del self._open[key]
            return
        try:
            await store.release_slot(key, cid)
        except StoreUnavailable:
            pass  # its lease expires (SLOT_TTL)

    def dynamic_range_hit(self, rt: Runtime, client_ip: str) -> None:
        """Counted per address for the abuse desk (``portcullis screening dynamic``)."""
        if rt.metrics is not None:
            rt.metrics.screening(DYNAMIC_EVENT)
        if rt.metering is not None:
            store = rt.metering.store
            asyncio.get_running_loop().create_task(
                _log_event(store, Event(rt.clock(), DYNAMIC_EVENT, client_ip)))


async def _log_event(store: Any, event: Event) -> None:
    try:
        await store.log_event(event)
    except StoreUnavailable:
        log.warning("store unavailable: %s for %s not counted", event.kind, event.subject)


class ConnectionScreen:
    """One MX connection's screening: its facts and what it was refused."""

    def __init__(self, shared: ClientScreening, settings: ScreeningSettings) -> None:
        self.shared = shared
        self.settings = settings
        self.client_ip = ""
        self.pregreeted = False
        self._facts: asyncio.Task[ClientFacts] | None = None
        self.result: ClientFacts | None = None

    # --- the greeting ----------------------------------------------------------------
    async def greet(self, server: GatewaySMTP, greeting: str) -> str | None:
        """The greeting to send, or None when the client was refused (421, closed)."""
        rt = self.shared.runtime.current()
        settings = self.settings
        ip = self.client_ip = server.client_ip
        if not rules.is_in(ip, settings.allowlist):
            verdict = await self._limits(server, rt, ip)
            if not verdict.accept:
                log.info("cid=%s client=%s refused rule=%s", server.cid, ip, verdict.rule)
                server.record.screening = verdict.rule
                if rt.metrics is not None:
                    rt.metrics.screening(verdict.rule)
                server.refuse_client(verdict.reply)
                return None
            known = self.shared.known(settings, ip) if settings.needs_dns else None
            if known is not None:
                self.result = known
                server.record.screening = known.summary
            elif settings.needs_dns:
                task = self._facts = asyncio.get_running_loop().create_task(self._look_up(rt, ip))
                record = server.record

                def on_record(done: asyncio.Task[ClientFacts]) -> None:
                    # The score and listings go on the connection's line, whether or
                    # not the client got as far as RCPT.
                    if not done.cancelled() and done.exception() is None and not record.screening:
                        record.screening = done.result().summary

                task.add_done_callback(on_record)
        delay = settings.greeting.delay
        if delay > 0:
            # postscreen's multi-line greeting: "220-" now, the final line later; a
            # client that sends anything before the final line did not wait (RFC 5321
            # §4.3.1: the client waits for the whole greeting).
            head, _, tail = greeting.partition(" ")
            await server.write(f"{head}-{tail}\r\n".encode())
            await asyncio.sleep(delay)
            if server.has_buffered_input():
                self.pregreeted = True
                log.info("cid=%s client=%s talked before the greeting", server.cid, ip)
                if rt.metrics is not None:
                    rt.metrics.screening("screening.pregreet")
        return greeting

    async def _limits(self, server: GatewaySMTP, rt: Runtime, ip: str) -> Verdict:
        settings = self.settings
        now = rt.clock()
        limits = settings.limits
        if limits.connections_per_minute is not None:
            verdict = rules.decide_connection_rate(settings, self.shared.connections.add(ip, now))
            if not verdict.accept:
                return verdict
        if not limits.any_concurrent:
            return rules.ACCEPT
        network = rules.client_network(ip)
        taken: list[str] = []
        ok = {}
        for kind, key, limit in (("address", f"screening.conn:{ip}", limits.connections_per_address),
                                 ("network", f"screening.conn:{network}", limits.connections_per_24)):
            if limit is None:
                ok[kind] = True
                continue
            ok[kind] = await self.shared.take_slot(rt, key, server.cid, limit, now)
            if not ok[kind]:
                break
            taken.append(key)
        shared, cid = self.shared, server.cid

        async def release() -> None:
            for key in taken:
                await shared.give_back(rt, key, cid)

        verdict = rules.decide_concurrency(settings, ok.get("address", True),
                                           ok.get("network", True), network)
        if not verdict.accept:
            await release()
        elif taken:
            server.add_close_callback(lambda _conn: release())
        return verdict

    async def _look_up(self, rt: Runtime, ip: str) -> ClientFacts:
        resolver = self.shared.resolver(rt)
        sites = self.settings.dnsbl
        names = [(rules.dnsbl_query_name(ip, z), z) for z in sites.zones]
        jobs: list[Any] = [ask_list(resolver, name, z) for name, z in names]
        if self.settings.fcrdns:
            jobs.append(ask_iprev(resolver, ip))
        # Every look-up is bounded by the resolver's timeout; a failure is an answer.
        found = await asyncio.gather(*jobs)
        iprev = found.pop() if self.settings.fcrdns else None
        answers: dict[str, ZoneAnswer] = {a.zone: a for a in found}
        assert iprev is None or isinstance(iprev, Iprev)
        facts = rules.score_client(ip, sites.sites, answers, iprev)
        asked = [(name, "A") for name, _ in names]
        if iprev is not None:
            if iprev.result != "pass":
                return facts  # a fail or temperror is not kept beyond the connection
            asked += [(ipaddress.ip_address(ip).reverse_pointer, "PTR"),
                      (iprev.name, "A" if ipaddress.ip_address(ip).version == 4 else "AAAA")]
        self.shared.remember(self.settings, resolver, asked, facts)
        return facts

    async def facts(self) -> ClientFacts | None:
        """What the look-ups found (waiting for them if need be); None: none were made."""
        if self.result is not None or self._facts is None:
            return self.result
        if self.result is None:
            try:
                self.result = await asyncio.shield(self._facts)
            except Exception:  # a look-up bug must not refuse mail
                log.exception("client=%s screening look-ups failed", self.client_ip)
                self.result = ClientFacts(self.client_ip, dns_failed=("error",))
        return self.result

    @property
    def iprev(self) -> Iprev | None:
        return self.result.iprev if self.result is not None else None

    # --- MAIL and RCPT --------------------------------------------------------------
    async def check_mail(self, rt: Runtime) -> Verdict:
        settings = self.settings
        if settings.limits.messages_per_minute is None or rules.is_allowlisted(
                settings, self.client_ip, await self.facts()):
            return rules.ACCEPT
        return rules.decide_message(settings, self.shared.messages.add(self.client_ip, rt.clock()))

    async def check_recipient(self, rt: Runtime, domain: str, is_role: bool) -> Verdict:
        settings = self.settings
        facts = await self.facts()
        recent = 0
        if settings.limits.recipients_per_minute is not None and not is_role:
            recent = self.shared.recipients.add(self.client_ip, rt.clock())
        verdict = rules.decide_recipient(
            settings, self.client_ip, facts, is_role=is_role, pregreeted=self.pregreeted,
            recent_recipients=recent, customer=_customer_screening(rt, domain))
        if verdict.rule == "screening.dynamic_range":
            self.shared.dynamic_range_hit(rt, self.client_ip)
        elif not verdict.accept and rt.metrics is not None and verdict.rule != "screening.pregreet":
            rt.metrics.screening(verdict.rule)  # an early talker is counted once, at the greeting
        return verdict


def _customer_screening(rt: Runtime, domain: str) -> CustomerScreening | None:
    customer_id = rt.directory.customer_for_domain(domain)
    customer = rt.directory.customers.get(customer_id) if customer_id else None
    # A hosted domain without a policy file: the default policy's (docs/accounts.md).
    inbound = customer.inbound if customer is not None else rt.config.default_policy.inbound
    return inbound.screening if inbound is not None else None
