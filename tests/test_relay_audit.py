"""`portcullis audit relay`: the open-relay battery against real SMTP servers on loopback.

The servers are tiny aiosmtpd instances started by the tests: one that takes every
recipient (a deliberate open relay), one that takes only its own domain, strictly,
and one with the classic naive check (the address ends with @domain) that the
percent hack and friends get through.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trustme
from aiosmtpd.smtp import SMTP

from gateway.audit import commands
from gateway.audit import relay as relay_audit
from gateway.audit.relay import (
    CONTROL_OK,
    CONTROL_REFUSED,
    MAIL_REFUSED,
    OPEN,
    REFUSED,
    Probe,
    SMTPReply,
    audit_relay,
    build_probes,
    exit_code,
    judge,
)
from gateway.audit.targets import parse_host_port
from tests.support.ports import free_port

TARGET = "target.example"
THIRD = "third-party.example"


class RecordingHandler:
    """Takes every recipient; records what it was asked, so tests can prove no DATA."""

    def __init__(self) -> None:
        self.recipients: list[str] = []
        self.data_count = 0
        self.rset_count = 0

    def accepts(self, address: str) -> bool:
        return True

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        self.recipients.append(address)
        if not self.accepts(address):
            return "550 5.7.1 Relaying denied"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        self.data_count += 1
        return "250 2.0.0 Queued"

    async def handle_RSET(self, server, session, envelope):
        self.rset_count += 1
        return "250 2.0.0 OK"


class StrictHandler(RecordingHandler):
    """Only plain local@target.example, compared exactly: nothing else is ours."""

    def accepts(self, address: str) -> bool:
        return re.fullmatch(r"[a-z0-9._-]+@target\.example", address) is not None


class NaiveSuffixHandler(RecordingHandler):
    """The classic mistake: 'ends with our domain' means local."""

    def accepts(self, address: str) -> bool:
        return address.lower().endswith("@" + TARGET)


class HangUpHandler(StrictHandler):
    """Says 421 and hangs up after every second refusal, as servers with error limits do."""

    def __init__(self) -> None:
        super().__init__()
        self.refusals = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = await super().handle_RCPT(server, session, envelope, address, rcpt_options)
        if reply.startswith("550"):
            self.refusals += 1
            if self.refusals % 2 == 0:
                server.transport.close()
                return "421 4.7.0 Too many errors"
        return reply


@asynccontextmanager
async def smtp_server(handler, **smtp_kwargs) -> AsyncIterator[tuple[int, list[int]]]:
    """An aiosmtpd server on a free loopback port in this event loop; yields (port, connections)."""
    connections: list[int] = []

    def factory():
        connections.append(1)
        return SMTP(handler, hostname="mx." + TARGET, **smtp_kwargs)

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], connections
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)


def third_party_results(audit):
    return [r for r in audit.results if r.probe.third_party]


# --- against real servers ----------------------------------------------------------

@pytest.mark.asyncio
async def test_open_relay_is_flagged_open_without_ever_sending_data():
    handler = RecordingHandler()
    async with smtp_server(handler) as (port, _):
        audit = await audit_relay("127.0.0.1", port, helo="audit.test", target_domain=TARGET,
                                  reply_timeout=5)
    assert audit.error == ""
    assert audit.is_open and exit_code(audit) == 1
    by_name = {r.probe.name: r for r in audit.results}
    plain = by_name["third-party sender to third party"]
    assert plain.verdict == OPEN and plain.rcpt.code == 250
    assert by_name["null sender to third party"].verdict == OPEN
    assert handler.data_count == 0
    # Every transaction that reached RCPT was reset.
    assert handler.rset_count >= sum(1 for r in audit.results if r.rcpt is not None)
    assert f"relaytest@{THIRD}" in handler.recipients


@pytest.mark.asyncio
async def test_strict_server_is_reported_closed_and_every_trick_was_tried():
    handler = StrictHandler()
    async with smtp_server(handler) as (port, _):
        audit = await audit_relay("127.0.0.1", port, helo="audit.test", target_domain=TARGET,
                                  reply_timeout=5)
    assert not audit.is_open and exit_code(audit) == 0
    assert audit.results[0].verdict == CONTROL_OK
    # A sender trick may already fail at MAIL; every recipient trick reached RCPT.
    verdicts = {r.probe.name: r.verdict for r in third_party_results(audit)}
    assert set(verdicts.values()) <= {REFUSED, MAIL_REFUSED}, verdicts
    recipient_tricks = [r for r in third_party_results(audit) if len(r.probe.senders) > 1]
    assert len(recipient_tricks) > 15
    assert {r.verdict for r in recipient_tricks} == {REFUSED}
    assert handler.data_count == 0
    # The IP-literal forms use the address actually connected to.
    assert any("[127.0.0.1]" in r.probe.recipient for r in audit.results)


@pytest.mark.asyncio
async def test_naive_domain_suffix_check_is_caught_by_percent_hack_and_friends():
    async with smtp_server(NaiveSuffixHandler()) as (port, _):
        audit = await audit_relay("127.0.0.1", port, helo="audit.test", target_domain=TARGET,
                                  reply_timeout=5)
    verdicts = {r.probe.name: r.verdict for r in audit.results}
    assert verdicts["third-party sender to third party"] == REFUSED
    for trick in ("percent hack", "bang path", "quoted local part with @",
                  "quoted local part with %", "percent hack, target upper case"):
        assert verdicts[trick] == OPEN, trick
    assert audit.is_open and exit_code(audit) == 1


@pytest.mark.asyncio
async def test_server_that_hangs_up_on_errors_is_reconnected_and_fully_tested():
    handler = HangUpHandler()
    async with smtp_server(handler) as (port, connections):
        audit = await audit_relay("127.0.0.1", port, helo="audit.test", target_domain=TARGET,
                                  reply_timeout=5)
    assert len(connections) > 5
    assert [r for r in audit.results if r.error] == []
    assert {r.verdict for r in third_party_results(audit)} <= {REFUSED, MAIL_REFUSED}
    assert not audit.is_open


@pytest.fixture(scope="module")
def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("mx." + TARGET).configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    return server_context, client_context


@pytest.mark.asyncio
async def test_starttls_audit_finds_an_open_relay_behind_starttls(tls_contexts):
    server_context, _ = tls_contexts
    handler = RecordingHandler()
    async with smtp_server(handler, tls_context=server_context, require_starttls=True) as (port, _):
        with_tls = await audit_relay("127.0.0.1", port, helo="audit.test", target_domain=TARGET,
                                     starttls=True, reply_timeout=5)
        without = await audit_relay("127.0.0.1", port, helo="audit.test", target_domain=TARGET,
                                    reply_timeout=5)
    assert with_tls.tls.startswith("TLS") and with_tls.is_open
    # Without TLS the server refuses MAIL: nothing tested, nothing open, and the
    # report says the refusals prove little.
    assert not without.is_open and without.tls == ""
    assert {r.verdict for r in third_party_results(without)} == {MAIL_REFUSED}
    assert without.results[0].verdict == CONTROL_REFUSED
    assert any("530" in note and "--starttls" in note for note in without.notes)


@pytest.mark.asyncio
async def test_starttls_requested_but_not_offered_is_an_error():
    async with smtp_server(StrictHandler()) as (port, _):
        audit = await audit_relay("127.0.0.1", port, helo="audit.test", target_domain=TARGET,
                                  starttls=True, reply_timeout=5)
    assert "STARTTLS" in audit.error and exit_code(audit) == 2


@pytest.mark.asyncio
async def test_unreachable_server_gives_exit_code_2():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    audit = await audit_relay("127.0.0.1", port, helo="audit.test", reply_timeout=2)
    assert audit.error and audit.results == ()
    assert exit_code(audit) == 2


@pytest.mark.asyncio
async def test_silent_server_is_given_up_on_after_the_reply_timeout():
    async def never_greet(reader, writer):
        await reader.read()  # hold the connection open, say nothing
        writer.close()

    server = await asyncio.start_server(never_greet, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        audit = await audit_relay("127.0.0.1", port, helo="audit.test", reply_timeout=0.5)
        elapsed = loop.time() - started
    finally:
        server.close()
    assert "0.5s" in audit.error and exit_code(audit) == 2
    assert elapsed < 3


@pytest.mark.asyncio
async def test_the_whole_audit_stops_at_its_deadline():
    async def slow(reader, writer):
        writer.write(b"220 mx.target.example ESMTP\r\n")
        while await reader.readline():
            await asyncio.sleep(0.1)
            writer.write(b"250 ok\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(slow, "127.0.0.1", 0)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        audit = await audit_relay("127.0.0.1", server.sockets[0].getsockname()[1],
                                  helo="audit.test", reply_timeout=5, deadline=1.0)
        elapsed = loop.time() - started
    finally:
        server.close()
    assert elapsed < 3
    assert "audit stopped after 1s" in audit.notes
    verdicts = [r.verdict for r in audit.results]
    assert len(verdicts) == len(build_probes(TARGET, THIRD, "127.0.0.1"))
    assert verdicts[-1] == "not run" and OPEN in verdicts  # it said 250 to what it was asked


@pytest.mark.asyncio
async def test_escape_sequences_from_the_server_never_reach_the_terminal():
    async def hostile(reader, writer):
        writer.write(b"220 mx.target.example \x1b[2J\x1b]0;owned\x07 ESMTP\r\n")
        while line := await reader.readline():
            if line.upper().startswith(b"QUIT"):
                break
            writer.write(b"250 ok \x1b[31mred\x1b[0m\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(hostile, "127.0.0.1", 0)
    try:
        audit = await audit_relay("127.0.0.1", server.sockets[0].getsockname()[1],
                                  helo="audit.test", reply_timeout=5)
    finally:
        server.close()
    assert audit.is_open  # it says 250 to everything
    report = relay_audit.format_report(audit)
    assert "\x1b" not in report and "\x07" not in report
    assert "250 ok ?[31mred?[0m" in report


@pytest.mark.asyncio
async def test_cli_prints_the_table_and_exits_1_for_an_open_relay(capsys):
    parser = argparse.ArgumentParser(prog="portcullis")
    add = parser.add_subparsers(dest="command", required=True)
    commands.add_audit_parser(add)
    async with smtp_server(RecordingHandler()) as (port, _):
        args = parser.parse_args(
            ["audit", "relay", f"127.0.0.1:{port}", "--helo", "audit.test",
             "--target-domain", TARGET, "--timeout", "5"]
        )
        code = await asyncio.to_thread(args.func, args)
    out = capsys.readouterr().out
    assert code == 1
    assert "OPEN RELAY" in out
    header = next(line for line in out.splitlines() if line.startswith("test"))
    assert header.split() == ["test", "MAIL", "FROM", "RCPT", "TO", "MAIL", "reply", "RCPT",
                              "reply", "verdict"]
    assert re.search(
        r"^percent hack\s+<relaytest@target\.example>\s+"
        r"<relaytest%third-party\.example@target\.example>.*OPEN$", out, re.MULTILINE)


def test_cli_refuses_a_helo_that_would_inject_a_command(capsys):
    parser = argparse.ArgumentParser(prog="portcullis")
    commands.add_audit_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["audit", "relay", "127.0.0.1:1", "--helo", "x\r\nDATA"])
    assert args.func(args) == 2
    assert "--helo" in capsys.readouterr().err


# --- the battery and the judgement, as data -----------------------------------------

def test_battery_holds_the_classic_tricks():
    probes = build_probes(TARGET, THIRD, "192.0.2.25")
    recipients = {p.recipient for p in probes}
    senders = {s for p in probes for s in p.senders}
    for expected in (
        f"relaytest@{THIRD}",                 # third party to third party
        f"relaytest%{THIRD}@{TARGET}",        # percent hack
        f"{THIRD}!relaytest@{TARGET}",        # bang path
        f"{THIRD}!relaytest",                 # unqualified bang path
        f"@{TARGET}:relaytest@{THIRD}",       # source route
        f'"relaytest@{THIRD}"@{TARGET}',      # quoted local part with @
        "relaytest@[192.0.2.1]",              # IP literal
        f"relaytest%{THIRD}@[192.0.2.25]",    # percent hack at the server's address
        f"relaytest@{THIRD}.",                # trailing dot
    ):
        assert expected in recipients, expected
    assert {"", f"postmaster@{TARGET}", f"relaytest@{TARGET}", "relaytest"} <= senders
    # Only the control probe names a recipient the server should take.
    assert [p.recipient for p in probes if not p.third_party] == [f"postmaster@{TARGET}"]


def test_ipv6_server_address_becomes_an_ipv6_literal():
    probes = build_probes(TARGET, THIRD, "2001:db8::25")
    assert any(p.recipient == f"relaytest%{THIRD}@[IPv6:2001:db8::25]" for p in probes)


@pytest.mark.parametrize(
    ("third_party", "mail", "rcpt", "verdict"),
    [
        (True, 250, 250, OPEN),
        (True, 250, 251, OPEN),  # 251 "will forward" is acceptance too
        (True, 250, 550, REFUSED),
        (True, 250, 553, REFUSED),
        (True, 250, 450, "deferred"),
        (True, 530, None, MAIL_REFUSED),
        (False, 250, 250, CONTROL_OK),
        (False, 250, 550, CONTROL_REFUSED),
        (False, 530, None, CONTROL_REFUSED),
    ],
)
def test_judge(third_party, mail, rcpt, verdict):
    probe = Probe("p", ("",), "x@y", third_party)
    rcpt_reply = SMTPReply(rcpt, ("",)) if rcpt else None
    assert judge(probe, SMTPReply(mail, ("",)), rcpt_reply) == verdict


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("mx.example.net", ("mx.example.net", 25)),
        ("mx.example.net:2525", ("mx.example.net", 2525)),
        ("192.0.2.1:587", ("192.0.2.1", 587)),
        ("[2001:db8::1]", ("2001:db8::1", 25)),
        ("[2001:db8::1]:465", ("2001:db8::1", 465)),
    ],
)
def test_parse_host_port(value, expected):
    assert parse_host_port(value) == expected


@pytest.mark.parametrize("value", ["mx:0", "mx:70000", "mx:smtp", ":25", "[::1]x"])
def test_parse_host_port_refuses_nonsense(value):
    with pytest.raises(ValueError):
        parse_host_port(value)


# --- against a real MTA's test server (Postfix smtp-sink) ------------------------------

SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"


@asynccontextmanager
async def smtp_sink(*options: str) -> AsyncIterator[int]:
    """Postfix's smtp-sink on a free loopback port: a real, non-Python SMTP server."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        SMTP_SINK, "-u", "nobody", "-h", "mx." + TARGET, *options, f"127.0.0.1:{port}", "10",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                if loop.time() > deadline or proc.returncode is not None:
                    raise RuntimeError("smtp-sink did not start") from None
                await asyncio.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 5)


