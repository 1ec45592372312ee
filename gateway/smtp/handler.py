"""The SMTP hooks: gather facts, ask the rules, apply their verdicts, forward.

The conversation, in the order the code runs (docs/flow.md says the same):

AUTH (submission only)  → locked out? (454) → account source (off the loop) →
                          235 / 535 after the failure delay / 454; a session slot
                          per account (454 when over concurrent_connections)
MAIL                    → null sender normalised; the config in force captured for
                          the transaction; on submission: may this account use this
                          sender? (rules.senders); suspended? SIZE= too big? (quotas)
RCPT                    → recipient limit; inbound: is it ours, or abuse@/postmaster@
                          (rules.abuse)? (rules.relay); submission: rate limits,
                          held atomically (quotas); then relayed downstream at once,
                          its refusal passed back, its acceptance as our 250 2.1.5
                          (a refused recipient costs nothing)
DATA (read by protocol) → bare CR/LF and size already refused while reading;
                          on submission: real size (quotas), From:/Sender:/Resent-*
                          checked (rules.senders); Received: and the sender id added;
                          handed downstream; its answer passed back; quota holds
                          committed if it took the message; inbound: abuse reports
                          attributed

Each refusal names its rule and facts on the transaction's record (server.tx_record,
gateway/smtp/records.py); the protocol writes the line when the transaction ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

from gateway import replies
from gateway.accounts.source import Identity, Outcome
from gateway.config.dkim import DkimPolicy
from gateway.config.policy import CustomerPolicy
from gateway.downstream.base import Downstream
from gateway.message import MalformedHeader, header_fields
from gateway.metering import AuthAttempt
from gateway.ops.notify import Incident
from gateway.replies import Reply
from gateway.rules.abuse import is_role_recipient
from gateway.rules.content import SPAM_HEADERS, ContentDecision
from gateway.rules.lockout import verification_budget
from gateway.rules.quota import AccountQuota, QuotaDecision, decide_size, quota_for_login
from gateway.rules.relay import decide_inbound_recipient, decide_outbound_recipient
from gateway.rules.senders import decide_envelope_sender, decide_header_senders
from gateway.runtime import Runtime
from gateway.smtp.abuse_reports import take_abuse_report
from gateway.smtp.content_scan import scan
from gateway.smtp.inbound_checks import check_inbound
from gateway.smtp.metered import MeteredDownstream, MeteredSession, on_disconnect
from gateway.smtp.outbound_signing import sign_outbound
from gateway.smtp.protocol import GatewaySMTP
from gateway.smtp.records import TransactionRecord
from gateway.stamps.authresults import remove_fields
from gateway.stamps.received import ReceivedFacts, received_header
from gateway.stamps.sender_id import sender_id_header, strip_sender_id_headers

log = logging.getLogger("portcullis.smtp")

# What the account holder and the abuse desk are told, in one plain sentence.
_NOTICE_REASONS = {
    "held": "our content filter classified a message as spam and held it for review",
    "rejected": "our content filter classified a message as spam and refused it",
    "suspended": "the account sent far more than usual or than its limits allow, and was suspended",
}

# MAIL parameters we pass on when the downstream supports them (RFC 1870, RFC 6152).
_PASSED_MAIL_PARAMS = ("SIZE=", "BODY=")


class GatewayHandler:
    """One handler per listener; ``direction`` is inbound (MX) or outbound (submission).

    aiosmtpd takes every ``handle_*`` and ``auth_*`` attribute of a handler as a hook
    or an AUTH mechanism: name nothing else that way.
    """

    def __init__(self, runtime: Runtime, *, direction: str, authentication_timeout: float = 15.0):
        self.runtime = runtime
        self.direction = direction
        self.authentication_timeout = authentication_timeout

    @property
    def downstream(self) -> Downstream:
        ds = self.runtime.inbound if self.direction == "inbound" else self.runtime.outbound
        assert ds is not None
        return ds

    # --- AUTH --------------------------------------------------------------------------
    async def authenticate(self, server: GatewaySMTP, login: str, password: str
                           ) -> tuple[Reply, Identity | None]:
        rt = self.runtime.current()
        metering = rt.metering if self.direction == "outbound" else None
        client_ip = _client_ip(server)
        # Answered before aiosmtpd's command timeout, which would close the connection
        # without a word: an AUTH storm costs waiting (for a place under the lockout
        # limit, for a free verifier), then 454.
        budget = verification_budget(self.authentication_timeout, rt.config.limits.command_timeout,
                                     rt.config.lockout.failure_delay)
        ends = asyncio.get_running_loop().time() + budget
        attempt: AuthAttempt | None = None
        if metering is not None:
            # Counted as a failure from here until the password proves right, in one
            # atomic step with the lockout check (rules/lockout.py).  Locked out, or as
            # many attempts in flight as the limit: the same 454 for a locked address
            # or login, real or not, and the password is not even checked.
            known = getattr(rt.accounts, "known_good", None)  # the cache: no hash to check
            attempt = await metering.auth_begin(client_ip, login, rt.clock(),
                                                known_good=bool(known and known(login, password)),
                                                wait=budget / 2)
            if not attempt.verdict.accept:
                allowed = attempt.verdict
                rule = allowed.rule or (
                    "store.unavailable" if allowed.reply == replies.AUTH_TEMPFAIL else "lockout")
                log.info("cid=%s auth refused rule=%s client=%s", server.cid,
                         _auth_refused(server, rule), client_ip)
                return allowed.reply, None
        try:
            async with asyncio.timeout_at(ends):
                answer = await rt.accounts.authenticate(login, password)
        except Exception as exc:
            if isinstance(exc, TimeoutError):
                log.warning("cid=%s auth source timed out rule=%s", server.cid,
                            _auth_refused(server, "accounts.timeout"))
            else:
                log.exception("cid=%s auth source failed rule=%s", server.cid,
                              _auth_refused(server, "accounts.error"))
            answer = None
        if answer is not None and answer.outcome is Outcome.OK and answer.identity is not None:
            if metering is not None and attempt is not None:
                busy = await self._open_session(server, rt, answer.identity, attempt)
                if busy is not None:
                    return busy, None
            log.info("cid=%s auth ok login=%s", server.cid, answer.identity.login)
            return replies.AUTH_OK, answer.identity
        if answer is None or answer.outcome is Outcome.TEMPFAIL:
            if answer is not None:
                log.warning("cid=%s auth tempfail rule=%s", server.cid,
                            _auth_refused(server, "accounts.tempfail"))
            if metering is not None and attempt is not None:
                await metering.auth_abandoned(attempt)  # never checked: not a failure
            return replies.AUTH_TEMPFAIL, None
        log.info("cid=%s auth failed rule=%s client=%s", server.cid,
                 _auth_refused(server, "auth.credentials"), client_ip)
        if metering is not None and attempt is not None:
            # Only failures wait: a right password is never slowed down.
            await asyncio.sleep(await metering.auth_failed(attempt, rt.clock()))
        return replies.AUTH_INVALID, None

    async def _open_session(self, server: GatewaySMTP, rt: Runtime, identity: Identity,
                            attempt: AuthAttempt) -> Reply | None:
        """Take one of the account's connection slots until the client disconnects."""
        assert rt.metering is not None
        now = rt.clock()
        await rt.metering.auth_succeeded(attempt)
        acct = _account_quota(rt, identity)
        verdict = await rt.metering.open_session(acct, server.cid, now)
        if not verdict.accept:
            log.info("cid=%s auth refused: too many sessions rule=%s login=%s", server.cid,
                     _auth_refused(server, "quota.concurrent_connections"), acct.login)
            return verdict.reply
        metering, cid = rt.metering, server.cid
        server.metered = MeteredSession(acct, metering)
        on_disconnect(server, lambda: metering.close_session(acct, cid))
        return None

    # --- MAIL --------------------------------------------------------------------------
    async def handle_MAIL(self, server: GatewaySMTP, session: Any, envelope: Any,
                          address: str, mail_options: list[str]) -> str:
        # aiosmtpd hands the null sender over as "<>" (and needs mail_from truthy);
        # the rules and the downstream see "".
        sender = "" if address == "<>" else address
        record = _record(server)
        record.sender = sender
        # Hot reload: the transaction runs to its end under the config in force now.
        rt = envelope.runtime = self.runtime.current()
        acct: AccountQuota | None = None
        if self.direction == "outbound":
            verdict = decide_envelope_sender(server.identity, self._aliases(server.identity, rt), sender)
            if not verdict.accept:
                record.decide(verdict.rule, verdict.facts)
                return str(verdict.reply)
            if rt.metering is not None:
                acct = _account_quota(rt, server.identity)
                decision = await rt.metering.check_mail(
                    acct, _declared_size(mail_options), rt.clock(), lease_id=server.cid)
                if not self._quota_verdict(server, record, decision):
                    return str(decision.verdict.reply)
        envelope.txid = record.txid
        envelope.sender = sender
        envelope.downstream = self.downstream.begin(
            sender, [o for o in mail_options if o.startswith(_PASSED_MAIL_PARAMS)])
        envelope.metered = None
        envelope.role_recipients = []
        if acct is not None and rt.metering is not None:
            # Its abort (RSET, disconnect, local refusal) releases the quota holds.
            envelope.downstream = envelope.metered = MeteredDownstream(
                envelope.downstream, rt.metering, acct, rt.metering.begin(envelope.txid), rt.clock)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return str(replies.SENDER_OK)

    # --- RCPT --------------------------------------------------------------------------
    async def handle_RCPT(self, server: GatewaySMTP, session: Any, envelope: Any,
                          address: str, rcpt_options: list[str]) -> str:
        rt: Runtime = envelope.runtime
        record = _record(server)
        limits = rt.config.limits
        if len(envelope.rcpt_tos) >= limits.max_recipients:
            record.recipient_refused("limits.max_recipients")
            return str(replies.TOO_MANY_RECIPIENTS)
        role = False
        if self.direction == "inbound":
            if address.lower() == "postmaster":
                # RFC 5321 §4.5.1: the unqualified <Postmaster> is the ISP's own postmaster.
                domains = rt.config.abuse.domains
                address = f"postmaster@{domains[0] if domains else rt.config.hostname}"
                role = True
            else:
                # RFC 2142 / RFC 5321 §4.5.1: abuse@ and postmaster@ of every domain we
                # serve are ours, the ISP's own domains included.
                role = is_role_recipient(address, lambda d: _serves(rt, d))
            owner = (lambda d: "role mailbox") if role else rt.directory.customer_for_domain
            verdict, mailbox = decide_inbound_recipient(address, owner)
        else:
            verdict, mailbox = decide_outbound_recipient(address)
        if not verdict.accept or mailbox is None:
            record.recipient_refused(verdict.rule)
            return str(verdict.reply)
        metered: MeteredDownstream | None = envelope.metered
        if metered is not None:
            decision = await metered.metering.check_recipient(
                metered.acct, metered.tx, mailbox.domain, rt.clock())
            if not self._quota_verdict(server, record, decision, recipient=True):
                return str(decision.verdict.reply)
        reply = await envelope.downstream.rcpt(str(mailbox), [])
        if reply.is_success:
            envelope.rcpt_tos.append(str(mailbox))
            if role:
                envelope.role_recipients.append(str(mailbox))
            record.rcpts += 1
            # RFC 3463 §3.2: X.1.5, destination address valid; whatever the downstream
            # said (a bare "250 OK" becomes 2.0.0), the recipient is ours to confirm.
            return str(replies.RECIPIENT_OK)
        if metered is not None:
            # Refused downstream: its hold is released (and the refusal counted
            # toward the compromise signal at the end of the transaction).
            await metered.metering.recipient_refused(metered.tx, rt.clock())
        record.recipient_refused("downstream")
        return server.pass_verbatim(str(reply)) if reply.relayed else str(reply)

    # --- DATA --------------------------------------------------------------------------
    async def handle_DATA(self, server: GatewaySMTP, session: Any, envelope: Any) -> str:
        # The one copy of the message the DATA reader made: every field we add goes in
        # ``added`` (and the stamps) above it, handed downstream as parts, never joined.
        message: bytes = envelope.content
        added = b""
        rt: Runtime = envelope.runtime
        metered: MeteredDownstream | None = envelope.metered
        try:
            fields = header_fields(message)
        except MalformedHeader as exc:
            return self._finish(server, envelope, replies.MALFORMED_HEADER.with_text(
                f"Malformed message header: {exc}"), rule="message.header")
        if self.direction == "outbound":
            if metered is not None:
                # The real size against the account's own limit (RFC 1870 §6.3).
                size = decide_size(metered.acct, len(message))
                if not self._quota_verdict(server, _record(server), size):
                    return self._finish(server, envelope, size.verdict.reply)
            verdict = decide_header_senders(
                server.identity, self._aliases(server.identity, rt), fields)
            if not verdict.accept:
                return self._finish(server, envelope, verdict.reply, rule=verdict.rule,
                                    facts=verdict.facts)
        elif rt.resolver is not None:  # inbound, checks on
            outcome = await check_inbound(
                rt, message=message, header=fields, sender=envelope.sender, helo=session.host_name,
                client_ip=_client_ip(server), recipients=envelope.rcpt_tos)
            envelope.checks = outcome.summary
            if rt.metrics is not None:
                for method, result in outcome.results:
                    rt.metrics.auth_result(method, result)
            if outcome.refusal is not None:
                if len(envelope.role_recipients) < len(envelope.rcpt_tos):
                    return self._finish(server, envelope, outcome.refusal, rule=outcome.rule,
                                        facts=outcome.facts)
                # Only abuse@/postmaster@: always accepted, whatever the policy.
                log.info("txid=%s to role mailboxes only: inbound policy not applied (%s)",
                         envelope.txid, outcome.refusal)
            message, added = outcome.message, outcome.prefix
        content = None
        if rt.scanner is not None and rt.config.scanner is not None and (
                self.direction == "outbound" or rt.config.scanner.inbound.enabled):
            content = await scan(
                rt.scanner, rt.config.scanner, self.direction, self._customer(server, envelope, rt),
                added + message if added else message, sender=envelope.sender,
                recipients=envelope.rcpt_tos,
                client_ip=_client_ip(server), helo=session.host_name,
                login=server.identity.login if server.identity else None, txid=envelope.txid)
            envelope.checks = " ".join(filter(None, (getattr(envelope, "checks", None),
                                                     f"content={content.action}")))
            if not content.verdict.accept:
                self._notify(server, envelope, rt, content.incident, content.facts, envelope.txid)
                return self._finish(server, envelope, content.verdict.reply,
                                    rule=f"content.{content.action}", facts=content.facts)
            if self.direction == "inbound":
                # Only our scanner's verdict may reach the recipient's filters.
                names = {h.lower().encode() for h in SPAM_HEADERS}
                message = remove_fields(message, lambda name, _field: name in names)
            added = b"".join(f"{n}: {v}\r\n".encode() for n, v in content.headers) + added
        stamp = received_header(self._received_facts(server, session, envelope),
                                datetime.now(UTC))
        if self.direction == "outbound" and rt.sender_ids is not None:
            # Identifies the account to us alone (docs/abuse.md); the client's own is removed.
            message = strip_sender_id_headers(message)
            stamp += sender_id_header(rt.sender_ids.make(
                server.identity.login, envelope.txid, rt.clock()))
        stamp += added
        outgoing = [stamp, message]
        if self.direction == "outbound" and rt.keystore is not None:
            # Last change before forwarding: the signature covers what leaves.
            signed = await sign_outbound(rt.keystore, server.identity, *self._signing_policy(
                server.identity, rt), message, rt.clock(), envelope.txid, prefix=stamp)
            if signed.refusal is not None:
                return self._finish(server, envelope, signed.refusal, rule="dkim.signing")
            outgoing.insert(0, signed.header)
            if rt.metrics is not None:
                for signature in signed.signatures:
                    rt.metrics.dkim_signed(signature.rpartition("a=")[2])
        if content is not None and content.hold and rt.held is not None:
            return await self._hold(server, envelope, rt, content, outgoing)
        tx = envelope.downstream
        envelope.downstream = None  # handed over: not to be aborted by the state reset
        started = time.monotonic()
        try:
            reply = await tx.data(outgoing)
        except asyncio.CancelledError:
            # Cut off (the client left, a timeout, shutdown): abort all the same, as
            # the connection's task, since this one may be cancelled again.
            server.in_background(tx.abort())
            raise
        except Exception:
            await tx.abort()
            raise
        self._count_downstream(rt, time.monotonic() - started, reply)
        if metered is not None:
            suspension = await metered.metering.finish(
                metered.acct, metered.tx, reply.is_success, rt.clock())
            if suspension is not None:
                log.warning("txid=%s login=%s suspended: %s evidence=%s", envelope.txid,
                            suspension.login, suspension.reason, dict(suspension.evidence))
                self._notify(server, envelope, rt, "suspended",
                             {"reason": suspension.reason, **dict(suspension.evidence)},
                             envelope.txid)
        if reply.is_success and envelope.role_recipients:
            await take_abuse_report(rt, envelope.txid, added + message, envelope.role_recipients)
        return self._finish(server, envelope, reply, size=len(message), rule="downstream")

    # --- helpers -------------------------------------------------------------------
    async def _hold(self, server: GatewaySMTP, envelope: Any, rt: Runtime,
                    content: ContentDecision, outgoing: list[bytes]) -> str:
        """Store the message exactly as it would have gone (fsynced) instead of forwarding
        it; the client hears 250 only once it is safe.  Nothing goes downstream."""
        assert rt.held is not None
        held = await rt.held.hold(
            message=outgoing, sender=envelope.sender, recipients=list(envelope.rcpt_tos),
            direction=self.direction, reason="content", reply=str(content.verdict.reply),
            now=rt.clock(), evidence=dict(content.facts),
            login=server.identity.login if server.identity else None, txid=envelope.txid,
            mail_options=[o for o in envelope.mail_options if o.startswith(("SIZE=", "BODY="))])
        log.warning("txid=%s held for review as %s: %s", envelope.txid, held.id, dict(content.facts))
        self._notify(server, envelope, rt, "held", content.facts, held.id)
        # The downstream transaction (recipients already relayed) is reset, not used.
        return self._finish(server, envelope, content.verdict.reply)

    def _notify(self, server: GatewaySMTP, envelope: Any, rt: Runtime, kind: str | None,
                facts: Any, reference: str) -> None:
        identity = server.identity
        if rt.notifier is None or kind is None or identity is None:
            return
        rt.notifier.submit(Incident(
            kind, identity.login, rt.clock(),
            account_address=identity.login if "@" in identity.login else None,
            customer=identity.customer, reason=_NOTICE_REASONS.get(kind, kind),
            reference=reference, evidence=dict(facts), direction=self.direction))

    def _customer(self, server: GatewaySMTP, envelope: Any, rt: Runtime) -> CustomerPolicy | None:
        """Whose content rules apply: the sender's customer on submission, the first
        recipient's on the MX."""
        if self.direction == "outbound":
            return rt.directory.customers.get(server.identity.customer) if server.identity else None
        for rcpt in envelope.rcpt_tos:
            owner = rt.directory.customer_for_domain(rcpt.rpartition("@")[2])
            if owner is not None:
                return rt.directory.customers.get(owner)
        return None

    def _count_downstream(self, rt: Runtime, seconds: float, reply: Reply) -> None:
        if rt.metrics is None:
            return
        name = self.direction
        rt.metrics.downstream_took(name, seconds)
        if reply == replies.DOWNSTREAM_TIMEOUT:
            rt.metrics.downstream_error(name, "timeout")
        elif reply == replies.DOWNSTREAM_UNAVAILABLE:
            rt.metrics.downstream_error(name, "connect")
        elif reply.is_temporary:
            rt.metrics.downstream_error(name, "tempfail")
        elif not reply.is_success:
            rt.metrics.downstream_error(name, "refused")

    def _signing_policy(self, identity: Identity, rt: Runtime) -> tuple[Collection[str], DkimPolicy]:
        customer = rt.directory.customers.get(identity.customer)
        if customer is None:
            # A customer without a policy file (an account from Dovecot/SQL/LDAP): the
            # gateway's defaults, for the domains its account source vouches for.
            domains = {a.rpartition("@")[2] for a in identity.senders | {identity.login} if "@" in a}
            return frozenset(domains), DkimPolicy()
        return customer.domain_set, customer.dkim

    def _aliases(self, identity: Identity, rt: Runtime) -> Any:
        customer = rt.directory.customers.get(identity.customer)
        return customer.aliases if customer is not None else {}

    def _quota_verdict(self, server: GatewaySMTP, record: TransactionRecord,
                       decision: QuotaDecision, recipient: bool = False) -> bool:
        """Put a refusal on record (a recipient's, or the transaction's), or log in
        shadow mode the refusal not sent; True when accepted."""
        login = server.identity.login if server.identity else "-"
        if decision.would_refuse is not None:
            log.info("txid=%s login=%s %s", record.txid, login, decision.log_text())
        if decision.accept:
            return True
        # "customer messages_per_hour" → quota.customer.messages_per_hour
        rule = "quota." + (decision.limit or "unknown").replace(" ", ".")
        if recipient:
            record.recipient_refused(rule)
        else:
            record.decide(rule, {"quota_login": login})
        metrics = self.runtime.metrics
        if metrics is not None:
            metrics.quota_refused(decision.limit or "unknown")
        return False

    def _received_facts(self, server: GatewaySMTP, session: Any, envelope: Any) -> ReceivedFacts:
        tls = server.tls_info()
        return ReceivedFacts(
            helo=session.host_name,
            client_ip=_client_ip(server),
            hostname=envelope.runtime.config.hostname,
            txid=envelope.txid,
            extended=bool(session.extended_smtp),
            tls_version=tls[0] if tls else None,
            tls_cipher=tls[1] if tls else None,
            authenticated=server.identity is not None,
            recipient=envelope.rcpt_tos[0] if len(envelope.rcpt_tos) == 1 else None,
        )

    def _finish(self, server: GatewaySMTP, envelope: Any, reply: Reply, size: int = 0,
                rule: str = "", facts: Any = ()) -> str:
        """The end of DATA on record (the protocol writes the line with the reply),
        then the reply for the client: ours with its id, a downstream's as it said it."""
        record = _record(server)
        record.size = size
        record.checks = getattr(envelope, "checks", None) or ""
        if not reply.is_success:
            record.decide(rule, facts)
        metrics = self.runtime.metrics
        if metrics is not None:
            outcome = ("accepted" if reply.is_success else
                       "tempfailed" if reply.is_temporary else "refused")
            metrics.message(server.listener, outcome)
        return server.pass_verbatim(str(reply)) if reply.relayed else str(reply)


