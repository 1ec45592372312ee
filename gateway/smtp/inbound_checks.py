"""The inbound (MX) checks for one message: evidence → per-domain policy → stamps.

Called by the handler at end of DATA on the inbound listener only (submission
mail is not SPF-checked).  Returns either a refusal or our Authentication-Results
(and the policy's headers) to go out on top of the message, kept apart from it:
a large message is never copied to add a field.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from gateway.checks.inbound import authenticate_inbound
from gateway.config.inbound import InboundDomainPolicy
from gateway.message import HeaderField, Message
from gateway.replies import Reply
from gateway.rules.inbound import OUR_HEADERS, InboundDecision, decide_inbound
from gateway.runtime import Runtime
from gateway.stamps.authresults import authentication_results, claims_authserv_id
from gateway.values.evidence import InboundEvidence

_OUR_FIELDS = frozenset(h.lower().encode() for h in OUR_HEADERS)
_DEFAULT_POLICY = InboundDomainPolicy()  # frozen: one shared instance, not one per message


@dataclass(frozen=True)
class InboundOutcome:
    refusal: Reply | None
    message: Message  # as received, less any field only we may set
    summary: str  # for the transaction log line
    results: tuple[tuple[str, str], ...] = ()  # (spf|dkim|dmarc, RFC 8601 result) for metrics
    # A refusal's rule and facts, for the transaction's log line (rules/inbound.py).
    rule: str = ""
    facts: tuple[tuple[str, object], ...] = ()
    prefix: bytes = b""  # our fields to go out above the message (Authentication-Results)
    # What was found and decided, for the DMARC aggregate report counts (docs/dmarc-reports.md).
    evidence: InboundEvidence | None = None
    decision: InboundDecision | None = None
    # The policy said ``hold``: its rule and facts (rule is "" otherwise).
    hold_rule: str = ""
    arc: str = "none"  # our ARC verdict (RFC 8617), for the seal (pipeline/arc_sealing.py)


def domain_policies(runtime: Runtime, recipients: list[str]) -> Iterator[InboundDomainPolicy]:
    """The inbound policy of each recipient's domain (its customer's, or the default),
    looked up as decide_inbound asks: most mail needs none of them."""
    for domain in sorted({r.rpartition("@")[2] for r in recipients}):
        customer_id = runtime.directory.customer_for_domain(domain)
        customer = runtime.directory.customers.get(customer_id) if customer_id else None
        # A domain no policy file claims was accepted as hosted (default_policy.domains
        # or the account source): the default policy's inbound section is its policy.
        inbound = customer.inbound if customer is not None else runtime.config.default_policy.inbound
        yield inbound.for_domain(domain) if inbound else _DEFAULT_POLICY


async def check_inbound(runtime: Runtime, *, message: Message, sender: str, helo: str | None,
                        client_ip: str, recipients: list[str],
                        iprev: tuple[str, str, str] | None = None) -> InboundOutcome:
    """``message``: as the handler read it at the end of DATA; the DATA reader has
    refused any CR or LF outside a CRLF pair (RFC 5321 §2.3.8)."""
    assert runtime.resolver is not None
    evidence = await authenticate_inbound(
        runtime.resolver, message=message, mail_from=sender, helo=helo or "",
        client_ip=client_ip, receiver=runtime.config.hostname)
    decision = decide_inbound(evidence, domain_policies(runtime, recipients))
    summary = (f"spf={evidence.spf.result} dkim="
               f"{','.join(d.result for d in evidence.dkim) or 'none'} "
               f"dmarc={evidence.dmarc.result} arc={evidence.arc.result} "
               f"action={decision.action.value}")
    results = (("spf", evidence.spf.result), *(("dkim", d.result) for d in evidence.dkim),
               ("dmarc", evidence.dmarc.result))
    # One pass over the header removes what a sender may not set: fields only we add
    # (a quarantine flag), and A-R fields claiming our authserv-id (RFC 8601 §5).
    ours = runtime.config.our_authserv_id.strip().lower()

    def is_forged(field: HeaderField) -> bool:
        return field.key in _OUR_FIELDS or claims_authserv_id(field, ours)

    message = message.without(is_forged)
    stamp = authentication_results(runtime.config.our_authserv_id, evidence, iprev)
    if decision.headers:
        stamp = b"".join(f"{name}: {value}\r\n".encode() for name, value in decision.headers) + stamp
    verdict = decision.verdict
    # A refusal keeps the cleaned message and our stamp too: mail for abuse@ and
    # postmaster@ is never refused by this policy, and goes on stamped and cleaned.
    if not verdict.accept:
        return InboundOutcome(verdict.reply, message, summary, results, verdict.rule,
                              verdict.facts, prefix=stamp, evidence=evidence, decision=decision,
                              arc=evidence.arc.result)
    return InboundOutcome(None, message, summary, results, verdict.rule, verdict.facts,
                          prefix=stamp, evidence=evidence, decision=decision,
                          hold_rule=verdict.rule, arc=evidence.arc.result)
