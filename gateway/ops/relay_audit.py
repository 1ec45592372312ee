"""``portcullis audit relay HOST[:PORT]``: the open-relay test every server owner should run.

In the spirit of the 1990s "Operation Secure Your Server" checks: try the classic
tricks spammers used to get a server to pass mail from a stranger to a stranger
(third-party to third-party, the percent hack, bang paths, source routes, quoted
local parts, IP literals, local-looking and empty senders, ...) and report which
recipient the server accepted.

What it never does: complete a DATA (every transaction ends with RSET after the
RCPT reply, so nothing is ever sent), or contact anything but the one address
given.  Every read and write has a deadline, and so has the whole audit.

The probe battery (:func:`build_probes`) and the judgement (:func:`judge`) are pure;
the SMTP conversation is raw asyncio streams, so exactly what is sent is known.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import socket
import ssl
import sys
from dataclasses import dataclass, field

from gateway.values.domains import normalise_domain

# RFC 2606 §3: a domain reserved for examples, which no one can own.
DEFAULT_THIRD_PARTY = "third-party.example"
# RFC 5737 TEST-NET-1: an address that is nobody's mail server.
THIRD_PARTY_IP = "192.0.2.1"
LOCAL_PART = "relaytest"
MAX_REPLY_LINES = 100
MAX_LINE = 4096

OPEN = "OPEN"
REFUSED = "refused"
DEFERRED = "deferred"
MAIL_REFUSED = "MAIL refused"
ERROR = "error"
NOT_RUN = "not run"
CONTROL_OK = "control: accepted"
CONTROL_REFUSED = "control: refused"


# --- the battery -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Probe:
    name: str
    # Senders to try in order: a server that refuses the first sender at MAIL still
    # gets the recipient trick tested with the next one.
    senders: tuple[str, ...]
    recipient: str
    # False only for the control probe (a recipient every server must take).
    third_party: bool = True


def address_literal(ip: str) -> str:
    """RFC 5321 §4.1.3: ``[192.0.2.1]`` or ``[IPv6:2001:db8::1]``."""
    addr = ipaddress.ip_address(ip)
    return f"[IPv6:{addr.compressed}]" if addr.version == 6 else f"[{addr}]"


def build_probes(target: str, third_party: str, server_ip: str | None) -> list[Probe]:
    """The tricks, each with a recipient that is not the server's to take.

    ``target`` is a domain the server accepts mail for; ``server_ip`` the address we
    are talking to (for the IP-literal forms), when known.
    """
    X, T, L = third_party, target, LOCAL_PART
    # The control: RFC 5321 §4.5.1 obliges every server to take postmaster.
    ip = address_literal(server_ip) if server_ip else None
    outsider = f"{L}@{X}"
    # Recipient tricks are tried with a local-looking sender first (servers that
    # trust their own domain are the commonest hole), then the null sender.
    local_first = (f"{L}@{T}", "")
    probes = [
        Probe("control: postmaster@target", ("",), f"postmaster@{T}", False),
        # Who may send to a stranger?
        Probe("third-party sender to third party", (outsider,), outsider),
        Probe("null sender to third party", ("",), outsider),
        Probe("postmaster@target sender to third party", (f"postmaster@{T}",), outsider),
        Probe("local user sender to third party", (f"{L}@{T}",), outsider),
        Probe("unqualified sender to third party", (L,), outsider),
        Probe("target in upper case as sender", (f"{L}@{T.upper()}",), outsider),
        Probe("target with trailing dot as sender", (f"{L}@{T}.",), outsider),
        # Recipients that hide a stranger behind the target's name.
        Probe("percent hack", local_first, f"{L}%{X}@{T}"),
        Probe("percent hack, target upper case", local_first, f"{L}%{X}@{T.upper()}"),
        Probe("percent hack, target trailing dot", local_first, f"{L}%{X}@{T}."),
        Probe("percent hack, unqualified", local_first, f"{L}%{X}"),
        Probe("bang path", local_first, f"{X}!{L}@{T}"),
        Probe("bang path, unqualified", local_first, f"{X}!{L}"),
        Probe("source route via target", local_first, f"@{T}:{L}@{X}"),
        Probe("quoted local part with @", local_first, f'"{L}@{X}"@{T}'),
        Probe("quoted local part with %", local_first, f'"{L}%{X}"@{T}'),
        Probe("quoted address, unqualified", local_first, f'"{L}@{X}"'),
        Probe("double @", local_first, f"{L}@{X}@{T}"),
        Probe("IP literal of a third party", local_first, f"{L}@[{THIRD_PARTY_IP}]"),
        Probe("third party with trailing dot", local_first, f"{L}@{X}."),
        Probe("third party in upper case", local_first, f"{L.upper()}@{X.upper()}"),
        Probe("target as a subdomain of a third party", local_first, f"{L}@{T}.{X}"),
        Probe("target as a suffix without a dot", local_first, f"{L}@not{T}"),
    ]
    if ip:
        probes += [
            Probe("sender at the server's IP literal", (f"{L}@{ip}",), outsider),
            Probe("percent hack at the server's IP literal", local_first, f"{L}%{X}@{ip}"),
            Probe("bang path at the server's IP literal", local_first, f"{X}!{L}@{ip}"),
            Probe("source route via the server's IP literal", local_first, f"@{ip}:{L}@{X}"),
        ]
    return probes


# --- replies and verdicts -----------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SMTPReply:
    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return self.lines[0] if self.lines else ""

    def __str__(self) -> str:
        return f"{self.code} {self.text}".rstrip()


@dataclass(frozen=True, slots=True)
class ProbeResult:
    probe: Probe
    sender: str | None = None  # the sender used for the RCPT (None: no MAIL accepted)
    mail: SMTPReply | None = None
    rcpt: SMTPReply | None = None
    error: str = ""

    @property
    def verdict(self) -> str:
        return judge(self.probe, self.mail, self.rcpt, self.error)

    @property
    def is_open(self) -> bool:
        return self.verdict == OPEN


def judge(probe: Probe, mail: SMTPReply | None, rcpt: SMTPReply | None, error: str = "") -> str:
    """OPEN when a recipient that is not the server's got a 2xx (RFC 5321 §4.2.1)."""
    if error:
        return NOT_RUN if error == NOT_RUN else ERROR
    mail_ok = mail is not None and 200 <= mail.code < 300
    accepted = mail_ok and rcpt is not None and 200 <= rcpt.code < 300
    if not probe.third_party:
        return CONTROL_OK if accepted else CONTROL_REFUSED
    if not mail_ok:
        return MAIL_REFUSED
    if rcpt is None:
        return ERROR
    if accepted:
        return OPEN
    return DEFERRED if 400 <= rcpt.code < 500 else REFUSED


