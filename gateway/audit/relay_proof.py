"""``audit relay --prove``: send a tagged message through each open trick and wait for it.

The RCPT-level battery says a server *accepted* a stranger's recipient; some servers
accept and then drop or bounce.  As the FTC's testers did, the proof sends a real
message, addressed to a domain that routes to the auditor's own listener, with a token
in its subject and body, and calls the relay PROVEN open only when the listener
receives it.  Only tricks the battery found open are tried, at most ``max_proofs``.
"""

from __future__ import annotations

import asyncio
import email.utils
from dataclasses import replace

from gateway.audit.listener import AuditListener
from gateway.audit.relay import Probe, RelayAudit, RelayProof
from gateway.audit.smtp_client import AuditError, ServerClosing, open_session


def build_message(host: str, port: int, sender: str, recipient: str, token: str) -> list[str]:
    """The test message, as lines (RFC 5322), none starting with a dot."""
    return [
        f"From: <{sender or 'mailer-daemon@invalid'}>",
        f"To: <{recipient}>",
        f"Subject: open relay test {token}",
        f"Date: {email.utils.formatdate(usegmt=True)}",
        f"Message-ID: <{token}@portcullis-audit.invalid>",
        "",
        f"This message tests whether the mail server at {host} port {port} passes mail",
        "from strangers to strangers (an open relay). It was sent by an audit of that",
        "server and is addressed to the auditor's own test address.",
        "",
        f"Audit token: {token}",
    ]


async def _send_one(
    audit: RelayAudit, probe: Probe, sender: str, token: str, *, helo: str, starttls: bool,
    implicit_tls: bool, reply_timeout: float,
) -> RelayProof:
    timeout = reply_timeout
    try:
        session, _, _ = await open_session(audit.host, audit.port, helo, starttls, implicit_tls, timeout)
    except AuditError as exc:
        return RelayProof(probe, sender, token, error=str(exc))
    try:
        mail = await session.command(f"MAIL FROM:<{sender}>")
        rcpt = await session.command(f"RCPT TO:<{probe.recipient}>")
        if not (200 <= mail.code < 300 and 200 <= rcpt.code < 300):
            return RelayProof(probe, sender, token, rcpt if 200 <= mail.code < 300 else mail)
        data = await session.command("DATA")
        if data.code != 354:
            return RelayProof(probe, sender, token, data)
        lines = build_message(audit.host, audit.port, sender, probe.recipient, token)
        session.writer.write("".join(f"{line}\r\n" for line in lines).encode())
        return RelayProof(probe, sender, token, await session.command("."))
    except (ServerClosing, AuditError, OSError, TimeoutError) as exc:
        return RelayProof(probe, sender, token, error=str(exc) or type(exc).__name__)
    finally:
        await session.close()


async def prove_relay(
    audit: RelayAudit,
    listener: AuditListener,
    *,
    helo: str,
    starttls: bool = False,
    implicit_tls: bool = False,
    reply_timeout: float = 15.0,
    wait: float = 60.0,
    max_proofs: int = 3,
) -> RelayAudit:
    """Send through each open trick (the battery's third party must route to ``listener``)
    and wait up to ``wait`` seconds for the messages to arrive."""
    proofs = []
    for result in audit.open_results[:max_proofs]:
        proofs.append(await _send_one(
            audit, result.probe, result.sender or "", listener.token(), helo=helo,
            starttls=starttls, implicit_tls=implicit_tls, reply_timeout=reply_timeout,
        ))
    loop = asyncio.get_running_loop()
    until = loop.time() + wait
    done = []
    for proof in proofs:
        # The relay queues the message and delivers when it likes: wait for each in turn,
        # all within one overall wait.
        arrival = None
        if proof.error == "" and proof.data_reply is not None and proof.data_reply.code < 300:
            arrival = await listener.wait_for(proof.token, max(0.0, until - loop.time()))
        done.append(replace(proof, arrival=arrival or listener.arrived(proof.token)))
    return replace(audit, proofs=tuple(done))
