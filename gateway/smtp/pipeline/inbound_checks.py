"""MX: SPF, DKIM, ARC and DMARC, then the recipients' domains' policy
(gateway/smtp/inbound_checks.py); our Authentication-Results on top.

Mail only for abuse@/postmaster@ is never refused here (RFC 2142: the role
mailboxes must reach a person, whatever the sender's DMARC says)."""

from __future__ import annotations

import logging

from gateway.smtp.inbound_checks import check_inbound
from gateway.smtp.pipeline.step import CONTINUE, Step, StepResult, refuse
from gateway.smtp.state import Transaction

log = logging.getLogger("portcullis.smtp")


async def run(tx: Transaction) -> StepResult:
    rt = tx.runtime
    if rt.resolver is None:  # inbound_checks: false
        return CONTINUE
    iprev = tx.session.iprev  # MX screening's FCrDNS (docs/screening.md), when on
    outcome = await check_inbound(
        rt, message=tx.message, sender=tx.sender, helo=tx.helo,
        client_ip=tx.session.client_ip, recipients=tx.recipients,
        iprev=(iprev.result, tx.session.client_ip, iprev.name) if iprev is not None else None)
    tx.record.checks = outcome.summary
    if rt.metrics is not None:
        for method, result in outcome.results:
            rt.metrics.auth_result(method, result)
    if outcome.refusal is not None:
        if len(tx.role_recipients) < len(tx.recipients):
            return refuse(outcome.refusal, outcome.rule, outcome.facts)
        log.info("txid=%s to role mailboxes only: inbound policy not applied (%s)",
                 tx.txid, outcome.refusal)
    tx.message = outcome.message
    tx.arc = outcome.arc
    tx.on_top(outcome.prefix)
    return CONTINUE


STEP = Step("inbound checks", run)