@dataclass(frozen=True)
class RelayAudit:
    host: str
    port: int
    target_domain: str = ""
    third_party_domain: str = DEFAULT_THIRD_PARTY
    greeting: SMTPReply | None = None
    tls: str = ""  # the TLS version when STARTTLS or implicit TLS was used
    results: tuple[ProbeResult, ...] = ()
    error: str = ""  # set when the audit could not run at all
    notes: tuple[str, ...] = field(default=())

    @property
    def open_results(self) -> list[ProbeResult]:
        return [r for r in self.results if r.is_open]

    @property
    def is_open(self) -> bool:
        return bool(self.open_results)


# --- the conversation ---------------------------------------------------------------

class AuditError(Exception):
    """The server could not be talked to (connect, TLS, greeting, EHLO)."""


class _ServerClosing(Exception):
    """A 421 or a closed connection: reconnect and try the probe again."""


class _Session:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float):
        self.reader, self.writer, self.timeout = reader, writer, timeout

    async def read_reply(self) -> SMTPReply:
        lines: list[str] = []
        code = 0
        async with asyncio.timeout(self.timeout):
            while len(lines) < MAX_REPLY_LINES:
                raw = await self.reader.readline()
                if not raw.endswith(b"\n"):
                    raise _ServerClosing("connection closed by the server")
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
            raise _ServerClosing(str(reply))
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


