"""Our state of a connection and of the transaction in it: typed, slotted, ours.

aiosmtpd's ``Session`` and ``Envelope`` stay transport details: we read their own
fields (``host_name``, ``rcpt_tos``, ``content``) and add nothing to them.  What
we know lives here, on the connection object (gateway/smtp/protocol.py):

- a :class:`Session` per connection, made when it opens and kept across
  STARTTLS (aiosmtpd rebuilds its own session then; RFC 3207 §4.2 makes us
  forget the login, not the connection);
- a :class:`Transaction` per message, made when MAIL is accepted and dropped at
  RSET, a new HELO/EHLO, the end of DATA or of the connection.  The pipeline's
  steps (gateway/smtp/pipeline/) read it and add to it; its ``record`` is what the
  transaction's log line prints (gateway/smtp/records.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from gateway.accounts.source import Identity
from gateway.downstream.base import Transaction as DownstreamTransaction
from gateway.message import Buffer, Message
from gateway.replies import Reply
from gateway.rules.content import ContentDecision
from gateway.runtime import Runtime
from gateway.smtp.metered import MeteredDownstream
from gateway.smtp.records import TransactionRecord
from gateway.values.screening import Iprev

# Until DATA ends: a transaction has no message yet.
_NO_MESSAGE = Message.parse(b"")

@dataclass(frozen=True, slots=True)
class Containment:
    """Why a transaction's message is to be held for review, whatever else it passes
    (pipeline/hold.py): a limit or a suspension whose action is ``hold``, or an
    inbound policy ``hold``.  Decided at MAIL, RCPT or by the inbound checks."""

    reason: str  # quota | suspended | inbound: HeldMessage.reason
    rule: str  # quota.messages_per_hour, quota.suspended, dmarc.hold, ...
    reply: Reply  # what the client would have heard without the hold
    facts: tuple[tuple[str, object], ...] = ()


@dataclass(slots=True)
class Session:
    """One connection: who is there, how they came, who they proved to be."""

    cid: str
    listener: str  # inbound | submission | submissions
    # Runs clean-up (an abort downstream) as a task the connection answers for
    # at shutdown (GatewaySMTP.in_background).
    background: Callable[[Coroutine[Any, Any, Any]], None]
    client_ip: str = "unknown"  # the real client, also behind a PROXY header
    tls: tuple[str, str] | None = None  # (version, cipher) once encrypted
    identity: Identity | None = None  # a successful AUTH; forgotten at STARTTLS
    # MX screening's FCrDNS result (RFC 8601 §3), once known: for Authentication-Results.
    iprev: Iprev | None = None

    @property
    def login(self) -> str | None:
        return self.identity.login if self.identity is not None else None


@dataclass(slots=True)
class Transaction:
    """One message, from an accepted MAIL to the reply that ends it."""

    session: Session
    record: TransactionRecord  # its id, counts, rule and facts: its log line
    runtime: Runtime  # the configuration in force at MAIL, kept across a reload
    direction: str  # inbound | outbound: whose rules (content, metrics, holds)
    sender: str  # "" for the null sender
    helo: str | None
    extended: bool  # EHLO rather than HELO (the Received header's protocol)
    # aiosmtpd's own envelope.rcpt_tos, shared: DATA without one is refused there.
    recipients: list[str]
    mail_options: list[str]
    # Open until the message is handed over; aborted if the transaction ends first.
    downstream: DownstreamTransaction | None
    # The account's quota holds (submission with quotas on); the same object as
    # ``downstream`` until then, so an abort releases them.
    quota: MeteredDownstream | None = None
    # abuse@/postmaster@ among the recipients (inbound): never refused by policy.
    role_recipients: tuple[str, ...] = ()
    # --- gathered at DATA by the pipeline's steps -------------------------------------
    # The message, read once at the end of DATA (gateway/message.py): the one copy of
    # it as read, less fields only we may set, and its header fields.
    message: Message = _NO_MESSAGE
    # Our fields, to go out above the message in this order (each step puts its own on top).
    prefix: bytes = b""
    # To be held for review (a limit, a suspension, the inbound policy); the first wins.
    contained: Containment | None = None
    content: ContentDecision | None = None  # the scanner's decision (a hold to carry out)
    arc: str = "none"  # our verdict on the ARC chain it came with: the seal's cv= (arc_sealing)
    reply: Reply | None = None  # the downstream's answer, once handed over
    # The steps after ``forward`` (settle quotas, abuse reports), left by the pipeline
    # to run once the client has its reply: nothing they find changes that reply
    # (pipeline/run.py; the protocol runs them, gateway/smtp/protocol.py).
    after_reply: Callable[[], Awaitable[None]] | None = None

    @property
    def txid(self) -> str:
        return self.record.txid

    def on_top(self, fields: bytes) -> None:
        """Put our ``fields`` above everything added so far."""
        if fields:
            self.prefix = fields + self.prefix if self.prefix else fields

    def outgoing(self) -> list[Buffer]:
        """The message as it leaves: our fields, then the message, never joined."""
        data = self.message.data
        return [self.prefix, data] if self.prefix else [data]
