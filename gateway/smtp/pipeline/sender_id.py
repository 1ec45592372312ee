"""Submission: our X-Portcullis-Sender-Id token, which identifies the account to us
alone (docs/abuse.md); the client's own such fields are removed."""

from __future__ import annotations

from gateway.smtp.pipeline.step import CONTINUE, Step, StepResult
from gateway.smtp.state import Transaction
from gateway.stamps.sender_id import sender_id_header, strip_sender_id_headers


def run(tx: Transaction) -> StepResult:
    rt = tx.runtime
    login = tx.session.login
    if rt.sender_ids is None or login is None:
        return CONTINUE
    tx.message = strip_sender_id_headers(tx.message)
    tx.on_top(sender_id_header(rt.sender_ids.make(login, tx.txid, rt.clock())))
    return CONTINUE


STEP = Step("sender id", run)
