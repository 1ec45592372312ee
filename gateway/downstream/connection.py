"""One open SMTP connection to the downstream MTA, for its transactions.

aiosmtplib opens it (TCP or TLS, greeting, EHLO, STARTTLS, AUTH); then this
protocol takes the transport over, because the transactions want what
aiosmtplib's command/response lock cannot give:

* RFC 2920 pipelining: MAIL FROM and the first RCPT TO go out in one write and
  their replies are read in order, one round trip instead of two;
* the message written once, dot-stuffed with one ``bytes.replace`` (aiosmtplib
  runs two regular expressions over it), or as one ``BDAT n LAST`` chunk when the
  downstream offers RFC 3030 CHUNKING (nothing to stuff, no 354 round trip); a
  large one in slices, as parts, paced by flow control, never copied whole.

Replies are matched to commands strictly in order.  Anything the server sends
that no command is waiting for means the conversation is out of step: the
connection is closed, never reused.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque

import aiosmtplib

from gateway.downstream.origin import offered
from gateway.downstream.replies import relay_reply
from gateway.message import Buffer, message_parts
from gateway.replies import Reply

_LINE_END = re.compile(rb"\r\n|\r|\n")
# Larger messages are streamed in slices (see DownstreamConnection._stream).
STREAM_FROM = 256 * 1024
WRITE_SLICE = 256 * 1024
MAX_REPLY = 64 * 1024  # more than any sane multi-line reply (RFC 5321 §4.5.3.1.5: 512 a line)


class DownstreamClosed(ConnectionError):
    """The connection was lost or is out of step; its state is unknown."""


class DownstreamTimeout(TimeoutError):
    """What the connection waited for (a reply, room to write) did not come by the
    step's deadline: the connection is closed, its state unknown."""


# A timer that comes due this close to the deadline fails what waits (uvloop's
# clock counts milliseconds).
TIMER_SLACK = 0.002


