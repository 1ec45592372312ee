"""STARTTLS on 587 (RFC 3207), on asyncio's loop and on uvloop's as `portcullis serve`
runs it: the handshake is the loop's own (gateway/smtp/aiosmtpd_adapter.py,
SMTPAdapter.start_tls), and every behaviour of aiosmtpd's hand-built one is kept.

- What the client pipelined in the clear after STARTTLS is never run once TLS is up
  (RFC 3207 §4.2; STARTTLS command injection, CVE-2011-0411, CVE-2024-34083).
- The session starts afresh after the handshake (EHLO again, no STARTTLS offered,
  AUTH offered), and the connection's line records the TLS version.
- A failed handshake ends the connection on record as ``tls_failed``; a client
  silent in the handshake is dropped by the command timer, and on record too.
- After the handshake, the DATA idle timer and shutdown's 421 are said over TLS.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import socket
import threading
import time

import pytest
import uvloop

from tests.conftest import PASSWORD, customer_policies
from tests.support.gateway import GatewayUnderTest
from tests.support.submission import auth_plain
from tests.test_wire_records import CONN, wait_for
from tests.test_wire_timeouts import read_until_closed

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture(params=sorted(LOOPS))
def gw(request, tmp_path, downstream, cert_files, password_hash, caplog):
    caplog.set_level(logging.INFO, logger="portcullis")
    gateway = GatewayUnderTest(
        tmp_path, inbound_url=downstream.url, outbound_url=downstream.url,
        policies=customer_policies(password_hash), cert=cert_files,
        extra={"limits": {"command_timeout": 2, "data_timeout": 1, "shutdown_grace": 1}},
        loop_factory=LOOPS[request.param]).start()
    try:
        yield gateway
    finally:
        gateway.stop()


def connection_lines(caplog, **fields) -> list[dict]:
    """The connection lines whose fields include ``fields``, once one is there."""
    return wait_for(caplog, CONN, timeout=8.0, **fields)


def plain_session(gw) -> tuple[socket.socket, object]:
    """A socket on 587 past the greeting and EHLO, and a line reader on it."""
    s = socket.create_connection(("127.0.0.1", gw.ports["submission"]), timeout=10)
    f = s.makefile("rb")
    assert f.readline().startswith(b"220 ")
    s.sendall(b"EHLO client.example\r\n")
    while not f.readline().startswith(b"250 "):
        pass
    return s, f


def read_reply(f) -> list[bytes]:
    """One reply, all its lines."""
    lines = [f.readline()]
    while lines[-1][3:4] == b"-":
        lines.append(f.readline())
    return lines


@pytest.mark.parametrize("injected", [
    b"HELP\r\n",
    # More than the reader holds before it pauses the socket (twice its line limit).
    b"HELP\r\n" + b"NOOP\r\n" * 1000,
])
def test_commands_pipelined_in_the_clear_after_starttls_are_never_run(gw, client_tls, injected):
    s, f = plain_session(gw)
    with s:
        s.sendall(b"STARTTLS\r\n" + injected)  # one write: all in the reader at STARTTLS
        assert f.readline().startswith(b"220 ")
        with client_tls.wrap_socket(s, server_hostname="localhost") as t:
            g = t.makefile("rb")
            t.sendall(b"EHLO client.example\r\n")
            ehlo = read_reply(g)
            # The first reply over TLS answers our EHLO, not a HELP (214) or NOOP sent in clear.
            assert ehlo[0].startswith(b"250-"), ehlo
            assert any(b"AUTH" in line for line in ehlo), ehlo
            t.sendall(b"AUTH PLAIN " + _plain("alice@acme.example") + b"\r\n")
            assert g.readline().startswith(b"235 ")
            t.sendall(b"QUIT\r\n")
            assert g.readline().startswith(b"221 ")


def _plain(login: str) -> bytes:
    import base64
    return base64.b64encode(f"\0{login}\0{PASSWORD}".encode())


def test_the_session_starts_afresh_after_the_handshake(gw, client_tls, caplog):
    with smtplib.SMTP("127.0.0.1", gw.ports["submission"], timeout=10) as c:
        c.ehlo("client.example")
        assert c.has_extn("starttls") and not c.has_extn("auth")
        code, _ = c.starttls(context=client_tls)
        assert code == 220
        # RFC 3207 §4.2: the EHLO before TLS is forgotten.
        assert c.docmd("MAIL", "FROM:<alice@acme.example>")[0] == 503
        c.ehlo("client.example")
        assert c.has_extn("auth") and not c.has_extn("starttls")
        assert auth_plain(c, "alice@acme.example")[0] == 235
        assert c.mail("alice@acme.example")[0] == 250
        c.rset()
    [line] = connection_lines(caplog, listener="submission", ended="quit")
    assert line["tls"].startswith("TLSv1.") and line["login"] == "alice@acme.example"


def test_the_tls_transport_is_the_event_loops_own(gw, client_tls):
    """Under uvloop, uvloop's TLS in C, not asyncio's pure-Python sslproto put
    under the connection by hand (as aiosmtpd's smtp_STARTTLS does)."""
    with smtplib.SMTP("127.0.0.1", gw.ports["submission"], timeout=10) as c:
        c.ehlo("client.example")
        c.starttls(context=client_tls)
        c.ehlo("client.example")

        async def transport_modules() -> set[str]:
            return {type(conn.transport).__module__ for state in gw.gateway.listeners.states
                    for conn in state.connections if conn.started_tls}

        expected = "uvloop.loop" if isinstance(gw.loop, uvloop.Loop) else "asyncio.sslproto"
        assert gw.run(transport_modules()) == {expected}


def test_a_failed_handshake_is_on_record_as_tls_failed(gw, caplog):
    s, f = plain_session(gw)
    with s:
        s.sendall(b"STARTTLS\r\n")
        assert f.readline().startswith(b"220")
        s.sendall(b"this is not a TLS handshake\r\n" * 20)
        said = read_until_closed(s)
        # The garbage was no command: no SMTP reply, at most a TLS alert, then the close.
        assert not said[:1].isdigit(), said
    [line] = connection_lines(caplog, listener="submission", ended="tls_failed")
    assert line["tls"] == "none"
    # A client's broken handshake is no fault of ours: one line that says why, no
    # "unexpected error" with a traceback (scanners make many of these).
    [failed] = [r for r in caplog.records if "STARTTLS handshake failed" in r.getMessage()]
    assert failed.levelname == "INFO" and failed.exc_info is None
    assert "SSLError" in failed.getMessage() or "ssl" in failed.getMessage().lower()
    assert not [r for r in caplog.records if "unexpected error" in r.getMessage()]


def test_a_client_silent_in_the_handshake_is_dropped_and_on_record(gw, caplog):
    s, f = plain_session(gw)
    with s:
        s.sendall(b"STARTTLS\r\n")
        assert f.readline().startswith(b"220")
        started = time.monotonic()
        said = read_until_closed(s)  # no ClientHello: the command timer (2 s) ends it
        assert time.monotonic() - started < 8
        # Nothing in the clear inside the handshake, not even the 421.
        assert said == b""
    [line] = connection_lines(caplog, listener="submission", ended="timeout")
    assert line["tls"] == "none"
    assert gw.run(_open_connections(gw)) == 0


async def _open_connections(gw) -> int:
    return gw.gateway.listeners.active_connections


def test_data_idle_timer_after_starttls_says_421_over_tls(gw, client_tls):
    with smtplib.SMTP("127.0.0.1", gw.ports["submission"], timeout=10) as c:
        c.ehlo("client.example")
        c.starttls(context=client_tls)
        c.ehlo("client.example")
        assert auth_plain(c, "alice@acme.example")[0] == 235
        assert c.mail("alice@acme.example")[0] == 250
        assert c.rcpt("someone@elsewhere.example")[0] == 250
        assert c.docmd("DATA")[0] == 354
        c.send(b"Subject: half\r\n")  # then silent past data_timeout (1 s)
        said = read_until_closed(c.sock)
        assert said.startswith(b"421 4.4.2"), said


def test_shutdown_says_421_over_tls_to_a_starttls_session(gw, client_tls):
    c = smtplib.SMTP("127.0.0.1", gw.ports["submission"], timeout=10)
    try:
        c.ehlo("client.example")
        c.starttls(context=client_tls)
        c.ehlo("client.example")
        stopping = threading.Thread(target=gw.stop)
        stopping.start()
        said = read_until_closed(c.sock)
        stopping.join(30)
        assert said.startswith(b"421 4.3.2"), said
    finally:
        c.close()