def _tls_context() -> ssl.SSLContext:
    # The audit tests relaying, not certificates: talk to whatever certificate is shown.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _sni(host: str) -> str | None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host
    return None


async def _open_session(
    host: str, port: int, helo: str, starttls: bool, implicit_tls: bool, reply_timeout: float
) -> tuple[_Session, SMTPReply, str]:
    timeout = reply_timeout
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host, port, limit=MAX_LINE,
                ssl=_tls_context() if implicit_tls else None,
                server_hostname=_sni(host) if implicit_tls else None,
            )
    except TimeoutError:
        raise AuditError(f"connecting to {host}:{port} timed out after {timeout:g}s") from None
    except (OSError, ssl.SSLError) as exc:
        raise AuditError(f"cannot connect to {host}:{port}: {exc}") from None
    session = _Session(reader, writer, timeout)
    try:
        greeting = await session.read_reply()
        if greeting.code != 220:
            raise AuditError(f"the server refused the session: {greeting}")
        ehlo = await _hello(session, helo)
        if starttls:
            if not any(line.upper().startswith("STARTTLS") for line in ehlo.lines[1:]):
                raise AuditError("the server does not offer STARTTLS")
            reply = await session.command("STARTTLS")
            if reply.code != 220:
                raise AuditError(f"STARTTLS refused: {reply}")
            async with asyncio.timeout(timeout):
                await writer.start_tls(_tls_context(), server_hostname=_sni(host))
            await _hello(session, helo)  # RFC 3207 §4.2: start over after TLS
    except TimeoutError:
        await session.close()
        raise AuditError(f"the server did not answer within {timeout:g}s") from None
    except (_ServerClosing, OSError, ssl.SSLError) as exc:
        await session.close()
        raise AuditError(f"the session ended early: {exc}") from None
    except AuditError:
        await session.close()
        raise
    tls_object = writer.get_extra_info("ssl_object")
    return session, greeting, tls_object.version() if tls_object else ""


async def _hello(session: _Session, helo: str) -> SMTPReply:
    reply = await session.command(f"EHLO {helo}")
    if 200 <= reply.code < 300:
        return reply
    reply = await session.command(f"HELO {helo}")  # RFC 5321 §3.2: fall back
    if not 200 <= reply.code < 300:
        raise AuditError(f"the server refused HELO {helo}: {reply}")
    return reply


async def _run_probe(session: _Session, probe: Probe) -> ProbeResult:
    mail = None
    for sender in probe.senders:
        mail = await session.command(f"MAIL FROM:<{sender}>")
        if 200 <= mail.code < 300:
            rcpt = await session.command(f"RCPT TO:<{probe.recipient}>")
            # Never DATA: forget this transaction before anything could be sent.
            await session.command("RSET")
            return ProbeResult(probe, sender, mail, rcpt)
        await session.command("RSET")
    return ProbeResult(probe, None, mail, None)


def _peer_ip(session: _Session) -> str | None:
    peer = session.writer.get_extra_info("peername")
    return peer[0] if peer else None


def _greeting_domain(greeting: SMTPReply) -> str | None:
    words = greeting.text.split()
    return _domain_or_none(words[0]) if words else None


def _domain_or_none(name: str) -> str | None:
    try:
        return normalise_domain(name)
    except ValueError:
        return None