class DownstreamConnection(asyncio.Protocol):
    def __init__(self, client: aiosmtplib.SMTP):
        transport = client.transport
        if transport is None or transport.is_closing():
            raise DownstreamClosed("not connected")
        self.pipelining = client.supports_extension("pipelining")
        self.chunking = client.supports_extension("chunking")
        # Every EHLO keyword, lower case: which MAIL/RCPT parameters may go on
        # (downstream/parameters.py).
        self.extensions = frozenset(k.lower() for k in client.esmtp_extensions)
        # Postfix's XCLIENT / XFORWARD attributes it lets us send (downstream/origin.py).
        self.xclient = offered(client.esmtp_extensions.get("xclient")) \
            if client.supports_extension("xclient") else frozenset()
        self.xforward = offered(client.esmtp_extensions.get("xforward")) \
            if client.supports_extension("xforward") else frozenset()
        # Set once an XCLIENT made this session someone's: it must not be handed to
        # the next client unless a new XCLIENT can change it again.
        self.impersonating = False
        # XCLIENT answered with anything but 220: the downstream will not take it from
        # us on this connection, so it is not asked again (a round trip and a warning
        # a message, issue 16); XFORWARD carries the client instead.
        self.xclient_refused = False
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        self._lines: list[bytes] = []
        self._waiting: deque[asyncio.Future[Reply]] = deque()
        self._closed = False
        self._paused: asyncio.Future[None] | None = None  # set while the transport is full
        # The step's deadline (watch_until) and the one timer that keeps it.
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._error: Exception | None = None
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

    # --- the step's deadline -------------------------------------------------------------
    def watch_until(self, deadline: float) -> None:
        """Fail what the connection waits for (replies, room to write) if it has
        not come by ``deadline`` (the loop's clock), with DownstreamTimeout.

        One timer per connection, kept while it is due no later than the deadline
        and moved when it comes due early: a step's deadline costs an attribute,
        not an asyncio.timeout (its context, task and timer each step were about
        2% of the inbound path's event loop, bench/profile_inbound.py)."""
        self._deadline = deadline
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(deadline, self._deadline_due)

    def _deadline_due(self) -> None:
        self._timer = None
        if self._closed or (not self._waiting and self._paused is None):
            return  # nothing waits: the next step arms it again
        if self._loop.time() < self._deadline - TIMER_SLACK:
            self._timer = self._loop.call_at(self._deadline, self._deadline_due)
            return
        self._fail(DownstreamTimeout("the downstream did not answer in time"))

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

    def learn_extensions(self, ehlo: Reply) -> None:
        """What a new EHLO (after XCLIENT) offers: the session is another now."""
        keywords = {}
        for line in ehlo.text.splitlines()[1:]:  # the first line is the server's name
            word, _, rest = line.strip().partition(" ")
            keywords[word.lower()] = rest
        self.extensions = frozenset(keywords)
        self.pipelining = "pipelining" in keywords
        self.chunking = "chunking" in keywords
        self.xclient = offered(keywords["xclient"]) if "xclient" in keywords else frozenset()
        self.xforward = offered(keywords["xforward"]) if "xforward" in keywords else frozenset()

    async def message(self, message: bytes | list[Buffer]) -> Reply:
        """Send the message (whole or in parts): BDAT when offered, else DATA; the final
        reply.  A 354 that does not come is returned as the reply (the connection
        stays usable).  A large message is streamed part by part, stuffed slice by
        slice and paced by the transport's flow control: never copied whole."""
        parts = message_parts(message)
        size = sum(map(len, parts))
        if size > STREAM_FROM:
            return await self._stream(parts, size)
        message = parts[0] if len(parts) == 1 else b"".join(parts)
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

    async def _stream(self, parts: list[Buffer], size: int) -> Reply:
        for part in parts:
            # RFC 5321 §2.3.8: CRLF only; every part ends a line (our fields do, and
            # the DATA reader's message ends in CRLF).  Anything else is joined and
            # repaired the plain way.
            pairs = part.count(b"\r\n")
            if part.count(b"\n") != pairs or part.count(b"\r") != pairs or \
                    part[-2:] != b"\r\n":
                return await self.message(b"".join(parts))
        if self.chunking:
            self._transport.write(b"BDAT %d LAST\r\n" % size)
            for part in parts:
                await self._write_paced(part)
            (reply,) = self.send(b"", 1)
            return await reply
        go_ahead = await self.command(b"DATA")
        if go_ahead.code != 354:
            return go_ahead
        for part in parts:
            # RFC 5321 §4.5.2: a line that starts with a dot gets one more; the
            # slices between those lines are written as they are.
            if part[:1] == b".":
                self._transport.write(b".")
            start = 0
            while (dot := part.find(b"\r\n.", start)) >= 0:
                await self._write_paced(memoryview(part)[start:dot + 3])
                start = dot + 2  # the dot goes out again: doubled
            await self._write_paced(memoryview(part)[start:])
        (reply,) = self.send(b".\r\n", 1)
        return await reply

    async def _write_paced(self, data: Buffer) -> None:
        """Write, a slice at a time, waiting while the transport's buffer is full
        (asyncio copies what it cannot send at once into that buffer)."""
        view = memoryview(data)
        for start in range(0, len(view), WRITE_SLICE):
            if self._closed or self._transport.is_closing():
                # Closed while it waited for room: by the deadline, or lost.
                raise self._error or DownstreamClosed("connection closed")
            self._transport.write(view[start:start + WRITE_SLICE])
            if self._paused is not None:
                await self._paused

    def pause_writing(self) -> None:
        if self._paused is None:
            self._paused = self._loop.create_future()

    def resume_writing(self) -> None:
        paused, self._paused = self._paused, None
        if paused is not None and not paused.done():
            paused.set_result(None)

    def close(self) -> None:
        self._fail(DownstreamClosed("closed by us"))

    def _fail(self, error: DownstreamClosed | DownstreamTimeout) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._closed:
            self._error = error
        self._closed = True
        self.resume_writing()  # a writer waiting for the buffer to drain finds it closed
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
