"""Submission: exactly one From:, and every address in From:, Sender:, Resent-From:
and Resent-Sender: one the account may use (rules/senders.py)."""

from __future__ import annotations

from gateway.rules.senders import decide_header_senders
from gateway.smtp.pipeline.sender_grants import sender_grants
from gateway.smtp.pipeline.step import CONTINUE, Step, StepResult, refuse
from gateway.smtp.state import Transaction


def run(tx: Transaction) -> StepResult:
    identity = tx.session.identity
    assert identity is not None  # submission listeners require AUTH before MAIL
    widened, aliases, _ = sender_grants(tx.runtime, identity)
    verdict = decide_header_senders(widened, aliases, tx.message.fields)
    if verdict.accept:
        return CONTINUE
    return refuse(verdict.reply, verdict.rule, verdict.facts)


STEP = Step("header senders", run)
