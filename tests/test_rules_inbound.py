"""The per-customer inbound policy, as a table of cases (pure, no sockets)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.checks.arc import ArcResult
from gateway.checks.dkim_verify import DkimResult
from gateway.checks.dmarc import DmarcResult
from gateway.checks.inbound import InboundEvidence
from gateway.checks.spf import SpfResult
from gateway.config.inbound import InboundAction, InboundDomainPolicy, InboundPolicy
from gateway.rules.inbound import QUARANTINE_HEADER, decide_inbound

T, Q, TF, R = InboundAction.TAG, InboundAction.QUARANTINE, InboundAction.TEMPFAIL, InboundAction.REJECT


def evidence(spf="pass", dmarc="pass", disposition="none", arc="none", sealer=""):
    return InboundEvidence(
        spf=SpfResult(spf, "mailfrom", "a@sender.example", "sender.example"),
        dkim=(DkimResult("pass", "sender.example", "s", "rsa-sha256", "abcdefgh"),),
        dmarc=DmarcResult(dmarc, "sender.example", policy=disposition, disposition=disposition),
        arc=ArcResult(arc, 1 if arc != "none" else 0, sealer=sealer, sealers=(sealer,)),
        header_from="sender.example",
    )


DEFAULT = InboundDomainPolicy()
STRICT = InboundDomainPolicy(spf_fail=R, dmarc_quarantine=Q, temperror=TF)
LENIENT = InboundDomainPolicy(dmarc_reject=T)
TRUSTING = InboundDomainPolicy(trusted_arc_sealers=("lists.example.org",))
TEMPFAILING = InboundDomainPolicy(dmarc_reject=TF, spf_fail=TF)
QUARANTINING = InboundDomainPolicy(dmarc_reject=Q, spf_fail=Q, temperror=Q)

CASES = [
    # (name, evidence, policy, action, reply code, enhanced code)
    ("all pass is accepted", evidence(), DEFAULT, T, 250, "2.0.0"),
    ("dmarc reject honoured by default", evidence(dmarc="fail", disposition="reject"), DEFAULT, R, 550, "5.7.26"),
    ("dmarc quarantine tagged by default", evidence(dmarc="fail", disposition="quarantine"), DEFAULT, T, 250, "2.0.0"),
    ("dmarc none is only tagged", evidence(dmarc="fail", disposition="none"), STRICT, T, 250, "2.0.0"),
    ("dmarc quarantine quarantined when asked", evidence(dmarc="fail", disposition="quarantine"), STRICT, Q, 250, "2.0.0"),
    ("spf fail tagged by default", evidence(spf="fail"), DEFAULT, T, 250, "2.0.0"),
    ("spf fail rejected when asked", evidence(spf="fail"), STRICT, R, 550, "5.7.1"),
    ("spf softfail never rejected", evidence(spf="softfail"), STRICT, T, 250, "2.0.0"),
    ("spf permerror is not a fail", evidence(spf="permerror"), STRICT, T, 250, "2.0.0"),
    ("temperror tagged by default", evidence(spf="temperror"), DEFAULT, T, 250, "2.0.0"),
    ("temperror tempfailed when asked", evidence(spf="temperror"), STRICT, TF, 451, "4.7.0"),
    ("dmarc temperror tempfailed when asked", evidence(dmarc="temperror"), STRICT, TF, 451, "4.7.0"),
    ("dmarc reject can be lowered to tag", evidence(dmarc="fail", disposition="reject"), LENIENT, T, 250, "2.0.0"),
    ("dmarc reject as tempfail", evidence(dmarc="fail", disposition="reject"), TEMPFAILING, TF, 451, "4.7.26"),
    ("spf fail as tempfail", evidence(spf="fail"), TEMPFAILING, TF, 451, "4.7.1"),
    ("dmarc reject as quarantine", evidence(dmarc="fail", disposition="reject"), QUARANTINING, Q, 250, "2.0.0"),
    ("trusted sealer forgives dmarc reject", evidence(dmarc="fail", disposition="reject", arc="pass", sealer="lists.example.org"), TRUSTING, T, 250, "2.0.0"),
    ("untrusted sealer does not", evidence(dmarc="fail", disposition="reject", arc="pass", sealer="evil.example"), TRUSTING, R, 550, "5.7.26"),
    ("failed chain of a trusted sealer does not", evidence(dmarc="fail", disposition="reject", arc="fail", sealer="lists.example.org"), TRUSTING, R, 550, "5.7.26"),
    ("reject beats quarantine", evidence(spf="fail", dmarc="fail", disposition="quarantine"), InboundDomainPolicy(spf_fail=R, dmarc_quarantine=Q), R, 550, "5.7.1"),
    ("dmarc reject beats spf tempfail", evidence(spf="fail", dmarc="fail", disposition="reject"), InboundDomainPolicy(spf_fail=TF), R, 550, "5.7.26"),
]


@pytest.mark.parametrize(("name", "ev", "policy", "action", "code", "enhanced"), CASES, ids=[c[0] for c in CASES])
def test_inbound_policy(name, ev, policy, action, code, enhanced):
    decision = decide_inbound(ev, [policy])
    assert decision.action is action
    assert (decision.verdict.reply.code, decision.verdict.reply.enhanced) == (code, enhanced)
    assert decision.verdict.accept is (code < 400)
    assert (QUARANTINE_HEADER in dict(decision.headers)) is (action is Q)


def test_reject_reply_names_the_reason():
    d = decide_inbound(evidence(dmarc="fail", disposition="reject"), [DEFAULT])
    assert "sender.example" in d.verdict.reply.text and "DMARC" in d.verdict.reply.text
    d = decide_inbound(evidence(spf="fail"), [STRICT])
    assert "SPF" in d.verdict.reply.text


def test_quarantine_header_carries_the_reason():
    d = decide_inbound(evidence(dmarc="fail", disposition="quarantine"), [STRICT])
    assert "DMARC" in dict(d.headers)[QUARANTINE_HEADER]


def test_arc_override_is_reported():
    ev = evidence(dmarc="fail", disposition="reject", arc="pass", sealer="lists.example.org")
    d = decide_inbound(ev, [TRUSTING])
    assert d.arc_override and "lists.example.org" in d.reasons[0]


def test_strictest_recipient_domain_wins():
    ev = evidence(spf="fail")
    assert decide_inbound(ev, [DEFAULT, STRICT]).action is R
    assert decide_inbound(ev, [DEFAULT, DEFAULT]).action is T


def test_no_policy_means_the_defaults():
    assert decide_inbound(evidence(dmarc="fail", disposition="reject"), []).action is R


def test_reply_text_is_ascii_for_utf8_domains():
    ev = evidence(dmarc="fail", disposition="reject")
    ev = InboundEvidence(ev.spf, ev.dkim, DmarcResult("fail", "bücher.example", "reject", "reject"),
                         ev.arc, "bücher.example")
    assert decide_inbound(ev, [DEFAULT]).verdict.reply.text.isascii()


# --- the policy file section ----------------------------------------------------------------
def test_policy_section_parses_with_per_domain_overrides():
    p = InboundPolicy.model_validate({
        "default": {"spf_fail": "reject", "trusted_arc_sealers": "Lists.Example.ORG."},
        "domains": {"Strict.Example": {"dmarc_quarantine": "quarantine"}},
    })
    assert p.default.trusted_arc_sealers == ("lists.example.org",)
    assert p.for_domain("strict.example").dmarc_quarantine is Q
    assert p.for_domain("other.example") is p.default


@pytest.mark.parametrize(
    ("data", "problem"),
    [({"default": {"spf_fail": "bounce"}}, "spf_fail"),
     ({"default": {"temperror": "reject"}}, "temperror"),
     ({"default": {"dmarc": "reject"}}, "dmarc"),
     ({"domains": {"not a domain": {}}}, "domain")],
)
def test_bad_policy_sections_are_refused(data, problem):
    with pytest.raises(ValidationError, match=problem):
        InboundPolicy.model_validate(data)


def _policies_that_must_not_be_read():
    raise AssertionError("the recipients' policies were looked up")
    yield DEFAULT  # pragma: no cover - makes this a generator


@pytest.mark.parametrize("spf", ["pass", "softfail", "neutral", "none", "permerror"])
@pytest.mark.parametrize("dmarc, disposition", [
    ("pass", "none"), ("none", "none"), ("permerror", "none"), ("fail", "none"),
])
@pytest.mark.parametrize("arc", ["none", "pass", "fail"])
def test_mail_no_policy_acts_on_is_accepted_without_looking_policies_up(spf, dmarc, disposition, arc):
    ev = evidence(spf=spf, dmarc=dmarc, disposition=disposition, arc=arc, sealer="lists.example.org")
    decision = decide_inbound(ev, _policies_that_must_not_be_read())
    assert (decision.action, decision.verdict.accept, decision.headers, decision.reasons,
            decision.arc_override) == (T, True, (), (), False)
    for policy in (DEFAULT, STRICT, LENIENT, TRUSTING, TEMPFAILING, QUARANTINING):
        assert decide_inbound(ev, [policy]) == decision


@pytest.mark.parametrize("ev", [
    evidence(spf="fail"), evidence(spf="temperror"), evidence(dmarc="temperror"),
    evidence(dmarc="fail", disposition="reject"), evidence(dmarc="fail", disposition="quarantine"),
])
def test_mail_a_policy_may_act_on_reads_the_policies(ev):
    with pytest.raises(AssertionError, match="looked up"):
        decide_inbound(ev, _policies_that_must_not_be_read())
