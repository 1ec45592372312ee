"""The MX screening look-ups for one client address: the DNS lists and its
forward-confirmed reverse DNS (FCrDNS), all asked at once, through the one
resolver (answers cached by their TTL, gateway/checks/dns.py).

Raw answers only: which answers count, and for how much, is the rules' business
(gateway/rules/screening.py).  A DNS failure is reported as such, never raised:
it must neither refuse mail nor hold up the session.
"""

from __future__ import annotations

import asyncio
import ipaddress

from gateway.checks.dns import Answer, DnsTempError, Resolver
from gateway.values.screening import Iprev, ZoneAnswer

# RFC 8601 §3 (iprev, from RFC 8601's reference to RFC 7001 §3): a PTR set may be
# long; the names past this many are not tried (Postfix and OpenSMTPD stop at ten).
MAX_PTR_NAMES = 10


async def ask_list(resolver: Resolver, query: str, zone: str) -> ZoneAnswer:
    """One DNS list's A records for the client (RFC 5782 §2.1)."""
    try:
        answer = resolver.cached(query, "A") or await resolver.lookup(query, "A")
    except DnsTempError:
        return ZoneAnswer(zone, failed=True)
    return ZoneAnswer(zone, tuple(int(ipaddress.IPv4Address(a)) for a in answer.addresses()))


async def ask_iprev(resolver: Resolver, client_ip: str) -> Iprev:
    """RFC 8601 §3 / RFC 1912 §2.1: the PTR names of the address, and one of them
    whose A (or AAAA) records include the address again."""
    address = ipaddress.ip_address(client_ip)
    try:
        ptr = await _lookup(resolver, address.reverse_pointer, "PTR")
    except DnsTempError:
        return Iprev("temperror")
    names = [str(r.target).rstrip(".").lower() for r in ptr.records][:MAX_PTR_NAMES]  # type: ignore[attr-defined]
    if not names:
        return Iprev("fail")  # no PTR: nothing to confirm (permanent, RFC 8601 §2.7.3)
    rdtype = "A" if address.version == 4 else "AAAA"
    answers = await asyncio.gather(*(_lookup(resolver, n, rdtype) for n in names),
                                   return_exceptions=True)
    failed = False
    for name, answer in zip(names, answers, strict=True):
        if isinstance(answer, Answer):
            if any(ipaddress.ip_address(a) == address for a in answer.addresses()):
                return Iprev("pass", name)
        else:
            failed = True
    return Iprev("temperror" if failed else "fail")


async def _lookup(resolver: Resolver, name: str, rdtype: str) -> Answer:
    # A warm cache answers without a task or an await on the resolver's in-flight map.
    return resolver.cached(name, rdtype) or await resolver.lookup(name, rdtype)
