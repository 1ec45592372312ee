"""``portcullis audit relay HOST[:PORT]``: the open-relay test every server owner should run.

In the spirit of the 1990s "Operation Secure Your Server" checks: try the classic
tricks spammers used to get a server to pass mail from a stranger to a stranger
(third-party to third-party, the percent hack, bang paths, source routes, quoted
local parts, IP literals, local-looking and empty senders, ...) and report which
recipient the server accepted.

What it never does here: complete a DATA (every transaction ends with RSET after the
RCPT reply, so nothing is ever sent), or contact anything but the one address
given.  Every read and write has a deadline, and so has the whole audit.  The
optional proof (:mod:`gateway.audit.relay_proof`) sends one tagged message per open
trick, addressed to the auditor's own listener, and only then says "proven".

The probe battery (:func:`build_probes`) and the judgement (:func:`judge`) are pure;
the SMTP conversation is raw asyncio streams, so exactly what is sent is known.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass, field

from gateway.audit.listener import Arrival
from gateway.audit.smtp_client import (
    AuditError,
    ServerClosing,
    Session,
    SMTPReply,
    open_session,
    sni,
)
from gateway.values.domains import normalise_domain

# RFC 2606 §3: a domain reserved for examples, which no one can own.
DEFAULT_THIRD_PARTY = "third-party.example"
# RFC 5737 TEST-NET-1: an address that is nobody's mail server.
THIRD_PARTY_IP = "192.0.2.1"
LOCAL_PART = "relaytest"

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

    def evidence(self) -> tuple[str, ...]:
        """The exchange as a transcript, for the report."""
        lines: list[str] = []
        if self.sender is not None or self.mail is not None:
            sender = self.sender if self.sender is not None else self.probe.senders[-1]
            lines += [f"C: MAIL FROM:<{sender}>", f"S: {self.mail}" if self.mail else "S: -"]
        if self.rcpt is not None:
            lines += [f"C: RCPT TO:<{self.probe.recipient}>", f"S: {self.rcpt}", "C: RSET"]
        if self.error:
            lines.append(f"(error: {self.error})")
        return tuple(lines)


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


# --- the proof (sent by relay_proof.prove_relay) ------------------------------------

PROVEN = "PROVEN OPEN"
NOT_ARRIVED = "accepted, never arrived"
REFUSED_AT_DATA = "refused at DATA"
FAILED = "could not send"


@dataclass(frozen=True, slots=True)
class RelayProof:
    probe: Probe
    sender: str
    token: str
    data_reply: SMTPReply | None = None  # the reply to the end of the message
    arrival: Arrival | None = None
    error: str = ""

    @property
    def verdict(self) -> str:
        return judge_proof(self.data_reply, self.arrival, self.error)

    @property
    def detail(self) -> str:
        return self.error or (str(self.data_reply) if self.data_reply else "")


def judge_proof(data_reply: SMTPReply | None, arrival: Arrival | None, error: str = "") -> str:
    """Proven only by an arrival; a 250 at the end of DATA is a promise, not a delivery."""
    if arrival is not None:
        return PROVEN
    if error:
        return FAILED
    if data_reply is not None and 200 <= data_reply.code < 300:
        return NOT_ARRIVED
    return REFUSED_AT_DATA


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
    proofs: tuple[RelayProof, ...] = ()  # filled by relay_proof.prove_relay, when asked

    @property
    def proven(self) -> list[RelayProof]:
        return [p for p in self.proofs if p.arrival is not None]

    @property
    def open_results(self) -> list[ProbeResult]:
        return [r for r in self.results if r.is_open]

    @property
    def is_open(self) -> bool:
        return bool(self.open_results)


async def _run_probe(session: Session, probe: Probe) -> ProbeResult:
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


def _peer_ip(session: Session) -> str | None:
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
        session, greeting, tls = await open_session(host, port, helo, starttls, implicit_tls, timeout)
    except AuditError as exc:
        return RelayAudit(host, port, third_party_domain=third_party_domain, error=str(exc))
    notes: list[str] = []
    if target is None:
        target = _greeting_domain(greeting) or _domain_or_none(sni(host) or "") or "localhost"
        notes.append(f"target domain {target} guessed from the greeting; set --target-domain")
    probes = build_probes(target, third_party_domain, _peer_ip(session))
    results: list[ProbeResult] = []
    current: Session | None = session
    try:
        async with asyncio.timeout(deadline):
            for probe in probes:
                result = None
                for _attempt in range(2):
                    try:
                        if current is None:
                            current, _, _ = await open_session(
                                host, port, helo, starttls, implicit_tls, timeout
                            )
                        result = await _run_probe(current, probe)
                        break
                    except (ServerClosing, OSError, TimeoutError, AuditError) as exc:
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
    proofs = [
        f"proof, {p.probe.name}: {p.verdict}"
        + (f" (arrived from {p.arrival.peer})" if p.arrival else f" ({_printable(p.detail)})")
        for p in audit.proofs
    ]
    if audit.proofs:
        proven = audit.proven
        summary += (f"; PROVEN: {len(proven)} tagged message(s) arrived at the audit listener"
                    if proven else "; no tagged message arrived at the audit listener")
    return "\n".join([*head, "", *lines, "", *notes, *proofs, summary]) + "\n"


def exit_code(audit: RelayAudit) -> int:
    """0: nothing open; 1: open relay; 2: the audit could not run."""
    if audit.is_open:
        return 1
    return 2 if audit.error else 0
