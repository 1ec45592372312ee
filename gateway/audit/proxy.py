"""``portcullis audit proxy HOST[:PORT]``: does this host let a stranger reach a mail server?

Each method asks the target to carry a connection to the auditor's own SMTP listener
(:mod:`gateway.audit.listener`), with a token chosen for that one method:

- ``http-connect``: ``CONNECT listener:port`` (RFC 9110 §9.3.6), then SMTP through the tunnel;
- ``http-post``: ``POST http://listener:port/`` whose body is SMTP commands (the proxy
  forwards the request line, headers and body to the SMTP server, which reads the
  commands among the junk);
- ``http-get``: ``GET http://listener:port/TOKEN`` (the request line itself carries it);
- ``socks4``, ``socks4a`` (the proxy resolves the name), ``socks5`` without authentication
  (RFC 1928);
- ``port-forward``: talk SMTP to the port itself, in case it forwards to the listener.

A method is OPEN only when the listener received the token through it; what the proxy
answered is kept as evidence but never decides.  Every connect, read and wait has a
deadline.  Only the target is contacted, and it is only asked to reach the listener.
"""

from __future__ import annotations

import asyncio
import ipaddress
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway.audit.listener import Arrival, AuditListener

METHODS = ("http-connect", "http-post", "http-get", "socks4", "socks4a", "socks5", "port-forward")
DEFAULT_PROXY_PORT = 8080
MAX_HEAD = 16 * 1024  # bytes of a proxy's answer kept and read before giving up on it
EVIDENCE_BYTES = 300

OPEN = "OPEN"
CLOSED = "closed"
NOT_APPLICABLE = "not applicable"  # e.g. SOCKS4 cannot name an IPv6 listener


@dataclass(frozen=True, slots=True)
class MethodResult:
    method: str
    proxy_said: str = ""  # the first line of the target's answer (status line, SOCKS reply)
    transcript: tuple[str, ...] = ()  # what went over the connection to the target
    arrival: Arrival | None = None
    error: str = ""

    @property
    def verdict(self) -> str:
        return judge_method(self.arrival, self.error)

    @property
    def is_open(self) -> bool:
        return self.verdict == OPEN


def judge_method(arrival: Arrival | None, error: str) -> str:
    """Open only on an arrival at our listener; the proxy's own words never decide."""
    if arrival is not None:
        return OPEN
    return NOT_APPLICABLE if error == NOT_APPLICABLE else CLOSED


@dataclass(frozen=True)
class ProxyAudit:
    host: str
    port: int
    listener: str  # host:port the target was asked to reach
    results: tuple[MethodResult, ...] = ()
    error: str = ""  # set when the target could not be reached at all

    @property
    def open_results(self) -> list[MethodResult]:
        return [r for r in self.results if r.is_open]

    @property
    def is_open(self) -> bool:
        return bool(self.open_results)


# --- speaking each method ------------------------------------------------------------------

class _Link:
    """One connection to the target, recording what crosses it for the evidence."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float):
        self.reader, self.writer, self.timeout = reader, writer, timeout
        self.transcript: list[str] = []
        self.first_answer = ""

    def send(self, data: bytes) -> None:
        self.transcript.append("C: " + _show(data))
        self.writer.write(data)

    def _heard(self, data: bytes) -> None:
        self.transcript.append("S: " + _show(data))
        if not self.first_answer:
            self.first_answer = _show(data.split(b"\n", 1)[0])

    async def exactly(self, n: int) -> bytes:
        async with asyncio.timeout(self.timeout):
            await self.writer.drain()
            data = await self.reader.readexactly(n)
        self._heard(data)
        return data

    async def head(self) -> bytes:
        """An HTTP answer's status line and headers (up to the blank line)."""
        async with asyncio.timeout(self.timeout):
            await self.writer.drain()
            data = await self.reader.readuntil(b"\r\n\r\n")
        self._heard(data)
        return data

    async def line(self) -> bytes:
        async with asyncio.timeout(self.timeout):
            await self.writer.drain()
            data = await self.reader.readline()
        if data:
            self._heard(data)
        return data

    async def rest(self) -> None:
        """Whatever else the target says, until it closes or goes quiet (bounded)."""
        try:
            async with asyncio.timeout(self.timeout):
                await self.writer.drain()
                data = await self.reader.read(MAX_HEAD)
            if data:
                self._heard(data)
        except (TimeoutError, OSError):
            pass


