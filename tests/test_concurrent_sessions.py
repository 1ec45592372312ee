"""Many sessions of several accounts at once, every reply accounted for (issue 14).

A real `portcullis serve --workers 2` with its quotas in a SQLite store; 50
authenticated submission sessions over STARTTLS (five accounts, ten sessions each,
all logged in before any sends, so their transactions overlap) and ten inbound MX
sessions.  Each reply is checked against what the rules and the store imply:

* an account over a limit gets exactly its limit through, every other attempt a
  `451 4.7.1` naming that limit, whatever the interleaving across sessions and
  worker processes; an account at or under its limits gets everything through;
* every session gets its final reply and a clean `221` to QUIT (none dropped);
* the downstream received exactly the accepted messages and recipients, once each;
* afterwards the store's counts equal what was accepted and no session slot is left.

This storm found defect 8 (simultaneous successful logins answered `451 4.3.0` by
sqlite3.InterfaceError in the SQLite store, about one run in five): no login is
retried here, so it would fail this test; tests/test_store_sqlite_threads.py
reproduces it against the store alone, every time.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiosmtplib
import yaml

from gateway.dkim.keystore import generate_selector
from tests.conftest import PASSWORD
from tests.support.ports import free_port

SESSION_DEADLINE = 60  # seconds for the whole storm: a stalled session fails the test


@dataclass(frozen=True)
class Sender:
    login: str
    sessions: int
    messages: int        # per session
    recipients: int      # per message
    limit: str | None    # the limit that binds, as `accounts status` names it
    allowed: int         # units (messages, or recipients for a recipient limit) it lets through

    @property
    def attempts(self) -> int:
        return self.sessions * self.messages * (self.recipients if self.counts_recipients else 1)

    @property
    def counts_recipients(self) -> bool:
        return bool(self.limit and "recipients" in self.limit)


SENDERS = [
    # Over its own hourly message limit: 30 tries, exactly 12 through.
    Sender("alice@acme.example", 10, 3, 1, "messages_per_hour", 12),
    # Exactly at its limit: all 30 through (an off-by-one refuses the last).
    Sender("bob@acme.example", 10, 3, 1, None, 30),
    # Far below the defaults.
    Sender("carol@globex.example", 10, 3, 1, None, 30),
    # Over a recipient limit with two recipients a message: exactly 25 recipients.
    Sender("dave@globex.example", 10, 2, 2, "recipients_per_hour", 25),
    # Over its customer's aggregate (over all the customer's accounts together).
    Sender("erin@initech.example", 10, 2, 1, "customer messages_per_hour", 9),
]
INBOUND_SESSIONS = 10
INBOUND_MESSAGES = 2

LIMIT_SENTENCES = {
    "messages_per_hour": b"4.7.1 Sending limit reached: at most 12 messages per hour for this account",
    "recipients_per_hour": b"4.7.1 Sending limit reached: at most 25 recipients per hour for this account",
    "customer messages_per_hour": (b"4.7.1 Sending limit reached: at most 9 messages per hour "
                                   b"for all of initech's accounts together"),
}


def policies(password_hash: str) -> dict[str, dict]:
    def account(login: str, **quotas: int) -> dict:
        return {"login": login, "password": password_hash, **({"quotas": quotas} if quotas else {})}

    return {
        "acme": {"customer": "acme", "domains": ["acme.example"],
                 "accounts": [account("alice@acme.example", messages_per_hour=12),
                              account("bob@acme.example", messages_per_hour=30)]},
        "globex": {"customer": "globex", "domains": ["globex.example"],
                   "accounts": [account("carol@globex.example"),
                                account("dave@globex.example", recipients_per_hour=25)]},
        "initech": {"customer": "initech", "domains": ["initech.example"],
                    "quotas": {"customer": {"messages_per_hour": 9}},
                    "accounts": [account("erin@initech.example")]},
    }


def write_config(tmp_path: Path, downstream_url: str, cert_files, password_hash: str):
    ports = {"inbound": free_port(), "submission": free_port()}
    (tmp_path / "policy").mkdir()
    for name, policy in policies(password_hash).items():
        (tmp_path / "policy" / f"{name}.yaml").write_text(yaml.safe_dump(policy))
        for domain in policy["domains"]:
            generate_selector(tmp_path / "keys", domain, "test", "ed25519-sha256")
    tls = {"cert": str(cert_files[0]), "key": str(cert_files[1])}
    cfg = {
        "hostname": "mx.gateway.test",
        "listeners": {"inbound": {"port": ports["inbound"]},
                      "submission": {"port": ports["submission"], "tls": tls}},
        "downstream": {"inbound": downstream_url, "outbound": downstream_url},
        "policy_dir": "policy", "dkim": {"keys_dir": "keys", "check_published": False},
        "inbound_checks": False,
        "store": {"backend": "sqlite", "path": str(tmp_path / "state.db")},
        # Ten sessions of one account at once are exactly its connection limit: all admitted.
        "quotas": {"concurrent_connections": 10},
        "lockout": {"failure_delay": 0},
        "limits": {"command_timeout": 30, "data_timeout": 30, "shutdown_grace": 5},
    }
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path / "gateway.yaml", ports


@dataclass
class Session:
    """Every reply one session got, in order, and how it ended."""

    name: str
    replies: list[tuple[str, int, bytes]] = field(default_factory=list)
    accepted: list[tuple[str, list[str]]] = field(default_factory=list)  # (token, recipients)
    refused: list[tuple[int, bytes]] = field(default_factory=list)
    quit: int | None = None
    error: str | None = None


def reply_of(response) -> tuple[int, bytes]:
    return response.code, response.message.encode()


async def command(smtp: aiosmtplib.SMTP, session: Session, *args: bytes) -> tuple[int, bytes]:
    code, text = reply_of(await smtp.execute_command(*args))
    session.replies.append((args[0].decode(), code, text))
    return code, text


async def transaction(smtp, session: Session, sender: str, recipients: list[str],
                      token: str, body_from: str) -> None:
    code, text = await command(smtp, session, b"MAIL", f"FROM:<{sender}>".encode())
    assert code == 250, (code, text)
    taken = []
    for rcpt in recipients:
        code, text = await command(smtp, session, b"RCPT", f"TO:<{rcpt}>".encode())
        if code == 250:
            taken.append(rcpt)
        else:
            session.refused.append((code, text))
    if not taken:
        assert (await command(smtp, session, b"RSET"))[0] == 250
        return
    message = (f"From: {body_from}\r\nTo: {recipients[0]}\r\nSubject: {token}\r\n"
               f"X-Test-Token: {token}\r\n\r\nmessage {token}\r\n").encode()
    try:  # DATA, 354, the message, its reply
        code, text = reply_of(await smtp.data(message))
    except aiosmtplib.SMTPDataError as exc:
        code, text = exc.code, exc.message.encode()
    session.replies.append(("end of DATA", code, text))
    assert code == 250, (code, text)
    session.accepted.append((token, taken))


class Gate:
    """Every session waits here until all are logged in: then all send at once."""

    def __init__(self, parties: int):
        self.parties = parties
        self.arrived = 0
        self.open = asyncio.Event()

    async def pass_(self) -> None:
        self.arrived += 1
        if self.arrived == self.parties:
            self.open.set()
        await asyncio.wait_for(self.open.wait(), SESSION_DEADLINE)


async def submission_session(port: int, tls, sender: Sender, index: int, gate: Gate,
                             session: Session) -> None:
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=SESSION_DEADLINE,
                           start_tls=True, tls_context=tls)
    arrived = False
    try:
        await smtp.connect()  # 220, EHLO, STARTTLS
        await smtp.ehlo()  # RFC 3207 §4.2: again, over TLS
        blob = base64.b64encode(f"\0{sender.login}\0{PASSWORD}".encode())
        code, text = await command(smtp, session, b"AUTH", b"PLAIN", blob)
        assert code == 235, (code, text)
        arrived = True
        await gate.pass_()
        for m in range(sender.messages):
            token = f"{session.name}/m{m}"
            await transaction(smtp, session, sender.login,
                              [f"to{index}-{m}-{r}@elsewhere.example" for r in range(sender.recipients)],
                              token, sender.login)
        session.quit = (await command(smtp, session, b"QUIT"))[0]
    except Exception as exc:  # kept for the report: one failed session must not hide the rest
        session.error = f"{type(exc).__name__}: {exc}"
    finally:
        if not arrived:
            await gate.pass_()
        smtp.close()


async def inbound_session(port: int, index: int, gate: Gate, session: Session) -> None:
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=SESSION_DEADLINE, start_tls=False)
    arrived = False
    try:
        await smtp.connect()
        await smtp.ehlo()
        arrived = True
        await gate.pass_()
        for m in range(INBOUND_MESSAGES):
            token = f"{session.name}/m{m}"
            await transaction(smtp, session, f"news{index}@other.example",
                              ["bob@acme.example", "carol@globex.example"], token,
                              f"news{index}@other.example")
        # And one relay attempt: refused as relaying, nothing else.
        await transaction(smtp, session, f"news{index}@other.example", ["x@elsewhere.example"],
                          f"{session.name}/relay", f"news{index}@other.example")
        session.quit = (await command(smtp, session, b"QUIT"))[0]
    except Exception as exc:
        session.error = f"{type(exc).__name__}: {exc}"
    finally:
        if not arrived:
            await gate.pass_()
        smtp.close()


async def storm(ports: dict[str, int], tls) -> tuple[dict[str, list[Session]], list[Session]]:
    gate = Gate(sum(s.sessions for s in SENDERS) + INBOUND_SESSIONS)
    submitted = {s.login: [Session(f"{s.login}/s{i}") for i in range(s.sessions)] for s in SENDERS}
    inbound = [Session(f"inbound/s{i}") for i in range(INBOUND_SESSIONS)]
    tasks = [submission_session(ports["submission"], tls, s, i, gate, submitted[s.login][i])
             for s in SENDERS for i in range(s.sessions)]
    tasks += [inbound_session(ports["inbound"], i, gate, inbound[i]) for i in range(INBOUND_SESSIONS)]
    await asyncio.wait_for(asyncio.gather(*tasks), SESSION_DEADLINE + 10)
    return submitted, inbound


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                if sock.recv(3) == b"220":
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("gateway did not start")


def stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.communicate(timeout=10)[1]


def store_usage(config: Path, login: str) -> dict[str, int]:
    """What `portcullis accounts status` reads from the store: used per limit, connections now."""
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "accounts", "-c", str(config),
                          "status", login], capture_output=True, text=True, timeout=30, check=True)
    used = {}
    for line in out.stdout.splitlines():
        match = re.match(r"\s+(\S.*?)\s+(\d+)(?:\s+\S+)?$", line)
        if match:
            used[match.group(1)] = int(match.group(2))
    return used


def test_concurrent_sessions_of_several_accounts_get_exactly_what_their_limits_allow(
        tmp_path, downstream, cert_files, client_tls, password_hash):
    config, ports = write_config(tmp_path, downstream.url, cert_files, password_hash)
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "-c", str(config),
                             "--workers", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        wait_ready(ports["submission"], proc)
        wait_ready(ports["inbound"], proc)
        submitted, inbound = asyncio.run(storm(ports, client_tls))
        usage = {s.login: store_usage(config, s.login) for s in SENDERS}
    finally:
        log = stop(proc)
        (tmp_path / "gateway.log").write_text(log)  # for a failure's post-mortem

    every = [x for sessions in submitted.values() for x in sessions] + inbound
    # No session dropped: each ran to its end and said goodbye cleanly.
    broken = [(x.name, x.error, x.replies[-3:]) for x in every if x.error or x.quit != 221]
    assert not broken, (broken, log[-3000:])
    # Nothing went wrong inside the gateway either.
    assert "Traceback" not in log, log[-3000:]

    expected_tokens: Counter[str] = Counter()
    for sender in SENDERS:
        sessions = submitted[sender.login]
        accepted = [a for x in sessions for a in x.accepted]
        refused = [r for x in sessions for r in x.refused]
        units = (sum(len(rcpts) for _, rcpts in accepted) if sender.counts_recipients
                 else len(accepted))
        through = min(sender.allowed, sender.attempts)
        assert units == through, (sender.login, units, refused[:3])
        # Every refusal is the limit that binds, and only as many as went over it.
        assert len(refused) == sender.attempts - through, (sender.login, refused[:3])
        if sender.limit is not None:
            assert all(code == 451 and text.startswith(LIMIT_SENTENCES[sender.limit])
                       for code, text in refused), (sender.login, set(refused))
        # The store counted exactly what went through, and every session gave its slot back.
        counted = usage[sender.login]
        assert counted[sender.limit or "messages_per_hour"] == through, (sender.login, counted)
        assert counted["connections now"] == 0, (sender.login, counted)
        expected_tokens.update(token for token, _ in accepted)

    for x in inbound:
        # Two local messages through, the relay attempt refused as relaying.
        assert [t for t, _ in x.accepted] == [f"{x.name}/m{m}" for m in range(INBOUND_MESSAGES)]
        assert len(x.refused) == 1 and x.refused[0][0] == 550 and x.refused[0][1].startswith(b"5.7.1")
        expected_tokens.update(t for t, _ in x.accepted)

    # The downstream got each accepted message once, with the recipients accepted for it,
    # and nothing else.
    received: Counter[str] = Counter()
    recipients_of: dict[str, list[str]] = {}
    for message in downstream.messages:
        match = re.search(rb"^X-Test-Token: (\S+)\r$", message.content, re.MULTILINE)
        assert match, message.content[:500]
        token = match.group(1).decode()
        received[token] += 1
        recipients_of[token] = message.rcpt_tos
    assert received == expected_tokens
    for x in every:
        for token, rcpts in x.accepted:
            assert recipients_of[token] == rcpts, token
