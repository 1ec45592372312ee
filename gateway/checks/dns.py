"""The one asynchronous DNS resolver every inbound check shares.

Created once at start-up from the gateway's ``dns:`` settings and passed to
the checks; there is no module-level resolver.  It answers three ways:

* an :class:`Answer` with records (``answer.records``),
* an :class:`Answer` that is negative: ``answer.nxdomain`` (the name does not
  exist) or ``answer.nodata`` (the name exists, no records of that type),
* :class:`DnsTempError` raised: timeout, SERVFAIL, REFUSED, unreachable server.
  Checks turn this into ``temperror``, never into ``fail`` or ``none``.

Positive and negative answers are cached for their TTL (RFC 2308 §5: the
negative TTL is the smaller of the SOA record's TTL and its MINIMUM field),
in a bounded least-recently-used cache.  Temporary failures are not cached.
Concurrent look-ups of the same name and type share one query.

Results computed from cached answers (an SPF verdict, say) can be kept next to
them with :meth:`Resolver.remember`, until the earliest of those answers
expires: a warm cache then spares the computation too, and clearing the cache
forgets them with it.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.resolver

from gateway.config.checks import DnsSettings

# RFC 2308 §5 suggests capping negative caching at a few hours; a day for positives
# keeps a mistyped TTL from pinning a record.
MAX_POSITIVE_TTL = 86400
MAX_NEGATIVE_TTL = 3 * 3600
DEFAULT_NEGATIVE_TTL = 60  # a negative answer without an SOA (seen from broken servers)


class DnsTempError(Exception):
    """The question could not be answered now (timeout, SERVFAIL, no server reachable)."""


@dataclass(frozen=True, slots=True)
class Answer:
    """One look-up's outcome: records, or a negative answer (NXDOMAIN / NODATA)."""

    name: str  # the name asked, lower case, no trailing dot
    rdtype: str  # "TXT", "A", ...
    records: tuple[object, ...]  # dnspython rdata objects (of the final CNAME target)
    ttl: int
    nxdomain: bool = False
    cname_loop: bool = False  # the CNAME chain looped or ran too long: no data

    @property
    def nodata(self) -> bool:
        return not self.nxdomain and not self.records

    @property
    def is_negative(self) -> bool:
        return not self.records

    def texts(self) -> list[bytes]:
        """TXT records with their strings joined (RFC 7208 §3.3, RFC 6376 §3.6.2.2)."""
        return [b"".join(r.strings) for r in self.records]  # type: ignore[attr-defined]

    def addresses(self) -> list[str]:
        return [r.address for r in self.records]  # type: ignore[attr-defined]


def normalise_name(name: str) -> str:
    return name.rstrip(".").lower()


