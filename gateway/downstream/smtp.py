"""An SMTP downstream with a small pool of reused connections (aiosmtplib).

Every step has our own deadline (the downstream's ``timeout``), shorter than the
client's, so a slow downstream turns into ``451 4.4.2`` that the client retries,
not a dropped connection.  The connection keeps it (``watch_until``: one timer a
connection, moved); only opening a new connection runs under an asyncio.timeout.
A connection whose state is unknown after an error or a timeout is closed, never
returned to the pool.  aiosmtplib opens each connection; the transactions run over
gateway/downstream/connection.py (pipelined MAIL and first RCPT, BDAT when offered).
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections import deque

import aiosmtplib

from gateway import replies
from gateway.config.model import Downstream as DownstreamSettings
from gateway.downstream.connection import DownstreamClosed, DownstreamConnection
from gateway.downstream.origin import Origin, ehlo_name, xclient_command, xforward_commands
from gateway.downstream.parameters import MAIL_PARAMETERS, RCPT_PARAMETERS, name_of, passed
from gateway.message import Buffer
from gateway.replies import Reply

log = logging.getLogger("portcullis.downstream")
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")


class SmtpDownstream:
    def __init__(self, settings: DownstreamSettings, local_hostname: str, direction: str):
        self.settings = settings
        self.name = f"{direction}:{settings.redacted()}"
        self._local_hostname = local_hostname
        self._idle: deque[DownstreamConnection] = deque()
        # The EHLO keywords of the newest connection: what the listeners advertise
        # on its behalf (DSN, SMTPUTF8) before a transaction picks a connection.
        self.offered: frozenset[str] | None = None
        self._learning: asyncio.Task[None] | None = None
        self._tls_context = ssl.create_default_context()
        if not settings.tls_verify:
            self._tls_context.check_hostname = False
            self._tls_context.verify_mode = ssl.CERT_NONE

    def begin(self, sender: str, options: list[str],
              origin: Origin | None = None) -> SmtpTransaction:
        return SmtpTransaction(self, sender, options, origin)

    async def introduce(self, conn: DownstreamConnection, origin: Origin | None) -> list[bytes]:
        """Tell the downstream who the client is (XCLIENT, XFORWARD: origin.py),
        when it offers to listen; the XFORWARD commands are returned, for the caller
        to send with MAIL FROM.  A refusal is logged and the mail still goes: the
        downstream then sees the gateway, as without these commands."""
        if conn.impersonating and (origin is None or not conn.xclient):
            # A session another client's XCLIENT made, and no XCLIENT to change it:
            # Postfix re-checks smtpd_authorized_xclient_hosts against the client
            # it was told about, so after one XCLIENT it usually offers no other.
            conn.close()
            raise DownstreamClosed("an XCLIENT session cannot serve another client")
        if origin is None or not (conn.xclient or conn.xforward):
            return []
        if conn.xclient and not conn.xclient_refused:
            reply = await conn.command(xclient_command(origin, conn.xclient))
            if reply.code != 220:
                conn.xclient_refused = True
                log.warning("downstream %s: XCLIENT refused: %s", self.name, reply)
                if conn.impersonating:
                    conn.close()
                    raise DownstreamClosed("XCLIENT refused on a session made someone's")
            else:
                conn.impersonating = True
                # XCLIENT_README: the server greets anew and forgets the EHLO; the
                # new EHLO names the client as it named itself (the HELO it logs).
                ehlo = await conn.command(b"EHLO " + ehlo_name(origin, self._local_hostname))
                if not ehlo.is_success:
                    conn.close()
                    raise DownstreamClosed(f"EHLO after XCLIENT refused: {ehlo}")
                conn.learn_extensions(ehlo)
        return xforward_commands(origin, conn.xforward, ident_only=conn.impersonating)

    def heard_xforward(self, reply: Reply) -> None:
        if not reply.is_success:
            log.warning("downstream %s: XFORWARD refused: %s", self.name, reply)

    async def _connect(self) -> DownstreamConnection:
        s = self.settings
        client = aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            local_hostname=self._local_hostname,
            timeout=s.timeout,
            use_tls=s.scheme == "smtps",
            start_tls=s.scheme == "smtp+starttls",
            tls_context=self._tls_context if s.scheme != "smtp" else None,
            username=s.username,
            password=s.password,
        )
        await client.connect()
        if client.last_ehlo_response is None:
            await client.ehlo()
        # Opened, secured and logged in by aiosmtplib; the transactions are ours.
        conn = DownstreamConnection(client)
        self.offered = conn.extensions
        return conn

    async def extensions(self) -> frozenset[str]:
        """The downstream's EHLO keywords as of its newest connection.  Before the first
        one, nothing: a connection is opened in the background (never awaited here, so
        an EHLO does not wait for a slow downstream) and later sessions see the answer."""
        if self.offered is None and self._learning is None:
            self._learning = asyncio.get_running_loop().create_task(self._learn())
        return self.offered or frozenset()

    async def _learn(self) -> None:
        try:
            async with asyncio.timeout(self.settings.timeout):
                conn, _ = await self.acquire()
            self.release(conn)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            log.warning("downstream %s: its extensions are not known yet: %s", self.name, exc)
        finally:
            self._learning = None

    async def acquire(self, deadline: float | None = None) -> tuple[DownstreamConnection, bool]:
        """A connection, and whether it came from the pool (and may be stale); a new
        one must be open by ``deadline`` (the loop's clock), if given."""
        while self._idle:
            conn = self._idle.pop()
            if conn.usable:
                return conn, True
            conn.close()
        if deadline is None:
            return await self._connect(), False
        async with asyncio.timeout_at(deadline):
            return await self._connect(), False

    def deadline(self) -> float:
        """When a step that starts now must be done (the loop's clock)."""
        return asyncio.get_running_loop().time() + self.settings.timeout

    def release(self, conn: DownstreamConnection) -> None:
        # A session XCLIENT made someone's is pooled only if XCLIENT can change it again.
        reusable = conn.usable and not (conn.impersonating and not conn.xclient)
        if reusable and len(self._idle) < self.settings.pool_size:
            self._idle.append(conn)
        else:
            conn.close()

    async def probe(self) -> str | None:
        try:
            async with asyncio.timeout(self.settings.timeout):
                conn, _ = await self.acquire()
                reply = await conn.command(b"NOOP")
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            return f"{self.name}: {type(exc).__name__}: {exc}"
        if not reply.is_success:
            conn.close()
            return f"{self.name}: NOOP answered {reply}"
        self.release(conn)
        return None

    async def close(self) -> None:
        if self._learning is not None:
            self._learning.cancel()
        while self._idle:
            self._idle.pop().close()


class SmtpTransaction:
    def __init__(self, downstream: SmtpDownstream, sender: str, options: list[str],
                 origin: Origin | None = None):
        self._downstream = downstream
        self._sender = sender
        self._options = options
        self._origin = origin
        self._conn: DownstreamConnection | None = None
        self._broken: Reply | None = None
        self._accepted = 0


    def _commands(self, conn: DownstreamConnection, recipient: str,
                  options: list[str]) -> tuple[bytes, bytes]:
        """MAIL and the first RCPT, with the parameters this connection offers."""
        mail_options, dropped = passed(self._options, MAIL_PARAMETERS, conn.extensions)
        rcpt_options, dropped_rcpt = passed(options, RCPT_PARAMETERS, conn.extensions)
        # SIZE= only declares what we have already checked against our own limit: a
        # downstream without SIZE is routine, not worth a line per message.
        notable = [p for p in dropped + dropped_rcpt if name_of(p) != "SIZE"]
        if notable:
            # The listener advertised what the newest connection offered; this one
            # (older, or the downstream changed) does not: RFC 3461 §5.2.2 lets a relay
            # pass the message on without them.
            log.warning("downstream %s: not offered, not passed: %s", self._downstream.name,
                        " ".join(notable))
        return (_command(f"MAIL FROM:<{self._sender}>", mail_options),
                _command(f"RCPT TO:<{recipient}>", rcpt_options))

    def _rcpt_command(self, recipient: str, options: list[str]) -> bytes:
        assert self._conn is not None
        sent, _ = passed(options, RCPT_PARAMETERS, self._conn.extensions)
        return _command(f"RCPT TO:<{recipient}>", sent)

    async def _start(self, recipient: str, options: list[str],
                     deadline: float) -> tuple[Reply, Reply | None]:
        """Connect (or reuse) and send MAIL FROM, with the first RCPT TO in the same
        write when the downstream pipelines (RFC 2920).  (MAIL reply, RCPT reply or
        None when it was not sent.)  A pooled connection may have been closed by the
        downstream while idle: that one is retried once, fresh."""
        for attempt in (1, 2):
            conn, pooled = await self._downstream.acquire(deadline)
            conn.watch_until(deadline)
            try:
                xforward = await self._downstream.introduce(conn, self._origin)
                # After introduce: an XCLIENT's new EHLO may offer other extensions.
                mail_command, rcpt_command = self._commands(conn, recipient, options)
                if conn.pipelining:
                    # XFORWARD is not among the commands RFC 2920 §3.1 says must end
                    # a group: it goes in the same write as MAIL FROM and RCPT TO.
                    *forwarded, mail, rcpt = conn.send(
                        b"".join(line + b"\r\n" for line in
                                 [*xforward, mail_command, rcpt_command]), len(xforward) + 2)
                    for heard in forwarded:
                        self._downstream.heard_xforward(await heard)
                    mail_reply = await mail
                    # Read even when MAIL was refused: the RCPT's answer is on its way.
                    rcpt_reply: Reply | None = await rcpt
                else:
                    for line in xforward:
                        self._downstream.heard_xforward(await conn.command(line))
                    mail_reply = await conn.command(mail_command)
                    rcpt_reply = None
            except DownstreamClosed:
                conn.close()
                if pooled and attempt == 1:
                    continue
                raise
            if mail_reply.is_success:
                self._conn = conn
            else:
                await self._reset(conn)
            return mail_reply, rcpt_reply
        raise AssertionError("unreachable")

    async def rcpt(self, recipient: str, options: list[str]) -> Reply:
        if self._broken is not None:
            return self._broken
        # Every parameter as given, before any is left out for this connection: a
        # control character is a bug upstream of us, refused before we connect.
        _command(f"RCPT TO:<{recipient}>", options)
        if self._conn is None:
            _command(f"MAIL FROM:<{self._sender}>", self._options)
        # The step's deadline: kept by the connection (watch_until), not an
        # asyncio.timeout; only a new connection's opening is under one (acquire).
        deadline = self._downstream.deadline()
        try:
            if self._conn is None:
                mail_reply, reply = await self._start(recipient, options, deadline)
                if not mail_reply.is_success:
                    # The downstream refused the sender: every recipient hears why.
                    self._broken = mail_reply
                    return mail_reply
                if reply is None:
                    assert self._conn is not None
                    reply = await self._conn.command(self._rcpt_command(recipient, options))
            else:
                self._conn.watch_until(deadline)
                reply = await self._conn.command(self._rcpt_command(recipient, options))
        except TimeoutError:
            return self._fail(replies.DOWNSTREAM_TIMEOUT)
        except (aiosmtplib.SMTPException, OSError) as exc:
            log.warning("downstream %s: %s", self._downstream.name, exc)
            return self._fail(replies.DOWNSTREAM_UNAVAILABLE)
        if reply.is_success:
            self._accepted += 1
        return reply

    async def data(self, message: bytes | list[Buffer]) -> Reply:
        if self._broken is not None:
            return self._broken
        conn = self._conn
        if conn is None or not self._accepted:
            return replies.BAD_SEQUENCE.with_text("No recipient was accepted")
        conn.watch_until(self._downstream.deadline())
        try:
            reply = await conn.message(message)
        except TimeoutError:
            return self._fail(replies.DOWNSTREAM_TIMEOUT)
        except OSError as exc:
            log.warning("downstream %s: %s", self._downstream.name, exc)
            return self._fail(replies.DOWNSTREAM_UNAVAILABLE)
        self._conn = None
        if reply.is_success:
            self._downstream.release(conn)
        else:
            # Refused (or DATA's 354 never came): the connection is still usable
            # once reset (RFC 3030 §2: after a refused BDAT LAST, RSET all the same).
            await self._reset(conn)
        return reply

    def _fail(self, reply: Reply) -> Reply:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._broken = reply
        return reply

    async def _reset(self, conn: DownstreamConnection) -> None:
        conn.watch_until(self._downstream.deadline())
        try:
            reply = await conn.command(b"RSET")
        except (OSError, TimeoutError):
            conn.close()
            return
        if reply.is_success:
            self._downstream.release(conn)
        else:
            conn.close()

    async def abort(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if conn.usable:
            await self._reset(conn)
        else:
            # A command still unanswered (its step was cut off): the conversation's
            # state is unknown, and an RSET would be read as that command's reply.
            # Closing is the abort (a downstream without the final dot drops it all).
            conn.close()


def _command(verb_and_path: str, options: list[str]) -> bytes:
    """``MAIL FROM:<a> SIZE=1`` and the like, without its CRLF.

    Our address parser and aiosmtpd's parameter checks already keep control
    characters out; this guard (aiosmtplib has the same) makes sure no CR, LF or NUL
    can ever end a command early and start one we did not check.
    """
    command = verb_and_path.encode() + b"".join(b" " + o.encode("ascii") for o in options)
    if _CONTROL.search(command):
        raise ValueError(f"control character in a downstream command: {command!r}")
    return command
