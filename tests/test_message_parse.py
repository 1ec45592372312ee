"""Message.parse, the gateway's one header parser (gateway/message.py), read against
its definition written out line by line (kept here as the oracle): fields, folds,
names, errors, offsets, the body, a message without an empty line."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.message import MalformedHeader, Message

_NAME = re.compile(rb"^[\x21-\x39\x3b-\x7e]+$")  # RFC 5322 §3.6.8 ftext


def line_by_line(message: bytes):
    """(fields as (name, raw, start), body offset), or ("malformed",)."""
    if message.startswith(b"\r\n"):
        return [], 2
    end = message.find(b"\r\n\r\n")
    head, body_offset = (message, len(message)) if end < 0 else (message[: end + 2], end + 4)
    lines = head.split(b"\r\n")
    terminated = lines[-1] == b""
    if terminated:
        lines.pop()
    fields: list[list] = []
    pos = 0
    for i, line in enumerate(lines):
        ending = b"" if i == len(lines) - 1 and not terminated else b"\r\n"
        if line[:1] in (b" ", b"\t"):
            if not fields:
                return ("malformed",)
            fields[-1][1] += line + ending
        else:
            name, colon, _ = line.partition(b":")
            name = name.rstrip(b" \t")  # RFC 5322 §4.5.8: WSP before the colon
            if not colon or not _NAME.match(name):
                return ("malformed",)
            fields.append([name.decode(), line + ending, pos])
        pos += len(line) + len(ending)
    return [tuple(f) for f in fields], body_offset


def parsed(message: bytes):
    try:
        m = Message.parse(message)
    except MalformedHeader:
        return ("malformed",)
    return [(f.name, f.raw, f.start) for f in m.fields], m.body_offset


PIECES = [b"From: a@b.example", b"Subject: hi", b"X-Empty:", b"To : c@d.example", b" folded",
          b"\tfolded", b"no colon here", b"", b"Bad Name: x", b":empty name", b"DKIM-Signature: v=1;",
          b" b=abc", b"From sender@example Mon Nov 23", b"8bit: \xe9t\xe9", b"Key:\tvalue", b" ",
          b"a:b", b"Tab\t: x", b"X-\xe9: 8-bit name", b"From :x@y.example"]


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=10),
       st.sampled_from([b"\r\n\r\nbody\r\n", b"\r\n", b"", b"\r\n\r\n", b"\r\n\r\n\r\n"]))
def test_reads_every_header_as_its_definition_says(lines, end):
    message = b"\r\n".join(lines) + end
    assert parsed(message) == line_by_line(message)


@pytest.mark.parametrize("message", [
    b"", b"\r\n", b"\r\nbody\r\n", b"Subject: x", b"Subject: x\r\n", b"A: b\r\n c", b" lead: x\r\n\r\n",
    b"A: b\r\n\tc\r\n d\r\nE: f\r\n\r\nbody", b"A: b\r\n\r\n\r\n", b"A: b\r\n \r\n\r\n",
])
def test_edges(message):
    assert parsed(message) == line_by_line(message)


def test_each_field_knows_where_it_is_and_the_body_where_it_starts():
    data = bytearray(b"From: a@b.example\r\nSubject: one\r\n two\r\n\r\nbody\r\n")
    m = Message.parse(data)
    assert m.data is data  # the buffer is referenced, not copied
    assert [bytes(data[f.start:f.end]) for f in m.fields] == [f.raw for f in m.fields]
    assert (m.body, m.head_end) == (b"body\r\n", m.body_offset - 2)


def test_the_value_is_unfolded_and_the_name_has_no_wsp():
    [field] = Message.parse(b"Subject \t: one\r\n two\r\n\r\n").fields
    assert (field.name, field.key, field.value) == ("Subject", b"subject", "one two")


def test_a_message_without_an_empty_line_is_all_header():
    m = Message.parse(b"From: a@b.example\r\nSubject: s\r\n")
    assert ([f.name for f in m.fields], m.body) == (["From", "Subject"], b"")
    with pytest.raises(MalformedHeader):
        Message.parse(b"From: a@b.example\r\nthis is body text\r\n")


def test_a_malformed_header_still_says_which_lines_are_fields():
    with pytest.raises(MalformedHeader) as caught:
        Message.parse(b"From: a@b.example\r\nno colon\r\nSubject: s\r\n\r\n")
    assert [f.name for f in caught.value.readable] == ["From", "Subject"]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from([p for p in PIECES if b":" in p and p[:1] not in b" \t"]),
                min_size=1, max_size=8),
       st.lists(st.booleans(), min_size=8, max_size=8), st.sampled_from([b"\r\n\r\nbody\r\n", b"\r\n"]))
def test_without_is_what_parsing_the_rest_gives(lines, drops, end):
    message = b"\r\n".join(lines) + end
    try:
        m = Message.parse(message)
    except MalformedHeader:
        return
    dropped = {f.start for f, drop in zip(m.fields, drops, strict=False) if drop}
    rest = m.without(lambda f: f.start in dropped)
    again = Message.parse(rest.data)
    assert (again.fields, again.body_offset) == (rest.fields, rest.body_offset)
    assert [f.raw for f in rest.fields] == [f.raw for f in m.fields if f.start not in dropped]
    assert bytes(rest.data[rest.body_offset:]) == bytes(m.data[m.body_offset:])
