"""Limits enforced while reading, with RFC replies."""

import smtplib
import socket

import pytest

from tests.support.gateway import GatewayUnderTest
from tests.support.reply_ids import without_id


@pytest.fixture
def small_gateway(tmp_path, downstream, cert_files, password_hash):
    from tests.conftest import customer_policies

    gw = GatewayUnderTest(
        tmp_path, inbound_url=downstream.url, outbound_url=downstream.url,
        policies=customer_policies(password_hash), cert=cert_files,
        extra={"limits": {"max_message_size": 4096, "max_recipients": 3, "max_errors": 4,
                          "command_timeout": 2, "data_timeout": 2, "shutdown_grace": 2}},
    ).start()
    try:
        yield gw
    finally:
        gw.stop()


def client(gw):
    c = smtplib.SMTP("127.0.0.1", gw.ports["inbound"], timeout=15)
    c.ehlo("client.example")
    return c


def test_ehlo_advertises_size_pipelining_and_enhanced_codes(small_gateway):
    with client(small_gateway) as c:
        assert c.esmtp_features["size"] == "4096"
        assert c.has_extn("pipelining") and c.has_extn("enhancedstatuscodes")
        assert c.has_extn("8bitmime")
        assert not c.has_extn("smtputf8")


def test_declared_size_over_the_limit_is_refused_at_mail(small_gateway):
    with client(small_gateway) as c:
        code, msg = c.docmd("MAIL", "FROM:<a@other.example> SIZE=5000")
        assert (code, msg[:5]) == (552, b"5.3.4")


def test_message_over_the_limit_is_refused_with_552_534_and_not_forwarded(small_gateway, downstream):
    with client(small_gateway) as c:
        c.mail("a@other.example")
        c.rcpt("bob@acme.example")
        code, msg = c.data(b"From: a@other.example\r\n\r\n" + b"x" * 70 + b"\r\n" * 0 +
                           (b"y" * 70 + b"\r\n") * 80)
        assert (code, msg[:5]) == (552, b"5.3.4")
        # The session goes on.
        assert c.noop()[0] == 250
    assert downstream.messages == []


def test_recipients_past_the_limit_get_452_453(small_gateway, downstream):
    with client(small_gateway) as c:
        c.mail("a@other.example")
        for i in range(3):
            assert c.rcpt(f"user{i}@acme.example")[0] == 250
        code, text = c.rcpt("user3@acme.example")
        assert (code, without_id(text)) == (
            452, b"4.5.3 Too many recipients for one message; send the rest in another")
        assert c.data(b"From: a@other.example\r\n\r\nx\r\n")[0] == 250
    assert len(downstream.messages[0].rcpt_tos) == 3


def test_over_long_line_in_data_gets_500_556_after_the_data(small_gateway, downstream):
    with client(small_gateway) as c:
        c.mail("a@other.example")
        c.rcpt("bob@acme.example")
        code, msg = c.data(b"From: a@other.example\r\n\r\n" + b"z" * 1200 + b"\r\n")
        assert (code, msg[:5]) == (500, b"5.5.6")
    assert downstream.messages == []


def test_over_long_command_line_gets_500_556(small_gateway):
    with client(small_gateway) as c:
        code, msg = c.docmd("NOOP", "x" * 2000)
        assert (code, msg[:5]) == (500, b"5.5.6")


def test_too_many_errors_end_the_session_with_421(small_gateway):
    with socket.create_connection(("127.0.0.1", small_gateway.ports["inbound"]), timeout=10) as s:
        s.sendall(b"EHLO x\r\n" + b"BOGUS\r\n" * 10)
        out = b""
        while chunk := s.recv(4096):
            out += chunk
    assert out.count(b"500 5.5.2") == 4
    assert without_id(out.rstrip()).endswith(b"421 4.7.0 Too many errors, closing connection")


def test_idle_client_is_disconnected_after_the_command_timeout(small_gateway):
    with socket.create_connection(("127.0.0.1", small_gateway.ports["inbound"]), timeout=10) as s:
        assert s.recv(1024).startswith(b"220 ")
        s.settimeout(6)
        # After ~2 s: told why (RFC 5321 §4.5.3.2), then closed.
        said = s.recv(1024)
        assert said.endswith(b"\r\n"), said
        assert without_id(said[:-2]) == b"421 4.4.2 Timeout, closing connection"
        assert s.recv(1024) == b""


def test_stalled_data_is_cut_off_and_nothing_is_delivered(small_gateway, downstream):
    with socket.create_connection(("127.0.0.1", small_gateway.ports["inbound"]), timeout=10) as s:
        s.sendall(b"EHLO x\r\nMAIL FROM:<a@other.example>\r\nRCPT TO:<bob@acme.example>\r\n"
                  b"DATA\r\nFrom: a@other.example\r\n\r\nhalf a message")
        s.settimeout(8)
        out = b""
        while chunk := s.recv(4096):
            out += chunk
    assert b"354 " in out
    assert downstream.messages == []


def test_unknown_and_bad_commands_get_enhanced_codes(gateway):
    with client(gateway) as c:
        assert c.docmd("BOGUS")[1].startswith(b"5.5.2")
        assert c.docmd("RCPT", "TO:<bob@acme.example>")[0:1] == (503,)
        assert c.docmd("MAIL", "FROM:bad")[1].startswith(b"5.")
        code, msg = c.docmd("VRFY", "bob")
        assert code == 252 and msg.startswith(b"2.5.0")  # never confirms a user
        assert c.docmd("VRFY", "<nobody@acme.example>") == (code, msg)
        assert c.docmd("EXPN", "list")[1].startswith(b"5.5.1")


def test_help_names_every_command_with_its_syntax_and_auth_only_where_offered(gateway):
    # Our overrides of aiosmtpd's commands keep their HELP texts.
    with smtplib.SMTP("127.0.0.1", gateway.ports["inbound"], timeout=15) as c:
        c.ehlo("client.example")
        code, text = c.docmd("HELP")
        assert code == 250
        for command in (b"DATA", b"EHLO", b"HELO", b"MAIL", b"NOOP", b"QUIT", b"RCPT", b"RSET"):
            assert command in text.split(), text
        assert b"AUTH" not in text.split()
        assert c.docmd("HELP", "MAIL") == (250, b"2.0.0 Syntax: MAIL FROM: <address> [SP <mail-parameters>]")
