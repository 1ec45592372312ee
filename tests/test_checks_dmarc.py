"""DMARC: record discovery against a real NSD, alignment and policy (pure)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.checks.dkim_verify import DkimResult
from gateway.checks.dmarc import (
    RecordLookup,
    alignment_org_domains,
    evaluate,
    find_record,
    from_domain,
    organisational_domain,
    parse_record,
)
from gateway.checks.dns import Resolver
from gateway.checks.spf import SpfResult
from tests.support.authdns import zones_from_dir

pytest_plugins = ("tests.support.authdns",)  # NSD fixtures: authdns_factory, silent_dns, ...


@pytest.fixture(scope="module")
def server(authdns_module_factory):
    zones = zones_from_dir(names=["dmarc.test", "quarantine.test", "monitor.test"])
    zones["plain.test"] = '@ TXT "v=spf1 -all"'  # a domain without DMARC
    return authdns_module_factory(zones)


def lookup(server, domain, port=None, timeout=2.0) -> RecordLookup:
    async def go():
        resolver = Resolver(["127.0.0.1"], port=port or server.port, timeout=timeout)
        return await find_record(resolver, domain)

    return asyncio.run(go())


def spf(result, domain):
    return SpfResult(result, "mailfrom", f"x@{domain}", domain)


def dkim(result, domain):
    return DkimResult(result, domain, "sel", "rsa-sha256", "abcdefgh")


def check(server, header_from, spf_result=None, dkim_results=()):
    async def go():
        resolver = Resolver(["127.0.0.1"], port=server.port, timeout=2.0)
        found = await find_record(resolver, header_from)
        orgs = await alignment_org_domains(resolver, found, header_from, spf_result,
                                           list(dkim_results))
        return evaluate(found, header_from, spf_result, list(dkim_results), orgs)

    return asyncio.run(go())


# --- discovery -----------------------------------------------------------------------
def test_record_at_the_from_domain(server):
    found = lookup(server, "dmarc.test")
    assert (found.found_at, found.record.p, found.record.sp) == ("dmarc.test", "reject", "quarantine")


def test_organisational_domain_record_is_found_for_a_subdomain(server):
    found = lookup(server, "x.y.dmarc.test")
    assert found.found_at == "dmarc.test"


def test_subdomain_own_record_wins(server):
    assert lookup(server, "own.dmarc.test").record.p == "none"


def test_two_records_at_a_name_are_discarded_and_the_walk_goes_on(server):
    # RFC 9989 §4.10 step 2 (tests/test_checks_dmarc_rfc9989.py has the full set).
    assert lookup(server, "twice.dmarc.test").found_at == "dmarc.test"


def test_invalid_policy_without_rua_is_no_dmarc_and_with_rua_is_none(server):
    # RFC 9989 §4.10.1: the record found applies; without a valid p= it is p=none when it
    # has a rua=, else no DMARC processing at all.
    assert check(server, "badp.dmarc.test", spf("fail", "x.example")).result == "none"
    assert check(server, "badprua.dmarc.test", spf("fail", "x.example")).policy == "none"


def test_no_record_anywhere(server):
    found = lookup(server, "mail.plain.test")
    assert (found.record, found.temperror) == (None, "")


def test_dns_failure_is_temperror(server, silent_dns):
    found = lookup(server, "dmarc.test", port=silent_dns.port, timeout=0.3)
    assert found.temperror
    assert evaluate(found, "dmarc.test", None, []).result == "temperror"


# --- evaluation -----------------------------------------------------------------------------
def test_pass_through_aligned_spf(server):
    r = check(server, "dmarc.test", spf("pass", "mail.dmarc.test"))
    assert (r.result, r.spf_aligned, r.dkim_aligned, r.disposition) == ("pass", True, False, "none")


def test_pass_through_aligned_dkim(server):
    r = check(server, "dmarc.test", spf("fail", "other.example"), [dkim("pass", "dmarc.test")])
    assert (r.result, r.spf_aligned, r.dkim_aligned) == ("pass", False, True)


def test_unaligned_passes_fail_with_reject(server):
    r = check(server, "dmarc.test", spf("pass", "other.example"), [dkim("pass", "other.example")])
    assert (r.result, r.policy, r.disposition) == ("fail", "reject", "reject")


def test_failed_dkim_on_the_right_domain_does_not_align(server):
    r = check(server, "dmarc.test", None, [dkim("fail", "dmarc.test")])
    assert r.result == "fail"


def test_quarantine_policy(server):
    r = check(server, "quarantine.test", spf("fail", "quarantine.test"))
    assert (r.result, r.policy, r.disposition) == ("fail", "quarantine", "quarantine")


def test_none_policy(server):
    r = check(server, "monitor.test", spf("fail", "monitor.test"))
    assert (r.result, r.policy, r.disposition) == ("fail", "none", "none")


def test_subdomain_policy_applies_to_subdomains(server):
    r = check(server, "news.dmarc.test", spf("fail", "news.dmarc.test"))
    assert (r.result, r.is_subdomain_policy, r.policy) == ("fail", True, "quarantine")


def test_relaxed_alignment_accepts_a_sibling_subdomain(server):
    r = check(server, "news.dmarc.test", spf("pass", "mail.dmarc.test"))
    assert r.result == "pass"


def test_strict_alignment_wants_the_exact_domain(server):
    assert check(server, "strict.dmarc.test", spf("pass", "mail.strict.dmarc.test")).result == "fail"
    assert check(server, "strict.dmarc.test", spf("pass", "strict.dmarc.test")).result == "pass"
    assert check(server, "strict.dmarc.test", None, [dkim("pass", "mail.strict.dmarc.test")]).result == "fail"
    assert check(server, "strict.dmarc.test", None, [dkim("pass", "strict.dmarc.test")]).result == "pass"


def test_pct_of_an_rfc7489_record_is_ignored(server):
    # RFC 9989 §9.3: pct is historic; "unknown tags MUST be ignored" (§4.7).
    r = check(server, "half.dmarc.test", spf("fail", "x.example"))
    assert (r.policy, r.disposition) == ("reject", "reject")


def test_no_record_is_none(server):
    assert check(server, "plain.test", spf("fail", "plain.test")).result == "none"


# --- pure helpers -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (b"From: Alice <alice@Example.COM>\r\nTo: b@c\r\n\r\nbody", "example.com"),
        (b"To: b@c\r\nfrom:\r\n  alice@folded.example\r\n\r\nbody", "folded.example"),
        (b"To: b@c\r\n\r\nFrom: a@body.example\r\n", None),
        (b"From: a@one.example\r\nFrom: a@two.example\r\n\r\n", None),
        (b"From: a@one.example, b@two.example\r\n\r\n", None),
        (b"From: a@one.example, b@one.example\r\n\r\n", "one.example"),
    ],
)
def test_from_domain(message, expected):
    assert from_domain(message) == expected


def test_message_without_single_from_is_permerror():
    assert evaluate(RecordLookup(None), None, None, []).result == "permerror"


@pytest.mark.parametrize(
    ("domain", "org"),
    [("mail.example.co.uk", "example.co.uk"), ("example.com", "example.com"),
     ("a.b.c.example.com", "example.com"), ("co.uk", "co.uk")],
)
def test_offline_organisational_domain_guess_uses_the_public_suffix_list(domain, org):
    # Only `dns records` notes use it; DMARC itself walks the DNS tree.
    assert organisational_domain(domain) == org


@pytest.mark.parametrize(
    ("text", "p", "sp"),
    [("v=DMARC1; p=reject", "reject", ""),
     ("v=DMARC1;p=quarantine;sp=none;pct=20", "quarantine", "none"),
     ("v=DMARC1; p=none; pct=500", "none", ""),
     ("v=DMARC1; p=REJECT; unknown=tag", "reject", "")],
)
def test_parse_record(text, p, sp):
    r = parse_record(text)
    assert (r.p, r.sp) == (p, sp)


@pytest.mark.parametrize("text", ["v=spf1 -all", "p=reject; v=DMARC1", "v=DMARC2; p=reject", ""])
def test_not_a_dmarc_record(text):
    assert parse_record(text) is None
