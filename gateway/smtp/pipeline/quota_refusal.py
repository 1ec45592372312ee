"""A quota decision put on record: the refusal's rule, or the shadow-mode line."""

from __future__ import annotations

import logging

from gateway.rules.quota import QuotaDecision
from gateway.runtime import Runtime
from gateway.smtp.records import TransactionRecord

log = logging.getLogger("portcullis.smtp")


def quota_refusal(record: TransactionRecord, decision: QuotaDecision, runtime: Runtime,
                  login: str | None, *, recipient: bool = False) -> str | None:
    """None when ``decision`` accepts; else the rule that refused, on record (a
    recipient's, or the transaction's).  In shadow mode the refusal not sent is logged."""
    login = login or "-"
    if decision.would_refuse is not None:
        log.info("txid=%s login=%s %s", record.txid, login, decision.log_text())
    if decision.accept:
        return None
    # "customer messages_per_hour" → quota.customer.messages_per_hour
    rule = "quota." + (decision.limit or "unknown").replace(" ", ".")
    if recipient:
        record.recipient_refused(rule)
    else:
        record.decide(rule, {"quota_login": login})
    if runtime.metrics is not None:
        runtime.metrics.quota_refused(decision.limit or "unknown")
    return rule
