"""What the account holder and the abuse desk are told (gateway/ops/notify.py)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from gateway.ops.notify import Incident, suspension_incident
from gateway.smtp.state import Transaction
from gateway.store.base import Suspension

log = logging.getLogger("portcullis.smtp")

# One plain sentence per incident (and, for a hold, per reason: HeldMessage.reason).
_REASONS = {
    "held": "our content filter classified a message as spam and held it for review",
    "held:quota": "the account reached a sending limit and its message was held for review",
    "held:suspended": "the account is suspended and its message was held for review",
    "held:inbound": "a message failed the recipient domain's authentication policy and was held",
    "rejected": "our content filter classified a message as spam and refused it",
    "suspended": "the account sent far more than usual or than its limits allow, and was suspended",
}


def notify(tx: Transaction, kind: str | None,
           facts: Iterable[tuple[str, object]] | Mapping[str, object], reference: str,
           why: str = "") -> None:
    """Queue a notice about the account that sent ``tx`` (none without a login)."""
    identity, rt = tx.session.identity, tx.runtime
    if rt.notifier is None or kind is None or identity is None:
        return
    rt.notifier.submit(Incident(
        kind, identity.login, rt.clock(),
        account_address=identity.login if "@" in identity.login else None,
        customer=identity.customer, reason=_REASONS.get(f"{kind}:{why}", _REASONS.get(kind, kind)),
        reference=reference, evidence=dict(facts), direction=tx.direction))


def held_inbound(tx: Transaction, facts: Mapping[str, object], held_id: str, why: str) -> None:
    """Inbound mail held for review has no account holder: the abuse desk and the
    webhook are told, once per interval per recipient customer."""
    rt = tx.runtime
    if rt.notifier is None:
        return
    directory = rt.directory
    owner = next((o for r in tx.recipients
                  if (o := directory.customer_for_domain(r.rpartition("@")[2])) is not None), None)
    rt.notifier.submit(Incident(
        "held", f"inbound:{owner or '-'}", rt.clock(), customer=owner,
        reason=_REASONS.get(f"held:{why}", _REASONS["held"]), reference=held_id,
        evidence={**dict(facts), "sender": tx.sender, "recipients": list(tx.recipients)},
        direction="inbound"))


def suspended(tx: Transaction, suspension: Suspension, where: str) -> None:
    """A suspension this transaction triggered (``where``: end of DATA, RCPT, the
    teardown of a dead-address run): on the record's trail, logged, and notified
    to the account holder, the abuse desk and the webhook (once per burst:
    the notifier's interval)."""
    facts = {"login": suspension.login, "reason": suspension.reason, "at": where,
             **dict(suspension.evidence)}
    tx.record.suspended(facts)  # the journal keeps it (``portcullis explain``)
    log.warning("txid=%s login=%s suspended at %s: %s evidence=%s", tx.txid, suspension.login,
                where, suspension.reason, dict(suspension.evidence))
    identity, rt = tx.session.identity, tx.runtime
    if rt.notifier is None or identity is None:
        return
    rt.notifier.submit(suspension_incident(
        suspension.login, identity.customer, suspension.reason,
        {**dict(suspension.evidence), "detected_at": where}, rt.clock(), tx.txid))
