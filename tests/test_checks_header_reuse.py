"""The inbound checks take the header fields the handler has already read
(gateway.message.header_fields) instead of reading the header again.  For every
header the handler accepts, what DKIM and DMARC get from those fields must be
exactly what they would have read from the message themselves."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.checks.dkim_canon import body_of, fields_from_header, parse_message
from gateway.checks.dmarc import from_domain, from_domain_in
from gateway.message import MalformedHeader, header_fields

LINES = [
    b"From: a@b.example", b"from : Alice <alice@c.example>", b"FROM:x@d.example (comment)",
    b'From: "Bob, Jr." <bob@e.example>', b"From: a@b.example, c@d.example", b"From:",
    b"To: t@isp.example", b"Subject: hi", b"X-Empty:", b" folded", b"\tfolded <z@f.example>",
    b"DKIM-Signature: v=1; a=rsa-sha256; d=b.example; s=s;", b" h=from:to; bh=AAAA; b=BBBB",
    b"From sender@example Mon Nov 23 10:00:00 2026", b"Dkim-Signature : v=1", b"Key:\tvalue",
    b"8bit: \xe9t\xe9", b"from: <y@g.example>", b"Reply-To: from@h.example",
    b"From : Carol <carol@i.example>",  # WSP before the colon (obsolete): an mbox line to dkimpy
]
ENDS = [b"\r\n\r\nbody line\r\n", b"\r\n\r\n", b"\r\n", b"\r\n\r\n\r\n.x\r\n"]


def accepted(message: bytes):  # type: ignore[no-untyped-def]
    try:
        return header_fields(message)
    except MalformedHeader:
        return None


@settings(max_examples=800, deadline=None)
@given(st.lists(st.sampled_from(LINES), max_size=9), st.sampled_from(ENDS))
def test_dkim_and_dmarc_read_the_handlers_fields_as_they_would_read_the_message(lines, end):
    message = b"\r\n".join(lines) + end
    header = accepted(message)
    if header is None:
        return  # refused before any check runs
    parsed = parse_message(message)
    assert fields_from_header(header) == parsed.fields
    assert body_of(message) == parsed.body
    assert from_domain_in(header) == from_domain(message)


@pytest.mark.parametrize("message", [
    b"\r\nbody\r\n", b"Subject: x\r\n", b"From: a@b.example\r\n\r\n",
    b"From: Name\r\n <a@b.example>\r\n\r\nbody\r\n",
])
def test_edges(message):
    header = header_fields(message)
    parsed = parse_message(message)
    assert (fields_from_header(header), body_of(message)) == (parsed.fields, parsed.body)
    assert from_domain_in(header) == from_domain(message)
