"""aiosmtpd's SMTP engine, adjusted where a security gateway needs it.

What changes here, and why (see ../shared/LIBRARY-NOTES.md).  Where that means
reaching into aiosmtpd (its command loop, timer, reader, address parser), it goes
through the names gateway/smtp/aiosmtpd_adapter.py gives them: nothing here uses
a private member of aiosmtpd's.

- Every reply carries an RFC 3463 enhanced status code (aiosmtpd sends about 50
  bare literals); EHLO advertises PIPELINING and ENHANCEDSTATUSCODES.
- DATA is read with our own loop: a bare CR or LF anywhere in the message makes
  it refused whole (SMTP smuggling; Postfix's smtpd_forbid_bare_newline), so does
  a NUL octet (``554 5.6.0``), the size limit answers ``552 5.3.4`` and an
  over-long line ``500 5.5.6`` once the data is read (RFC 5321 §4.2.5), and the
  timeout is an idle timer.  DATA is read in chunks, not lines, and scanned as it
  arrives into one buffer (gateway/smtp/data_scanner.py).
- AUTH PLAIN/LOGIN are async and ask the handler, so password checks never run
  on the event loop (the built-in authenticator is synchronous, and an async one
  is silently accepted whatever the password).  AUTH is never offered inbound.
- Per-connection state (the connection id, the listener) lives on this object
  because aiosmtpd rebuilds its session after STARTTLS.
- A client that collects too many 5xx replies hears ``421 4.7.0`` and is dropped.
- Every 4xx/5xx we write carries ``(id <txid or cid>)``, the id of the log line
  that explains it; a downstream's reply passed back keeps its own words.  Each
  transaction and each connection ends in one log line (gateway/smtp/records.py).
- A client that collects too many 5xx replies hears ``421 4.7.0`` and is dropped;
  one silent for too long hears ``421 4.4.2``.  After our goodbye nothing more is
  read or run (what the client pipelined behind it is dropped) and nothing more
  is written.  The transport is closed once: asyncio's TLS transport, closed a
  second time, drops its protocol, and then every write raises AttributeError
  and abort() does nothing.
- What a closing connection releases (its connection slot, quota holds, the
  downstream transaction) runs as tasks the listener waits for at shutdown,
  before the store closes.
- What a delivery leaves to settle (the quota commit and compromise signals,
  pipeline/settle_quotas.py) runs after the reply to DATA is written, as such a
  task: a client that hangs up after its 250 is charged all the same, and the
  session's next command waits for it (it sees a suspension the settle wrote).
  The transaction's log line is written when it is done.
- Replies to pipelined MAIL/RCPT/RSET leave together with the next reply, in one
  write (RFC 2920 §3.2), as a real MTA's pipelined transaction expects.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import inspect
import logging
import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from aiosmtpd.smtp import AuthResult, LoginPassword, TLSSetupException

from gateway import replies
from gateway.accounts.source import Identity
from gateway.addresses import NotAMailbox, parse_mailbox
from gateway.replies import Reply
from gateway.smtp.aiosmtpd_adapter import SMTPAdapter, help_only_when, keep_help_texts
from gateway.smtp.data_scanner import DataScanner
from gateway.smtp.dsn_parameters import MAIL_NAMES, RCPT_NAMES, take_dsn_parameters
from gateway.smtp.records import (
    ConnectionRecord,
    TransactionRecord,
    is_refusal,
    write_connection,
    write_transaction,
)
from gateway.smtp.state import Session, Transaction

log = logging.getLogger("portcullis.smtp")

_HAS_ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}( |$)")
_CODE = re.compile(r"^(\d{3})([ -])(.*)$", re.S)
# The enhanced code for aiosmtpd's own bare replies, by reply code.
_DEFAULT_ENHANCED = {
    500: "5.5.2", 501: "5.5.4", 502: "5.5.1", 503: "5.5.1", 504: "5.5.4",
    530: "5.7.0", 535: "5.7.8", 538: "5.7.11", 552: "5.3.4", 553: "5.1.3",
    554: "5.7.0", 555: "5.5.4", 421: "4.4.2", 451: "4.3.0", 454: "4.7.0",
}
_REWRITE = {
    "500 Command line too long": str(replies.LINE_TOO_LONG),
    "503 Already authenticated": str(replies.ALREADY_AUTHENTICATED),
}

EMPTY = b""
# gateway/listeners.py's TLS_HANDSHAKE_TIMEOUT (asyncio aborts the handshake then), and a second.
IMPLICIT_TLS_DEADLINE = 31.0
# How much DATA is buffered at most while looking for its end (StreamReader limit).
DATA_CHUNK = 64 * 1024


# RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets with its CRLF.
_MAX_REPLY_LINE = 510
# Refused while DATA was read, before the handler saw the message: the rule on record.
_READ_REFUSALS = (
    (str(replies.BARE_NEWLINE), "data.bare_newline"),
    (str(replies.MESSAGE_TOO_BIG), "limits.max_message_size"),
    (str(replies.LINE_TOO_LONG), "data.line_length"),
    (str(replies.NUL_OCTET), "message.nul"),
)


def with_id(status: str, ident: str) -> str:
    """``status`` with ``(id …)`` at the end of its last line, which stays within
    RFC 5321's line length (the text gives way, never the id)."""
    suffix = f" (id {ident})"
    head, sep, last = status.rpartition("\r\n")
    room = _MAX_REPLY_LINE - len(suffix)
    if len(last) > room:
        last = last[:room].rstrip()
    return f"{head}{sep}{last}{suffix}"