needs_smtp_sink = pytest.mark.skipif(
    not os.access(SMTP_SINK, os.X_OK) or os.geteuid() != 0,
    reason="needs Postfix's smtp-sink, run as root (it drops to nobody with -u)",
)


@pytest.mark.postfix
@needs_smtp_sink
@pytest.mark.asyncio
async def test_postfix_smtp_sink_taking_everything_is_flagged_open():
    async with smtp_sink() as port:
        audit = await audit_relay("127.0.0.1", port, helo="audit.test", target_domain=TARGET,
                                  reply_timeout=5)
    assert audit.greeting.text.startswith("mx." + TARGET)
    assert audit.is_open and exit_code(audit) == 1
    assert [r for r in audit.results if r.error] == []


@pytest.mark.postfix
@needs_smtp_sink
@pytest.mark.asyncio
async def test_postfix_smtp_sink_refusing_every_rcpt_is_not_open():
    async with smtp_sink("-f", "RCPT") as port:
        audit = await audit_relay("127.0.0.1", port, helo="audit.test", target_domain=TARGET,
                                  reply_timeout=5)
    assert not audit.is_open and exit_code(audit) == 0
    assert {r.verdict for r in third_party_results(audit)} <= {REFUSED, MAIL_REFUSED}
    assert audit.results[0].verdict == CONTROL_REFUSED
    # Refusing even postmaster proves little, and the report says so.
    assert any("postmaster@target.example" in note for note in audit.notes)
