"""A message the downstream took for abuse@: whose mail is it about?  (docs/abuse.md)

Runs after the report was delivered (reports are always passed on unchanged);
nothing here can change the client's answer.  Each message of ours a report
quotes is a complaint against the account that sent it, counted once however
many reports quote it, and a complaint rate over the threshold suspends the
account (Metering.record_complaint → rules.compromise).
"""

from __future__ import annotations

import asyncio
import logging

from gateway.ops.notify import suspension_incident
from gateway.rules.abuse import Attribution, Report, attribute, is_abuse_mailbox, read_report
from gateway.rules.quota import quota_for_known_login
from gateway.runtime import Runtime
from gateway.store.base import Charge, StoreUnavailable

log = logging.getLogger("portcullis.abuse")

# Parse in a thread above this size: the email package is pure Python.
_PARSE_INLINE_MAX = 64 * 1024


async def take_abuse_report(rt: Runtime, txid: str, message: bytes,
                            role_recipients: list[str]) -> list[Attribution]:
    if not any(is_abuse_mailbox(r) for r in role_recipients):
        return []  # postmaster@ only: bounces and the like, not complaints
    if rt.metering is None or rt.sender_ids is None or not rt.config.abuse.attribute_reports:
        return []
    try:
        if len(message) > _PARSE_INLINE_MAX:
            report = await asyncio.to_thread(read_report, message)
        else:
            report = read_report(message)
        found = attribute(report, rt.sender_ids.open)
    except Exception:  # a report we cannot read is still delivered; never a crash
        log.exception("txid=%s abuse report could not be read", txid)
        return []
    if not found:
        log.info("txid=%s abuse report not attributed: kind=%s feedback_type=%s tokens=%d "
                 "(not about mail we sent, or not a complaint)",
                 txid, report.kind, report.feedback_type or "-", len(report.tokens))
        return []
    counted = []
    for attribution in found:
        try:
            if await _count_complaint(rt, txid, report, attribution):
                counted.append(attribution)
        except StoreUnavailable as exc:
            log.error("txid=%s complaint about login=%s not counted: %s",
                      txid, attribution.login, exc)
    return counted


async def _count_complaint(rt: Runtime, txid: str, report: Report, a: Attribution) -> bool:
    assert rt.metering is not None
    now = rt.clock()
    days = rt.metering.settings.compromise.complaint_days
    # One complaint per message of ours, however many reports quote it (a recipient
    # who got one message cannot complain a clean account into suspension).
    first = await rt.metering.store.charge(
        [Charge(f"complaint-about:{a.txid}", days * 86400.0, 1, name="complaint once")], now)
    if not first.accepted:
        log.info("txid=%s abuse report about txid=%s login=%s: already counted",
                 txid, a.txid, a.login)
        return False
    # The account as its sessions were metered, also when only the ISP's database
    # knows it: then its customer's policy file or default_policy decides, shadow
    # mode included (a shadow customer's account is never really suspended).
    acct = quota_for_known_login(rt.directory, rt.config.quotas, a.login,
                                 rt.config.default_policy, rt.config.accounts.default_customer)
    evidence = {"report_txid": txid, "about_txid": a.txid, "sent_at": a.sent_at,
                "report": report.kind, "feedback_type": report.feedback_type,
                "reported_message_id": report.reported_message_id, "source_ip": report.source_ip}
    suspension = await rt.metering.record_complaint(acct, now, evidence)
    if rt.metrics is not None:
        rt.metrics.complaint()
    if suspension is not None and rt.notifier is not None:
        rt.notifier.submit(suspension_incident(
            a.login, acct.customer, suspension.reason,
            {**dict(suspension.evidence), "report_txid": txid, "about_txid": a.txid,
             "report": report.kind}, now, a.txid), now)
    log.warning("txid=%s abuse report attributed: login=%s about txid=%s kind=%s%s", txid,
                a.login, a.txid, report.kind, f"; suspended: {suspension.reason}" if suspension else "")
    return True
