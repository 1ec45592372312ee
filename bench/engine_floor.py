"""What an SMTP engine of our own could save: aiosmtpd against a bare asyncio.Protocol.

    python bench/engine_floor.py [--messages 4000] [--sessions 20] [--size 5120]
                                 [--warmup 500] [--rounds 3] [--keep-connections]

Issue 16 puts a protocol engine of our own on ``asyncio.Protocol`` in scope if
aiosmtpd's stream-based layer is the floor of the inbound path.  This measures
that floor, and so the most such an engine could take off a message.  Two
servers, each alone in a process on uvloop, answer the same dialogue and forward
nothing (220, EHLO, MAIL, RCPT, DATA, 250, QUIT), driven by Postfix's smtp-source
as bench/inbound.py drives the gateway (a new connection per message, 5 KB):

    aiosmtpd   aiosmtpd's SMTP as the gateway builds it (gateway/smtp/aiosmtpd_adapter.py:
               hooks looked up once per class): its connection set-up, command loop,
               stream reader and MAIL/RCPT, with what GatewaySMTP puts in their place
               (replies written without drain(), its path parser, DATA read in
               chunks through the DataScanner)
    protocol   an asyncio.Protocol: replies parsed out of the receive buffer, one
               write per reply, DATA read by the gateway's own DataScanner (the
               smuggling, NUL and line checks an engine of ours would keep)

It prints each one's messages per second and its server CPU per message (user +
system, from /proc), medians of ``--rounds`` interleaved rounds, and the
difference: an upper bound on what replacing aiosmtpd saves a message, since a
real engine also parses parameters, enforces limits, speaks TLS and AUTH.
Compare it with the gateway's own CPU per message on the plain path
(bench/inbound_checks.py's "plain" rows).  Not a product: neither server checks
addresses or limits.  Needs root (smtp-sink is not used; smtp-source is).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.inbound import smtp_source_command, wait_port
from tests.support.ports import free_port

_EHLO = (b"250-floor.bench.example\r\n250-8BITMIME\r\n"
         b"250-SIZE 33554432\r\n250 ENHANCEDSTATUSCODES\r\n")


# --- the two servers (each runs in a child process: --serve KIND PORT) -----------------
class AiosmtpdHandler:
    """No hooks: aiosmtpd's own MAIL and RCPT answer 250."""


def serve_aiosmtpd(port: int) -> None:
    import logging

    from gateway.addresses import NotAMailbox, parse_mailbox
    from gateway.smtp.aiosmtpd_adapter import SMTPAdapter
    from gateway.smtp.data_scanner import DataScanner

    class GatewayEngine(SMTPAdapter):
        """aiosmtpd's command loop; replies written, paths parsed and DATA read as
        GatewaySMTP does (without its rules, records and pipelining groups)."""

        async def push(self, status: str) -> None:
            await self.write(status.encode("ascii", "replace") + b"\r\n")

        def parse_path(self, arg: str) -> tuple[str | None, str | None]:
            arg = arg.strip()
            end = arg.find(">")
            if not arg.startswith("<") or end < 0:
                return None, None
            inner, rest = arg[1:end], arg[end + 1:]
            if inner == "":
                return "<>", rest.strip()
            try:
                parse_mailbox(inner, utf8=True)
            except NotAMailbox:
                return None, None
            return inner, rest.strip()

        async def smtp_DATA(self, arg: str) -> None:
            if not self.envelope.rcpt_tos:
                await self.push("503 5.5.1 Error: need RCPT command")
                return
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            scanner = DataScanner(1000, 33554432)
            with self.reading_data(65536):
                while True:
                    chunk = await self.read_some(65536)
                    if not chunk:
                        raise ConnectionResetError("connection closed during DATA")
                    end = scanner.feed(chunk)
                    if end >= 0:
                        if end < len(chunk):
                            self.unread(chunk[end:])
                        break
            self.reset_envelope()
            await self.push("250 2.0.0 OK")

    logging.getLogger("mail.log").setLevel(logging.ERROR)  # a line per command otherwise
    handler = AiosmtpdHandler()

    _run(lambda loop: loop.create_server(  # the loop passed, as gateway/listeners.py does
        lambda: GatewayEngine(handler, hostname="floor.bench.example", loop=loop), "127.0.0.1", port))


