"""SPF (RFC 7208) for the MAIL FROM identity, or HELO for the null sender.

pyspf does the evaluation (macros, mechanisms, the 10-term and 2-void limits
of RFC 7208 §4.6.4); our :class:`~gateway.checks.dns.Resolver` does the DNS.

Why a thread and not pre-fetching: an SPF evaluation is a walk whose next
question depends on the last answer (include:, redirect=, macros with %{i} or
%{l}), so the look-ups cannot be known in advance.  pyspf asks synchronously,
so it runs in a worker thread, and each of its look-ups is handed to the
event loop with ``run_coroutine_threadsafe``: the one shared resolver, its
cache and its timeouts serve pyspf too, and the loop never blocks.

With a warm cache the thread is not needed: pyspf is first run on the loop
with a look-up that only reads the cache (``evaluate_from_cache``, ~60 us);
at the first miss that attempt is dropped and the thread path runs instead.
The RFC 7208 suite checks that both paths give the same answers.

A result computed from the cache is also remembered in the resolver
(:meth:`~gateway.checks.dns.Resolver.remember`) until the earliest answer it
used expires: the next message from the same address for the same domain costs
a dictionary look-up.  When no record consulted holds a macro (``%``, RFC 7208
§7), the result depends only on the client address and the domain, so it is
kept under that key and serves every local part (VERP senders); otherwise
under the whole (address, sender, HELO, receiver).

pyspf takes no resolver: its ``query.dns()`` asks the module-level function
``spf.DNSLookup``.  Nothing of pyspf's is rebound for that: :class:`SpfQuery`'s
``dns()`` is pyspf's own code (its cache, CNAME chain, time and void-lookup
limits) run against a copy of pyspf's namespace in which ``DNSLookup`` is ours,
a dispatcher that finds the look-up of the evaluation running on the *current
thread* (``threading.local``), so several resolvers (tests, reloads) never mix.
Any other user of pyspf in the process keeps pyspf's own driver.
"""

from __future__ import annotations

import asyncio
import threading
import types
from concurrent.futures import Executor

import spf as pyspf

from gateway.checks.dns import DnsTempError, Resolver
from gateway.values.domains import normalise_domain
from gateway.values.evidence import SpfResult

# RFC 7208 §4.6.4: an evaluation may be limited to at least 20 seconds in all.
SPF_TOTAL_TIME = 20.0

# RFC 8601 §2.7.2 result names; pyspf's check2() already uses them.
RESULTS = {"pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"}


def normalise_mail_from(mail_from: str) -> str:
    """'' for the null reverse-path: aiosmtpd hands us "<>" (RFC 5321 §4.5.5)."""
    value = (mail_from or "").strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1]
    return value


async def check_spf(
    resolver: Resolver,
    *,
    client_ip: str,
    mail_from: str,
    helo: str,
    receiver: str | None = None,
    executor: Executor | None = None,
) -> SpfResult:
    """The SPF result for this client and envelope (never raises for DNS trouble)."""
    spf = check_spf_cached(resolver, client_ip=client_ip, mail_from=mail_from, helo=helo,
                           receiver=receiver)
    if spf is not None:
        return spf
    identity, sender, helo, domain = _identity(mail_from, helo)
    query = SpfQuery(
        i=client_ip, s=sender, h=helo, receiver=receiver, querytime=SPF_TOTAL_TIME
    )
    # Something was not cached: the full path, in a thread.
    result, explanation = await run_query(resolver, query, executor=executor)
    return _made(result, identity, sender, domain, explanation)


def check_spf_cached(
    resolver: Resolver,
    *,
    client_ip: str,
    mail_from: str,
    helo: str,
    receiver: str | None = None,
) -> SpfResult | None:
    """:func:`check_spf` on the calling thread from cached answers; None at a cache miss.

    A remembered result first; else pyspf on cached answers, remembered for next time.
    """
    identity, sender, helo, domain = _identity(mail_from, helo)
    if not domain:
        return SpfResult("none", identity, sender, domain, "no domain to check")
    by_domain = ("spf", client_ip, identity, domain.lower())
    exact = ("spf", client_ip, identity, sender, helo, receiver)
    outcome = resolver.recall(by_domain) or resolver.recall(exact)
    if outcome is None:
        try:
            query = SpfQuery(
                i=client_ip, s=sender, h=helo, receiver=receiver, querytime=SPF_TOTAL_TIME
            )
        except pyspf.PermError as e:  # an unparsable client address
            return SpfResult("permerror", identity, sender, domain.lower(), str(e))
        cached = _evaluate_cached(resolver, query)
        if cached is None:
            return None
        outcome, expires, uses_macros = cached
        if outcome[0] != "temperror":
            resolver.remember(exact if uses_macros else by_domain, outcome, expires)
    result, explanation = outcome  # type: ignore[misc]
    return _made(result, identity, sender, domain, explanation)


def _identity(mail_from: str, helo: str) -> tuple[str, str, str, str]:
    """(identity, sender, HELO name, domain) to check."""
    sender = normalise_mail_from(mail_from)
    helo = (helo or "").strip().rstrip(".")
    if sender:
        domain = sender.rpartition("@")[2] or helo
        if not domain.isascii():  # RFC 6531: a U-label domain is its A-label in DNS
            try:
                domain = normalise_domain(domain)
            except ValueError:
                pass  # left as sent: pyspf answers permerror/none for it
            else:
                # pyspf takes the domain from the sender: give it the A-label too.
                sender = f"{sender.rpartition('@')[0]}@{domain}"
        return "mailfrom", sender, helo, domain
    # RFC 7208 §2.4: for the null sender, check postmaster@<HELO domain>.
    return "helo", f"postmaster@{helo}" if helo else "", helo, helo


