"""Submission: the message's real size against the account's own limit (RFC 1870 §6.3).

MAIL's SIZE= was checked when declared; this is the size that arrived."""

from __future__ import annotations

from gateway.rules.quota import decide_size
from gateway.smtp.pipeline.quota_refusal import quota_refusal
from gateway.smtp.pipeline.step import CONTINUE, Step, StepResult, refuse
from gateway.smtp.state import Transaction


def run(tx: Transaction) -> StepResult:
    quota = tx.quota
    if quota is None:  # quotas off
        return CONTINUE
    decision = decide_size(quota.acct, len(tx.message.data))
    rule = quota_refusal(tx.record, decision, tx.runtime, tx.session.login)
    if rule is None:
        return CONTINUE
    return refuse(decision.verdict.reply, rule, tx.record.facts)


STEP = Step("account size", run)