def _show(data: bytes) -> str:
    """Text as text (line breaks as \\n), a binary answer (SOCKS) as hex bytes."""
    shown = data[:EVIDENCE_BYTES]
    if any(b < 0x20 and b not in b"\r\n\t" or b > 0x7E for b in shown):
        text = "[" + shown.hex(" ") + "]"
    else:
        text = shown.decode("ascii").replace("\r", "").replace("\n", "\\n")
    return text + ("…" if len(data) > EVIDENCE_BYTES else "")


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _smtp_through(link: _Link, token: str) -> None:
    """Talk SMTP through an open tunnel: the EHLO carries the token to the listener."""
    greeting = await link.line()
    if greeting.startswith(b"220"):
        link.send(f"EHLO {token}\r\n".encode())
        await link.line()
        link.send(b"QUIT\r\n")
        await link.line()


async def _http_connect(link: _Link, token: str, host: str, port: int) -> None:
    where = _authority(host, port)
    link.send(f"CONNECT {where} HTTP/1.1\r\nHost: {where}\r\n\r\n".encode())
    head = await link.head()
    if head[9:10] == b"2":  # "HTTP/1.1 200": a tunnel (RFC 9110 §9.3.6)
        await _smtp_through(link, token)


async def _http_post(link: _Link, token: str, host: str, port: int) -> None:
    where = _authority(host, port)
    body = f"EHLO {token}\r\nQUIT\r\n".encode()
    link.send(f"POST http://{where}/ HTTP/1.0\r\nHost: {where}\r\nContent-Type: text/plain\r\n"
              f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    await link.rest()


async def _http_get(link: _Link, token: str, host: str, port: int) -> None:
    where = _authority(host, port)
    link.send(f"GET http://{where}/{token} HTTP/1.0\r\nHost: {where}\r\n\r\n".encode())
    await link.rest()


def _ipv4(host: str) -> bytes | None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    return address.packed if address.version == 4 else None


async def _socks4(link: _Link, token: str, host: str, port: int, *, by_name: bool = False) -> None:
    packed = _ipv4(host)
    if by_name:
        # SOCKS4a: the address 0.0.0.x (x != 0) says "the name follows the user id".
        request = struct.pack(">BBH", 4, 1, port) + b"\0\0\0\1" + b"audit\0" + host.encode() + b"\0"
    elif packed is None:
        raise _NotApplicable
    else:
        request = struct.pack(">BBH", 4, 1, port) + packed + b"audit\0"
    link.send(request)
    reply = await link.exactly(8)
    if reply[1] == 0x5A:  # request granted
        await _smtp_through(link, token)


async def _socks4a(link: _Link, token: str, host: str, port: int) -> None:
    await _socks4(link, token, host, port, by_name=True)


async def _socks5(link: _Link, token: str, host: str, port: int) -> None:
    link.send(b"\x05\x01\x00")  # RFC 1928 §3: version 5, one method, "no authentication"
    if (await link.exactly(2)) != b"\x05\x00":
        return
    try:
        address = ipaddress.ip_address(host)
        target = (b"\x01" if address.version == 4 else b"\x04") + address.packed
    except ValueError:
        target = b"\x03" + bytes([len(host)]) + host.encode()
    link.send(b"\x05\x01\x00" + target + struct.pack(">H", port))  # §4: CONNECT
    reply = await link.exactly(4)
    if reply[1] != 0:
        return
    # §6: the bound address that follows, by its type, then the tunnel is open.
    length = {1: 4, 4: 16}.get(reply[3])
    if length is None:
        length = (await link.exactly(1))[0]
    await link.exactly(length + 2)
    await _smtp_through(link, token)


async def _port_forward(link: _Link, token: str, host: str, port: int) -> None:
    await _smtp_through(link, token)


class _NotApplicable(Exception):
    pass


_SPEAKERS: dict[str, Callable[[_Link, str, str, int], Awaitable[None]]] = {
    "http-connect": _http_connect,
    "http-post": _http_post,
    "http-get": _http_get,
    "socks4": _socks4,
    "socks4a": _socks4a,
    "socks5": _socks5,
    "port-forward": _port_forward,
}


async def _try_method(
    method: str, host: str, port: int, listener: AuditListener, reach: tuple[str, int],
    reply_timeout: float, grace: float,
) -> MethodResult:
    timeout = reply_timeout
    token = listener.token()
    link = None
    error = ""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, limit=MAX_HEAD)
        link = _Link(reader, writer, timeout)
        await _SPEAKERS[method](link, token, reach[0], reach[1])
    except _NotApplicable:
        error = NOT_APPLICABLE
    except TimeoutError:
        error = f"no answer within {timeout:g}s"
    except asyncio.IncompleteReadError:
        error = "the target closed the connection"
    except (OSError, asyncio.LimitOverrunError, ValueError) as exc:
        error = str(exc) or type(exc).__name__
    finally:
        if link is not None:
            link.writer.close()
    # The listener decides: a proxy may forward after saying no, or say yes and forward
    # nothing.  Wait a moment for a late arrival.
    arrival = listener.arrived(token) or await listener.wait_for(token, grace)
    if link is None:
        return MethodResult(method, error=error, arrival=arrival)
    return MethodResult(method, link.first_answer, tuple(link.transcript), arrival, error)


