"""rspamd's score → the customer's content rules (gateway/smtp/content_scan.py):
pass, tag (our fields on top), hold (carried out by hold.py, after signing, so
the held copy is the message as it would have left), or refuse.

On submission whenever a ``scanner:`` section is set, with the sending
account's customer's rules; on the MX when inbound scanning is enabled, with the
first recipient's customer's rules.  Mail only for abuse@/postmaster@ is scanned
(the verdict on the record) but never refused or held by it."""

from __future__ import annotations

import logging
from collections.abc import Callable

from gateway.config.content import ScannerSettings
from gateway.config.policy import CustomerPolicy
from gateway.rules.content import SPAM_HEADERS
from gateway.smtp.content_scan import scan
from gateway.smtp.pipeline.notices import notify
from gateway.smtp.pipeline.sender_grants import customer_policy
from gateway.smtp.pipeline.step import CONTINUE, Step, StepResult, refuse
from gateway.smtp.state import Transaction

log = logging.getLogger("portcullis.smtp")

_SPAM_NAMES = frozenset(h.lower().encode() for h in SPAM_HEADERS)


def _senders_customer(tx: Transaction) -> CustomerPolicy | None:
    identity = tx.session.identity
    return customer_policy(tx.runtime, identity) if identity else None


def _recipients_customer(tx: Transaction) -> CustomerPolicy | None:
    directory = tx.runtime.directory
    for rcpt in tx.recipients:
        owner = directory.customer_for_domain(rcpt.rpartition("@")[2])
        if owner is not None:
            return directory.customers.get(owner)
    # Only hosted domains no policy file claims (and role mailboxes): the default
    # policy's content rules, as for their accounts (docs/accounts.md).
    hosted = [rcpt for rcpt in tx.recipients if rcpt not in tx.role_recipients]
    default = tx.runtime.config.default_policy
    if hosted and default.content is not None:
        return default.for_customer(hosted[0].rpartition("@")[2])
    return None


def _content_scan(customer_of: Callable[[Transaction], CustomerPolicy | None],
                  is_enabled: Callable[[ScannerSettings], bool], strip_spam_fields: bool) -> Step:
    async def run(tx: Transaction) -> StepResult:
        rt = tx.runtime
        settings = rt.config.scanner
        if rt.scanner is None or settings is None or not is_enabled(settings):
            return CONTINUE
        content = await scan(
            rt.scanner, settings, tx.direction, customer_of(tx),
            tx.prefix + tx.message.data if tx.prefix else tx.message.data, sender=tx.sender,
            recipients=tx.recipients, client_ip=tx.session.client_ip, helo=tx.helo,
            login=tx.session.login, txid=tx.txid)
        if rt.metrics is not None:
            error = content.facts.get("scanner_error")
            rt.metrics.scanned(tx.direction, content.action,
                               str(error) if error is not None else None)
        record = tx.record
        record.checks = f"{record.checks} content={content.action}" if record.checks \
            else f"content={content.action}"
        if tx.role_recipients and len(tx.role_recipients) == len(tx.recipients) \
                and (not content.verdict.accept or content.hold):
            # RFC 2142: abuse@ and postmaster@ must reach a person, and spam is what
            # abuse@ is sent: scanned for the record, never refused or held.
            record.checks += " (not applied: role mailboxes)"
            log.info("txid=%s to role mailboxes only: content %s not applied", tx.txid,
                     content.action)
        elif not content.verdict.accept:
            notify(tx, content.incident, content.facts, tx.txid)
            return refuse(content.verdict.reply, f"content.{content.action}", content.facts)
        else:
            tx.content = content
        if strip_spam_fields:
            # Only our scanner's verdict may reach the recipient's filters.
            tx.message = tx.message.without(lambda field: field.key in _SPAM_NAMES)
        tx.on_top(b"".join(f"{n}: {v}\r\n".encode() for n, v in content.headers))
        return CONTINUE

    return Step("content scan", run)


SUBMISSION_STEP = _content_scan(_senders_customer, lambda _settings: True, strip_spam_fields=False)
INBOUND_STEP = _content_scan(_recipients_customer, lambda settings: settings.inbound.enabled,
                             strip_spam_fields=True)