class Resolver:
    """Asynchronous stub resolver with a TTL-honouring, bounded cache."""

    def __init__(
        self,
        nameservers: list[str],
        *,
        port: int = 53,
        timeout: float = 3.0,
        cache_size: int = 10000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not nameservers:
            raise ValueError("at least one nameserver is needed")
        self._resolver = dns.asyncresolver.Resolver(configure=False)
        self._resolver.nameservers = list(nameservers)
        self._resolver.port = port
        # `timeout` bounds one query to one server; `lifetime` the whole look-up.
        # Both the same: a look-up never takes longer than the configured timeout.
        self._resolver.timeout = timeout
        self._resolver.lifetime = timeout
        self._resolver.use_edns(0, 0, 1232)  # DNS flag day 2020 buffer size
        self.timeout = timeout
        self.cache_size = cache_size
        self._clock = clock
        self._cache: OrderedDict[tuple[str, str], tuple[float, Answer]] = OrderedDict()
        self._inflight: dict[tuple[str, str], asyncio.Task[Answer]] = {}
        self._derived: OrderedDict[Hashable, tuple[float, object]] = OrderedDict()
        self.queries_sent = 0  # for tests and metrics: cache hits send nothing

    @classmethod
    def from_settings(cls, settings: DnsSettings) -> Resolver:
        """The one Resolver of a gateway, built at start-up (gateway/serve.py) and
        passed to the checks; the settings only describe it."""
        return cls(list(settings.nameservers), port=settings.port, timeout=settings.timeout,
                   cache_size=settings.cache_size)

    # -- public -----------------------------------------------------------------
    async def lookup(self, name: str, rdtype: str) -> Answer:
        """Records of ``rdtype`` at ``name``, from the cache when fresh."""
        key = (normalise_name(name), rdtype.upper())
        cached = self.cached(*key)
        if cached is not None:
            return cached
        # One query per name and type at a time; it runs as its own task, so a
        # session that gives up (client gone) does not cancel it for the others.
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._query_and_store(key))
            task.add_done_callback(_retrieve)
            self._inflight[key] = task
        return await asyncio.shield(task)

    async def txt(self, name: str) -> list[bytes]:
        return (await self.lookup(name, "TXT")).texts()

    def cached(self, name: str, rdtype: str) -> Answer | None:
        key = (normalise_name(name), rdtype.upper())
        hit = self._cache.get(key)
        if hit is None:
            return None
        expires, answer = hit
        if expires <= self._clock():
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        return answer

    def peek(self, name: str, rdtype: str) -> Answer | None:
        """A fresh cached answer without touching the cache's order: safe from other threads.

        pyspf runs in a worker thread; reading a warm cache directly spares it a
        round trip through the event loop per look-up.  (Only the loop thread writes
        the cache; a single dict read is atomic in CPython.)
        """
        hit = self._cache.get((normalise_name(name), rdtype.upper()))
        if hit is None or hit[0] <= self._clock():
            return None
        return hit[1]

    def peek_entry(self, name: str, rdtype: str) -> tuple[float, Answer] | None:
        """Like :meth:`peek`, with the clock time at which the answer expires."""
        hit = self._cache.get((normalise_name(name), rdtype.upper()))
        if hit is None or hit[0] <= self._clock():
            return None
        return hit

    def remember(self, key: Hashable, value: object, expires: float) -> None:
        """Keep ``value``, computed from cached answers, until ``expires`` (clock time:
        the earliest expiry among those answers, from :meth:`peek_entry`)."""
        now = self._clock()
        if self.cache_size <= 0 or expires <= now:
            return
        self._derived[key] = (min(expires, now + MAX_POSITIVE_TTL), value)
        self._derived.move_to_end(key)
        while len(self._derived) > self.cache_size:
            self._derived.popitem(last=False)

    def recall(self, key: Hashable) -> object | None:
        """A value kept by :meth:`remember` that has not expired, else None."""
        hit = self._derived.get(key)
        if hit is None:
            return None
        if hit[0] <= self._clock():
            self._derived.pop(key, None)
            return None
        return hit[1]

    async def close(self) -> None:
        """Cancel the look-ups still in flight (shutdown): each runs as a task of its
        own, which cancelling a waiter does not end."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def clear_cache(self) -> None:
        self._cache.clear()
        self._derived.clear()

    def __len__(self) -> int:
        return len(self._cache)

    # -- internals ----------------------------------------------------------------
    def _store(self, key: tuple[str, str], answer: Answer) -> None:
        if answer.ttl <= 0 or self.cache_size <= 0:
            return
        self._cache[key] = (self._clock() + answer.ttl, answer)
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    async def _query_and_store(self, key: tuple[str, str]) -> Answer:
        try:
            answer = await self._query(*key)
            self._store(key, answer)
            return answer
        finally:
            self._inflight.pop(key, None)

    async def _query(self, name: str, rdtype: str) -> Answer:
        try:
            qname = dns.name.from_text(name)  # absolute: no search list applies
        except (dns.exception.DNSException, UnicodeError):
            # Not a valid DNS name (empty or over-long label, bad IDNA): it cannot exist.
            return Answer(name, rdtype, (), DEFAULT_NEGATIVE_TTL, nxdomain=True)
        self.queries_sent += 1
        try:
            result = await self._resolver.resolve(
                qname, rdtype, raise_on_no_answer=False, search=False
            )
        except dns.resolver.NXDOMAIN as e:
            response = next(iter(e.responses().values()), None)
            return Answer(name, rdtype, (), _negative_ttl(response), nxdomain=True)
        except dns.resolver.NoNameservers as e:
            errors = e.kwargs.get("errors") or []
            if errors and all(isinstance(err[3], dns.message.ChainTooLong) for err in errors):
                # A CNAME loop (or an absurd chain) is bad data, not a passing outage:
                # RFC 1034 §3.6.2 calls it an error, and retrying will not fix it.  No
                # data, like pyspf's own resolver (RFC 7208 §5.5 then skips the name).
                return Answer(name, rdtype, (), DEFAULT_NEGATIVE_TTL, cname_loop=True)
            # Every server answered SERVFAIL/REFUSED or could not be reached.
            raise DnsTempError(f"{name}/{rdtype}: no nameserver could answer ({e})") from e
        except dns.exception.Timeout as e:
            raise DnsTempError(f"{name}/{rdtype}: timed out after {self.timeout}s") from e
        except dns.resolver.YXDOMAIN as e:
            raise DnsTempError(f"{name}/{rdtype}: name too long after DNAME ({e})") from e
        except (dns.exception.DNSException, OSError) as e:
            raise DnsTempError(f"{name}/{rdtype}: {type(e).__name__}: {e}") from e
        if result.rrset is None:  # NODATA
            return Answer(name, rdtype, (), _negative_ttl(result.response))
        ttl = min(result.rrset.ttl, MAX_POSITIVE_TTL)
        # A CNAME chain: the answer's lifetime is the shortest TTL on the way.
        for rrset in result.response.answer:
            ttl = min(ttl, rrset.ttl)
        return Answer(name, rdtype, tuple(result.rrset), ttl)


def _retrieve(task: asyncio.Task) -> None:
    # Every waiter may have gone: mark the outcome seen so asyncio does not log it.
    if not task.cancelled():
        task.exception()


def _negative_ttl(response: dns.message.Message | None) -> int:
    # RFC 2308 §5: min(SOA TTL, SOA MINIMUM) from the authority section.
    if response is not None:
        for rrset in response.authority:
            if rrset.rdtype == dns.rdatatype.SOA:
                return min(rrset.ttl, rrset[0].minimum, MAX_NEGATIVE_TTL)
    return DEFAULT_NEGATIVE_TTL