def _record(server: GatewaySMTP) -> TransactionRecord:
    # Opened by GatewaySMTP.smtp_MAIL before the hook runs, kept until the reply
    # that ends the transaction.
    record = server.tx_record
    assert record is not None, "a transaction hook ran outside a transaction"
    return record


def _auth_refused(server: GatewaySMTP, rule: str) -> str:
    """The rule behind a refused AUTH, kept for the connection's line; returned for
    the AUTH's own log line."""
    server.record.auth_rule = rule
    return rule


def _account_quota(rt: Runtime, identity: Identity) -> AccountQuota:
    found = rt.directory.account(identity.login)
    return quota_for_login(identity.login, identity.customer, rt.config.quotas,
                           rt.directory.customers.get(identity.customer),
                           found[1] if found is not None else None)


def _declared_size(mail_options: list[str]) -> int | None:
    """RFC 1870 §3: MAIL FROM:<...> SIZE=n."""
    for option in mail_options:
        name, _, value = option.partition("=")
        if name.upper() == "SIZE" and value.isdigit():
            return int(value)
    return None


def _serves(rt: Runtime, domain: str) -> bool:
    """A domain whose role mailboxes we accept: a customer's, our own host name, or
    one the ISP listed under abuse.domains."""
    return (domain in rt.directory.domains or domain == rt.config.hostname
            or domain in rt.config.abuse.domains)


def _client_ip(server: GatewaySMTP) -> str:
    # The real client, also behind a balancer speaking the PROXY protocol.
    return server.client_ip
