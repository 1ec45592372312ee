"""The SMTP hooks: gather facts, ask the rules, apply their verdicts, forward.

The conversation, in the order the code runs (docs/flow.md says the same):

AUTH (submission only)  → locked out? (454) → account source (off the loop) →
                          235 / 535 after the failure delay / 454; a session slot
                          per account (454 when over concurrent_connections)
MAIL                    → null sender normalised; the config in force captured in
                          a new Transaction (gateway/smtp/state.py); the product's
                          sender check (submission: may this account use this
                          sender? SIZE= too big?)
RCPT                    → recipient limit; the product's recipient rule (rules.relay,
                          rules.abuse); the account's rate limits, held atomically
                          (quotas; the first RCPT also: suspended?, in the same
                          store round trip); then relayed downstream at once, its refusal
                          passed back, its acceptance as our 250 2.1.5
DATA (read by protocol) → bare CR/LF and size already refused while reading; the
                          header parsed; then the product's pipeline, step by step
                          (gateway/smtp/pipeline/pipelines.py: INBOUND, SUBMISSION)

What differs between the MX and submission is data chosen when the listener is
built (gateway/smtp/pipeline/products.py), never a branch here.  Each refusal names its
rule and facts on the transaction's record (gateway/smtp/records.py); the
protocol writes the line when the transaction ends.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from gateway import replies
from gateway.accounts.source import Identity, Outcome
from gateway.downstream.origin import Origin
from gateway.message import MalformedHeader, Message
from gateway.metering import AuthAttempt
from gateway.replies import Reply
from gateway.rules.lockout import verification_budget
from gateway.runtime import Runtime
from gateway.smtp.aiosmtpd_adapter import HookDiscovery
from gateway.smtp.metered import MeteredDownstream, on_disconnect
from gateway.smtp.pipeline.notices import suspended
from gateway.smtp.pipeline.products import PRODUCTS, Product, account_quota, contained_by
from gateway.smtp.pipeline.quota_refusal import quota_refusal
from gateway.smtp.pipeline.run import run_pipeline
from gateway.smtp.pipeline.step import StepResult, refuse
from gateway.smtp.protocol import GatewaySMTP
from gateway.smtp.records import TransactionRecord
from gateway.smtp.screening import ClientScreening
from gateway.smtp.state import Transaction

log = logging.getLogger("portcullis.smtp")

# MAIL parameters we pass on; the downstream transaction sends each only when the
# connection it picks offers the extension (gateway/downstream/parameters.py).
_PASSED_MAIL_PARAMS = ("SIZE=", "BODY=", "SMTPUTF8")


class GatewayHandler(HookDiscovery):
    """One handler per listener.  ``direction`` (inbound: the MX, outbound:
    submission) chooses its product once, here: what it asks at MAIL and RCPT and
    which pipeline runs at the end of DATA (gateway/smtp/pipeline/products.py).

    aiosmtpd takes every ``handle_*`` and ``auth_*`` attribute of a handler as a hook
    or an AUTH mechanism: name nothing else that way.
    """

    def __init__(self, runtime: Runtime, *, direction: str, authentication_timeout: float = 15.0):
        self.runtime = runtime
        self.product: Product = PRODUCTS[direction]
        self.authentication_timeout = authentication_timeout
        # MX screening's counters in this process (used only with a screening: section).
        self.screening = ClientScreening(runtime) if self.product.screens_clients else None

    # --- AUTH --------------------------------------------------------------------------
    async def authenticate(self, server: GatewaySMTP, login: str, password: str
                           ) -> tuple[Reply, Identity | None]:
        rt = self.runtime.current()
        metering = rt.metering if self.product.meters_accounts else None
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
                if rule.startswith("lockout") and rt.metrics is not None:
                    rt.metrics.locked_out(server.listener)
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
        acct = account_quota(rt, identity)
        verdict = await rt.metering.open_session(acct, server.cid, now)
        if not verdict.accept:
            log.info("cid=%s auth refused: too many sessions rule=%s login=%s", server.cid,
                     _auth_refused(server, "quota.concurrent_connections"), acct.login)
            return verdict.reply
        metering, cid = rt.metering, server.cid
        on_disconnect(server, lambda: metering.close_session(acct, cid))
        return None

    async def downstream_extensions(self) -> frozenset[str]:
        """What this listener's downstream offers (asked at EHLO, gateway/smtp/protocol.py)."""
        return await self.product.downstream(self.runtime.current()).extensions()

    # --- MAIL --------------------------------------------------------------------------
    async def handle_MAIL(self, server: GatewaySMTP, session: Any, envelope: Any,
                          address: str, mail_options: list[str]) -> str:
        # aiosmtpd hands the null sender over as "<>" (and needs mail_from truthy);
        # the rules and the downstream see "".
        sender = "" if address == "<>" else address
        if server.dsn_refusal is not None:
            return server.answer(server.dsn_refusal)
        utf8 = bool(getattr(envelope, "smtp_utf8", False))
        if utf8 and "smtputf8" not in server.downstream_offers:
            return str(replies.SMTPUTF8_NOT_OFFERED)
        if not utf8 and not address.isascii():
            return str(replies.NON_ASCII_ADDRESS)
        record = _record(server)
        record.sender = sender
        # Hot reload: the transaction runs to its end under the config in force now.
        rt = self.runtime.current()
        product = self.product
        refusal, acct = await product.check_sender(server.facts, rt, record, sender, mail_options)
        if refusal is not None:
            return str(refusal)
        if server.screen is not None:  # MX screening: messages per minute from this client
            limited = await server.screen.check_mail(rt)
            if not limited.accept:
                record.decide(limited.rule, limited.facts)
                server.refuse_client(limited.reply)
                return str(limited.reply)
        # Who the client is, for a downstream that takes XCLIENT/XFORWARD.
        origin = Origin(server.facts.client_ip, session.host_name, server.facts.login,
                        record.txid, bool(session.extended_smtp))
        downstream = product.downstream(rt).begin(
            sender, [o for o in mail_options if o.startswith(_PASSED_MAIL_PARAMS)]
            + server.dsn_parameters, origin)
        quota = None
        if acct is not None and rt.metering is not None:
            # Its abort (RSET, disconnect, local refusal) releases the quota holds.
            downstream = quota = MeteredDownstream(
                downstream, rt.metering, acct, rt.metering.begin(record.txid, server.facts.cid), rt.clock)
        server.tx = Transaction(
            server.facts, record, rt, product.direction, sender, session.host_name,
            bool(session.extended_smtp), envelope.rcpt_tos, mail_options, downstream, quota)
        if quota is not None:
            tx = server.tx
            quota.on_suspended = lambda s: suspended(tx, s, "end of a transaction refused downstream")
        envelope.mail_from = address  # aiosmtpd's own: a transaction is open
        return str(replies.SENDER_OK)

    # --- RCPT --------------------------------------------------------------------------
    async def handle_RCPT(self, server: GatewaySMTP, session: Any, envelope: Any,
                          address: str, rcpt_options: list[str]) -> str:
        tx = _transaction(server)
        rt, record = tx.runtime, tx.record
        if server.dsn_refusal is not None:
            record.recipient_refused("smtp.dsn_parameters")
            return server.answer(server.dsn_refusal)
        if not address.isascii() and "SMTPUTF8" not in tx.mail_options:
            record.recipient_refused("smtp.smtputf8")
            return str(replies.NON_ASCII_ADDRESS)
        dsn = server.dsn_parameters
        if len(tx.recipients) >= rt.config.limits.max_recipients:
            record.recipient_refused("limits.max_recipients")
            return str(replies.TOO_MANY_RECIPIENTS)
        verdict, mailbox, role = await self.product.check_recipient(rt, address)
        if verdict.accept and mailbox is not None and server.screen is not None:
            # MX screening's verdict comes here, after the recipient is known:
            # abuse@ and postmaster@ get in from any client (RFC 5321 §4.5.1).
            verdict = await server.screen.check_recipient(rt, mailbox.domain, role)
            server.facts.iprev = server.screen.iprev
            if verdict.reply.code == 421:  # a per-client limit: 421 and close
                record.recipient_refused(verdict.rule, verdict.facts)
                server.refuse_client(verdict.reply)
                return str(verdict.reply)
        if not verdict.accept or mailbox is None:
            record.recipient_refused(verdict.rule, verdict.facts)
            return str(verdict.reply)
        quota = tx.quota
        charged = quota is not None
        if quota is not None:
            decision = await quota.metering.check_recipient(
                quota.acct, quota.tx, mailbox.domain, rt.clock())
            if decision.suspension is not None:  # the ceiling, crossed by this attempt
                suspended(tx, decision.suspension, "RCPT")
            if quota_refusal(record, decision, rt, tx.session.login, recipient=True) is not None:
                return str(decision.verdict.reply)
            if decision.held is not None:  # accepted to be held (a limit, a suspension): nothing charged
                charged = False
                if tx.contained is None:
                    tx.contained = contained_by(decision, tx.session.login or "-")
        assert tx.downstream is not None
        reply = await tx.downstream.rcpt(str(mailbox), dsn)
        if reply.is_success:
            tx.recipients.append(str(mailbox))  # envelope.rcpt_tos: aiosmtpd's DATA needs one
            if role:
                tx.role_recipients += (str(mailbox),)
            record.rcpts += 1
            # RFC 3463 §3.2: X.1.5, destination address valid; whatever the downstream
            # said (a bare "250 OK" becomes 2.0.0), the recipient is ours to confirm.
            return str(replies.RECIPIENT_OK)
        if quota is not None and charged:
            # Refused downstream: its hold is released (and the refusal counted
            # toward the compromise signal at the end of the transaction).
            await quota.metering.recipient_refused(quota.tx, rt.clock())
        record.recipient_refused("downstream")
        return server.answer(reply)

    # --- DATA --------------------------------------------------------------------------
    async def handle_DATA(self, server: GatewaySMTP, session: Any, envelope: Any) -> str:
        tx = _transaction(server)
        # The one copy of the message the DATA reader made: every field we add goes
        # above it (tx.prefix), handed downstream as parts, never joined.
        try:
            # Read once: every check, stamp, stripper and the signer take it from here.
            tx.message = Message.parse(envelope.content)
        except MalformedHeader as exc:
            return self._finish(server, tx, refuse(replies.MALFORMED_HEADER.with_text(
                f"Malformed message header: {exc}"), "message.header"))
        return self._finish(server, tx, await run_pipeline(self.product.pipeline, tx))

    # --- helpers -------------------------------------------------------------------
    def _finish(self, server: GatewaySMTP, tx: Transaction, result: StepResult) -> str:
        """The end of DATA on record (the protocol writes the line with the reply),
        then the reply for the client: ours with its id, a downstream's as it said it."""
        reply = result.reply
        assert reply is not None
        if not reply.is_success:
            tx.record.decide(result.rule, result.facts)
        metrics = self.runtime.metrics
        if metrics is not None:
            outcome = ("accepted" if reply.is_success else
                       "tempfailed" if reply.is_temporary else "refused")
            metrics.message(server.listener, outcome)
        return server.answer(reply)


def _record(server: GatewaySMTP) -> TransactionRecord:
    # Opened by GatewaySMTP.smtp_MAIL before the hook runs, kept until the reply
    # that ends the transaction.
    record = server.tx_record
    assert record is not None, "a transaction hook ran outside a transaction"
    return record


def _transaction(server: GatewaySMTP) -> Transaction:
    # Made by handle_MAIL; aiosmtpd asks for RCPT and DATA only after a MAIL it accepted.
    tx = server.tx
    assert tx is not None, "a transaction hook ran outside a transaction"
    return tx


def _auth_refused(server: GatewaySMTP, rule: str) -> str:
    """The rule behind a refused AUTH, kept for the connection's line; returned for
    the AUTH's own log line."""
    server.record.auth_rule = rule
    return rule


def _client_ip(server: GatewaySMTP) -> str:
    # The real client, also behind a balancer speaking the PROXY protocol.
    return server.client_ip
