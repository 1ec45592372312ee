"""What one inbound message adds to a DMARC aggregate report (RFC 9990).

Pure: the evidence and what the gateway did with the message in, one
(policy domain, :class:`ReportRow`) out, or None when nothing is reported.
"""

from __future__ import annotations

from gateway.config.inbound import InboundAction
from gateway.values.dmarc_reports import Observation, ReportRow
from gateway.values.evidence import DkimResult, InboundEvidence

# RFC 9990 "DKIM Signatures in Aggregate Reports": "no more than 100 signatures".
MAX_SIGNATURES = 100

# A policy ``hold`` keeps the message out of the inbox for review: RFC 9990's
# "quarantine" is the nearest disposition it defines.
_APPLIED = {InboundAction.REJECT: "reject", InboundAction.QUARANTINE: "quarantine",
            InboundAction.HOLD: "quarantine", InboundAction.TAG: "none"}
_STRENGTH = {"none": 0, "quarantine": 1, "reject": 2}


def report_observation(ev: InboundEvidence, action: InboundAction, *, client_ip: str,
                       arc_override: bool = False, exempt: bool = False) -> Observation | None:
    """``action``: what the inbound decision did; ``exempt``: a refusal not applied
    because the mail was only for role mailboxes (RFC 2142).

    Only a message whose author domain has a DMARC record is reported (pass or fail):
    "none", permerror and temperror have no Domain Owner to report to, and a
    tempfailed message is counted when it comes back, not now."""
    dm = ev.dmarc
    if dm.result not in ("pass", "fail") or not dm.record_domain or action is InboundAction.TEMPFAIL:
        return None
    reasons: list[str] = []
    if dm.result == "pass":
        disposition = "pass"  # RFC 9990 ActionDispositionType "pass"
    else:
        disposition = "none" if exempt else _APPLIED[action]
        if dm.testing and dm.policy in ("quarantine", "reject"):
            # RFC 9990 "Policy Override Reason": exempted "by the testing mode ("t" tag)".
            reasons.append("policy_test_mode")
        if _STRENGTH[disposition] < _STRENGTH[dm.disposition]:
            reasons.append("trusted_forwarder" if arc_override and not exempt else "local_policy")
    spf = ev.spf
    row = ReportRow(
        source_ip=client_ip,
        header_from=dm.header_from,
        envelope_from=spf.domain,
        disposition=disposition,
        dkim_aligned=dm.dkim_aligned,
        spf_aligned=dm.spf_aligned,
        # RFC 9990 SPFDomainScope has one value, "mfrom": a HELO check goes without scope.
        spf=(spf.domain, "mfrom" if spf.identity == "mailfrom" else "", spf.result),
        dkim=tuple((d.domain, d.selector, d.result)
                   for d in ordered_signatures(ev.dkim, dm.header_from, dm.aligned_dkim_domains)),
        reasons=tuple(reasons),
    )
    return Observation(dm.record_domain, row)


def ordered_signatures(dkim: tuple[DkimResult, ...], author: str,
                       aligned: tuple[str, ...]) -> list[DkimResult]:
    """RFC 9990 "DKIM Signatures in Aggregate Reports": strictly aligned passes, then
    relaxed aligned passes, other passes, then the rest; at most 100."""

    def rank(d: DkimResult) -> int:
        if d.result != "pass":
            return 3
        if d.domain == author:
            return 0
        return 1 if d.domain in aligned else 2

    return sorted(dkim, key=rank)[:MAX_SIGNATURES]
