"""Our RFC 9989 DMARC verdicts against mailauth 7.1's (an independent implementation), case by case.

Both sides ask the same NSD (tests/dns/*.test.zone).  The corpus crosses author domains
with Authenticated Identifiers: deep subdomains (more than eight labels), a psd=y
suffix and its children, a psd=n Organizational Domain, subdomains of a parent without a
record, non-existent subdomains (np=), t=y, RFC 7489 records with pct=, and records that
are invalid, duplicated or missing tags.  They must agree on the result, the policy
applied to a failure, and the domain whose record applied."""

from __future__ import annotations

import asyncio

import pytest

from gateway.checks.dkim_verify import DkimResult
from gateway.checks.dmarc import alignment_org_domains, evaluate, find_record
from gateway.checks.dns import Resolver
from gateway.checks.spf import SpfResult
from tests.support.authdns import zones_from_dir
from tests.support.mailauth import mailauth_dmarc, mailauth_version

pytest_plugins = ("tests.support.authdns",)

ZONES = ["walk.test", "psd.test", "deep.test", "dmarc.test", "quarantine.test", "monitor.test"]
AUTHORS = [
    # walk.test: org record with sp/np, intermediate record, psd=n, odd records
    "walk.test", "exists.walk.test", "nx.walk.test", "deeper.nx.walk.test", "mail.walk.test",
    "a.mail.walk.test", "b.a.mail.walk.test", "team.walk.test", "x.team.walk.test",
    "y.x.team.walk.test", "a.b.c.d.e.f.g.h.i.j.walk.test", "twice.walk.test",
    "testing.walk.test", "testq.walk.test", "split.walk.test", "dup.walk.test",
    "legacy.walk.test", "norua.walk.test", "nop.walk.test", "badsp.walk.test",
    "upper.walk.test", "notfirst.walk.test", "badv.walk.test", "strict.walk.test",
    "mail.strict.walk.test",
    # psd.test publishes psd=y
    "psd.test", "shop.psd.test", "mail.shop.psd.test", "other.psd.test", "gone.psd.test",
    "x.y.gone.psd.test", "brand.psd.test", "mail.brand.psd.test",
    # deep names: the walk's eight-query bound
    "deep.test", "a.b.c.d.e.f.g.h.i.j.deep.test", "x.a.b.c.d.e.f.g.h.i.j.deep.test",
    "j.deep.test",
    # RFC 7489-era zones of the older tests
    "dmarc.test", "own.dmarc.test", "x.y.dmarc.test", "strict.dmarc.test",
    "twice.dmarc.test", "badp.dmarc.test", "badprua.dmarc.test", "half.dmarc.test",
    "quarantine.test", "monitor.test", "sub.monitor.test",
    # nothing published anywhere
    "nowhere.test", "a.b.nowhere.test",
]
OTHER_IDENTIFIERS = ["walk.test", "mail.walk.test", "team.walk.test", "shop.psd.test",
                     "mail.shop.psd.test", "other.psd.test", "psd.test", "deep.test",
                     "dmarc.test", "unrelated.example"]


def corpus() -> list[dict]:
    cases = []
    for author in AUTHORS:
        parent = author.partition(".")[2]
        combos = [(None, []), (author, []), (None, [author]), (parent, []),
                  (None, [f"sub.{author}"]), ("unrelated.example", ["unrelated.example"])]
        combos += [(None, [d]) for d in OTHER_IDENTIFIERS]
        combos += [(d, []) for d in OTHER_IDENTIFIERS[:4]]
        combos.append(("unrelated.example", ["unrelated.example", f"mail.{author}"]))
        cases += [{"author": author, "spf": s, "dkim": k} for s, k in combos]
    return cases


async def ours(port: int, cases: list[dict]) -> list[dict]:
    resolver = Resolver(["127.0.0.1"], port=port, timeout=2.0)
    answers = []
    for c in cases:
        spf = SpfResult("pass", "mailfrom", f"x@{c['spf']}", c["spf"]) if c["spf"] else None
        dkim = [DkimResult("pass", d, "sel", "rsa-sha256", "abcdefgh") for d in c["dkim"]]
        found = await find_record(resolver, c["author"])
        orgs = await alignment_org_domains(resolver, found, c["author"], spf, dkim)
        r = evaluate(found, c["author"], spf, dkim, orgs)
        answers.append(_comparable(r.result, r.disposition, r.record_domain))
    return answers


def _comparable(result: str, applied: str | None, policy_domain: str | None) -> dict:
    # What both report: the result; for a failure the policy to apply (after t=y); for
    # pass and fail the DMARC Policy Domain (RFC 9989 §3.2.5).
    return {"result": result,
            "policy": applied if result == "fail" else None,
            "policy_domain": policy_domain if result in ("pass", "fail") else None}


@pytest.fixture(scope="module")
def server(authdns_module_factory):
    return authdns_module_factory(zones_from_dir(names=ZONES))


def test_mailauth_is_the_version_the_issue_names():
    assert mailauth_version().startswith("7.1.")


def test_our_verdicts_equal_mailauths_on_the_tree_walk_corpus(server):
    cases = corpus()
    theirs = [_comparable(a["result"], a.get("policy"), a.get("policyDomain"))
              for a in mailauth_dmarc(server.port, cases)]
    mine = asyncio.run(ours(server.port, cases))
    assert len(theirs) == len(mine) == len(cases)
    differences = [(c, m, t) for c, m, t in zip(cases, mine, theirs, strict=True) if m != t]
    assert differences == []
    # The corpus is no formality: every outcome occurs in it.
    assert {a["result"] for a in mine} == {"pass", "fail", "none"}
    assert {a["policy"] for a in mine} == {None, "none", "quarantine", "reject"}
