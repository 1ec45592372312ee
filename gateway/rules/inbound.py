"""What to do with an inbound message, from its authentication evidence.

Pure: evidence + the recipient domains' inbound policies in, an
:class:`InboundDecision` out (a Verdict plus the header fields to add).  The
handler calls it after :func:`gateway.checks.inbound.authenticate_inbound`.

Each finding (DMARC fail with disposition reject or quarantine, SPF fail, a
temporary DNS failure) maps to the action the policy names for it; the
strictest action wins (reject > tempfail > quarantine > tag).  With several
recipient domains, each domain's policy is applied and again the strictest
wins: one SMTP reply answers DATA for all recipients.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gateway import replies
from gateway.config.inbound import InboundAction, InboundDomainPolicy
from gateway.replies import Reply, Verdict
from gateway.values.evidence import InboundEvidence

# The header a downstream can file on (Sieve: header :contains "X-Portcullis-Quarantine" "").
QUARANTINE_HEADER = "X-Portcullis-Quarantine"
# Header fields we own: removed from incoming mail so a sender cannot set them.
OUR_HEADERS = (QUARANTINE_HEADER,)

_SEVERITY = {
    InboundAction.TAG: 0,
    InboundAction.QUARANTINE: 1,
    InboundAction.HOLD: 2,
    InboundAction.TEMPFAIL: 3,
    InboundAction.REJECT: 4,
}


@dataclass(frozen=True, slots=True)
class Finding:
    """One reason to act: what happened, the action chosen, the replies that go with it."""

    what: str  # "dmarc", "spf" or "temperror"
    action: InboundAction
    reason: str


@dataclass(frozen=True, slots=True)
class InboundDecision:
    verdict: Verdict
    action: InboundAction
    headers: tuple[tuple[str, str], ...] = ()  # to prepend (after Authentication-Results)
    reasons: tuple[str, ...] = ()  # for the log line
    arc_override: bool = False  # a DMARC failure was forgiven for a trusted ARC sealer


def decide_inbound(
    evidence: InboundEvidence, policies: Iterable[InboundDomainPolicy]
) -> InboundDecision:
    """The strictest decision over the recipient domains' policies.

    ``policies`` is read only when the evidence holds something a policy acts on
    (most mail: DMARC pass, no SPF fail, no DNS trouble), so it may be a generator
    that looks the recipients' customers up."""
    if not _actionable(evidence):
        return _NOTHING_TO_ACT_ON
    decisions = [_decide_one(evidence, p) for p in policies] or [
        _decide_one(evidence, InboundDomainPolicy())
    ]
    return max(decisions, key=lambda d: _SEVERITY[d.action])


# A finding's name in the rule names of the transaction log line.
_RULE_NAMES = {"dmarc": "dmarc", "spf": "spf", "temperror": "dns"}

# Frozen: one for all the mail no policy acts on.
_NOTHING_TO_ACT_ON = InboundDecision(Verdict.ok(), InboundAction.TAG)


def _decide_one(ev: InboundEvidence, policy: InboundDomainPolicy) -> InboundDecision:
    findings, arc_override = _findings(ev, policy)
    if not findings:
        return InboundDecision(Verdict.ok(), InboundAction.TAG)
    worst = max(findings, key=lambda f: _SEVERITY[f.action])
    reasons = tuple(f.reason for f in findings)
    if worst.action in (InboundAction.REJECT, InboundAction.TEMPFAIL):
        # The rule on record: the finding and the action the policy chose for it
        # ("dmarc.reject", "spf.tempfail", "dns.tempfail").
        reply = _reply(worst, rejecting=worst.action is InboundAction.REJECT)
        return InboundDecision(
            Verdict.refuse(reply, f"{_RULE_NAMES[worst.what]}.{worst.action.value}",
                           spf=ev.spf.result, dmarc=ev.dmarc.result,
                           header_from=ev.dmarc.header_from, disposition=ev.dmarc.disposition),
            worst.action, reasons=reasons,
        )
    headers: tuple[tuple[str, str], ...] = ()
    if worst.action in (InboundAction.QUARANTINE, InboundAction.HOLD):
        # A held message carries the flag too: once released, the mailbox's filters see it.
        quarantined = "; ".join(f.reason for f in findings
                                if f.action in (InboundAction.QUARANTINE, InboundAction.HOLD))
        headers = ((QUARANTINE_HEADER, quarantined),)
    verdict = Verdict.ok()
    if worst.action is InboundAction.HOLD:
        # The rule on record for the hold ("dmarc.hold"), with the same facts as a refusal.
        verdict = Verdict(True, verdict.reply, f"{_RULE_NAMES[worst.what]}.hold",
                          (("spf", ev.spf.result), ("dmarc", ev.dmarc.result),
                           ("header_from", ev.dmarc.header_from),
                           ("disposition", ev.dmarc.disposition), ("reason", worst.reason)))
    return InboundDecision(verdict, worst.action, headers, reasons, arc_override)


def _actionable(ev: InboundEvidence) -> bool:
    """Could any policy find something to act on here?  The conditions of _findings."""
    dm = ev.dmarc
    return ((dm.result == "fail" and dm.disposition in ("reject", "quarantine"))
            or ev.spf.result in ("fail", "temperror") or dm.result == "temperror")


def _findings(ev: InboundEvidence, policy: InboundDomainPolicy) -> tuple[list[Finding], bool]:
    findings: list[Finding] = []
    arc_override = False
    if not _actionable(ev):
        return findings, arc_override
    dm = ev.dmarc
    if dm.result == "fail" and dm.disposition in ("reject", "quarantine"):
        if ev.arc.result == "pass" and ev.arc.sealer in policy.trusted_arc_sealers:
            # RFC 7489 §7.2.1 local policy override: the chain vouches for the mail.
            arc_override = True
            findings.append(Finding(
                "dmarc", InboundAction.TAG,
                f"DMARC fail for {dm.header_from} overridden: ARC chain sealed by {ev.arc.sealer}",
            ))
        else:
            action = policy.dmarc_reject if dm.disposition == "reject" else policy.dmarc_quarantine
            findings.append(Finding(
                "dmarc", action,
                f"DMARC policy of {dm.header_from} ({dm.disposition}): no aligned SPF or DKIM pass",
            ))
    if ev.spf.result == "fail":
        findings.append(Finding(
            "spf", policy.spf_fail,
            f"SPF fail: {ev.spf.domain} does not authorise this sending server",
        ))
    if ev.spf.result == "temperror" or dm.result == "temperror":
        failed = "SPF" if ev.spf.result == "temperror" else "DMARC"
        findings.append(Finding(
            "temperror", policy.temperror, f"{failed} check: temporary DNS failure",
        ))
    return findings, arc_override


def _reply(finding: Finding, *, rejecting: bool) -> Reply:
    if finding.what == "dmarc":
        base = replies.DMARC_REJECTED if rejecting else replies.DMARC_TEMPFAILED
    elif finding.what == "spf":
        base = replies.SPF_FAIL_REJECTED if rejecting else replies.SPF_FAIL_TEMPFAILED
    else:
        # A DNS failure is temporary by nature: even "reject" answers 451, never 550.
        return replies.AUTH_CHECKS_TEMPFAILED.with_text(
            f"{finding.reason}; try again later"
        )
    text = finding.reason + ("" if rejecting else "; try again later")
    # SMTP replies are ASCII (RFC 5321 §4.2); a UTF-8 domain must not break the reply.
    return base.with_text(text.encode("ascii", "replace").decode("ascii"))
