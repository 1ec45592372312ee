"""MX, after the downstream took a message for abuse@: attribute the complaint to
the account that sent the mail it quotes (gateway/smtp/abuse_reports.py).
Nothing here changes the client's answer."""

from __future__ import annotations

from gateway.smtp.abuse_reports import take_abuse_report
from gateway.smtp.pipeline.step import CONTINUE, Step, StepResult
from gateway.smtp.state import Transaction


def needed(tx: Transaction) -> bool:
    """Mail the downstream took for abuse@ (or another role mailbox of ours)."""
    reply = tx.reply
    return bool(tx.role_recipients) and reply is not None and reply.is_success


async def run(tx: Transaction) -> StepResult:
    if needed(tx):
        await take_abuse_report(tx.runtime, tx.txid, tx.prefix + tx.message.data,
                                list(tx.role_recipients))
    return CONTINUE


STEP = Step("abuse reports", run, needed)
