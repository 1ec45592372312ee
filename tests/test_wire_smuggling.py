"""SMTP smuggling: no end-of-data variant lets a client slip a second message
past us to the downstream.  Each variant goes over a raw socket through the
real gateway to a real recording downstream."""

import socket

import pytest


def converse(port, payload: bytes) -> bytes:
    """Send everything pipelined, read until the server closes after QUIT.
    (No half-close: aiosmtpd abandons buffered commands on EOF.)"""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(payload)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


SMUGGLED = (b"MAIL FROM:<spoof@acme.example>\r\nRCPT TO:<victim@acme.example>\r\n"
            b"DATA\r\nFrom: ceo@acme.example\r\n\r\nsmuggled\r\n")

VARIANTS = {
    "LF.LF": b"\n.\n",
    "CR.CR": b"\r.\r",
    "LF.CRLF": b"\n.\r\n",
    "CRLF.LF": b"\r\n.\n",
    "CR.CRLF": b"\r.\r\n",
    "CRLF.CR": b"\r\n.\r",
    "bare LF in a line": b"\n",
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_smuggling_variant_never_reaches_downstream_as_a_second_message(gateway, downstream, name):
    end = VARIANTS[name]
    payload = (b"EHLO attacker.example\r\nMAIL FROM:<a@other.example>\r\n"
               b"RCPT TO:<bob@acme.example>\r\nDATA\r\n"
               b"From: a@other.example\r\n\r\nfirst" + end + SMUGGLED + b".\r\nQUIT\r\n")
    transcript = converse(gateway.ports["inbound"], payload)
    assert b"550 5.5.2" in transcript, transcript
    # The downstream saw one transaction started (our RCPT relay) and no message at all.
    assert downstream.messages == []
    assert downstream.handler.mail_commands <= 1


def test_a_clean_message_with_dots_is_delivered_byte_for_byte(gateway, downstream):
    body = b"From: a@other.example\r\nSubject: dots\r\n\r\n.leading dot\r\n..two\r\nend\r\n"
    stuffed = body.replace(b"\r\n.", b"\r\n..")
    payload = (b"EHLO client.example\r\nMAIL FROM:<a@other.example>\r\n"
               b"RCPT TO:<bob@acme.example>\r\nDATA\r\n" + stuffed + b".\r\nQUIT\r\n")
    transcript = converse(gateway.ports["inbound"], payload)
    assert b"250 2.0.0 queued as TEST" in transcript
    received = downstream.messages[0].content
    assert received.startswith(b"Received: from client.example ([127.0.0.1])")
    assert received.endswith(body)


def test_pipelined_commands_after_data_are_not_part_of_the_message(gateway, downstream):
    payload = (b"EHLO client.example\r\nMAIL FROM:<a@other.example>\r\n"
               b"RCPT TO:<bob@acme.example>\r\nDATA\r\n"
               b"From: a@other.example\r\n\r\none\r\n.\r\n"
               b"MAIL FROM:<b@other.example>\r\nRCPT TO:<bob@acme.example>\r\nDATA\r\n"
               b"From: b@other.example\r\n\r\ntwo\r\n.\r\nQUIT\r\n")
    converse(gateway.ports["inbound"], payload)
    assert [m.mail_from for m in downstream.messages] == ["a@other.example", "b@other.example"]
    assert downstream.messages[0].content.endswith(b"\r\n\r\none\r\n")
