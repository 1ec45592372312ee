"""Held for review (the content scan said hold): the message exactly as it would
have gone is written and fsynced to the hold store, and only then does the client
hear 250.  Nothing goes downstream; the downstream transaction, its recipients
already relayed, is reset with the transaction."""

from __future__ import annotations

import logging

from gateway.smtp.pipeline.notices import notify
from gateway.smtp.pipeline.step import CONTINUE, Step, StepResult, hold
from gateway.smtp.state import Transaction

log = logging.getLogger("portcullis.smtp")

# MAIL parameters kept with a held message, for its release (RFC 1870, RFC 6152).
_KEPT_MAIL_PARAMS = ("SIZE=", "BODY=")


async def run(tx: Transaction) -> StepResult:
    content, rt = tx.content, tx.runtime
    if content is None or not content.hold or rt.held is None:
        return CONTINUE
    held = await rt.held.hold(
        message=tx.outgoing(), sender=tx.sender, recipients=list(tx.recipients),
        direction=tx.direction, reason="content", reply=str(content.verdict.reply),
        now=rt.clock(), evidence=dict(content.facts), login=tx.session.login, txid=tx.txid,
        mail_options=[o for o in tx.mail_options if o.startswith(_KEPT_MAIL_PARAMS)])
    if rt.metrics is not None:
        rt.metrics.held_for_review(tx.direction)
    log.warning("txid=%s held for review as %s: %s", tx.txid, held.id, dict(content.facts))
    notify(tx, "held", content.facts, held.id)
    tx.record.held("content.hold", {**content.facts, "held_id": held.id})
    return hold(content.verdict.reply, "content.hold", content.facts)


STEP = Step("hold for review", run)
