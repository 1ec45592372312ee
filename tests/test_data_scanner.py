"""The DATA scanner, without a socket: the end of data, dot-stuffing and the checks
come out the same wherever the stream is split into chunks (issue 14, defect 7:
an end split across reads after 64 KiB went unseen)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import replies
from gateway.smtp.data_scanner import DataScanner


def scan(stream: bytes, cuts: list[int], max_line_length: int = 20, size_limit: int = 0):
    """(problem, message, octets after the end) with ``stream`` fed in pieces cut at
    ``cuts``; (None, None, None) when the end was never found."""
    scanner = DataScanner(max_line_length, size_limit)
    bounds = [0, *sorted(set(c for c in cuts if 0 < c < len(stream))), len(stream)]
    for begin, stop in zip(bounds, bounds[1:]):  # noqa: B905
        piece = stream[begin:stop]
        end = scanner.feed(piece)
        if end >= 0:
            return scanner.problem, bytes(scanner.message), piece[end:] + stream[stop:]
    return None, None, None


@pytest.mark.parametrize(("raw", "expected"), [
    (b".\r\n", (None, b"")),
    (b"a\r\n.\r\n", (None, b"a\r\n")),
    (b"..\r\n.\r\n", (None, b".\r\n")),
    (b"a\r\n..b\r\n...\r\n.\r\n", (None, b"a\r\n.b\r\n..\r\n")),
    (b"a.\r\nb. \r\n.\r\n", (None, b"a.\r\nb. \r\n")),
    (b"a\nb\r\n.\r\n", (replies.BARE_NEWLINE, b"")),
    (b"a\rb\r\n.\r\n", (replies.BARE_NEWLINE, b"")),
    (b"a\r\r\n.\r\n", (replies.BARE_NEWLINE, b"")),
    # "\n.\r\n" is no end (RFC 5321 §4.1.1.4): the bare LF refuses the message.
    (b"a\n.\r\nb\r\n.\r\n", (replies.BARE_NEWLINE, b"")),
    (b"a\x00b\r\n.\r\n", (replies.NUL_OCTET, b"")),
    (b"x" * 18 + b"\r\n.\r\n", (None, b"x" * 18 + b"\r\n")),
    (b"x" * 19 + b"\r\n.\r\n", (replies.LINE_TOO_LONG, b"")),
    # The limit is on the line as it is, after the transparency dot is taken off.
    (b"." + b"x" * 18 + b"\r\n.\r\n", (None, b"x" * 18 + b"\r\n")),
    # Smuggling outranks NUL, NUL outranks the line length.
    (b"x" * 30 + b"\r\n\x00\r\na\nb\r\n.\r\n", (replies.BARE_NEWLINE, b"")),
    (b"x" * 30 + b"\r\n\x00\r\n.\r\n", (replies.NUL_OCTET, b"")),
])
def test_scanner_table(raw, expected):
    for cuts in ([], list(range(len(raw)))):  # whole, and one octet at a time
        problem, message, rest = scan(raw, cuts)
        assert (problem, message) == expected, cuts
        assert rest == b""


def test_what_follows_the_end_is_left_for_the_next_command():
    stream = b"a\r\n.\r\nQUIT\r\n"
    for cut in range(len(stream)):
        assert scan(stream, [cut]) == (None, b"a\r\n", b"QUIT\r\n")


def test_size_limit_counts_the_data_as_sent_without_its_end():
    assert scan(b"abcd\r\n.\r\n", [], size_limit=6)[:2] == (None, b"abcd\r\n")
    for cut in range(9):
        assert scan(b"abcde\r\n.\r\n", [cut], size_limit=6)[:2] == (replies.MESSAGE_TOO_BIG, b"")


def test_a_stream_without_its_end_is_not_ended():
    assert scan(b"a\r\n.\nb\r\n\r\n.\r", [1, 5]) == (None, None, None)


# Lines built from the octets that matter to the scanner: dots, CR, LF, NUL, text.
_LINE = st.lists(st.sampled_from([b".", b"\r", b"\n", b"\x00", b"x", b" ", b"\r\n", b"..",
                                  b"y" * 7]), max_size=8).map(b"".join)
_BODY = st.lists(_LINE.map(lambda line: line + b"\r\n"), max_size=12).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(body=_BODY, tail=st.sampled_from([b"", b"QUIT\r\n", b"RSET\r\n.\r\n"]),
       cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=12),
       limit=st.sampled_from([0, 40, 200]))
def test_any_split_into_chunks_gives_what_the_whole_stream_gives(body, tail, cuts, limit):
    stream = body + b".\r\n" + tail
    assert scan(stream, cuts, size_limit=limit) == scan(stream, [], size_limit=limit)


@settings(max_examples=200, deadline=None)
@given(body=_BODY)
def test_a_clean_message_comes_out_unstuffed_exactly(body):
    message = body.replace(b"\x00", b"").replace(b"\r\n", b"\x01").replace(b"\r", b"") \
        .replace(b"\n", b"").replace(b"\x01", b"\r\n")
    stuffed = (b"." + message if message.startswith(b".") else message).replace(b"\r\n.", b"\r\n..")
    problem, out, rest = scan(stuffed + b".\r\n", [], max_line_length=1000)
    assert (problem, out, rest) == (None, message, b"")


@settings(max_examples=400, deadline=None)
@given(lengths=st.lists(st.integers(min_value=0, max_value=60), min_size=1, max_size=20),
       max_line=st.integers(min_value=3, max_value=40),
       cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=6))
def test_a_line_too_long_is_found_wherever_it_lies(lengths, max_line, cuts):
    # Lines of every length around the limit, at every offset: the scanner's slice
    # search (data_scanner._may_have_long_line) must never miss one the exact count finds.
    message = b"".join(b"x" * n + b"\r\n" for n in lengths)
    problem, _, _ = scan(message + b".\r\n", cuts, max_line_length=max_line)
    too_long = max(lengths) > max_line - 2
    assert problem == (replies.LINE_TOO_LONG if too_long else None)
