"""Fetch a domain's MTA-STS policy file the way a sending MTA does (RFC 8461 §3.3), for
``portcullis dns check``.

HTTPS GET of ``https://mta-sts.DOMAIN/.well-known/mta-sts.txt``: the certificate must
be valid for that name, redirects are not followed, and the name is resolved through
the same resolver as the rest of the check (``--nameserver``), so a test or an
operator can point the whole check at one authoritative server.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass

import aiohttp
import dns.asyncresolver
import dns.exception
import dns.name
import dns.resolver
from aiohttp.abc import AbstractResolver, ResolveResult

from gateway.ops.mta_sts import MAX_POLICY_BYTES, POLICY_PATH

MAX_CNAME_HOPS = 8


@dataclass(frozen=True)
class Fetched:
    status: int = 0
    content_type: str = ""
    body: bytes = b""
    error: str = ""  # non-empty: no HTTP answer at all (DNS, TCP, TLS)


async def addresses(resolver: dns.asyncresolver.Resolver, host: str) -> list[tuple[int, str]]:
    """(family, address) of ``host``, following CNAMEs ourselves: an authoritative server
    answers a CNAME into another zone without the target's addresses."""
    name = host
    for _ in range(MAX_CNAME_HOPS):
        found: list[tuple[int, str]] = []
        for rdtype, family in (("A", socket.AF_INET), ("AAAA", socket.AF_INET6)):
            try:
                answer = await resolver.resolve(name + ".", rdtype)
            except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
                continue
            found += [(family, r.address) for r in answer]
        if found:
            return found
        try:
            cname = await resolver.resolve(name + ".", "CNAME")
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            return []
        name = cname[0].target.to_text().rstrip(".")
    return []


class _ThroughResolver(AbstractResolver):
    """aiohttp asks us for addresses; we ask dnspython (the check's --nameserver)."""

    def __init__(self, resolver: dns.asyncresolver.Resolver) -> None:
        self._resolver = resolver

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        found = await addresses(self._resolver, host)
        if not found:
            raise OSError(f"{host} has no address")
        return [ResolveResult(hostname=host, host=address, port=port, family=fam, proto=0,
                              flags=socket.AI_NUMERICHOST) for fam, address in found]

    async def close(self) -> None:
        return None


async def fetch_policy(resolver: dns.asyncresolver.Resolver, domain: str, *, port: int = 443,
                       cafile: str | None = None, seconds: float = 5.0) -> Fetched:
    host = f"mta-sts.{domain}"
    context = ssl.create_default_context(cafile=cafile)  # RFC 8461 §3.3: a valid certificate
    url = f"https://{host}:{port}{POLICY_PATH}" if port != 443 else f"https://{host}{POLICY_PATH}"
    connector = aiohttp.TCPConnector(resolver=_ThroughResolver(resolver), ssl=context)
    try:
        async with aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=seconds)) as session:
            async with session.get(url, allow_redirects=False) as response:
                body = await response.content.read(MAX_POLICY_BYTES + 1)
                return Fetched(response.status, response.content_type, body)
    except (aiohttp.ClientError, OSError, TimeoutError, dns.exception.DNSException) as exc:
        return Fetched(error=f"{type(exc).__name__}: {exc}"[:200])
