"""Our Received: field on top (RFC 5321 §4.4; protocol per RFC 3848, TLS version
and cipher, the transaction id; never the login)."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.smtp.pipeline.step import CONTINUE, Step, StepResult
from gateway.smtp.state import Transaction
from gateway.stamps.received import ReceivedFacts, received_header


def run(tx: Transaction) -> StepResult:
    session, tls = tx.session, tx.session.tls
    tx.on_top(received_header(ReceivedFacts(
        helo=tx.helo,
        client_ip=session.client_ip,
        hostname=tx.runtime.config.hostname,
        txid=tx.txid,
        extended=tx.extended,
        tls_version=tls[0] if tls else None,
        tls_cipher=tls[1] if tls else None,
        authenticated=session.identity is not None,
        recipient=tx.recipients[0] if len(tx.recipients) == 1 else None,
    ), datetime.now(UTC)))
    return CONTINUE


STEP = Step("received", run)
