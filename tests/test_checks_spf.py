"""SPF through the shared resolver against a real NSD serving tests/dns/spf.test.zone."""

from __future__ import annotations

import asyncio
import types

import pytest

from gateway.checks.dns import Resolver
from gateway.checks.spf import SpfQuery, check_spf, normalise_mail_from
from tests.support.authdns import zones_from_dir

GOOD_IP = "192.0.2.1"
BAD_IP = "203.0.113.9"

pytest_plugins = ("tests.support.authdns",)  # NSD fixtures: authdns_factory, silent_dns, ...


@pytest.fixture(scope="module")
def server(authdns_module_factory):
    return authdns_module_factory(zones_from_dir(names=["spf.test"]))


def spf(server, mail_from, ip=GOOD_IP, helo="mx1.spf.test", port=None, timeout=2.0):
    async def go():
        resolver = Resolver(["127.0.0.1"], port=port or server.port, timeout=timeout)
        return await check_spf(resolver, client_ip=ip, mail_from=mail_from, helo=helo)

    return asyncio.run(go())


@pytest.mark.parametrize(
    ("mail_from", "ip", "expected"),
    [
        ("a@pass.spf.test", GOOD_IP, "pass"),
        ("a@fail.spf.test", BAD_IP, "fail"),
        ("a@softfail.spf.test", BAD_IP, "softfail"),
        ("a@neutral.spf.test", BAD_IP, "neutral"),
        ("a@nospf.spf.test", GOOD_IP, "none"),
        ("a@no-such-name.spf.test", GOOD_IP, "none"),
        ("a@include.spf.test", GOOD_IP, "pass"),
        ("a@include.spf.test", BAD_IP, "fail"),
        ("a@syntax.spf.test", GOOD_IP, "permerror"),
        ("a@two-records.spf.test", GOOD_IP, "permerror"),
        ("a@toomany.spf.test", BAD_IP, "permerror"),  # all 11 terms evaluated
        ("a@toomany.spf.test", GOOD_IP, "pass"),  # matched at the 10th: RFC 7208 §4.6.4 counts terms evaluated
        ("a@tenexactly.spf.test", GOOD_IP, "pass"),
        ("a@voids.spf.test", GOOD_IP, "permerror"),
        ("a@twovoids.spf.test", GOOD_IP, "pass"),
    ],
)
def test_mail_from_results(server, mail_from, ip, expected):
    result = spf(server, mail_from, ip)
    assert result.result == expected, result.explanation
    assert result.identity == "mailfrom"
    assert result.property == ("smtp.mailfrom", mail_from)


def test_too_many_lookups_is_explained(server):
    result = spf(server, "a@toomany.spf.test", BAD_IP)
    assert "Too many DNS lookups" in result.explanation


def test_void_lookup_limit_is_explained(server):
    assert "Void lookup limit" in spf(server, "a@voids.spf.test").explanation


@pytest.mark.parametrize("null_sender", ["<>", "", " <> "])
def test_null_sender_checks_the_helo_identity(server, null_sender):
    # LIBRARY-NOTES: aiosmtpd gives "<>"; RFC 7208 §2.4 says check postmaster@HELO.
    result = spf(server, null_sender, GOOD_IP, helo="mx1.spf.test")
    assert (result.result, result.identity) == ("pass", "helo")
    assert result.property == ("smtp.helo", "mx1.spf.test")
    assert spf(server, null_sender, BAD_IP, helo="mx1.spf.test").result == "fail"


def test_null_sender_without_helo_is_none(server):
    assert spf(server, "<>", GOOD_IP, helo="").result == "none"


def test_angle_brackets_are_removed_from_mail_from():
    assert normalise_mail_from("<a@b.test>") == "a@b.test"
    assert normalise_mail_from("<>") == ""


def test_unresponsive_server_gives_temperror_not_fail(server, silent_dns):
    result = spf(server, "a@pass.spf.test", port=silent_dns.port, timeout=0.3)
    assert result.result == "temperror"


def test_stopped_server_gives_temperror(server, stopped_dns_port):
    result = spf(server, "a@pass.spf.test", port=stopped_dns_port, timeout=0.3)
    assert result.result == "temperror"


def test_ipv6_client_is_checked(server):
    assert spf(server, "a@fail.spf.test", ip="2001:db8::1").result == "fail"


def test_concurrent_checks_share_the_resolver_without_mixing(server):
    async def go():
        resolver = Resolver(["127.0.0.1"], port=server.port, timeout=2.0)
        cases = [("a@pass.spf.test", GOOD_IP), ("a@fail.spf.test", BAD_IP)] * 10
        return await asyncio.gather(
            *(check_spf(resolver, client_ip=ip, mail_from=m, helo="x") for m, ip in cases)
        )

    assert [r.result for r in asyncio.run(go())] == ["pass", "fail"] * 10


def test_warm_cache_gives_the_same_result_without_queries(server):
    async def go():
        resolver = Resolver(["127.0.0.1"], port=server.port, timeout=2.0)
        out = []
        for mail_from, ip in [("a@include.spf.test", GOOD_IP), ("a@fail.spf.test", BAD_IP),
                              ("a@toomany.spf.test", BAD_IP), ("a@voids.spf.test", GOOD_IP)]:
            cold = await check_spf(resolver, client_ip=ip, mail_from=mail_from, helo="x")
            sent = resolver.queries_sent
            warm = await check_spf(resolver, client_ip=ip, mail_from=mail_from, helo="x")
            out.append((cold, warm, resolver.queries_sent - sent))
        return out

    for cold, warm, sent in asyncio.run(go()):
        assert cold == warm and sent == 0


# --- pyspf asks DNS in one place, and ours answers there ----------------------------------
def test_query_dns_is_the_only_caller_of_pyspfs_dns_driver():
    # SpfQuery replaces query.dns() (pyspf's code, our DNSLookup): a second caller of
    # DNSLookup in pyspf would be a look-up that bypasses our resolver.
    import spf as pyspf

    def code_objects(code):
        yield code
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                yield from code_objects(const)

    callers = set()
    for name, value in vars(pyspf).items():
        members = vars(value).items() if isinstance(value, type) else [(name, value)]
        for member_name, member in members:
            if isinstance(member, types.FunctionType):
                for code in code_objects(member.__code__):
                    if "DNSLookup" in code.co_names:
                        callers.add(f"{name}.{member_name}" if isinstance(value, type) else name)
    assert callers == {"query.dns"}


def test_an_spf_query_asks_only_our_resolver(server):
    # A name only our NSD serves (on its own port): answered, so the look-up went there.
    assert spf(server, "a@pass.spf.test").result == "pass"
    query = SpfQuery(i=GOOD_IP, s="a@pass.spf.test", h="mx1.spf.test")
    with pytest.raises(RuntimeError, match="outside run_query"):
        query.check()  # no resolver said: it never falls back to pyspf's own driver