# Connection ids drawn 256 at a time: base64.b32encode is Python code, and its
# per-call overhead was about 1% of the plain inbound path (a connection a message).
# 10 random bytes are exactly 16 base32 characters, so each id is the first 12 of
# its own 16: the same 60 bits an id drawn alone has.
_IDS_PER_DRAW = 256
_ids: list[str] = []
# A forked worker must not hand out the ids its parent drew.
os.register_at_fork(after_in_child=_ids.clear)


class CleanUpTasks:
    """A connection's clean-up work (an abort downstream, the steps after a reply,
    its close callbacks' coroutines) as tasks in the listener's set, which shutdown
    waits for; a task that fails is logged with the connection's id.

    Apart from the connection on purpose: the connection's facts (state.Session)
    hold this, and a method of the connection there made every connection a cycle
    only the garbage collector frees (SMTPAdapter._let_go)."""

    __slots__ = ("tasks", "cid")

    def __init__(self, tasks: set[asyncio.Task[Any]], cid: str):
        self.tasks = tasks
        self.cid = cid

    def __call__(self, work: Coroutine[Any, Any, Any]) -> None:
        self.track(asyncio.get_running_loop().create_task(work))

    def track(self, task: asyncio.Task[Any]) -> None:
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        error = None if task.cancelled() else task.exception()
        if error is not None:  # the command loop ends its own connection errors
            log.error("cid=%s clean-up failed", self.cid, exc_info=error)


def new_connection_id() -> str:
    """Short, unique enough to grep: 12 base32 characters (60 bits)."""
    if not _ids:
        text = base64.b32encode(secrets.token_bytes(10 * _IDS_PER_DRAW)).decode()
        _ids.extend(text[i:i + 12] for i in range(0, len(text), 16))
    return _ids.pop()


def with_enhanced_code(status: str) -> str:
    """Add the RFC 3463 code aiosmtpd leaves out (RFC 2034 §3: every reply but the
    greeting, EHLO/HELO and the 334/354 intermediates carries one)."""
    if status in _REWRITE:
        return _REWRITE[status]
    m = _CODE.match(status)
    if not m or _HAS_ENHANCED.match(status):
        return status
    code = int(m.group(1))
    if code in (220, 334, 354):
        return status
    enhanced = _DEFAULT_ENHANCED.get(code, f"{m.group(1)[0]}.0.0")
    return f"{m.group(1)}{m.group(2)}{enhanced} {m.group(3)}"


