"""RFC 2920 pipelining: a client that sends its whole group at once gets every
reply, in order, even when the replies to MAIL/RCPT/RSET are held back to leave
with the next one; nothing held back is lost when the server hangs up."""

import socket

import pytest

from tests.support.gateway import GatewayUnderTest


def converse(port: int, payload: bytes) -> list[bytes]:
    """Send everything in one write; the reply lines until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        assert s.recv(1024).startswith(b"220 ")
        s.sendall(payload)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return [line for line in out.split(b"\r\n") if line]


def codes(lines: list[bytes]) -> list[bytes]:
    """One entry per reply: the code of its last line (multi-line replies folded)."""
    return [line[:3] for line in lines if line[3:4] == b" "]


def test_a_whole_pipelined_transaction_gets_every_reply_in_order(gateway, downstream):
    lines = converse(gateway.ports["inbound"], (
        b"EHLO mta.other.example\r\nMAIL FROM:<a@other.example>\r\n"
        b"RCPT TO:<bob@acme.example>\r\nRCPT TO:<x@elsewhere.example>\r\n"
        b"RCPT TO:<carol@acme.example>\r\nDATA\r\n"
        b"From: a@other.example\r\n\r\npipelined\r\n.\r\n"
        b"RSET\r\nMAIL FROM:<b@other.example>\r\nRSET\r\nQUIT\r\n"))
    assert codes(lines) == [b"250", b"250", b"250", b"550", b"250", b"354", b"250",
                            b"250", b"250", b"250", b"221"]
    assert b"PIPELINING" in b"".join(lines)
    assert downstream.messages[0].rcpt_tos == ["bob@acme.example", "carol@acme.example"]
    assert downstream.messages[0].content.endswith(b"\r\n\r\npipelined\r\n")


@pytest.fixture
def strict_gateway(tmp_path, downstream, cert_files, password_hash):
    from tests.conftest import customer_policies

    gw = GatewayUnderTest(
        tmp_path, inbound_url=downstream.url, outbound_url=downstream.url,
        policies=customer_policies(password_hash), cert=cert_files,
        extra={"limits": {"max_errors": 3}},
    ).start()
    try:
        yield gw
    finally:
        gw.stop()


def test_replies_held_for_the_group_go_out_before_the_421_and_the_close(strict_gateway):
    lines = converse(strict_gateway.ports["inbound"], (
        b"EHLO mta.other.example\r\nMAIL FROM:<a@other.example>\r\n"
        + b"RCPT TO:<x@elsewhere.example>\r\n" * 5))
    assert codes(lines) == [b"250", b"250", b"550", b"550", b"550", b"421"]
    assert lines[-1].startswith(b"421 4.7.0")
