"""Submission, after the downstream answered: the quota holds are committed if it
took the message (released if not), and the suspension signals assessed
(rules/compromise.py); a suspension notifies the account holder and abuse desk.

It runs after the client has heard the downstream's answer (a step after
``forward``: pipeline/run.py), as a task of the connection's that the client's
hang-up cannot cancel and the session's next command waits for
(gateway/smtp/protocol.py: _settle_after_reply)."""

from __future__ import annotations

import logging

from gateway.smtp.pipeline.notices import suspended
from gateway.smtp.pipeline.step import CONTINUE, Step, StepResult
from gateway.smtp.state import Transaction

log = logging.getLogger("portcullis.smtp")


def needed(tx: Transaction) -> bool:
    """A metered transaction the downstream answered."""
    return tx.quota is not None and tx.reply is not None


async def run(tx: Transaction) -> StepResult:
    if not needed(tx):
        return CONTINUE
    quota, reply = tx.quota, tx.reply
    assert quota is not None and reply is not None
    suspension = await quota.metering.finish(quota.acct, quota.tx, reply.is_success,
                                             tx.runtime.clock())
    if suspension is not None:
        suspended(tx, suspension, "end of DATA")
    return CONTINUE


STEP = Step("settle quotas", run, needed)