class GatewaySMTP(SMTPAdapter):
    """One SMTP connection on one of our listeners."""

    def __init__(self, handler: Any, *, listener: str, offers_auth: bool, implicit_tls: bool,
                 max_errors: int, data_timeout: float, max_line_length: int,
                 on_close: Any = None, background: set[asyncio.Task[Any]] | None = None,
                 trusts_proxy: Callable[[str], bool] | None = None, **kwargs: Any):
        # aiosmtpd sizes its StreamReader from this class attribute in __init__.
        self.line_length_limit = max_line_length + 1
        self.cid = new_connection_id()
        # What this connection and its open transaction will leave on record.
        self.record = ConnectionRecord(self.cid, listener)
        self._recorded = False  # its line written
        self.tx_record: TransactionRecord | None = None
        # Our state of this connection, and of the transaction in it once MAIL is
        # accepted (gateway/smtp/state.py): nothing is added to aiosmtpd's objects.
        # The clean-up tasks: the listener's set, so that shutdown can wait for
        # those of every connection (see in_background).
        self._tasks = CleanUpTasks(background if background is not None else set(), self.cid)
        self.facts = Session(self.cid, listener, self._tasks)
        self.tx: Transaction | None = None
        # How the connection ended, for its log line: quit, disconnect, timeout,
        # data_timeout, shutdown, too_many_errors, refused_limit, refused_proxy.
        self.end_reason = "disconnect"
        self._last_reply = ""  # the last reply written (or queued), as sent
        self._verbatim: str | None = None  # a downstream's reply, passed on as it is
        super().__init__(handler, **kwargs)
        self.listener = listener
        self.offers_auth = offers_auth
        self.implicit_tls = implicit_tls
        self._max_errors = max_errors
        self._errors = 0
        self._data_timeout = data_timeout
        self._max_line_length = max_line_length
        self._greeted = False
        self._close_callbacks: list[Any] = [on_close] if on_close is not None else []
        self._closing = False
        self._in_data = False
        # The steps after delivery are running (_settle_after_reply): the lines wait.
        self._settling = False
        self._in_rcpt = False
        # Replies kept to go out with the next one (pipelining, see _send).
        self._deferrable = False
        self._pending_replies = EMPTY
        # Chunks read in DATA; the idle timer checks it instead of being re-armed per chunk.
        self._progress = 0
        self._progress_seen = 0
        # Set by the listener when the connection cap is reached: greet with 421, close.
        self.refuse_with: Reply | None = None
        # EHLO keywords of the downstream, asked at each EHLO: DSN and SMTPUTF8 are
        # advertised only when it offers them (it honours them, not us).
        self.downstream_offers: frozenset[str] = frozenset()
        # The DSN parameters of the MAIL / RCPT being answered (RFC 3461 §4), as sent,
        # or why they are refused: read by the handler's MAIL and RCPT hooks.
        self.dsn_parameters: list[str] = []
        self.dsn_refusal: Reply | None = None
        # MX screening (gateway/smtp/screening.py), set by the listener when the
        # gateway file has a screening: section; None costs nothing.
        self.screen: Any = None
        # The client's address from a PROXY header (None: the socket peer is the client).
        self.proxied_client: str | None = None
        # On a listener behind a balancer: is this socket peer one of its balancers?
        self._trusts_proxy = trusts_proxy
        # aiosmtpd asks a handle_PROXY hook to accept the header; without one it
        # refuses every connection.  The hook is ours: it belongs to the connection.
        self.set_hook("PROXY", self._accept_proxy_header)
        runtime = getattr(handler, "runtime", None)
        self.metrics = getattr(runtime, "metrics", None)
        # Where refusals, holds and suspensions are journalled (gateway/store/journal.py).
        self.journal = getattr(runtime, "journal", None)
        self._counted = False
        # Implicit TLS (465): asyncio calls connection_made only after the handshake,
        # and a failed one never reaches this object (nor connection_lost): a
        # connection not made by the handshake deadline is counted as tls_failed and
        # its listener forgets it (else it would count as open, and be waited for
        # at shutdown, forever).  A listener that sees the failure sooner says so
        # (handshake_failed, gateway/accepting.py).
        self._handshake_deadline: asyncio.TimerHandle | None = None
        loop = kwargs.get("loop")
        if implicit_tls and loop is not None:
            self._handshake_deadline = loop.call_later(IMPLICIT_TLS_DEADLINE, self.handshake_failed)

    # --- connection --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Called again after STARTTLS (RFC 3207 §4.2: forget what the client said).
        self.facts.identity = None
        if self.refuse_with is not None and self.end_reason == "disconnect":
            self.end_reason = "refused_limit"
        if self._trusts_proxy is not None and not self._greeted:  # not again after STARTTLS
            self._refuse_unless_balancer(transport)
        if self._handshake_deadline is not None:
            self._handshake_deadline.cancel()
            self._handshake_deadline = None
        if self.metrics is not None and not self._counted:
            self._counted = True
            self.metrics.opened(self.listener)
            self.metrics.connection(self.listener,
                                    self.end_reason if self.refuse_with else "accepted")
        super().connection_made(transport)
        # Read now: once closed, asyncio's TLS transport can no longer say.
        tls = self.facts.tls = self.tls_info()
        self.facts.client_ip = self.client_ip
        if not self._recorded:
            self.record.tls = f"{tls[0]}/{tls[1]}" if tls else "none"


    def handshake_failed(self) -> None:
        """Implicit TLS: the handshake failed or never ended, so asyncio will call
        neither connection_made nor connection_lost: count it, and let the listener
        forget this connection (its close callbacks)."""
        if self._handshake_deadline is not None:
            self._handshake_deadline.cancel()
            self._handshake_deadline = None
        if self._counted or self.transport is not None:
            return  # it was made after all
        if self.metrics is not None:
            self.metrics.connection(self.listener, "tls_failed")
        callbacks, self._close_callbacks = self._close_callbacks, []
        for callback in reversed(callbacks):
            try:
                callback(self)
            except Exception:
                log.exception("cid=%s close callback failed", self.cid)

    def _refuse_unless_balancer(self, transport: asyncio.BaseTransport) -> None:
        """Only a balancer may name the client in a PROXY header: any other peer
        would spoof SPF, per-IP limits and lockouts, so it is refused (554 at the
        greeting, the header never read) and logged."""
        assert self._trusts_proxy is not None
        peer = transport.get_extra_info("peername")
        peer_ip = str(peer[0]) if isinstance(peer, tuple) else "unknown"
        if self._trusts_proxy(peer_ip):
            return
        log.warning("cid=%s listener %s expects the PROXY protocol: peer %s is not in "
                    "proxy_protocol.from, refused", self.cid, self.listener, peer_ip)
        self.refuse_with = replies.PROXY_PEER_NOT_TRUSTED
        self.end_reason = "refused_proxy"

    def connection_lost(self, error: Exception | None) -> None:
        self._write_records()
        self._abort_transaction()
        super().connection_lost(error)
        if self.metrics is not None and self._counted:
            self._counted = False
            self.metrics.closed(self.listener)
        handler = self.command_task
        if handler is not None and not handler.done():
            # Cancelled above; it may still be releasing what its command held.
            self._tasks.track(handler)
        callbacks, self._close_callbacks = self._close_callbacks, []
        for callback in reversed(callbacks):  # the listener's bookkeeping last
            try:
                outcome = callback(self)
                if outcome is not None and inspect.isawaitable(outcome):
                    self.in_background(outcome)
            except Exception:
                log.exception("cid=%s close callback failed", self.cid)

    def _write_records(self) -> None:
        """The open transaction's line (cut by the connection's end), then the
        connection's: once, however often asyncio reports the loss."""
        if self._recorded or self._settling:
            return  # a settle in flight writes them when done (_settle)
        self._recorded = True
        # A 421 we said on the way out (timeout, shutdown, too many errors) is its result.
        said = self._last_reply if self._last_reply.startswith("421") else ""
        self.end_transaction(said, self.end_reason)
        write_connection(self.record, client=self.client_ip, ended=self.end_reason,
                         journal=self.journal)

    def begin_transaction(self) -> TransactionRecord:
        """At MAIL: a new transaction id, on record whatever the MAIL's answer."""
        self.record.transactions += 1
        self.tx_record = TransactionRecord(f"{self.cid}.{self.record.transactions}")
        return self.tx_record

    def end_transaction(self, status: str, ended: str) -> None:
        """Write the open transaction's line: ``status`` is the reply that ended it
        ("" when none did), ``ended`` what ended it."""
        record, self.tx_record = self.tx_record, None
        self._write_transaction(record, status, ended)

    def _write_transaction(self, record: TransactionRecord | None, status: str, ended: str,
                           ended_at: float | None = None) -> None:
        if record is None:
            return
        write_transaction(record, listener=self.listener, client=self.client_ip,
                          login=self.facts.login or "",
                          status=status, ended=ended, journal=self.journal, ended_at=ended_at)

    def answer(self, reply: Reply) -> str:
        """The handler's reply as aiosmtpd wants it (a string).  A downstream's reply
        (``reply.relayed``) is marked to go out in its own words, without our id."""
        status = str(reply)
        if reply.relayed:
            self._verbatim = status
        return status

    def in_background(self, work: Any) -> None:
        """Run ``work`` (a coroutine) as a task this connection answers for: what it
        releases (a connection slot, quota holds, a downstream transaction) is
        released before shutdown closes the store (SMTPListeners.stop waits)."""
        self._tasks(work)

    def on_timeout(self) -> None:
        # During DATA the timeout is an idle timer: if data arrived since the
        # timer was armed, arm it again rather than hanging up on a slow sender.
        if self._in_data and self._progress != self._progress_seen:
            self._progress_seen = self._progress
            self.restart_timer(self._data_timeout)
            return
        if not self._greeted:  # still waiting for a PROXY header: no SMTP spoken yet
            super().on_timeout()
            return
        log.info("cid=%s timeout%s, disconnecting", self.cid, " in DATA" if self._in_data else "")
        # RFC 5321 §4.5.3.2: a server that gives up on a client says so (421) first.
        self._goodbye(replies.TIMEOUT, "data_timeout" if self._in_data else "timeout")

    async def _accept_proxy_header(self, server: Any, session: Any, envelope: Any,
                                   proxy_data: Any) -> bool:
        if not proxy_data.valid or not proxy_data.src_addr:
            log.warning("cid=%s PROXY header without a client address: %s", self.cid,
                        proxy_data.error or "no source")
            return False
        self.proxied_client = self.facts.client_ip = str(proxy_data.src_addr)
        log.info("cid=%s PROXY from %s for client %s", self.cid,
                 self._peer_ip(), self.proxied_client)
        return True

    def _peer_ip(self) -> str:
        peer = self.session.peer if self.session is not None else None
        return str(peer[0]) if isinstance(peer, tuple) else "unknown"

    @property
    def identity(self) -> Identity | None:
        """The login a successful AUTH proved (kept on the Session)."""
        return self.facts.identity

    @property
    def client_ip(self) -> str:
        """The client's address: from the PROXY header when the listener expects one
        (the socket peer is then the balancer), else the socket peer."""
        return self.proxied_client or self._peer_ip()

    def add_close_callback(self, callback: Any) -> None:
        """Run ``callback(connection)`` once when the connection closes."""
        self._close_callbacks.append(callback)

    @property
    def is_open(self) -> bool:
        """Not yet closed or closing (by either side)."""
        return self.transport is not None and not self.transport.is_closing()

    @property
    def in_transaction(self) -> bool:
        return self._in_data or bool(self.envelope is not None and self.envelope.mail_from)

    def tls_info(self) -> tuple[str, str] | None:
        """(version, cipher) when the connection is encrypted, by STARTTLS or from the
        first byte (where aiosmtpd leaves session.ssl unset)."""
        if self.transport is None:
            return None
        ssl_object = self.transport.get_extra_info("ssl_object")
        if ssl_object is None:
            return None
        cipher = ssl_object.cipher()
        return ssl_object.version() or "TLS", cipher[0] if cipher else "unknown"

    @property
    def encrypted(self) -> bool:
        return self.implicit_tls or self.started_tls

    def close_gracefully(self, reply: Reply = replies.SHUTTING_DOWN) -> None:
        """Say 421 and hang up, now if idle, else once the transaction ends."""
        self._closing = True
        if not self.in_transaction:
            self._goodbye(reply, "shutdown")

    def cut_short(self, reply: Reply = replies.SHUTTING_DOWN) -> None:
        """Shutdown's grace is over: 421 now, also in the middle of a transaction.

        The transaction is aborted as the connection closes (connection_lost, or
        the DATA hook's own clean-up once the message is with the downstream), so
        nothing half-done is acknowledged: the client retries what it did not get
        a 250 for."""
        self._goodbye(reply, "shutdown")

    def refuse_client(self, reply: Reply) -> None:
        """A per-client limit (gateway/smtp/screening.py): say ``reply`` (a 421) and close."""
        self._greeted = True
        self._goodbye(reply, "refused_limit")

    def reset(self) -> None:
        """Drop the connection now (a client that does not let go after our 421)."""
        for transport in self.transports():
            transport.abort()

    async def _hang_up(self, reply: Reply) -> None:
        self._goodbye(reply, "shutdown" if self._closing else self.end_reason)

    def _goodbye(self, reply: Reply, end_reason: str) -> None:
        """Say ``reply`` (a 421) and close, whatever the session is doing.

        The command loop ends here too: what the client pipelined behind this is
        neither run nor answered.  The write needs no drain: close() sends what
        is buffered first."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self.end_reason = end_reason
        self._stop_commands()
        if self.tls_handshaking:
            # Inside STARTTLS's handshake nothing can be said, in the clear or not:
            # ending the command hangs up (SMTPAdapter.start_tls).
            return
        # On record as the cut transaction's result, with the id that names its line.
        text = self._last_reply = with_id(str(reply), self._current_id())
        if reply.code >= 500:
            self.record.errors += 1
        else:
            self.record.tempfails += 1
        # Replies kept for the next one (see _send) go first, in order.
        pending, self._pending_replies = self._pending_replies, EMPTY
        transport.write(pending + text.encode("ascii", "replace") + b"\r\n")
        if self.metrics is not None:
            self.metrics.reply(self.listener, reply.code)
        transport.close()

    def _stop_commands(self) -> None:
        """End aiosmtpd's command loop, which otherwise reads on until the transport
        reports the connection lost (for TLS, after the client's close_notify)."""
        task = self.command_task
        if task is not None and not task.done():
            task.cancel()

    async def serve(self) -> None:
        if self.refuse_with is not None:
            self._greeted = True
            await self._hang_up(self.refuse_with)
            return
        await super().serve()

    # --- replies -------------------------------------------------------------------
    async def push(self, status: str | bytes) -> None:
        text = ""
        if self.screen is not None and not self._greeted and isinstance(status, str):
            # The greeting: per-client limits first, and a delayed 220 when configured.
            greeting = await self.screen.greet(self, status)
            if greeting is None:
                return  # refused: 421 said, connection closing
            status = greeting
        if isinstance(status, str):
            verbatim, self._verbatim = status == self._verbatim, None
            if not self._greeted:
                self._greeted = True  # the 220 greeting has no enhanced code
            else:
                status = with_enhanced_code(status)
                if is_refusal(status) and not verbatim and "(id " not in status:
                    # The id of the log line that explains this refusal.
                    status = with_id(status, self._current_id())
            if status[:1] == "5":
                self._errors += 1
            if status[:1] == "5":
                self.record.errors += 1
            elif status[:1] == "4":
                self.record.tempfails += 1
            if self.metrics is not None and status[:3].isdigit():
                self.metrics.reply(self.listener, int(status[:3]))
            text = self._last_reply = status
            # A downstream's reply text relayed may hold 8-bit bytes: never a crash here.
            status = status.encode("ascii", "replace")
        await self._send(status + b"\r\n")
        if self._errors >= self._max_errors and self.transport is not None:
            self._errors = -(10**9)  # say it once
            log.info("cid=%s too many errors, disconnecting", self.cid)
            self.end_reason = "too_many_errors"
            await self._hang_up(replies.TOO_MANY_ERRORS)
            self._last_reply = text or self._last_reply  # the command's reply, not the 421

    def _current_id(self) -> str:
        return self.tx_record.txid if self.tx_record is not None else self.cid

    async def _send(self, reply: bytes) -> None:
        """Write a reply, or keep it to go with the next one.

        RFC 2920 §3.2: a client that pipelines sends MAIL, RCPT and RSET without
        waiting, so their replies may wait for the next one and leave in one
        write (as Postfix does).  Only those, and only while the client's next
        command is already here; every other reply writes out what waits first.
        """
        if self.output_closing:
            # We said goodbye, or the client left: nothing more is said, and the
            # command loop ends now, before aiosmtpd would read on or close the
            # transport again (its TLS side may have closed it already).
            self._pending_replies = EMPTY
            raise asyncio.CancelledError
        if self._deferrable and self.has_buffered_line():
            self._pending_replies += reply
            return
        if self._pending_replies:
            reply, self._pending_replies = self._pending_replies + reply, EMPTY
        await self.write(reply)

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):
            # The client's handshake failed (aiosmtpd closes the connection, no reply):
            # not our fault, and common (scanners), so one line with the reason.
            cause = error.__cause__
            log.info("cid=%s STARTTLS handshake failed: %s", self.cid,
                     f"{type(cause).__name__}: {cause}" if cause is not None else "-")
            self._abort_transaction()
            return str(replies.LOCAL_ERROR)
        # A crash in a check never lets a message through and never leaks internals:
        # the client hears 451 with our connection id, the log has the traceback.
        log.error("cid=%s unexpected error", self.cid, exc_info=error)
        self._abort_transaction()
        reply = str(replies.LOCAL_ERROR.with_text(
            f"Local error in processing (id {self.cid}), try again later"))
        if self.tx_record is not None:
            self.tx_record.decide("local_error", {"error": type(error).__name__})
        self.end_transaction(reply, "reply")
        return reply

    # --- envelope life cycle -----------------------------------------------------------
    def before_envelope_reset(self) -> None:
        # RSET, a new EHLO, end of DATA: any downstream transaction still open is abandoned.
        self._abort_transaction()
        if not self._in_data:  # at the end of DATA, smtp_DATA writes it with the reply
            self.end_transaction("", "reset")

    def _abort_transaction(self) -> None:
        """Drop the open transaction; abort its downstream part if not yet handed over."""
        tx, self.tx = self.tx, None
        if tx is not None and tx.downstream is not None:
            downstream, tx.downstream = tx.downstream, None
            self.in_background(downstream.abort())

    # --- commands ------------------------------------------------------------------
    async def smtp_HELO(self, hostname: str) -> None:
        if not hostname:
            await self.push("501 5.5.4 Syntax: HELO hostname")
            return
        if not hostname.isascii():  # RFC 6531 §3.7.1: the EHLO name is ASCII (A-labels)
            await self.push(str(replies.NON_ASCII_HELO))
            return
        self.reset_state()
        assert self.session is not None
        self.session.extended_smtp = False
        self.session.host_name = hostname
        await self._send(f"250 {self.hostname}\r\n".encode())

    async def smtp_EHLO(self, hostname: str) -> None:
        if not hostname:
            await self.push("501 5.5.4 Syntax: EHLO hostname")
            return
        if not hostname.isascii():  # RFC 6531 §3.7.1: the EHLO name is ASCII (A-labels)
            await self.push(str(replies.NON_ASCII_HELO))
            return
        self.reset_state()
        assert self.session is not None
        self.session.extended_smtp = True
        self.session.host_name = hostname
        lines = [self.hostname, "PIPELINING"]
        if self.data_size_limit:
            lines.append(f"SIZE {self.data_size_limit}")
            self.command_size_limits["MAIL"] = 512 + 26
        lines += ["8BITMIME", "ENHANCEDSTATUSCODES"]
        offers = getattr(self.event_handler, "downstream_extensions", None)
        self.downstream_offers = await offers() if offers is not None else frozenset()
        if "dsn" in self.downstream_offers:
            lines.append("DSN")
        if "smtputf8" in self.downstream_offers:  # RFC 6531 §3.2
            lines.append("SMTPUTF8")
        if self.tls_context and not self.started_tls:
            lines.append("STARTTLS")
        if self.offers_auth and self.encrypted:
            lines.append("AUTH " + " ".join(self.mechanisms_offered))
        # RFC 5321 §4.2.1: every line but the last has a hyphen after the code.
        # One write for the whole reply: a write per line costs a syscall each.
        last = len(lines) - 1
        await self._send("".join(
            f"250{'-' if i < last else ' '}{line}\r\n" for i, line in enumerate(lines)).encode())

    def parse_path(self, arg: str) -> tuple[str | None, str | None]:
        """``<mailbox> params`` → (mailbox as sent, params); ``<>`` → ("<>", params).

        Replaces aiosmtpd's RFC 5322 parser, which accepts comments and folding
        that RFC 5321 does not, and refuses a trailing dot on the domain that the
        relay rule must see.  A source route is dropped (RFC 5321 §4.1.2, Appendix C).
        """
        arg = arg.strip()
        if not arg.startswith("<"):
            return None, None
        end, quoted, escaped = -1, False, False
        if '"' not in arg:
            # Nothing quoted (nearly every path): the first ">" ends it.
            end = arg.find(">")
        else:
            for i, c in enumerate(arg[1:], start=1):
                if escaped:
                    escaped = False
                elif c == "\\" and quoted:
                    escaped = True
                elif c == '"':
                    quoted = not quoted
                elif c == ">" and not quoted:
                    end = i
                    break
        if end < 0:
            return None, None
        inner, rest = arg[1:end], arg[end + 1:]
        if rest and not rest.startswith(" "):
            return None, None
        if inner == "":
            return "<>", rest.strip()
        if inner.startswith("@"):
            route, colon, inner = inner.partition(":")
            if not colon or not all(h.startswith("@") and len(h) > 1 for h in route.split(",")):
                return None, None
        if self._in_rcpt and inner.lower() == "postmaster":
            # RFC 5321 §4.1.1.3: RCPT TO:<Postmaster> needs no domain and must be accepted.
            return inner, rest.strip()
        try:
            # UTF-8 is syntax here; whether this transaction may use it (SMTPUTF8 on
            # MAIL, offered by us) the MAIL and RCPT hooks decide: 553 5.6.7, not 5.1.3.
            parse_mailbox(inner, utf8=True)
        except NotAMailbox:
            return None, None
        return inner, rest.strip()

    async def _in_group(self, command: Any, arg: str | None) -> None:
        """Run MAIL, RCPT or RSET, whose reply may wait for the next (see _send)."""
        self._deferrable = True
        try:
            await command(arg)
        finally:
            self._deferrable = False

    async def smtp_MAIL(self, arg: str | None) -> None:
        if arg is not None and self.offers_auth:
            arg = self._without_auth_parameter(arg)
        # A MAIL inside a transaction is an error in it (503), not a new one.
        arg = self._take_dsn_parameters(arg, "FROM:", MAIL_NAMES)
        opened = self.tx_record is None
        if opened:
            self.begin_transaction()
        self._last_reply = ""
        await self._in_group(super().smtp_MAIL, arg)
        if opened and is_refusal(self._last_reply):
            self.end_transaction(self._last_reply, "reply")  # refused at MAIL

    def _without_auth_parameter(self, arg: str) -> str:
        """MAIL FROM without a well-formed AUTH= parameter (RFC 4954 §5).

        Where AUTH is offered, a client (an MTA relaying mail through us) may
        name the original submitter in MAIL FROM; aiosmtpd knows no AUTH=, and
        answered 555.  We do not pass on identities we cannot vouch for (§5: the
        server then uses AUTH=<> or none), so it is dropped, never forwarded.  A
        malformed one stays, for the 555 of an unrecognised parameter."""
        body = self.strip_keyword("FROM:", arg)
        if not body:
            return arg
        try:
            address, rest = self.parse_path(body)
        except Exception:  # the parser's own errors: leave the command to aiosmtpd
            return arg
        if address is None or not rest:
            return arg
        params = rest.split()
        kept = [p for p in params if not _AUTH_PARAMETER.fullmatch(p)]
        command = arg.rstrip()
        if len(kept) == len(params) or not command.endswith(rest):
            return arg
        return command[: len(command) - len(rest)] + "".join(" " + p for p in kept)

    def _take_dsn_parameters(self, arg: str | None, keyword: str,
                             names: tuple[str, ...]) -> str | None:
        """``arg`` without its DSN parameters, which (or their refusal) wait for the
        hook: aiosmtpd's checks (HELO first, no nested MAIL, the path) come first."""
        self.dsn_parameters, self.dsn_refusal = [], None
        # The common command has none: one upper() and a few searches, not a second parse.
        if arg is None or not any(f"{name}=" in arg.upper() for name in names):
            return arg
        body = self.strip_keyword(keyword, arg)
        if not body:
            return arg
        try:
            address, rest = self.parse_path(body)
        except Exception:  # the parser's own errors: leave the command to aiosmtpd
            return arg
        command = arg.rstrip()
        if address is None or not rest or not command.endswith(rest):
            return arg
        kept, taken, refusal = take_dsn_parameters(rest, names, "dsn" in self.downstream_offers)
        if refusal is None and not taken:
            return arg
        self.dsn_parameters, self.dsn_refusal = taken, refusal
        # A refused one is taken out too, so that the hook answers with its reply.
        if refusal is not None:
            kept = " ".join(p for p in rest.split() if p.partition("=")[0].upper() not in names)
        return command[: len(command) - len(rest)] + kept

    async def smtp_RCPT(self, arg: str | None) -> None:
        record = self.tx_record
        counted = (record.rcpts, record.refused_rcpts) if record is not None else None
        self._last_reply = ""
        self._in_rcpt = True  # parse_path: <Postmaster> without a domain (RFC 5321 §4.1.1.3)
        try:
            arg = self._take_dsn_parameters(arg, "TO:", RCPT_NAMES)
            await self._in_group(super().smtp_RCPT, arg)
        finally:
            self._in_rcpt = False
        if record is not None and record is self.tx_record:
            record.stage = "rcpt"
            # Refused before the handler was asked (syntax, parameters): on record too.
            if counted == (record.rcpts, record.refused_rcpts) and is_refusal(self._last_reply):
                record.recipient_refused("smtp.protocol")
            if is_refusal(self._last_reply):
                record.recipient_answered(arg or "", self._last_reply)

    async def smtp_RSET(self, arg: str | None) -> None:
        await self._in_group(super().smtp_RSET, arg)

    async def smtp_VRFY(self, arg: str) -> None:
        # No user enumeration: the same answer whatever the argument.
        await self.push(str(replies.VRFY_NEVER))

    async def smtp_EXPN(self, arg: str) -> None:
        await self.push(str(replies.EXPN_REFUSED))

    async def smtp_STARTTLS(self, arg: str) -> None:
        # The handshake runs on the loop's own TLS (uvloop's C code under uvloop),
        # and the session starts afresh after it: SMTPAdapter.start_tls.
        try:
            await super().smtp_STARTTLS(arg)
        except TLSSetupException:
            # The handshake failed (aiosmtpd then closes the connection).
            self.end_reason = "tls_failed"
            if self.metrics is not None:
                self.metrics.connection(self.listener, "tls_failed")
            raise

    async def smtp_AUTH(self, arg: str) -> None:
        if not self.offers_auth:
            await self.push(str(replies.AUTH_NOT_OFFERED))
            return
        if not self.encrypted:
            await self.push(str(replies.ENCRYPTION_REQUIRED))
            return
        self._last_reply = ""
        await super().smtp_AUTH(arg)
        if self._last_reply.startswith("235") and self.facts.identity is not None:
            self.record.login = self.facts.identity.login
        elif self._last_reply[:3] in ("535", "454"):
            self.record.auth_failures += 1

    async def smtp_QUIT(self, arg: str) -> None:
        if not arg:
            self.end_reason = "quit"
        await super().smtp_QUIT(arg)

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        """RFC 4616: authzid NUL authcid NUL passwd.  An authzid other than the login
        would be a request to act as someone else: refused."""
        if len(args) == 1:
            blob = await self.challenge_auth("")
            if not isinstance(blob, bytes):
                return AuthResult(success=False)
        else:
            try:
                blob = base64.b64decode(args[1].encode(), validate=True)
            except (binascii.Error, ValueError):
                return AuthResult(success=False, handled=False, message=str(replies.AUTH_SYNTAX))
        parts = blob.split(b"\x00")
        if len(parts) != 3 or parts[0] not in (EMPTY, parts[1]):
            return AuthResult(success=False, handled=False, message=str(replies.AUTH_INVALID))
        return await self._authenticate_async(parts[1], parts[2])

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        if len(args) == 1:
            login = await self.challenge_auth(self.AuthLoginUsernameChallenge)
            if not isinstance(login, bytes):
                return AuthResult(success=False)
        else:
            try:
                login = base64.b64decode(args[1].encode(), validate=True)
            except (binascii.Error, ValueError):
                return AuthResult(success=False, handled=False, message=str(replies.AUTH_SYNTAX))
        password = await self.challenge_auth(self.AuthLoginPasswordChallenge)
        if not isinstance(password, bytes):
            return AuthResult(success=False)
        return await self._authenticate_async(login, password)

    async def _authenticate_async(self, login: bytes, password: bytes) -> AuthResult:
        try:
            login_text = login.decode("utf-8")
            password_text = password.decode("utf-8")
        except UnicodeDecodeError:
            return AuthResult(success=False, handled=False, message=str(replies.AUTH_INVALID))
        reply, identity = await self.event_handler.authenticate(self, login_text, password_text)
        if self.metrics is not None:
            if reply.code == 454:
                self.metrics.auth_tempfail(self.listener)
            else:
                self.metrics.auth_attempt(self.listener, identity is not None)
        if identity is None:
            return AuthResult(success=False, handled=False, message=str(reply))
        self.facts.identity = identity
        return AuthResult(success=True, auth_data=LoginPassword(login, b""), message=str(reply))

    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        if self.tx_record is not None:
            self.tx_record.stage = "data"
        self._in_data = True
        self._last_reply = ""
        try:
            settling = await self._read_and_deliver()
            if settling is None:
                self._end_data_transaction()
            else:
                # The next command waits for the settle: it sees what the settle
                # wrote (a suspension), as it would have before.  Cancelled (the
                # client left, a timeout, shutdown), the settle runs on (its own task).
                await asyncio.wait((settling,))
        finally:
            self._in_data = False
            if self._closing and self.transport is not None:
                await self._hang_up(replies.SHUTTING_DOWN)

    def _end_data_transaction(self) -> None:
        """The reply to DATA ends the transaction (the handler has named its rule;
        a refusal while reading is named here)."""
        record, status = self.tx_record, self._last_reply
        if record is not None and not record.rule and is_refusal(status):
            for refusal, rule in _READ_REFUSALS:
                if status.startswith(refusal):
                    record.decide(rule)
        self.end_transaction(status, "reply")

    async def _read_data(self) -> DataScanner:
        """Read DATA up to its end, in chunks as the socket gives them (a 5 KB message
        is one read, not eighty), through a :class:`DataScanner`: it finds the end
        wherever the reads split it, and gathers the message in one buffer.  Past
        the size limit or a bare newline the rest is read and dropped, so the reply
        comes after the data, in step.  What follows the end is put back for the
        command loop (a pipelining client's next command)."""
        scanner = DataScanner(self._max_line_length, self.data_size_limit or 0)
        with self.reading_data(DATA_CHUNK):
            while True:
                chunk = await self.read_some(DATA_CHUNK)
                if not chunk:
                    raise ConnectionResetError("connection closed during DATA")
                self._progress += 1
                end = scanner.feed(chunk)
                if end >= 0:
                    if end < len(chunk):
                        self.unread(chunk[end:])
                    break
        self.restart_timer()
        return scanner

    async def _read_and_deliver(self) -> asyncio.Task[None] | None:
        """Read the message, run the hook, write its reply; the settle's task if
        the delivery left steps to run after the reply (see _settle_after_reply)."""
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        self.restart_timer(self._data_timeout)
        scanner = await self._read_data()
        problem = scanner.problem
        if problem is not None:
            log.info("cid=%s message refused while reading: %s", self.cid, problem)
            self.reset_envelope()
            await self.push(str(problem))
            return None
        assert self.envelope is not None
        # The one copy of the message: bytes, or for a message read in several chunks
        # the bytearray it was gathered in (see gateway/message.py: Message).
        content = scanner.message
        self.envelope.content = content
        self.envelope.original_content = content
        tx = self.tx  # the hook's; dropped with the envelope below
        status = await self.call_hook("DATA")
        self.reset_envelope()
        after_reply = tx.after_reply if tx is not None else None
        if after_reply is None:
            await self.push(status)
            return None
        # Whatever becomes of the reply (the client may hang up before it is
        # written), what the delivery left to settle is settled: it is the charge.
        self._settling = True
        replied = False
        try:
            await self.push(status)
            replied = True
        finally:
            settling = self._settle_after_reply(after_reply, replied)
        return settling

    def _settle_after_reply(self, after_reply: Callable[[], Awaitable[None]],
                            replied: bool) -> asyncio.Task[None]:
        """Run the steps after delivery (the quota settle: commit or release, the
        compromise signals) once the client has its reply, as one of this
        connection's tasks: a client that hangs up right after its 250 does not
        cancel it (it is charged all the same), and shutdown waits for it before
        the store closes.  The transaction's line is written when it is done (it
        may name a suspension), and the connection's after it."""
        record, self.tx_record = self.tx_record, None
        status = self._last_reply
        ended = "reply" if replied else self.end_reason
        task = self.loop.create_task(
            self._settle(after_reply, record, status, ended, time.monotonic()))
        self._tasks.track(task)
        return task

    async def _settle(self, after_reply: Callable[[], Awaitable[None]],
                      record: TransactionRecord | None, status: str, ended: str,
                      replied_at: float) -> None:
        try:
            await after_reply()
        finally:
            self._settling = False
            self._write_transaction(record, status, ended, replied_at)
            if self.transport is None:  # the connection ended meanwhile: its line now
                self._write_records()


# RFC 4954 §5: AUTH=<> or an xtext (RFC 3461 §4: "!" to "~" but "+" and "=", or +HH).
_AUTH_PARAMETER = re.compile(r"AUTH=(?:<>|(?:[!-*,-<>-~]|\+[0-9A-F]{2})+)", re.IGNORECASE)


# Our overrides of aiosmtpd's commands keep their HELP texts.
keep_help_texts(GatewaySMTP)
# HELP names AUTH only where it is offered (never on the MX).
help_only_when(GatewaySMTP.smtp_AUTH, "offers_auth")

