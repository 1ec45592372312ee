"""The auditor's own SMTP listener: the place every test tries to reach *through* the target.

A proxy or a relay counts as open only when something arrives here carrying a token the
auditor chose for that one test (no guessing from status codes).  The listener speaks
just enough SMTP for a real MTA to deliver to it (EHLO, MAIL, RCPT, DATA, QUIT) and
answers anything else with 500 but keeps reading, so an HTTP proxy that forwards a
``POST``/``GET`` to it (request line and headers first, then the body) is still seen.

It runs inside the audit command, on the address the operator gives, for the duration
of the audit.  Everything it keeps is bounded: lines, line length, message size,
connection time and the number of connections at once.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from dataclasses import dataclass

HOSTNAME = "portcullis-audit.invalid"  # RFC 6761 §6.4: a name that is nobody's
MAX_LINE = 4096
MAX_LINES = 200  # commands and header lines per connection, before it is dropped
MAX_MESSAGE = 256 * 1024
MAX_CONNECTIONS = 100
CONNECTION_TIMEOUT = 30.0
TRANSCRIPT_LINE = 200  # characters kept of each line in the evidence

# The token: a fixed prefix (so a line can be scanned for it cheaply) and random hex.
TOKEN_PREFIX = "pcaudit"
_TOKEN_RE = re.compile(rb"pcaudit[0-9a-f]{20}")


@dataclass(frozen=True, slots=True)
class Arrival:
    """Something reached the listener carrying a token: the evidence of an open door."""

    token: str
    peer: str  # the address that connected to the listener: the proxy's or relay's way out
    transcript: tuple[str, ...]  # "C: ..." what it sent, "S: ..." what the listener answered
    recipients: tuple[str, ...] = ()
    message: str = ""  # the message, for a relay proof (decoded for the report, bounded)


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_hex(10)


class AuditListener:
    """Start with :meth:`start`; ask it for a token per test; :meth:`wait_for` the token."""

    def __init__(self, host: str, port: int, *, connection_timeout: float = CONNECTION_TIMEOUT):
        self.host, self.port = host, port
        self.connection_timeout = connection_timeout
        self._server: asyncio.Server | None = None
        self._arrivals: dict[str, Arrival] = {}
        self._waiting: dict[str, asyncio.Event] = {}
        self._open = 0
        self._tasks: set[asyncio.Task] = set()
        self.connections = 0  # how many connections it was handed (for the summary)

    async def start(self) -> AuditListener:
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, limit=MAX_LINE
        )
        self.port = self._server.sockets[0].getsockname()[1]  # port 0: the one chosen
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            # Connections still open end with the audit (Server.close leaves them).
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            try:
                async with asyncio.timeout(2):
                    await self._server.wait_closed()
            except TimeoutError:
                pass  # a connection still open ends at its own deadline

    async def __aenter__(self) -> AuditListener:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def token(self) -> str:
        token = new_token()
        self._waiting[token] = asyncio.Event()
        return token

    async def wait_for(self, token: str, within: float) -> Arrival | None:
        """The arrival carrying ``token``, or None if nothing came within ``within`` seconds."""
        event = self._waiting.setdefault(token, asyncio.Event())
        try:
            async with asyncio.timeout(within):
                await event.wait()
        except TimeoutError:
            return None
        return self._arrivals.get(token)

    def arrived(self, token: str) -> Arrival | None:
        return self._arrivals.get(token)

    # --- one connection ---------------------------------------------------------------

    def _record(self, token: str, arrival: Arrival) -> None:
        # Only tokens this listener handed out count: a stranger cannot plant evidence.
        if token in self._waiting and token not in self._arrivals:
            self._arrivals[token] = arrival
            self._waiting[token].set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self._open >= MAX_CONNECTIONS:
            writer.close()
            return
        self._open += 1
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        conversation = _Conversation(reader, writer, self._peer(writer), self._record)
        try:
            async with asyncio.timeout(self.connection_timeout):
                await conversation.run()
        except (TimeoutError, OSError, ValueError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError):
            pass  # a peer that stalls or misbehaves is dropped; what it carried is kept
        except asyncio.CancelledError:
            pass  # the listener is closing: the connection ends here, quietly
        finally:
            conversation.finish()
            self._open -= 1
            self._tasks.discard(task)
            writer.close()

    @staticmethod
    def _peer(writer: asyncio.StreamWriter) -> str:
        peer = writer.get_extra_info("peername")
        return f"{peer[0]}:{peer[1]}" if peer else "?"


class _Conversation:
    """The SMTP server side of one connection, keeping a transcript and the tokens seen."""

    def __init__(self, reader, writer, peer: str, record) -> None:
        self.reader, self.writer, self.peer, self.record = reader, writer, peer, record
        self.transcript: list[str] = []
        self.recipients: list[str] = []
        self.tokens: list[str] = []  # seen in commands, not yet recorded
        self.lines = 0

    def _note(self, side: str, line: bytes | str) -> None:
        if len(self.transcript) < MAX_LINES:
            text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
            self.transcript.append(f"{side}: {text.rstrip()[:TRANSCRIPT_LINE]}")

    async def _say(self, line: str) -> None:
        self._note("S", line.splitlines()[-1] if "\n" in line else line)
        self.writer.write(line.encode() + b"\r\n")
        await self.writer.drain()

    def _tokens_in(self, raw: bytes) -> list[str]:
        return [m.decode() for m in _TOKEN_RE.findall(raw)]

    async def run(self) -> None:
        await self._say(f"220 {HOSTNAME} ESMTP portcullis audit listener")
        while self.lines < MAX_LINES:
            raw = await self.reader.readline()
            if not raw:
                return
            self.lines += 1
            self._note("C", raw)
            self.tokens += self._tokens_in(raw)
            self.finish()  # a token in a command is proof enough: record it now
            verb = raw[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                await self._say(f"250-{HOSTNAME}\r\n250 8BITMIME" if verb == b"EHLO" else f"250 {HOSTNAME}")
            elif verb in (b"MAIL", b"RSET", b"NOOP"):
                await self._say("250 2.0.0 OK")
            elif verb == b"RCPT":
                self.recipients.append(raw[8:].strip().decode("utf-8", "replace")[:TRANSCRIPT_LINE])
                await self._say("250 2.1.5 OK")
            elif verb == b"DATA":
                await self._say("354 End data with <CR><LF>.<CR><LF>")
                await self._message()
            elif verb == b"QUIT":
                await self._say("221 2.0.0 Bye")
                return
            else:
                await self._say("500 5.5.2 Command not recognised")

    async def _message(self) -> None:
        body = bytearray()
        while True:
            raw = await self.reader.readline()
            if not raw:
                return
            if raw in (b".\r\n", b".\n"):  # RFC 5321 §4.1.1.4: the end of the data
                break
            if len(body) < MAX_MESSAGE:
                body += raw[1:] if raw.startswith(b"..") else raw  # §4.5.2: undo dot-stuffing
        tokens = self._tokens_in(bytes(body))
        self._note("C", f"<message of {len(body)} bytes>")
        await self._say("250 2.0.0 Received by the audit listener")
        message = bytes(body).decode("utf-8", "replace")
        for token in tokens:
            self.record(token, self._arrival(token, message))

    def _arrival(self, token: str, message: str = "") -> Arrival:
        return Arrival(token, self.peer, tuple(self.transcript), tuple(self.recipients), message)

    def finish(self) -> None:
        for token in self.tokens:
            self.record(token, self._arrival(token))
        self.tokens = []
