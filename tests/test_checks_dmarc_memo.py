"""The DMARC record found from cached answers is remembered next to them
(gateway.checks.dmarc.find_record_cached): never past the earliest answer's TTL,
so a changed record is seen once the old answer has expired."""

from __future__ import annotations

import asyncio

import pytest

from gateway.checks.dmarc import find_record, find_record_cached
from gateway.checks.dns import Resolver

pytest_plugins = ("tests.support.authdns",)

ZONE = {
    "memo.example": """
        _dmarc   60 TXT "v=DMARC1; p=reject"
        sub      60 A   192.0.2.1
    """,
    "norecord.example": "@ 60 A 192.0.2.2",
}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def dns(authdns_factory):
    return authdns_factory(ZONE)


def policy(lookup):  # type: ignore[no-untyped-def]
    return None if lookup is None else (lookup.record.p if lookup.record else "no record",
                                        lookup.found_at)


def test_remembered_until_the_answer_expires_then_the_new_record_is_read(dns):
    clock = FakeClock()
    resolver = Resolver([dns.host], port=dns.port, timeout=2.0, clock=clock)
    assert find_record_cached(resolver, "memo.example") is None  # nothing cached yet
    asyncio.run(find_record(resolver, "memo.example"))
    assert policy(find_record_cached(resolver, "memo.example")) == ("reject", "memo.example")
    # The organisational domain's record, for a subdomain without one (two answers).
    asyncio.run(find_record(resolver, "sub.memo.example"))
    assert policy(find_record_cached(resolver, "sub.memo.example")) == ("reject", "memo.example")

    dns.reload({**ZONE, "memo.example": '_dmarc 60 TXT "v=DMARC1; p=none"\nsub 60 A 192.0.2.1'})
    clock.now += 59  # both answers (and what was read from them) still fresh
    assert policy(find_record_cached(resolver, "memo.example")) == ("reject", "memo.example")
    assert policy(find_record_cached(resolver, "sub.memo.example")) == ("reject", "memo.example")
    sent = resolver.queries_sent
    clock.now += 2  # past the TTL: nothing remembered, nothing cached
    assert find_record_cached(resolver, "memo.example") is None
    assert find_record_cached(resolver, "sub.memo.example") is None
    asyncio.run(find_record(resolver, "sub.memo.example"))
    assert resolver.queries_sent > sent
    assert policy(find_record_cached(resolver, "sub.memo.example")) == ("none", "memo.example")
    assert policy(find_record_cached(resolver, "memo.example")) == ("none", "memo.example")


def test_no_record_is_remembered_as_no_record(dns):
    resolver = Resolver([dns.host], port=dns.port, timeout=2.0)
    asyncio.run(find_record(resolver, "norecord.example"))
    sent = resolver.queries_sent
    first = find_record_cached(resolver, "norecord.example")
    assert first is not None and first.record is None
    assert find_record_cached(resolver, "norecord.example") == first
    assert resolver.queries_sent == sent
