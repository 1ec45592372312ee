"""The shared resolver against a real NSD: answers, negative answers, failures, cache."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from gateway.checks.dns import DnsTempError, Resolver
from gateway.config.checks import DnsSettings
from tests.support.authdns import txt_record

ZONE = {
    "example.test": """
        $TTL 300
        @                IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 30
        @                IN NS  ns
        @                TXT "v=spf1 ip4:192.0.2.0/24 -all"
        long             TXT "first-part-" "second-part"
        www              A   192.0.2.10
        alias            CNAME www
        short  5         TXT "five seconds"
        """,
}

pytest_plugins = ("tests.support.authdns",)  # NSD fixtures: authdns_factory, silent_dns, ...


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(coro):
    return asyncio.run(coro)


def make(server, **kw) -> Resolver:
    return Resolver([server.host], port=server.port, timeout=kw.pop("timeout", 2.0), **kw)


def test_txt_record_strings_are_joined(authdns_factory):
    server = authdns_factory(ZONE)
    resolver = make(server)
    assert run(resolver.txt("long.example.test")) == [b"first-part-second-part"]


def test_cname_is_followed_to_the_address(authdns_factory):
    server = authdns_factory(ZONE)
    answer = run(make(server).lookup("alias.example.test", "A"))
    assert answer.addresses() == ["192.0.2.10"]


def test_nxdomain_and_nodata_are_told_apart(authdns_factory):
    server = authdns_factory(ZONE)
    resolver = make(server)

    async def both():
        return (
            await resolver.lookup("missing.example.test", "TXT"),
            await resolver.lookup("www.example.test", "TXT"),
        )

    nx, nodata = run(both())
    assert nx.nxdomain and not nx.nodata and nx.records == ()
    assert nodata.nodata and not nodata.nxdomain
    # RFC 2308 §5: negative TTL = min(SOA TTL 300, MINIMUM 30)
    assert nx.ttl == 30 and nodata.ttl == 30


def test_positive_and_negative_answers_are_cached_for_their_ttl(authdns_factory):
    server = authdns_factory(ZONE)
    clock = FakeClock()
    resolver = make(server, clock=clock)

    async def twice(name, rdtype):
        await resolver.lookup(name, rdtype)
        await resolver.lookup(name, rdtype)

    run(twice("example.test", "TXT"))
    run(twice("missing.example.test", "TXT"))
    assert resolver.queries_sent == 2
    # Change the data: cached answers stay until their TTL runs out.
    server.reload({"example.test": ZONE["example.test"].replace("-all", "~all")
                   .replace("www              A", "missing          A")})
    assert run(resolver.txt("example.test")) == [b"v=spf1 ip4:192.0.2.0/24 -all"]
    assert run(resolver.lookup("missing.example.test", "TXT")).nxdomain  # still cached
    clock.now += 31  # negative TTL (30) over, positive (300) not
    assert run(resolver.lookup("missing.example.test", "TXT")).nodata
    assert run(resolver.txt("example.test")) == [b"v=spf1 ip4:192.0.2.0/24 -all"]
    clock.now += 300
    assert run(resolver.txt("example.test")) == [b"v=spf1 ip4:192.0.2.0/24 ~all"]


def test_record_ttl_is_honoured(authdns_factory):
    server = authdns_factory(ZONE)
    clock = FakeClock()
    resolver = make(server, clock=clock)
    run(resolver.lookup("short.example.test", "TXT"))
    assert resolver.cached("short.example.test", "TXT") is not None
    clock.now += 5
    assert resolver.cached("short.example.test", "TXT") is None


def test_cache_is_bounded(authdns_factory):
    server = authdns_factory(ZONE)
    resolver = make(server, cache_size=2)

    async def three():
        for name in ("example.test", "www.example.test", "long.example.test"):
            await resolver.lookup(name, "TXT")

    run(three())
    assert len(resolver) == 2
    assert resolver.cached("example.test", "TXT") is None  # least recently used went


def test_concurrent_lookups_of_one_name_share_one_query(authdns_factory):
    server = authdns_factory(ZONE)
    resolver = make(server)

    async def many():
        return await asyncio.gather(*(resolver.txt("example.test") for _ in range(20)))

    assert len(set(map(tuple, run(many())))) == 1
    assert resolver.queries_sent == 1


def test_unresponsive_server_is_a_temporary_error_within_the_timeout(silent_dns):
    resolver = Resolver([silent_dns.host], port=silent_dns.port, timeout=0.3)
    loop_time = []

    async def ask():
        start = asyncio.get_running_loop().time()
        try:
            await resolver.lookup("example.test", "TXT")
        finally:
            loop_time.append(asyncio.get_running_loop().time() - start)

    with pytest.raises(DnsTempError):
        run(ask())
    assert loop_time[0] < 1.0
    assert len(resolver) == 0  # temporary failures are not cached


def test_stopped_server_is_a_temporary_error(stopped_dns_port):
    resolver = Resolver(["127.0.0.1"], port=stopped_dns_port, timeout=0.5)
    with pytest.raises(DnsTempError):
        run(resolver.lookup("example.test", "TXT"))


def test_servfail_is_a_temporary_error(authdns_factory):
    # NSD answers REFUSED for a zone it does not serve: as bad as SERVFAIL for us.
    server = authdns_factory(ZONE)
    with pytest.raises(DnsTempError):
        run(make(server).lookup("other.invalid", "TXT"))


def test_helper_restart_serves_new_data_on_the_same_port(authdns_factory):
    server = authdns_factory({"example.test": '@ TXT "one"'})
    port = server.port
    server.reload({"example.test": '@ TXT "two"'})
    assert server.port == port
    assert run(make(server).txt("example.test")) == [b"two"]
    server.stop()
    assert not server.is_running


def test_answer_too_big_for_udp_comes_over_tcp(authdns_factory):
    # 3000 octets of TXT exceed the 1232-octet EDNS buffer: NSD truncates, we retry on TCP.
    big = "x" * 3000
    server = authdns_factory({"example.test": f"big TXT {txt_record(big)}"})
    assert run(make(server).txt("big.example.test")) == [big.encode()]


def test_cname_loop_is_no_data_not_a_temporary_error(authdns_factory):
    # RFC 1034 §3.6.2: a loop is bad data; RFC 7208 §5.5 then skips the name.
    server = authdns_factory({"example.test": "a CNAME b\nb CNAME a"})
    answer = run(make(server).lookup("a.example.test", "A"))
    assert answer.nodata and answer.cname_loop


def test_peek_reads_a_fresh_answer_without_querying(authdns_factory):
    server = authdns_factory(ZONE)
    clock = FakeClock()
    resolver = make(server, clock=clock)
    assert resolver.peek("example.test", "TXT") is None
    run(resolver.lookup("example.test", "TXT"))
    assert resolver.peek("EXAMPLE.test.", "txt").texts() == [b"v=spf1 ip4:192.0.2.0/24 -all"]
    clock.now += 301
    assert resolver.peek("example.test", "TXT") is None


def test_dns_settings_build_the_resolver_and_refuse_names():
    settings = DnsSettings(nameservers=["127.0.0.1", "::1"], port=5353, timeout=1.5, cache_size=7)
    resolver = Resolver.from_settings(settings)
    assert (resolver.timeout, resolver.cache_size) == (1.5, 7)
    with pytest.raises(ValidationError, match="not an IP address"):
        DnsSettings(nameservers=["dns.example"])
    with pytest.raises(ValidationError):
        DnsSettings(nameservers=[])
    with pytest.raises(ValidationError):
        DnsSettings(timeout=0)
    with pytest.raises(ValidationError):
        DnsSettings(servers=["127.0.0.1"])


def test_a_cancelled_session_does_not_cancel_the_shared_query(authdns_factory):
    server = authdns_factory(ZONE)
    resolver = make(server)

    async def go():
        first = asyncio.create_task(resolver.txt("example.test"))
        second = asyncio.create_task(resolver.txt("example.test"))
        await asyncio.sleep(0)
        first.cancel()
        return await second

    assert run(go()) == [b"v=spf1 ip4:192.0.2.0/24 -all"]
    assert resolver.queries_sent == 1


@pytest.mark.parametrize("name", ["a..example.test", "x" * 64 + ".example.test", "a" * 250 + ".b.c"])
def test_impossible_names_are_nxdomain_without_a_query(authdns_factory, name):
    server = authdns_factory(ZONE)
    resolver = make(server)
    assert run(resolver.lookup(name, "TXT")).nxdomain
    assert resolver.queries_sent == 0


def test_remembered_values_last_until_their_expiry_and_no_longer():
    clock = FakeClock()
    resolver = Resolver(["127.0.0.1"], clock=clock, cache_size=2)
    resolver.remember("a", "value a", expires=clock.now + 10)
    resolver.remember("gone", "already expired", expires=clock.now)
    assert resolver.recall("a") == "value a" and resolver.recall("gone") is None
    clock.now += 10
    assert resolver.recall("a") is None


def test_remembered_values_are_bounded_and_capped_at_a_day():
    clock = FakeClock()
    resolver = Resolver(["127.0.0.1"], clock=clock, cache_size=2)
    for key in ("a", "b", "c"):
        resolver.remember(key, key, expires=float("inf"))
    assert [resolver.recall(k) for k in ("a", "b", "c")] == [None, "b", "c"]  # LRU bound
    clock.now += 86400
    assert resolver.recall("c") is None  # an answer-less result still expires