async def audit_relay(
    host: str,
    port: int = 25,
    *,
    helo: str | None = None,
    target_domain: str | None = None,
    third_party_domain: str = DEFAULT_THIRD_PARTY,
    starttls: bool = False,
    implicit_tls: bool = False,
    reply_timeout: float = 15.0,
    deadline: float = 300.0,
) -> RelayAudit:
    """Run the battery against ``host:port`` and return what each probe got.

    ``reply_timeout`` bounds each connect, TLS handshake and reply; ``deadline``
    bounds the whole audit (probes not reached are reported as not run).
    """
    timeout = reply_timeout
    helo = helo or socket.gethostname() or "localhost"
    check_argument("helo", helo)
    third_party_domain = normalise_domain(third_party_domain)
    target = normalise_domain(target_domain) if target_domain else None
    try:
        session, greeting, tls = await _open_session(host, port, helo, starttls, implicit_tls, timeout)
    except AuditError as exc:
        return RelayAudit(host, port, third_party_domain=third_party_domain, error=str(exc))
    notes: list[str] = []
    if target is None:
        target = _greeting_domain(greeting) or _domain_or_none(_sni(host) or "") or "localhost"
        notes.append(f"target domain {target} guessed from the greeting; set --target-domain")
    probes = build_probes(target, third_party_domain, _peer_ip(session))
    results: list[ProbeResult] = []
    current: _Session | None = session
    try:
        async with asyncio.timeout(deadline):
            for probe in probes:
                result = None
                for _attempt in range(2):
                    try:
                        if current is None:
                            current, _, _ = await _open_session(
                                host, port, helo, starttls, implicit_tls, timeout
                            )
                        result = await _run_probe(current, probe)
                        break
                    except (_ServerClosing, OSError, TimeoutError, AuditError) as exc:
                        if current is not None:
                            await current.close()
                            current = None
                        reason = str(exc) or type(exc).__name__
                        if isinstance(exc, TimeoutError):
                            reason = f"no reply within {timeout:g}s"
                        result = ProbeResult(probe, error=reason)
                results.append(result or ProbeResult(probe, error="not run"))
    except TimeoutError:
        notes.append(f"audit stopped after {deadline:g}s")
        done = {id(r.probe) for r in results}
        results += [ProbeResult(p, error=NOT_RUN) for p in probes if id(p) not in done]
    finally:
        if current is not None:
            await current.close()
    notes += _control_notes(results[0] if results else None, target, tls)
    return RelayAudit(
        host, port, target, third_party_domain, greeting, tls, tuple(results), notes=tuple(notes)
    )


def _control_notes(control: ProbeResult | None, target: str, tls: str) -> list[str]:
    if control is None or control.verdict == CONTROL_OK:
        return []
    if control.mail is not None and control.mail.code == 530:
        # RFC 4954 §6 (AUTH) and RFC 3207 §4 (STARTTLS) both answer 530: a gate before
        # MAIL, as a submission port must have.
        hint = "" if tls else "; try --starttls to test behind TLS"
        return [
            f"the server wants authentication or TLS before MAIL ({control.mail}): "
            f"unauthenticated clients cannot relay through it{hint}"
        ]
    return [
        f"the server did not accept postmaster@{target}: refusals below may only "
        "mean that this client is refused, not that relaying is closed"
    ]


def check_argument(name: str, value: str) -> None:
    """Command-line text goes into SMTP commands: no spaces, controls or line breaks."""
    if not value or not value.isprintable() or any(c.isspace() for c in value) or len(value) > 255:
        raise ValueError(f"--{name} must be one printable word, got {value!r}")


# --- the report and the command -------------------------------------------------------

def _printable(text: str) -> str:
    # A server's reply goes to the operator's terminal: no escape sequences.
    return "".join(c if c.isprintable() else "?" for c in text)


def _cell(reply: SMTPReply | None, width: int = 32) -> str:
    text = _printable(str(reply)) if reply is not None else "-"
    return text if len(text) <= width else text[: width - 1] + "…"


