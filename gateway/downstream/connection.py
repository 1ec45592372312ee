"""One open SMTP connection to the downstream MTA, for its transactions.

aiosmtplib opens it (TCP or TLS, greeting, EHLO, STARTTLS, AUTH); then this
protocol takes the transport over, because the transactions want what
aiosmtplib's command/response lock cannot give:

* RFC 2920 pipelining: MAIL FROM and the first RCPT TO go out in one write and
  their replies are read in order, one round trip instead of two;
* the message written once, dot-stuffed with one ``bytes.replace`` (aiosmtplib
  runs two regular expressions over it), or as one ``BDAT n LAST`` chunk when the
  downstream offers RFC 3030 CHUNKING (nothing to stuff, no 354 round trip).

Replies are matched to commands strictly in order.  Anything the server sends
that no command is waiting for means the conversation is out of step: the
connection is closed, never reused.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque

import aiosmtplib

from gateway.downstream.replies import relay_reply
from gateway.replies import Reply

_LINE_END = re.compile(rb"\r\n|\r|\n")
MAX_REPLY = 64 * 1024  # more than any sane multi-line reply (RFC 5321 §4.5.3.1.5: 512 a line)


class DownstreamClosed(ConnectionError):
    """The connection was lost or is out of step; its state is unknown."""


class DownstreamConnection(asyncio.Protocol):
    def __init__(self, client: aiosmtplib.SMTP):
        transport = client.transport
        if transport is None or transport.is_closing():
            raise DownstreamClosed("not connected")
        self.pipelining = client.supports_extension("pipelining")
        self.chunking = client.supports_extension("chunking")
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        self._lines: list[bytes] = []
        self._waiting: deque[asyncio.Future[Reply]] = deque()
        self._closed = False
        self._transport: asyncio.Transport = transport  # type: ignore[assignment]
        transport.set_protocol(self)

    # --- asyncio.Protocol ------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                if len(buffer) > MAX_REPLY:
                    self._fail(DownstreamClosed("reply line too long"))
                return
            line = bytes(buffer[:end + 1])
            del buffer[:end + 1]
            self._lines.append(line)
            if line[3:4] == b"-":  # RFC 5321 §4.2.1: more lines follow
                if len(self._lines) > 100:
                    self._fail(DownstreamClosed("reply too long"))
                    return
                continue
            lines, self._lines = self._lines, []
            if not self._waiting:
                self._fail(DownstreamClosed(f"unexpected reply {lines[0][:80]!r}"))
                return
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(_reply(lines))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(DownstreamClosed(f"connection lost: {exc}" if exc else "connection closed"))

    def eof_received(self) -> bool:
        self._fail(DownstreamClosed("connection closed by the downstream"))
        return False

    # --- commands ----------------------------------------------------------------------
    @property
    def usable(self) -> bool:
        return not self._closed and not self._waiting and not self._transport.is_closing()

    def send(self, data: bytes, replies: int) -> list[asyncio.Future[Reply]]:
        """Write ``data`` (one or more commands) and return a future per reply expected."""
        if self._closed or self._transport.is_closing():
            raise DownstreamClosed("connection closed")
        futures = [self._loop.create_future() for _ in range(replies)]
        self._waiting.extend(futures)
        self._transport.write(data)
        return futures

    async def command(self, line: bytes) -> Reply:
        (reply,) = self.send(line + b"\r\n", 1)
        return await reply

    async def message(self, message: bytes) -> Reply:
        """Send the message: BDAT when offered, else DATA; the final reply.  A 354
        that does not come is returned as the reply (the connection stays usable)."""
        # CRLF only, and a CRLF at the end (RFC 5321 §2.3.8, §4.1.1.4).  Mail read
        # by our DATA reader already is; a bare CR or LF from anywhere else must
        # not become an end of data the downstream sees and we did not.
        pairs = message.count(b"\r\n")
        if message.count(b"\n") != pairs or message.count(b"\r") != pairs:
            message = _LINE_END.sub(b"\r\n", message)
        if message and message[-2:] != b"\r\n":
            message += b"\r\n"
        if self.chunking:
            (reply,) = self.send(b"BDAT %d LAST\r\n" % len(message) + message, 1)
            return await reply
        go_ahead = await self.command(b"DATA")
        if go_ahead.code != 354:
            return go_ahead
        # RFC 5321 §4.5.2: a line that starts with a dot gets one more.
        if message[:1] == b".":
            message = b"." + message
        if b"\r\n." in message:
            message = message.replace(b"\r\n.", b"\r\n..")
        (reply,) = self.send(message + b".\r\n", 1)
        return await reply

    def close(self) -> None:
        self._fail(DownstreamClosed("closed by us"))

    def _fail(self, error: DownstreamClosed) -> None:
        self._closed = True
        waiting, self._waiting = self._waiting, deque()
        for waiter in waiting:
            if not waiter.done():
                waiter.set_exception(error)
                waiter.exception()  # retrieved: nobody may be awaiting it any more
        if not self._transport.is_closing():
            self._transport.close()


def _reply(lines: list[bytes]) -> Reply:
    code = lines[0][:3]
    if not code.isdigit():
        code = b"554"  # RFC 5321 §4.2: a reply must start with three digits
    text = "\n".join(line[4:].rstrip(b"\r\n").decode("utf-8", "surrogateescape")
                     for line in lines)
    return relay_reply(int(code), text)
