"""What to do with a message, given rspamd's verdict and the customer's content rules.

A pure decision: it takes the scan result (or the reason there is none) and the
effective rules of the direction (gateway defaults with the customer's overrides,
``gateway.config.content.effective_rules``), and returns a :class:`ContentDecision`:

    pass      forward unchanged
    tag       forward with our X-Spam-* headers added (nothing else: no Subject
              rewriting, the body and existing headers stay as they are)
    hold      store for review (gateway/store/held.py); the client hears 250
    tempfail  451 4.7.1: the client retries later
    reject    550 5.7.1 with a sentence the customer can act on, never rspamd's symbols

The headers added by ``tag`` (SpamAssassin's names, which mail clients and Sieve
scripts already understand)::

    X-Spam-Flag: YES
    X-Spam-Score: 7.90
    X-Spam-Status: Yes, score=7.90 required=15.00 action=add_header

On inbound mail the handler removes these names from the message before adding its
own (:data:`SPAM_HEADERS`), so a sender cannot forge a "No" into the recipient's
filters.  On outbound we only add.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway import replies
from gateway.config.content import (
    DEFAULT_INBOUND_ACTIONS,
    DEFAULT_OUTBOUND_ACTIONS,
    SEVERITY,
    ContentAction,
    ContentRules,
)
from gateway.replies import Reply, Verdict
from gateway.values.evidence import ScanResult

SPAM_HEADERS = ("X-Spam-Flag", "X-Spam-Score", "X-Spam-Status")


@dataclass(frozen=True, slots=True)
class ContentDecision:
    action: ContentAction
    verdict: Verdict
    # To add on top of the message, in this order (before DKIM signing).
    headers: tuple[tuple[str, str], ...] = ()
    # Store the message instead of forwarding it; verdict.reply is then the 250 to send.
    hold: bool = False
    # The incident to notify (gateway/ops/notify.py): "held", "rejected" or None.
    incident: str | None = None
    # For the transaction's log line, the metrics and the hold record: why, and with what.
    # cause: "action" | "score" | "unreachable" | "disabled" | "too_big".
    facts: Mapping[str, object] = field(default_factory=dict)


def _with_reference(reply: Reply, reference: str | None) -> Reply:
    # "(id …)": the form of every id in our replies (gateway/smtp/protocol.py adds it
    # to those that have none), so a hold's 250 names the transaction too.
    return reply.with_text(f"{reply.text} (id {reference})") if reference else reply


def _action_by_score(rules: ContentRules, score: float) -> ContentAction:
    chosen: ContentAction = "pass"
    for action, threshold in rules.score.items():
        if score >= threshold and SEVERITY.index(action) > SEVERITY.index(chosen):
            chosen = action
    return chosen


def _action_by_rspamd(rules: ContentRules, direction: str, rspamd_action: str) -> ContentAction:
    defaults = DEFAULT_INBOUND_ACTIONS if direction == "inbound" else DEFAULT_OUTBOUND_ACTIONS
    # A gateway file may list only some actions: the rest keep their defaults.
    return rules.actions.get(rspamd_action, defaults.get(rspamd_action, "pass"))  # type: ignore[arg-type]


def tag_headers(result: ScanResult) -> tuple[tuple[str, str], ...]:
    action = result.action.replace(" ", "_")
    return (
        ("X-Spam-Flag", "YES"),
        ("X-Spam-Score", f"{result.score:.2f}"),
        ("X-Spam-Status", f"Yes, score={result.score:.2f} required={result.required_score:.2f} "
                          f"action={action}"),
    )


def _decision(action: ContentAction, direction: str, facts: dict[str, object],
              reference: str | None, result: ScanResult | None = None,
              unreachable: bool = False) -> ContentDecision:
    facts = {"direction": direction, "outcome": action, **facts}
    if action == "pass":
        return ContentDecision("pass", Verdict.ok(), facts=facts)
    if action == "tag":
        assert result is not None
        return ContentDecision("tag", Verdict.ok(), headers=tag_headers(result), facts=facts)
    if action == "hold":
        return ContentDecision("hold", Verdict.ok(_with_reference(replies.HELD_FOR_REVIEW, reference)),
                               hold=True, incident="held", facts=facts)
    if action == "tempfail":
        reply = replies.SCANNER_UNAVAILABLE if unreachable else replies.CONTENT_TEMPFAILED
        return ContentDecision("tempfail", Verdict.refuse(_with_reference(reply, reference)), facts=facts)
    if unreachable:
        reply = replies.SCANNER_UNAVAILABLE_REJECTED
    elif direction == "inbound":
        reply = replies.INBOUND_CONTENT_REJECTED
    else:
        reply = replies.CONTENT_REJECTED
    # A refusal for unscanned mail says nothing about the customer: no incident.
    return ContentDecision("reject", Verdict.refuse(_with_reference(reply, reference)),
                           incident=None if unreachable else "rejected", facts=facts)


def decide_content(
    direction: str,
    rules: ContentRules,
    result: ScanResult | None,
    *,
    scanner_error: str | None = None,
    reference: str | None = None,
) -> ContentDecision:
    """rspamd's answer (``result``) or the kind of its failure (``scanner_error``, from
    ``ScannerUnavailable.kind``) → what to do.  ``reference`` (the transaction id) is
    appended to every non-plain reply so support can find the log line."""
    if result is None:
        if scanner_error is None:
            raise ValueError("decide_content needs a scan result or a scanner error")
        return _decision(rules.unreachable, direction,
                         {"cause": "unreachable", "scanner_error": scanner_error},
                         reference, unreachable=True)
    facts: dict[str, object] = {"cause": rules.by, **result.evidence()}
    if rules.by == "score":
        action = _action_by_score(rules, result.score)
    else:
        action = _action_by_rspamd(rules, direction, result.action)
    return _decision(action, direction, facts, reference, result)


def decide_unscanned(direction: str, cause: str) -> ContentDecision:
    """Scanning is off for this direction (``disabled``) or the message is larger than
    ``scanner.max_message_size`` (``too_big``): pass, and say so in the log."""
    return _decision("pass", direction, {"cause": cause}, None)


def skip_scan(direction: str, rules: ContentRules, size: int, max_size: int) -> ContentDecision | None:
    """Before scanning: the pass decision when this message is not to be scanned, else None."""
    if not rules.enabled:
        return decide_unscanned(direction, "disabled")
    if size > max_size:
        return decide_unscanned(direction, "too_big")
    return None
