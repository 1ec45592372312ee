"""The DATA reader reads chunks, not lines: wherever the client's writes split the
message, the end of data is found exactly where RFC 5321 §4.1.1.4 puts it, and
the message reaches the downstream byte for byte."""

import socket
import time

import pytest

from gateway.smtp.protocol import DATA_CHUNK

HEAD = (b"EHLO client.example\r\nMAIL FROM:<a@other.example>\r\n"
        b"RCPT TO:<bob@acme.example>\r\nDATA\r\n")


def stuff(body: bytes) -> bytes:
    return (b"." + body if body.startswith(b".") else body).replace(b"\r\n.", b"\r\n..")


def send_in_pieces(port: int, pieces: list[bytes], pause: float = 0.0, timeout: float = 15) -> bytes:
    """Each piece its own write (TCP_NODELAY), then read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
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


def test_end_of_data_split_across_writes_is_seen_at_once_at_any_size(gateway, downstream):
    """Issue 14, defect 7: past 64 KiB without an end, a read that stopped inside
    CRLF . CRLF left the end unseen until data_timeout.  The end is split after each
    of its five octets (two writes, a pause between), with the data around the
    64 KiB chunk boundary and beyond; every reply must come at once."""
    port = gateway.ports["inbound"]
    head = b"From: a@other.example\r\nSubject: split\r\n\r\n"
    # No ".CRLF" anywhere before the end: the old reader then took 64 KiB at a time.
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ!\r\n"  # 66 octets
    sizes = [DATA_CHUNK + d for d in range(-6, 7, 2)] + [2 * DATA_CHUNK + 3, 1_000_001]
    slow = []
    for size in sizes:
        body = line * ((size - len(head)) // len(line))
        body += b"z" * max(0, size - len(head) - len(body) - 2) + b"\r\n"
        message = head + body
        for split in range(1, 6):
            downstream.handler.messages.clear()
            data = HEAD + stuff(message) + b".\r\n"
            cut = len(data) - 5 + split  # inside (or just after) the final CRLF . CRLF
            started = time.monotonic()
            transcript = send_in_pieces(port, [data[:cut], data[cut:] + b"QUIT\r\n"], pause=0.05,
                                        timeout=6)
            took = time.monotonic() - started
            assert b"250 2.0.0 queued as TEST" in transcript, (size, split, transcript[-200:])
            if took > 3:  # data_timeout is 10 s in the test gateway
                slow.append((size, split, round(took, 1)))
            assert len(downstream.messages) == 1
            received = downstream.messages[0].content
            assert received.endswith(message) and received.startswith(b"Received: ")
            assert b"\r\n\r\n" not in received[:-len(message)]  # our stamps, then the message
    assert slow == []


def test_nul_octet_in_the_body_is_refused_at_end_of_data(gateway, downstream):
    """Issue 14, defect 10: RFC 5322 §2.3 allows no NUL; it was forwarded."""
    for message in (b"From: a@other.example\r\n\r\nbefore\x00after\r\n",
                    b"From: a@other.example\r\n\r\n" + b"x" * 100 + b"\r\n" * DATA_CHUNK + b"\x00\r\n"):
        transcript = send_in_pieces(gateway.ports["inbound"],
                                    [HEAD + message + b".\r\nQUIT\r\n"])
        assert b"554 5.6.0 Message refused: it contains NUL octets" in transcript, transcript[-300:]
        assert transcript.rstrip().endswith(b"221 2.0.0 Bye")
    assert downstream.messages == []