def _made(result: str, identity: str, sender: str, domain: str, explanation: str) -> SpfResult:
    if result not in RESULTS:  # 'ambiguous' only exists in pyspf's harsh mode
        result = "permerror"
    return SpfResult(result, identity, sender, domain.lower(), explanation)


async def run_query(
    resolver: Resolver, query: SpfQuery, *, executor: Executor | None = None
) -> tuple[str, str]:
    """Evaluate a prepared pyspf query in a worker thread, its DNS through ``resolver``.

    (result, explanation).  The RFC 7208 test suite uses this too, with its own
    query options, so it exercises exactly the gateway's DNS path.
    """
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, _evaluate, resolver, loop, query)


def _evaluate(
    resolver: Resolver, loop: asyncio.AbstractEventLoop, query: SpfQuery
) -> tuple[str, str]:
    """Run pyspf in this (worker) thread with DNS answered by ``resolver`` on ``loop``."""
    _local.lookup = _bridge(resolver, loop)
    try:
        result, _code, explanation = query.check()
        return result, explanation
    finally:
        _local.lookup = None


class _CacheMiss(BaseException):
    """Raised into pyspf by the cache-only look-up; BaseException so pyspf's handlers pass it."""


def evaluate_from_cache(resolver: Resolver, query: SpfQuery) -> tuple[str, str] | None:
    """Evaluate on the calling thread if every answer is cached; None at the first miss.

    With a warm cache the whole evaluation is ~60 us of CPU: cheaper on the loop
    than a trip to a worker thread (which also contends for the GIL).  Any miss
    abandons the attempt (the query object is then spent: make a new one).
    """
    cached = _evaluate_cached(resolver, query)
    return None if cached is None else cached[0]


def _evaluate_cached(
    resolver: Resolver, query: SpfQuery
) -> tuple[tuple[str, str], float, bool] | None:
    """(outcome, when the earliest answer used expires, whether a TXT record had a macro)."""
    missed = False
    expires = float("inf")
    uses_macros = False

    def lookup(name: str, qtype: str) -> list:
        nonlocal missed, expires, uses_macros
        entry = resolver.peek_entry(name, qtype)
        if entry is None:
            missed = True  # pyspf swallows some exceptions (exp=): remember the miss
            raise _CacheMiss(name)
        until, answer = entry
        expires = min(expires, until)
        if qtype in ("TXT", "SPF") and not uses_macros:
            uses_macros = any(b"%" in b"".join(r.strings) for r in answer.records)
        return [((name, qtype), _pyspf_value(qtype, r)) for r in answer.records]

    previous, _local.lookup = getattr(_local, "lookup", None), lookup
    try:
        result, _code, explanation = query.check()
    except _CacheMiss:
        return None
    finally:
        _local.lookup = previous
    if missed:
        return None
    return (result, explanation), expires, uses_macros


def _bridge(resolver: Resolver, loop: asyncio.AbstractEventLoop):
    wait = resolver.timeout + 1.0  # the resolver times out first; this is a safety net

    def lookup(name: str, qtype: str) -> list:
        answer = resolver.peek(name, qtype)
        if answer is not None:
            return [((name, qtype), _pyspf_value(qtype, r)) for r in answer.records]
        future = asyncio.run_coroutine_threadsafe(resolver.lookup(name, qtype), loop)
        try:
            answer = future.result(timeout=wait)
        except DnsTempError as e:
            raise pyspf.TempError(f"DNS {e}") from e
        except TimeoutError as e:
            future.cancel()
            raise pyspf.TempError(f"DNS {name}/{qtype}: no answer in {wait}s") from e
        return [((name, qtype), _pyspf_value(qtype, r)) for r in answer.records]

    return lookup


def _pyspf_value(qtype: str, rdata) -> object:
    # The shapes pyspf's own dnspython driver gives (spf.DNSLookup_dnspython).
    if qtype in ("A", "AAAA"):
        return rdata.address
    if qtype == "MX":
        return (rdata.preference, rdata.exchange.to_text(omit_final_dot=True))
    if qtype == "PTR":
        return rdata.target.to_text(omit_final_dot=True)
    if qtype in ("TXT", "SPF"):
        return tuple(rdata.strings)
    return rdata.to_text()


_local = threading.local()


def _dispatch(name, qtype, strict=True, timeout=None):
    # The signature of pyspf's DNSLookup drivers, as query.dns() calls them.
    lookup = getattr(_local, "lookup", None)
    if lookup is None:
        raise RuntimeError("an SpfQuery evaluated outside run_query/evaluate_from_cache")
    return lookup(name, qtype)


def _dns_with_our_lookup() -> types.FunctionType:
    """pyspf's ``query.dns``, its code unchanged, reading ``DNSLookup`` from a
    namespace of its own: a copy of pyspf's module globals with ours in."""
    own = pyspf.query.dns
    if "DNSLookup" not in own.__code__.co_names:
        # pyspf changed how it asks DNS: our look-ups would silently not be used.
        raise ImportError("pyspf's query.dns() no longer calls DNSLookup: see gateway/checks/spf.py")
    namespace = {**vars(pyspf), "DNSLookup": _dispatch}
    return types.FunctionType(own.__code__, namespace, own.__name__, own.__defaults__,
                              own.__closure__)


class SpfQuery(pyspf.query):
    """pyspf's query, its DNS answered by our resolver (see the module's notes).

    Evaluate it with :func:`run_query` or :func:`evaluate_from_cache`, which say
    which resolver answers; evaluated any other way it raises."""

    dns = _dns_with_our_lookup()
