"""Held for review: a limit or suspension whose action is ``hold``, an inbound
policy ``hold``, or the content scan's hold.  The message exactly as it would have
gone is written and fsynced to the hold store, and only then does the client hear
250.  Nothing goes downstream; the downstream transaction, its recipients already
relayed, is reset with the transaction, which also releases its quota holds: held
mail is charged when it is released (admin/actions.py), not now."""

from __future__ import annotations

import logging

from gateway import replies
from gateway.smtp.pipeline.notices import held_inbound, notify
from gateway.smtp.pipeline.step import CONTINUE, Step, StepResult, hold
from gateway.smtp.state import Transaction

log = logging.getLogger("portcullis.smtp")

# MAIL parameters kept with a held message, for its release (RFC 1870, RFC 6152).
_KEPT_MAIL_PARAMS = ("SIZE=", "BODY=")


async def run(tx: Transaction) -> StepResult:
    content, contained, rt = tx.content, tx.contained, tx.runtime
    if contained is not None:
        reason, rule, facts = contained.reason, contained.rule, dict(contained.facts)
        reply = replies.HELD_FOR_REVIEW
    elif content is not None and content.hold:
        reason, rule, facts = "content", "content.hold", dict(content.facts)
        reply = content.verdict.reply
    else:
        return CONTINUE
    # The hold store always exists (serve.build_runtime): a hold never forwards.
    assert rt.held is not None, "a hold without a hold store"
    held = await rt.held.hold(
        message=tx.outgoing(), sender=tx.sender, recipients=list(tx.recipients),
        direction=tx.direction, reason=reason, reply=str(reply),
        now=rt.clock(), evidence=facts, login=tx.session.login, txid=tx.txid,
        mail_options=[o for o in tx.mail_options if o.startswith(_KEPT_MAIL_PARAMS)])
    if rt.metrics is not None:
        rt.metrics.held_for_review(tx.direction)
    log.warning("txid=%s held for review as %s (%s): %s", tx.txid, held.id, rule, facts)
    if tx.session.identity is not None:
        notify(tx, "held", facts, held.id, why=reason)
    else:
        held_inbound(tx, facts, held.id, reason)
    tx.record.held(rule, {**facts, "held_id": held.id})
    return hold(reply, rule, facts)


STEP = Step("hold for review", run)
