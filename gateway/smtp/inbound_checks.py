"""The inbound (MX) checks for one message: evidence → per-domain policy → stamps.

Called by the handler at end of DATA on the inbound listener only (submission
mail is not SPF-checked).  Returns either a refusal or the message with our
Authentication-Results (and the policy's headers) on top.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.checks.inbound import authenticate_inbound
from gateway.config.inbound import InboundDomainPolicy
from gateway.replies import Reply
from gateway.rules.inbound import OUR_HEADERS, decide_inbound
from gateway.runtime import Runtime
from gateway.stamps.authresults import remove_fields, stamp_authentication_results


@dataclass(frozen=True)
class InboundOutcome:
    refusal: Reply | None
    message: bytes
    summary: str  # for the transaction log line
    results: tuple[tuple[str, str], ...] = ()  # (spf|dkim|dmarc, RFC 8601 result) for metrics


def domain_policies(runtime: Runtime, recipients: list[str]) -> list[InboundDomainPolicy]:
    """The inbound policy of each recipient's domain (its customer's, or the default)."""
    policies = []
    for domain in sorted({r.rpartition("@")[2] for r in recipients}):
        customer_id = runtime.directory.customer_for_domain(domain)
        customer = runtime.directory.customers.get(customer_id) if customer_id else None
        inbound = customer.inbound if customer is not None else None
        policies.append(inbound.for_domain(domain) if inbound else InboundDomainPolicy())
    return policies


async def check_inbound(runtime: Runtime, *, message: bytes, sender: str, helo: str | None,
                        client_ip: str, recipients: list[str]) -> InboundOutcome:
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
    if not decision.verdict.accept:
        return InboundOutcome(decision.verdict.reply, message, summary, results)
    # Headers that only we may set (a quarantine flag) are removed if a sender forged them.
    lowered = {h.lower().encode() for h in OUR_HEADERS}
    message = remove_fields(message, lambda name, _field: name in lowered)
    message = stamp_authentication_results(message, runtime.config.our_authserv_id, evidence)
    extra = b"".join(f"{name}: {value}\r\n".encode() for name, value in decision.headers)
    return InboundOutcome(None, extra + message, summary, results)
