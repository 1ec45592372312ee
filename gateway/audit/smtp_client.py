"""The auditor's side of an SMTP conversation: raw asyncio streams, so exactly what is
sent is known, with a deadline on every read and write.

Used by the relay battery and, through a proxy's tunnel, by the proxy tests.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from dataclasses import dataclass

MAX_REPLY_LINES = 100
MAX_LINE = 4096


@dataclass(frozen=True, slots=True)
class SMTPReply:
    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return self.lines[0] if self.lines else ""

    def __str__(self) -> str:
        return f"{self.code} {self.text}".rstrip()


class AuditError(Exception):
    """The server could not be talked to (connect, TLS, greeting, EHLO)."""


class ServerClosing(Exception):
    """A 421 or a closed connection: reconnect and try the probe again."""


class Session:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float):
        self.reader, self.writer, self.timeout = reader, writer, timeout

    async def read_reply(self) -> SMTPReply:
        lines: list[str] = []
        code = 0
        async with asyncio.timeout(self.timeout):
            while len(lines) < MAX_REPLY_LINES:
                raw = await self.reader.readline()
                if not raw.endswith(b"\n"):
                    raise ServerClosing("connection closed by the server")
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if len(line) < 3 or not line[:3].isdigit():
                    raise AuditError(f"not an SMTP reply: {line[:80]!r}")
                code = int(line[:3])
                lines.append(line[4:])
                if len(line) == 3 or line[3] != "-":  # RFC 5321 §4.2.1: last line
                    return SMTPReply(code, tuple(lines))
        raise AuditError(f"reply longer than {MAX_REPLY_LINES} lines")

    async def command(self, line: str) -> SMTPReply:
        # Every argument was checked for CR and LF before it got here.
        if "\r" in line or "\n" in line:
            raise ValueError("command contains a line break")
        self.writer.write(line.encode("utf-8") + b"\r\n")
        async with asyncio.timeout(self.timeout):
            await self.writer.drain()
        reply = await self.read_reply()
        if reply.code == 421:  # RFC 5321 §3.8: the server is closing the channel
            raise ServerClosing(str(reply))
        return reply

    async def close(self) -> None:
        try:
            self.writer.write(b"QUIT\r\n")
            async with asyncio.timeout(1):
                await self.writer.drain()
        except Exception:  # noqa: S110 - the goodbye is best effort
            pass
        self.writer.close()
        try:
            async with asyncio.timeout(1):
                await self.writer.wait_closed()
        except Exception:  # noqa: S110 - so is the close
            pass


def tls_context() -> ssl.SSLContext:
    # The audit tests relaying, not certificates: talk to whatever certificate is shown.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def sni(host: str) -> str | None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host
    return None


async def open_session(
    host: str, port: int, helo: str, starttls: bool, implicit_tls: bool, reply_timeout: float
) -> tuple[Session, SMTPReply, str]:
    timeout = reply_timeout
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host, port, limit=MAX_LINE,
                ssl=tls_context() if implicit_tls else None,
                server_hostname=sni(host) if implicit_tls else None,
            )
    except TimeoutError:
        raise AuditError(f"connecting to {host}:{port} timed out after {timeout:g}s") from None
    except (OSError, ssl.SSLError) as exc:
        raise AuditError(f"cannot connect to {host}:{port}: {exc}") from None
    session = Session(reader, writer, timeout)
    try:
        greeting = await session.read_reply()
        if greeting.code != 220:
            raise AuditError(f"the server refused the session: {greeting}")
        ehlo = await hello(session, helo)
        if starttls:
            if not any(line.upper().startswith("STARTTLS") for line in ehlo.lines[1:]):
                raise AuditError("the server does not offer STARTTLS")
            reply = await session.command("STARTTLS")
            if reply.code != 220:
                raise AuditError(f"STARTTLS refused: {reply}")
            async with asyncio.timeout(timeout):
                await writer.start_tls(tls_context(), server_hostname=sni(host))
            await hello(session, helo)  # RFC 3207 §4.2: start over after TLS
    except TimeoutError:
        await session.close()
        raise AuditError(f"the server did not answer within {timeout:g}s") from None
    except (ServerClosing, OSError, ssl.SSLError) as exc:
        await session.close()
        raise AuditError(f"the session ended early: {exc}") from None
    except AuditError:
        await session.close()
        raise
    tls_object = writer.get_extra_info("ssl_object")
    return session, greeting, tls_object.version() if tls_object else ""


async def hello(session: Session, helo: str) -> SMTPReply:
    reply = await session.command(f"EHLO {helo}")
    if 200 <= reply.code < 300:
        return reply
    reply = await session.command(f"HELO {helo}")  # RFC 5321 §3.2: fall back
    if not 200 <= reply.code < 300:
        raise AuditError(f"the server refused HELO {helo}: {reply}")
    return reply
