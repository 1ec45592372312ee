"""DMARC as RFC 9989 words it, rule by rule, against a real NSD (tests/dns/*.test.zone).

Each test quotes the section it holds the code to.  Records, walks and alignment go
through gateway.checks.dmarc exactly as the inbound path does (find_record, then
alignment_org_domains, then evaluate)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.checks.dkim_verify import DkimResult
from gateway.checks.dmarc import (
    RecordLookup,
    alignment_org_domains,
    evaluate,
    find_record,
    parse_record,
    tree_walk,
    walk_names,
)
from gateway.checks.dmarc_record import DmarcRecord
from gateway.checks.dns import Resolver
from gateway.checks.spf import SpfResult
from tests.support.authdns import zones_from_dir

pytest_plugins = ("tests.support.authdns",)


@pytest.fixture(scope="module")
def server(authdns_module_factory):
    return authdns_module_factory(zones_from_dir(names=["walk.test", "psd.test", "deep.test"]))


def resolver_for(server, port=None, timeout=2.0) -> Resolver:
    return Resolver(["127.0.0.1"], port=port or server.port, timeout=timeout)


def lookup(server, domain) -> RecordLookup:
    return asyncio.run(find_record(resolver_for(server), domain))


def spf(domain, result="pass", identity="mailfrom"):
    return SpfResult(result, identity, f"x@{domain}", domain)


def dkim(domain, result="pass"):
    return DkimResult(result, domain, "sel", "rsa-sha256", "abcdefgh")


def dmarc(server, author, spf_result=None, dkim_results=(), port=None, timeout=2.0):
    async def go():
        resolver = resolver_for(server, port, timeout)
        found = await find_record(resolver, author)
        orgs = await alignment_org_domains(resolver, found, author, spf_result, list(dkim_results))
        return evaluate(found, author, spf_result, list(dkim_results), orgs)

    return asyncio.run(go())


# --- §4.10 the DNS Tree Walk ------------------------------------------------------------
def test_walk_asks_the_rfc_example_names_in_order():
    # §4.10: "for a message with the arbitrary Author Domain of
    # 'a.b.c.d.e.f.g.h.i.j.mail.example.com', a full DNS Tree Walk would require the
    # following eight queries"
    assert walk_names("a.b.c.d.e.f.g.h.i.j.mail.example.com") == [
        "a.b.c.d.e.f.g.h.i.j.mail.example.com", "g.h.i.j.mail.example.com",
        "h.i.j.mail.example.com", "i.j.mail.example.com", "j.mail.example.com",
        "mail.example.com", "example.com", "com",
    ]


@pytest.mark.parametrize("labels", range(1, 16))
def test_walk_never_asks_more_than_eight_names(labels):
    # §4.10: "Author Domains with more than eight labels do not result in more than eight
    # DNS queries."
    names = walk_names(".".join(f"l{i}" for i in range(labels)))
    assert len(names) == min(labels, 8)
    assert len(set(names)) == len(names)


def test_deep_author_domain_costs_eight_queries_on_the_wire(server):
    resolver = resolver_for(server)
    found = asyncio.run(find_record(resolver, "a.b.c.d.e.f.g.h.i.j.deep.test"))
    assert (found.found_at, found.org_domain, found.record.p) == ("deep.test", "deep.test", "quarantine")
    assert resolver.queries_sent == 8


def test_walk_stops_at_a_psd_tag(server):
    # §4.10 step 6: "If a single record remains and it contains a 'psd=n' or 'psd=y' tag, stop."
    resolver = resolver_for(server)
    walk = asyncio.run(tree_walk(resolver, "x.team.walk.test"))
    assert [name for name, _ in walk.found] == ["team.walk.test"]
    assert resolver.queries_sent == 2  # _dmarc.walk.test and _dmarc.test never asked


def test_several_records_at_a_name_are_all_discarded_and_the_walk_goes_on(server):
    # §4.10 step 2: "If multiple DMARC Policy Records are returned for a single target,
    # they are all discarded."
    found = lookup(server, "twice.walk.test")
    assert (found.found_at, found.record.p) == ("walk.test", "reject")


def test_txt_strings_are_joined_before_parsing(server):
    # §4.5: "the module performing DMARC evaluation MUST concatenate these strings"
    assert lookup(server, "split.walk.test").record.p == "reject"


# --- §4.10.1 policy discovery -------------------------------------------------------------
def test_author_domain_record_applies_with_p(server):
    # §4.10.1: "If the DMARC Policy Record to be applied is that of the Author Domain, then
    # the Domain Owner Assessment Policy is taken from the 'p' tag of the record."
    r = dmarc(server, "team.walk.test", spf("other.example"))
    assert (r.result, r.policy, r.is_subdomain_policy, r.record_domain) == (
        "fail", "quarantine", False, "team.walk.test")


def test_existing_subdomain_takes_sp(server):
    # §4.10.1: "taken from the 'sp' tag (if any) if the Author Domain exists"
    r = dmarc(server, "exists.walk.test", spf("other.example"))
    assert (r.result, r.policy, r.is_subdomain_policy, r.record_domain) == (
        "fail", "quarantine", True, "walk.test")


def test_non_existent_subdomain_takes_np(server):
    # §4.10.1: "... or the 'np' tag (if any) if the Author Domain does not exist";
    # §3.2.13: "if the response code received for a query for a domain name is NXDOMAIN,
    # then the domain name and any possible subdomains do not exist."
    found = lookup(server, "nx.walk.test")
    assert found.author_exists is False
    r = dmarc(server, "nx.walk.test", spf("other.example"))
    assert (r.result, r.policy) == ("fail", "reject")
    assert dmarc(server, "deeper.nx.walk.test", spf("other.example")).policy == "reject"


def test_subdomain_of_a_parent_without_record_uses_the_organizational_domain(server):
    # §4.10.1: "The Organizational Domain of the Author Domain" is the next preference;
    # §4.10.2 step 3: the record "found at the name with the fewest number of labels",
    # so mail.walk.test's own record does not govern a.mail.walk.test.
    found = lookup(server, "a.mail.walk.test")
    assert (found.found_at, found.org_domain, found.record.p) == ("walk.test", "walk.test", "reject")
    assert dmarc(server, "a.mail.walk.test", spf("other.example")).policy == "quarantine"


def test_psd_record_applies_when_the_organizational_domain_has_none(server):
    # §4.10.1: "The Public Suffix Domain of the Author Domain" is the last preference, and
    # a subdomain takes sp/np from it.
    found = lookup(server, "shop.psd.test")
    assert (found.found_at, found.org_domain) == ("psd.test", "shop.psd.test")
    assert dmarc(server, "shop.psd.test", spf("other.example")).policy == "quarantine"
    assert dmarc(server, "gone.psd.test", spf("other.example")).policy == "reject"  # np


def test_psd_policy_is_not_used_for_an_organizational_domain_with_a_record(server):
    # §4.10.1: "Note: PSD policy is not used for Organizational Domains that have published
    # a DMARC Policy Record."
    found = lookup(server, "mail.brand.psd.test")
    assert (found.found_at, found.org_domain, found.record.p) == ("brand.psd.test", "brand.psd.test", "none")


def test_no_record_anywhere_means_dmarc_does_not_apply(server):
    # §4.10.1: "If the set produced by the DNS Tree Walk contains no DMARC Policy Record ...
    # Mail Receivers MUST NOT apply the DMARC mechanism to the message."
    assert dmarc(server, "nowhere.test", spf("other.example")).result == "none"


def test_record_without_p_and_with_rua_acts_as_p_none(server):
    # §4.10.1: "If a 'rua' tag is present and contains at least one syntactically valid
    # reporting URI, the Mail Receiver MUST act as if a record containing 'p=none' was
    # retrieved and continue processing"
    r = dmarc(server, "nop.walk.test", spf("other.example"))
    assert (r.result, r.policy, r.disposition) == ("fail", "none", "none")


def test_invalid_sp_with_rua_acts_as_p_none(server):
    # §4.10.1: "... or contains an 'sp' or 'np' tag that is not valid, then: If a 'rua' ..."
    r = dmarc(server, "badsp.walk.test", spf("other.example"))
    assert (r.result, r.policy) == ("fail", "none")


def test_record_without_p_or_rua_means_no_dmarc_processing(server):
    # §4.10.1: "Otherwise, the Mail Receiver applies no DMARC processing to this message."
    r = dmarc(server, "norua.walk.test", spf("other.example"))
    assert (r.result, r.record_domain) == ("none", "norua.walk.test")


def test_tag_names_are_case_sensitive(server):
    # §4.7: DKIM's tag-list syntax; RFC 6376 §3.2: "Tags MUST be interpreted in a
    # case-sensitive manner": "P=none" is an unknown tag, so there is no p and no rua.
    assert dmarc(server, "upper.walk.test", spf("other.example")).result == "none"


@pytest.mark.parametrize("author", ["notfirst.walk.test", "badv.walk.test", "dup.walk.test"])
def test_records_that_must_be_ignored_fall_through_to_the_organizational_domain(server, author):
    # §4.7 "v": "If the tag is not the first in the list, or the tag is absent, or the
    # value is not 'DMARC1', then the entire record MUST be ignored." RFC 6376 §3.2 (the
    # syntax §4.7 adopts): "if a tag name does occur more than once, the entire tag-list is
    # invalid."
    found = lookup(server, author)
    assert (found.found_at, found.record.p) == ("walk.test", "reject")


def test_dns_failure_is_temperror_never_pass(server, silent_dns):
    # §5.3.6: "If one or more DNS queries required to perform DMARC validation on the
    # message do not complete ..., the message cannot be considered to pass or fail"
    r = dmarc(server, "walk.test", spf("walk.test"), port=silent_dns.port, timeout=0.3)
    assert r.result == "temperror"


def test_unknown_existence_makes_a_failure_temperror():
    # §5.3.6 again: whether np or sp applies depends on a query that failed.
    record = parse_record("v=DMARC1; p=reject; sp=quarantine; np=none")
    found = RecordLookup(record, "walk.test", "walk.test", existence_error="timed out")
    assert evaluate(found, "x.walk.test", spf("other.example"), []).result == "temperror"
    assert evaluate(found, "x.walk.test", spf("walk.test"), [], {"walk.test": "walk.test"}).result == "pass"
    # and a walk that failed for an identifier leaves its alignment unknown as well
    assert evaluate(found, "x.walk.test", spf("walk.test"), [], {"walk.test": ""}).result == "temperror"


# --- §4.10.2 identifier alignment ------------------------------------------------------------
def test_relaxed_alignment_shares_the_organizational_domain(server):
    # §3.2.10.1 with §4.10.2: both names' walks end at walk.test.
    r = dmarc(server, "walk.test", None, [dkim("a.mail.walk.test")])
    assert (r.result, r.dkim_aligned, r.aligned_dkim_domains) == ("pass", True, ("a.mail.walk.test",))
    assert dmarc(server, "exists.walk.test", spf("mail.walk.test")).result == "pass"


def test_psd_n_makes_its_own_organizational_domain(server):
    # §4.10.2 step 1: "If a valid DMARC Policy Record contains the 'psd' tag set to 'n'
    # ('psd=n'), this is the Organizational Domain"
    r = dmarc(server, "x.team.walk.test", None, [dkim("walk.test")])
    assert (r.result, r.org_domain) == ("fail", "team.walk.test")
    assert dmarc(server, "x.team.walk.test", None, [dkim("team.walk.test")]).result == "pass"


def test_psd_y_puts_the_organizational_domain_one_label_below(server):
    # §4.10.2 step 2: "the Organizational Domain is the domain one label below this one"
    assert dmarc(server, "shop.psd.test", None, [dkim("mail.shop.psd.test")]).result == "pass"
    assert dmarc(server, "shop.psd.test", None, [dkim("other.psd.test")]).result == "fail"


def test_strict_alignment_is_a_string_comparison(server):
    # §4.10.2: "The DMARC Policy Record for the Author Domain indicates strict alignment. In
    # this case, a simple string comparison ... is all that is required."
    assert dmarc(server, "strict.walk.test", spf("mail.strict.walk.test")).result == "fail"
    assert dmarc(server, "strict.walk.test", None, [dkim("strict.walk.test")]).result == "pass"


def test_spf_of_the_helo_identity_does_not_count(server):
    # §4.4.2: "DMARC relies solely on SPF validation of the MAIL FROM identity."
    assert dmarc(server, "walk.test", spf("walk.test", identity="helo")).result == "fail"


def test_failed_dkim_on_the_author_domain_does_not_align(server):
    # §5.3.5: only Authenticated Identifiers (a DKIM pass) can align.
    assert dmarc(server, "walk.test", None, [dkim("walk.test", "fail")]).result == "fail"


# --- §4.7 t=, and RFC 7489 records --------------------------------------------------------
@pytest.mark.parametrize(("author", "published", "applied"),
                         [("testing.walk.test", "reject", "quarantine"),
                          ("testq.walk.test", "quarantine", "none")])
def test_t_y_applies_the_policy_one_level_below(server, author, published, applied):
    # §4.7 "t": "if the policy is 'quarantine' and the value of the 't' tag is 'y', a policy
    # of 'none' will be applied ...; if the policy is 'reject' ..., a policy of 'quarantine'"
    r = dmarc(server, author, spf("other.example"))
    assert (r.result, r.policy, r.disposition, r.testing) == ("fail", published, applied, True)


def test_rfc7489_record_is_accepted_and_pct_is_ignored(server):
    # §9.3 lists pct, rf and ri as "historic"; §4.7: "Only tags defined in that registry
    # are to be processed; unknown tags MUST be ignored."  Appendix A.6: t replaces pct.
    r = dmarc(server, "legacy.walk.test", spf("other.example"))
    assert (r.result, r.policy, r.disposition) == ("fail", "reject", "reject")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("v=DMARC1; p=reject", DmarcRecord(p="reject", text="v=DMARC1; p=reject")),
     ("v = DMARC1 ;p=Quarantine; adkim=S; aspf=x; t=Y; psd=n",  # §4.8 *WSP, literal values
      DmarcRecord(p="quarantine", adkim="s", aspf="r", t="y", psd="n",
                  text="v = DMARC1 ;p=Quarantine; adkim=S; aspf=x; t=Y; psd=n")),
     ("v=DMARC1; p=none; rua=mailto:a@x.test!10m, bare@x.test, https://r.test/d",
      DmarcRecord(p="none", rua=("mailto:a@x.test", "https://r.test/d"),
                  text="v=DMARC1; p=none; rua=mailto:a@x.test!10m, bare@x.test, https://r.test/d"))],
)
def test_parse_record(text, expected):
    # §4.8: "Syntax errors in the remainder of the record MUST be discarded in favor of
    # default values (if any) or ignored outright"; rua is a list of URIs (a bare address
    # is not one), an obsolete "!size" suffix is ignored.
    assert parse_record(text) == expected


@pytest.mark.parametrize("text", ["v=spf1 -all", "p=reject; v=DMARC1", "v=DMARC2; p=reject",
                                  "v=dmarc1; p=reject", "", "v=DMARC1; p=none; sp=none; sp=reject"])
def test_not_a_dmarc_record(text):
    assert parse_record(text) is None
