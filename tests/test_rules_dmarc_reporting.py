"""What one message adds to a DMARC aggregate report (gateway/rules/dmarc_reporting.py).

RFC 9990 "Policy Override Reason", "DKIM Signatures in Aggregate Reports" and the
schema's ActionDispositionType ("none", "pass", "quarantine", "reject").
"""

from __future__ import annotations

import pytest

from gateway.config.inbound import InboundAction
from gateway.rules.dmarc_reporting import MAX_SIGNATURES, report_observation
from gateway.values.evidence import ArcResult, DkimResult, DmarcResult, InboundEvidence, SpfResult

SPF_PASS = SpfResult("pass", "mailfrom", "a@example.org", "example.org")
SPF_FAIL = SpfResult("fail", "mailfrom", "a@bad.example", "bad.example")


def evidence(dmarc: DmarcResult, spf: SpfResult = SPF_PASS, dkim: tuple[DkimResult, ...] = ()):
    return InboundEvidence(spf, dkim, dmarc, ArcResult("none"), dmarc.header_from or None)


def fail(policy="reject", testing=False, disposition=None):
    return DmarcResult("fail", "example.org", policy=policy,
                       disposition=disposition or policy, record_domain="example.org", testing=testing)


PASS = DmarcResult("pass", "example.org", policy="reject", spf_aligned=True,
                   record_domain="example.org")


@pytest.mark.parametrize("dmarc, action, exempt, arc, disposition, reasons", [
    (PASS, InboundAction.TAG, False, False, "pass", ()),
    (fail("reject"), InboundAction.REJECT, False, False, "reject", ()),
    (fail("quarantine"), InboundAction.QUARANTINE, False, False, "quarantine", ()),
    (fail("quarantine"), InboundAction.HOLD, False, False, "quarantine", ()),
    # The customer's inbound policy only tags DMARC failures: local policy.
    (fail("reject"), InboundAction.TAG, False, False, "none", ("local_policy",)),
    # Refused, but only for role mailboxes (RFC 2142): delivered, local policy.
    (fail("reject"), InboundAction.REJECT, True, False, "none", ("local_policy",)),
    # A trusted ARC sealer vouched for it.
    (fail("reject"), InboundAction.TAG, False, True, "none", ("trusted_forwarder",)),
    # t=y: reject asked one level lower (quarantine, RFC 9989 §4.7) and applied as asked.
    (fail("reject", testing=True, disposition="quarantine"), InboundAction.QUARANTINE, False, False,
     "quarantine", ("policy_test_mode",)),
    (fail("none"), InboundAction.TAG, False, False, "none", ()),
])
def test_disposition_and_override_reason(dmarc, action, exempt, arc, disposition, reasons):
    obs = report_observation(evidence(dmarc, SPF_FAIL if dmarc.result == "fail" else SPF_PASS),
                             action, client_ip="192.0.2.7", arc_override=arc, exempt=exempt)
    assert obs is not None
    assert obs.policy_domain == "example.org"
    assert (obs.row.disposition, obs.row.reasons) == (disposition, reasons)
    assert obs.row.source_ip == "192.0.2.7"


@pytest.mark.parametrize("dmarc, action", [
    (DmarcResult("none", "example.org", reason="no DMARC record"), InboundAction.TAG),
    (DmarcResult("temperror", "example.org"), InboundAction.TEMPFAIL),
    (DmarcResult("permerror", ""), InboundAction.TAG),
    # Tempfailed: the sender retries; the message is counted when it is decided.
    (fail("reject"), InboundAction.TEMPFAIL),
])
def test_nothing_is_reported_without_a_record_or_a_final_decision(dmarc, action):
    assert report_observation(evidence(dmarc), action, client_ip="192.0.2.7") is None


def test_helo_spf_result_has_no_scope_and_mailfrom_has_mfrom():
    helo = SpfResult("pass", "helo", "postmaster@mx.example.org", "mx.example.org")
    row = report_observation(evidence(PASS, helo), InboundAction.TAG, client_ip="192.0.2.7").row
    assert row.spf == ("mx.example.org", "", "pass")  # SPFDomainScope has only "mfrom"
    row = report_observation(evidence(PASS), InboundAction.TAG, client_ip="192.0.2.7").row
    assert row.spf == ("example.org", "mfrom", "pass")


def test_signatures_in_the_rfc_order_and_at_most_100():
    dkim = (
        DkimResult("fail", "example.org", "s1", "rsa-sha256", "aaaa"),
        DkimResult("pass", "esp.example", "s2", "rsa-sha256", "bbbb"),
        DkimResult("pass", "mail.example.org", "s3", "rsa-sha256", "cccc"),
        DkimResult("pass", "example.org", "s4", "rsa-sha256", "dddd"),
    )
    dm = DmarcResult("pass", "example.org", dkim_aligned=True, record_domain="example.org",
                     aligned_dkim_domains=("mail.example.org", "example.org"))
    row = report_observation(evidence(dm, dkim=dkim), InboundAction.TAG, client_ip="::1").row
    # strict aligned pass, relaxed aligned pass, other pass, the rest
    assert [d[1] for d in row.dkim] == ["s4", "s3", "s2", "s1"]
    many = tuple(DkimResult("fail", "x.example", f"s{i}", "rsa-sha256", "x") for i in range(150))
    row = report_observation(evidence(PASS, dkim=many), InboundAction.TAG, client_ip="::1").row
    assert len(row.dkim) == MAX_SIGNATURES


def test_a_row_survives_its_store_key():
    row = report_observation(evidence(fail("reject")), InboundAction.TAG, client_ip="::1").row
    from gateway.values.dmarc_reports import ReportRow
    assert ReportRow.from_key(row.key()) == row