def format_report(audit: RelayAudit) -> str:
    head = [f"relay audit of {audit.host}:{audit.port}"]
    if audit.error:
        return "\n".join([*head, f"could not run: {_printable(audit.error)}"]) + "\n"
    head.append(f"greeting: {_cell(audit.greeting, 100)}")
    if audit.tls:
        head.append(f"TLS: {audit.tls}")
    head.append(f"target domain: {audit.target_domain}   third party: {audit.third_party_domain}")
    rows = [("test", "MAIL FROM", "RCPT TO", "MAIL reply", "RCPT reply", "verdict")]
    for r in audit.results:
        sender = r.sender if r.sender is not None else r.probe.senders[-1]
        rcpt = _cell(r.rcpt) if not r.error else _printable(r.error[:32])
        rows.append(
            (r.probe.name, f"<{sender}>", f"<{r.probe.recipient}>", _cell(r.mail), rcpt, r.verdict)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    opened = audit.open_results
    summary = (
        f"OPEN RELAY: {len(opened)} of {len(audit.results) - 1} tricks got a third-party "
        "recipient accepted"
        if opened
        else "no third-party recipient was accepted: not an open relay by these tests"
    )
    notes = [_printable(n) for n in audit.notes]
    return "\n".join([*head, "", *lines, "", *notes, summary]) + "\n"


def exit_code(audit: RelayAudit) -> int:
    """0: nothing open; 1: open relay; 2: the audit could not run."""
    if audit.is_open:
        return 1
    return 2 if audit.error else 0


def parse_host_port(value: str, default_port: int = 25) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port``."""
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest.removeprefix(":") if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ValueError(f"bad address {value!r}")
    elif value.count(":") == 1:
        host, port = value.split(":")
    else:
        host, port = value, ""
    if not host:
        raise ValueError(f"no host in {value!r}")
    if not port:
        return host, default_port
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"bad port in {value!r}")
    return host, int(port)


def add_audit_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``audit relay`` to the CLI; the parsed args carry ``func(args) -> exit code``."""
    audit = subparsers.add_parser("audit", help="audit a mail server")
    kinds = audit.add_subparsers(dest="audit_kind", required=True)
    relay = kinds.add_parser(
        "relay",
        help="test a server for open relaying (never sends a message)",
        description="Try the classic open-relay tricks against HOST[:PORT]. Only that address "
        "is contacted; every transaction is reset after RCPT, no DATA is ever sent. "
        "Exit status: 0 nothing open, 1 open relay, 2 could not run.",
    )
    relay.add_argument("server", metavar="HOST[:PORT]", help="the server to test (port 25 by default)")
    relay.add_argument("--helo", help="the name to send in EHLO (default: this machine's name)")
    relay.add_argument(
        "--target-domain",
        help="a domain the server accepts mail for, to build the local-looking forms "
        "(default: the name in the server's greeting)",
    )
    relay.add_argument(
        "--third-party-domain", default=DEFAULT_THIRD_PARTY,
        help=f"the stranger's domain (default: {DEFAULT_THIRD_PARTY}, reserved by RFC 2606)",
    )
    tls = relay.add_mutually_exclusive_group()
    tls.add_argument("--starttls", action="store_true", help="STARTTLS before the tests (port 587)")
    tls.add_argument("--tls", action="store_true", help="TLS from the first byte (port 465)")
    relay.add_argument("--timeout", type=float, default=15.0, help="seconds per reply (default 15)")
    relay.set_defaults(func=run_relay_command)
    return relay


def run_relay_command(args: argparse.Namespace) -> int:
    try:
        host, port = parse_host_port(args.server)
        if args.helo:
            check_argument("helo", args.helo)
        audit = asyncio.run(
            audit_relay(
                host, port,
                helo=args.helo,
                target_domain=args.target_domain,
                third_party_domain=args.third_party_domain,
                starttls=args.starttls,
                implicit_tls=args.tls,
                reply_timeout=args.timeout,
            )
        )
    except ValueError as exc:
        print(f"audit relay: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(format_report(audit))
    return exit_code(audit)
