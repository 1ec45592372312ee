"""Which domains the ISP hosts, as the account source knows them: the MX's fact
"is this domain ours?" for domains no policy file claims (docs/accounts.md).

A source that can tell implements :class:`DomainLister` (sql ``domain_query``,
ldap ``domain_filter``; Dovecot's auth protocol cannot list domains, so with it
the gateway file's ``default_policy.domains`` is the list).

Answers are cached, both ways, in one LRU bounded by ``max_entries``: a hosted
domain for ``ttl`` seconds, a stranger's for ``negative_ttl``.  Concurrent
RCPTs for the same uncached domain share one look-up.  A source that is down
or slower than ``timeout`` gives *no answer* (None): the relay rule turns that
into ``451 4.4.3``, never a ``550`` for a real customer's domain and never an
acceptance (which would make us an open relay).  No answer is never cached.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from gateway.accounts.cache import SourceUnavailable

log = logging.getLogger(__name__)


@runtime_checkable
class DomainLister(Protocol):
    def lists_domains(self) -> bool:
        """The source is configured to answer :meth:`hosts_domain`."""
        ...

    async def hosts_domain(self, domain: str) -> bool:
        """Whether the ISP hosts ``domain`` (normalised).  Raises SourceUnavailable."""
        ...


class HostedDomains:
    def __init__(self, source: DomainLister, *, ttl: float, negative_ttl: float,
                 max_entries: int, timeout: float, clock: Callable[[], float] = time.monotonic):
        self._source = source
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._max = max_entries
        self._timeout = timeout
        self._clock = clock
        self._answers: OrderedDict[str, tuple[bool, float]] = OrderedDict()
        self._pending: dict[str, asyncio.Future[bool | None]] = {}

    async def hosts(self, domain: str) -> bool | None:
        """True: ours; False: a stranger's; None: the source cannot tell now."""
        now = self._clock()
        cached = self._answers.get(domain)
        if cached is not None:
            if cached[1] > now:
                self._answers.move_to_end(domain)
                return cached[0]
            del self._answers[domain]
        pending = self._pending.get(domain)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[bool | None] = asyncio.get_running_loop().create_future()
        self._pending[domain] = future
        try:
            answer = await self._ask(domain)
            future.set_result(answer)
        finally:
            if not future.done():  # cancelled while asking: the waiters get no answer
                future.set_result(None)
            del self._pending[domain]
        if answer is not None:
            self._remember(domain, answer)
        return answer

    async def _ask(self, domain: str) -> bool | None:
        try:
            return await asyncio.wait_for(self._source.hosts_domain(domain), self._timeout)
        except TimeoutError:
            log.warning("account source did not say within %.1f s whether it hosts %s",
                        self._timeout, domain)
        except SourceUnavailable:
            pass  # the source logged why
        except Exception as exc:  # a crash is ours: no answer, never an acceptance
            log.error("hosted-domain look-up for %s failed: %s: %s", domain,
                      type(exc).__name__, exc)
        return None

    def _remember(self, domain: str, hosted: bool) -> None:
        ttl = self._ttl if hosted else self._negative_ttl
        if ttl <= 0:
            return
        self._answers[domain] = (hosted, self._clock() + ttl)
        self._answers.move_to_end(domain)
        while len(self._answers) > self._max:
            self._answers.popitem(last=False)

    def forget(self) -> None:
        """At reload: the list in the database may be what changed."""
        self._answers.clear()