class BareSMTP(asyncio.Protocol):
    """The dialogue on a receive buffer: a command per CRLF line, DATA through the
    DataScanner, one transport.write per reply (pipelined commands: one per group)."""

    def __init__(self) -> None:
        from gateway.smtp.data_scanner import DataScanner

        self._scanner_class = DataScanner
        self._buffer = b""
        self._data = None
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        transport.write(b"220 floor.bench.example ESMTP\r\n")  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        out: list[bytes] = []
        while buffer:
            if self._data is not None:
                end = self._data.feed(buffer)
                if end < 0:
                    buffer = b""
                    break
                buffer = buffer[end:]
                out.append(b"250 2.0.0 OK\r\n" if self._data.problem is None else b"554 5.6.0 No\r\n")
                self._data = None
                continue
            end = buffer.find(b"\r\n")
            if end < 0:
                break
            line, buffer = buffer[:end], buffer[end + 2:]
            verb = line[:4].upper()
            if verb == b"EHLO":
                out.append(_EHLO)
            elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP", b"HELO"):
                out.append(b"250 2.0.0 OK\r\n")
            elif verb == b"DATA":
                out.append(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                self._data = self._scanner_class(1000, 33554432)
            elif verb == b"QUIT":
                out.append(b"221 2.0.0 Bye\r\n")
                self._transport.write(b"".join(out))  # type: ignore[union-attr]
                self._transport.close()  # type: ignore[union-attr]
                return
            else:
                out.append(b"500 5.5.2 Syntax error\r\n")
        self._buffer = buffer
        if out:
            self._transport.write(b"".join(out))  # type: ignore[union-attr]


def serve_protocol(port: int) -> None:
    _run(lambda loop: loop.create_server(BareSMTP, "127.0.0.1", port))


def _run(serve) -> None:  # type: ignore[no-untyped-def]
    """Serve on uvloop until SIGTERM."""
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
        server = await serve(loop)
        async with server:
            await stop

    uvloop.run(main())


# --- the measurement ----------------------------------------------------------------------
def _cpu(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _drive(port: int, messages: int, args: argparse.Namespace) -> float:
    """smtp-source's messages per second; -d: every message of a session on one connection."""
    start = time.perf_counter()
    subprocess.run([*smtp_source_command(args.sessions, args.size), *(["-d"] if args.keep_connections else []),
                    "-m", str(messages), f"127.0.0.1:{port}"], check=True, timeout=600)
    return messages / (time.perf_counter() - start)


def measure(kind: str, args: argparse.Namespace) -> tuple[float, float]:
    """(msg/s, server CPU seconds per message) of one fresh server."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve", kind, str(port)])
    try:
        wait_port(port)
        if args.warmup:
            _drive(port, args.warmup, args)
        before = _cpu(proc.pid)
        rate = _drive(port, args.messages, args)
        return rate, (_cpu(proc.pid) - before) / args.messages
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=5120)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep-connections", action="store_true",
                        help="each session sends all its messages on one connection (smtp-source -d), "
                             "as submission clients do: the cost per message without the connection's")
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        kind, port = args.serve[0], int(args.serve[1])
        (serve_aiosmtpd if kind == "aiosmtpd" else serve_protocol)(port)
        return 0
    kinds = ("aiosmtpd", "protocol")
    found: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
    for r in range(args.rounds):
        for kind in kinds[r % 2:] + kinds[:r % 2]:  # interleaved: each round starts one later
            found[kind].append(measure(kind, args))
            print(f"  round {r + 1}: {kind}: {found[kind][-1][0]:.0f} msg/s", file=sys.stderr, flush=True)
    per = "one connection per session" if args.keep_connections else "a connection per message"
    print(f"\nThe SMTP engine alone: {args.messages} messages of {args.size} bytes, {args.sessions} "
          f"sessions, {per}, nothing forwarded; medians of {args.rounds} rounds\n")
    print(f"{'server':60} {'msg/s':>8} {'CPU/msg':>10}")
    cpu = {}
    for kind, label in zip(kinds, ("aiosmtpd (SMTPAdapter, DATA as the gateway reads it), uvloop",
                                   "asyncio.Protocol on the receive buffer + DataScanner, uvloop"),
                           strict=True):
        rate = statistics.median(r for r, _ in found[kind])
        cpu[kind] = statistics.median(c for _, c in found[kind])
        print(f"{label:60} {rate:8.0f} {cpu[kind] * 1e6:8.0f} us")
    print(f"\nat most saved a message by an engine of our own: {(cpu['aiosmtpd'] - cpu['protocol']) * 1e6:.0f} us "
          "of server CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
