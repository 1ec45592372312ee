"""The DATA reader reads chunks, not lines: wherever the client's writes split the
message, the end of data is found exactly where RFC 5321 §4.1.1.4 puts it, and
the message reaches the downstream byte for byte."""

import socket
import time

import pytest

from gateway import replies
from gateway.smtp.protocol import DATA_CHUNK, _checked_content

HEAD = (b"EHLO client.example\r\nMAIL FROM:<a@other.example>\r\n"
        b"RCPT TO:<bob@acme.example>\r\nDATA\r\n")


def stuff(body: bytes) -> bytes:
    return (b"." + body if body.startswith(b".") else body).replace(b"\r\n.", b"\r\n..")


def send_in_pieces(port: int, pieces: list[bytes], pause: float = 0.0) -> bytes:
    """Each piece its own write (TCP_NODELAY), then read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for piece in pieces:
            s.sendall(piece)
            if pause:
                time.sleep(pause)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


BODIES = {
    "sentences ending in a dot": b"From: a@other.example\r\n\r\nHello.\r\nRegards.\r\nA.\r\n",
    "dot lines and stuffing": b"From: a@other.example\r\n\r\n.\r\n..\r\n.x.\r\n. \r\n",
    "no body": b"From: a@other.example\r\n\r\n",
    "larger than one chunk": b"From: a@other.example\r\n\r\n"
                             + b"line ending with a dot.\r\n" * (3 * DATA_CHUNK // 24),
}


# 7-byte writes of the 200 KB body would take long and prove nothing more.
CASES = [(name, split) for name in BODIES
         for split in ("one write", "byte-sized end", "7-byte pieces")
         if (name, split) != ("larger than one chunk", "7-byte pieces")]


@pytest.mark.parametrize(("name", "split"), CASES)
def test_message_arrives_byte_for_byte_however_the_writes_split_it(gateway, downstream, name, split):
    body = BODIES[name]
    wire = HEAD + stuff(body) + b".\r\nQUIT\r\n"
    if split == "one write":
        pieces = [wire]
    elif split == "byte-sized end":
        # The end of data and the lines before it one byte at a time.
        cut = len(HEAD) + len(stuff(body)) - 12
        pieces = [wire[:cut]] + [bytes([b]) for b in wire[cut:]]
    else:
        pieces = [wire[i:i + 7] for i in range(0, len(wire), 7)]
    transcript = send_in_pieces(gateway.ports["inbound"], pieces)
    assert b"250 2.0.0 queued as TEST" in transcript, transcript[-300:]
    assert transcript.rstrip().endswith(b"221 2.0.0 Bye")
    assert len(downstream.messages) == 1
    assert downstream.messages[0].content.endswith(body)
    assert downstream.messages[0].content.count(b"\r\nReceived: ") == 0  # one stamp, at the top


def test_empty_message_is_handed_on_as_empty(gateway, downstream):
    transcript = send_in_pieces(gateway.ports["inbound"], [HEAD, b".\r\n", b"QUIT\r\n"])
    assert b"250 2.0.0 queued as TEST" in transcript
    # Only the fields we stamp: no empty line, no body, nothing of the client's.
    content = downstream.messages[0].content
    assert content.startswith(b"Received: ") and content.endswith(b"\r\n")
    assert b"\r\n\r\n" not in content and b"From:" not in content


def test_a_dot_line_split_from_its_crlf_across_writes_still_ends_the_data(gateway, downstream):
    pieces = [HEAD + b"From: a@other.example\r\n\r\nbody\r", b"\n", b".", b"\r", b"\nQUIT\r\n"]
    transcript = send_in_pieces(gateway.ports["inbound"], pieces, pause=0.05)
    assert b"250 2.0.0 queued as TEST" in transcript
    assert downstream.messages[0].content.endswith(b"\r\n\r\nbody\r\n")


def test_line_of_exactly_the_limit_passes_and_one_more_octet_is_refused(gateway, downstream):
    # limits.max_line_length: 1000 octets with the CRLF (RFC 5321 §4.5.3.1.6).
    ok = b"From: a@other.example\r\n\r\n" + b"y" * 998 + b"\r\n"
    too_long = b"From: a@other.example\r\n\r\n" + b"y" * 999 + b"\r\n"
    transcript = send_in_pieces(gateway.ports["inbound"], [
        HEAD + ok + b".\r\n" + b"MAIL FROM:<a@other.example>\r\nRCPT TO:<bob@acme.example>\r\n"
        b"DATA\r\n" + too_long + b".\r\nQUIT\r\n"])
    assert b"250 2.0.0 queued as TEST" in transcript
    assert b"500 5.5.6" in transcript
    assert len(downstream.messages) == 1
    assert downstream.messages[0].content.endswith(ok)


@pytest.mark.parametrize(("raw", "expected"), [
    (b"", (None, b"")),
    (b"a\r\n", (None, b"a\r\n")),
    (b"..\r\n", (None, b".\r\n")),
    (b"a\r\n..b\r\n...\r\n", (None, b"a\r\n.b\r\n..\r\n")),
    (b"a.\r\nb. \r\n", (None, b"a.\r\nb. \r\n")),
    (b"a\nb\r\n", (replies.BARE_NEWLINE, b"")),
    (b"a\rb\r\n", (replies.BARE_NEWLINE, b"")),
    (b"a\r\r\n", (replies.BARE_NEWLINE, b"")),
    (b"x" * 18 + b"\r\n", (None, b"x" * 18 + b"\r\n")),
    (b"x" * 19 + b"\r\n", (replies.LINE_TOO_LONG, b"")),
    # The limit is on the line as it is, after the transparency dot is taken off.
    (b"." + b"x" * 18 + b"\r\n", (None, b"x" * 18 + b"\r\n")),
])
def test_checked_content_table(raw, expected):
    assert _checked_content(raw, max_line_length=20) == expected
