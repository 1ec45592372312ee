"""What the account holder and the abuse desk are told (gateway/ops/notify.py)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from gateway.ops.notify import Incident
from gateway.smtp.state import Transaction

# One plain sentence per incident.
_REASONS = {
    "held": "our content filter classified a message as spam and held it for review",
    "rejected": "our content filter classified a message as spam and refused it",
    "suspended": "the account sent far more than usual or than its limits allow, and was suspended",
}


def notify(tx: Transaction, kind: str | None,
           facts: Iterable[tuple[str, object]] | Mapping[str, object], reference: str) -> None:
    """Queue a notice about the account that sent ``tx`` (none without a login)."""
    identity, rt = tx.session.identity, tx.runtime
    if rt.notifier is None or kind is None or identity is None:
        return
    rt.notifier.submit(Incident(
        kind, identity.login, rt.clock(),
        account_address=identity.login if "@" in identity.login else None,
        customer=identity.customer, reason=_REASONS.get(kind, kind),
        reference=reference, evidence=dict(facts), direction=tx.direction))
