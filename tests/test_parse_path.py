"""MAIL FROM:/RCPT TO: paths as GatewaySMTP.parse_path reads them (RFC 5321 §4.1.2)."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.smtp.protocol import GatewaySMTP


@pytest.fixture(scope="module")
def conn():
    loop = asyncio.new_event_loop()
    yield GatewaySMTP(object(), listener="inbound", offers_auth=False, implicit_tls=False,
                      max_errors=10, data_timeout=10, max_line_length=998, hostname="mx.test",
                      loop=loop)
    loop.close()


@pytest.mark.parametrize(("arg", "expected"), [
    ("<a@example.com>", ("a@example.com", "")),
    ("<a@example.com> SIZE=100 BODY=8BITMIME", ("a@example.com", "SIZE=100 BODY=8BITMIME")),
    ("<>", ("<>", "")),
    ("<> SIZE=5", ("<>", "SIZE=5")),
    ('<"a>b"@example.com>', ('"a>b"@example.com', "")),  # ">" inside quotes ends nothing
    ('<"a\\"> x"@example.com> SIZE=1', ('"a\\"> x"@example.com', "SIZE=1")),
    ("<@relay.example:a@example.com>", ("a@example.com", "")),  # source route dropped
    ("<a@example.com>SIZE=1", (None, None)),  # parameters need a space
    ("a@example.com", (None, None)),
    ("<a@example.com", (None, None)),
    ('<"a@example.com>', (None, None)),  # unbalanced quote: no end
    ("<a\x01b@example.com>", (None, None)),  # a control character
    ("<not an address>", (None, None)),
])
def test_paths(conn, arg, expected):
    assert conn.parse_path(arg) == expected


def _end_by_scanning(arg: str) -> int:
    """The end of the path, found the slow, quote-aware way (the reference)."""
    quoted = escaped = False
    for i, c in enumerate(arg[1:], start=1):
        if escaped:
            escaped = False
        elif c == "\\" and quoted:
            escaped = True
        elif c == '"':
            quoted = not quoted
        elif c == ">" and not quoted:
            return i
    return -1


@given(body=st.text(alphabet='<>"\\@ab. =', max_size=24))
def test_the_end_of_a_path_is_where_the_quote_aware_scan_finds_it(conn, body):
    # The unquoted fast path and the quote-aware scan must end a path at one place.
    arg = "<" + body
    end = _end_by_scanning(arg)
    address, rest = conn.parse_path(arg)
    if end < 0:
        assert (address, rest) == (None, None)
    elif address is not None:
        assert rest == arg[end + 1:].strip()
