"""The SMTP hooks: gather facts, ask the rules, apply their verdicts, forward.

The conversation, in the order the code runs (docs/flow.md says the same):

AUTH (submission only)  → account source (off the loop) → 235 / 535 / 454
MAIL                    → null sender normalised; on submission: may this
                          account use this sender? (rules.senders)
RCPT                    → recipient limit; inbound: is it ours? (rules.relay);
                          then relayed downstream at once, its answer passed back
DATA (read by protocol) → bare CR/LF and size already refused while reading;
                          on submission: From:/Sender: checked (rules.senders);
                          Received: added; handed downstream; its answer passed back
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

from gateway import replies
from gateway.accounts.source import Identity, Outcome
from gateway.downstream.base import Downstream
from gateway.message import MalformedHeader, header_fields
from gateway.replies import Reply
from gateway.rules.relay import decide_inbound_recipient, decide_outbound_recipient
from gateway.rules.senders import decide_envelope_sender, decide_header_senders
from gateway.runtime import Runtime
from gateway.smtp.inbound_checks import check_inbound
from gateway.smtp.protocol import GatewaySMTP
from gateway.stamps.received import ReceivedFacts, received_header

log = logging.getLogger("portcullis.smtp")
txlog = logging.getLogger("portcullis.transaction")

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
        try:
            async with asyncio.timeout(self.authentication_timeout):
                answer = await self.runtime.accounts.authenticate(login, password)
        except TimeoutError:
            log.warning("cid=%s auth source timed out", server.cid)
            return replies.AUTH_TEMPFAIL, None
        except Exception:
            log.exception("cid=%s auth source failed", server.cid)
            return replies.AUTH_TEMPFAIL, None
        if answer.outcome is Outcome.OK and answer.identity is not None:
            log.info("cid=%s auth ok login=%s", server.cid, answer.identity.login)
            return replies.AUTH_OK, answer.identity
        if answer.outcome is Outcome.TEMPFAIL:
            log.warning("cid=%s auth tempfail", server.cid)
            return replies.AUTH_TEMPFAIL, None
        log.info("cid=%s auth failed client=%s", server.cid, _client_ip(server))
        return replies.AUTH_INVALID, None

    # --- MAIL --------------------------------------------------------------------------
    async def handle_MAIL(self, server: GatewaySMTP, session: Any, envelope: Any,
                          address: str, mail_options: list[str]) -> str:
        # aiosmtpd hands the null sender over as "<>" (and needs mail_from truthy);
        # the rules and the downstream see "".
        sender = "" if address == "<>" else address
        if self.direction == "outbound":
            verdict = decide_envelope_sender(server.identity, self._aliases(server.identity), sender)
            if not verdict.accept:
                return str(verdict.reply)
        server.transactions += 1
        envelope.txid = f"{server.cid}.{server.transactions}"
        envelope.sender = sender
        envelope.started = time.monotonic()
        envelope.downstream = self.downstream.begin(
            sender, [o for o in mail_options if o.startswith(_PASSED_MAIL_PARAMS)])
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return str(replies.SENDER_OK)

    # --- RCPT --------------------------------------------------------------------------
    async def handle_RCPT(self, server: GatewaySMTP, session: Any, envelope: Any,
                          address: str, rcpt_options: list[str]) -> str:
        limits = self.runtime.config.limits
        if len(envelope.rcpt_tos) >= limits.max_recipients:
            return str(replies.TOO_MANY_RECIPIENTS)
        if self.direction == "inbound":
            verdict, mailbox = decide_inbound_recipient(
                address, self.runtime.directory.customer_for_domain)
        else:
            verdict, mailbox = decide_outbound_recipient(address)
        if not verdict.accept or mailbox is None:
            return str(verdict.reply)
        reply = await envelope.downstream.rcpt(str(mailbox), [])
        if reply.is_success:
            envelope.rcpt_tos.append(str(mailbox))
        return str(reply)

    # --- DATA --------------------------------------------------------------------------
    async def handle_DATA(self, server: GatewaySMTP, session: Any, envelope: Any) -> str:
        message: bytes = envelope.content
        try:
            fields = header_fields(message)
        except MalformedHeader as exc:
            return self._finish(server, envelope, replies.MALFORMED_HEADER.with_text(
                f"Malformed message header: {exc}"))
        if self.direction == "outbound":
            verdict = decide_header_senders(
                server.identity, self._aliases(server.identity), fields)
            if not verdict.accept:
                return self._finish(server, envelope, verdict.reply)
        else:
            outcome = await check_inbound(
                self.runtime, message=message, sender=envelope.sender, helo=session.host_name,
                client_ip=_client_ip(server), recipients=envelope.rcpt_tos)
            envelope.checks = outcome.summary
            if outcome.refusal is not None:
                return self._finish(server, envelope, outcome.refusal)
            message = outcome.message
        stamp = received_header(self._received_facts(server, session, envelope),
                                datetime.now(UTC))
        tx = envelope.downstream
        envelope.downstream = None  # handed over: not to be aborted by the state reset
        reply = await tx.data(stamp + message)
        return self._finish(server, envelope, reply, size=len(message))

    # --- helpers -------------------------------------------------------------------
    def _aliases(self, identity: Identity) -> Any:
        customer = self.runtime.directory.customers.get(identity.customer)
        return customer.aliases if customer is not None else {}

    def _received_facts(self, server: GatewaySMTP, session: Any, envelope: Any) -> ReceivedFacts:
        tls = server.tls_info()
        return ReceivedFacts(
            helo=session.host_name,
            client_ip=_client_ip(server),
            hostname=self.runtime.config.hostname,
            txid=envelope.txid,
            extended=bool(session.extended_smtp),
            tls_version=tls[0] if tls else None,
            tls_cipher=tls[1] if tls else None,
            authenticated=server.identity is not None,
            recipient=envelope.rcpt_tos[0] if len(envelope.rcpt_tos) == 1 else None,
        )

    def _finish(self, server: GatewaySMTP, envelope: Any, reply: Reply, size: int = 0) -> str:
        """One log line per transaction, then the reply for the client."""
        identity = server.identity
        txlog.info(
            "txid=%s listener=%s client=%s login=%s from=<%s> rcpts=%d size=%d %s"
            "result=%s ms=%d",
            envelope.txid, server.listener, _client_ip(server),
            identity.login if identity else "-", envelope.sender, len(envelope.rcpt_tos),
            size, f"{envelope.checks} " if getattr(envelope, "checks", None) else "",
            f"{reply.code} {reply.enhanced}",
            int((time.monotonic() - envelope.started) * 1000),
        )
        return str(reply)


def _client_ip(server: GatewaySMTP) -> str:
    # The real client, also behind a balancer speaking the PROXY protocol.
    return server.client_ip