async def audit_proxy(
    host: str,
    port: int,
    listener: AuditListener,
    *,
    reach: tuple[str, int] | None = None,
    methods: tuple[str, ...] = METHODS,
    reply_timeout: float = 10.0,
    grace: float = 2.0,
) -> ProxyAudit:
    """Try every method against ``host:port``; ``reach`` is the listener's address as the
    target should see it (default: where it listens).  ``reply_timeout`` bounds each
    connect and read, ``grace`` the wait for a late arrival at the listener."""
    reach = reach or (listener.host, listener.port)
    timeout = reply_timeout
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port)
        writer.close()
    except (OSError, TimeoutError) as exc:
        reason = f"no answer within {timeout:g}s" if isinstance(exc, TimeoutError) else str(exc)
        return ProxyAudit(host, port, _authority(*reach), error=f"cannot connect: {reason}")
    # The methods run side by side: a closed proxy costs one grace period, not seven.
    results = await asyncio.gather(
        *(_try_method(m, host, port, listener, reach, reply_timeout, grace) for m in methods)
    )
    return ProxyAudit(host, port, _authority(*reach), tuple(results))


def format_proxy_report(audit: ProxyAudit) -> str:
    head = [f"proxy audit of {_authority(audit.host, audit.port)} "
            f"(asked to reach the audit listener at {audit.listener})"]
    if audit.error:
        return "\n".join([*head, f"could not run: {audit.error}"]) + "\n"
    rows = [("method", "the target answered", "reached the listener", "verdict")]
    for r in audit.results:
        reached = f"yes, from {r.arrival.peer}" if r.arrival else "no"
        answer = r.proxy_said or r.error or "-"
        rows.append((r.method, answer[:60], reached, r.verdict))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    opened = audit.open_results
    summary = (f"OPEN PROXY: {', '.join(r.method for r in opened)} carried a connection to "
               "the audit listener" if opened else
               "nothing reached the audit listener: not an open proxy by these tests")
    return "\n".join([*head, "", *lines, "", summary]) + "\n"
