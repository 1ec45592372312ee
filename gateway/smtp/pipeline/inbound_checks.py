"""MX: SPF, DKIM, ARC and DMARC, then the recipients' domains' policy
(gateway/smtp/inbound_checks.py); our Authentication-Results on top.

Mail only for abuse@/postmaster@ is never refused or held here (RFC 2142: the
role mailboxes must reach a person, whatever the sender's DMARC says), and is
stamped and cleaned like any other.  A policy ``hold`` marks the transaction for
the hold step (pipeline/hold.py)."""

from __future__ import annotations

import logging

from gateway.replies import HELD_FOR_REVIEW
from gateway.rules.dmarc_reporting import report_observation
from gateway.smtp.inbound_checks import InboundOutcome, check_inbound
from gateway.smtp.pipeline.step import CONTINUE, Step, StepResult, refuse
from gateway.smtp.state import Containment, Transaction
from gateway.store.dmarc_tally import DmarcTally

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
    role_only = len(tx.role_recipients) == len(tx.recipients)
    # Counted as done: a refusal or hold not applied to role-only mail is "none".
    exempt = role_only and (outcome.refusal is not None or bool(outcome.hold_rule))
    if rt.dmarc_tally is not None:
        _count_for_report(rt.dmarc_tally, outcome, tx.session.client_ip, exempt)
    if outcome.refusal is not None:
        if not role_only:
            return refuse(outcome.refusal, outcome.rule, outcome.facts)
        log.info("txid=%s to role mailboxes only: inbound policy not applied (%s)",
                 tx.txid, outcome.refusal)
    elif outcome.hold_rule:
        if not role_only:
            tx.contained = Containment("inbound", outcome.hold_rule, HELD_FOR_REVIEW,
                                       outcome.facts)
        else:
            log.info("txid=%s to role mailboxes only: inbound hold not applied (%s)",
                     tx.txid, outcome.hold_rule)
    tx.message = outcome.message
    tx.arc = outcome.arc
    tx.on_top(outcome.prefix)
    return CONTINUE


def _count_for_report(tally: DmarcTally, outcome: InboundOutcome, client_ip: str,
                      exempt: bool) -> None:
    """One count for the author's DMARC aggregate report: a dict increment here, the
    store write later in the background (gateway/store/dmarc_tally.py)."""
    if outcome.evidence is None or outcome.decision is None:
        return
    observation = report_observation(outcome.evidence, outcome.decision.action, client_ip=client_ip,
                                     arc_override=outcome.decision.arc_override, exempt=exempt)
    if observation is not None:
        tally.add(observation)


STEP = Step("inbound checks", run)
