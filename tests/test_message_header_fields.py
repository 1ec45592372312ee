"""header_fields splits the header with one regular expression; it must read every
header exactly as the line-by-line reader it replaced (kept here as the oracle),
fields, folds, errors and all."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.message import MalformedHeader, header_fields, split_message

_FIELD_NAME = re.compile(rb"^[\x21-\x39\x3b-\x7e]+$")


def line_by_line(message: bytes) -> list[tuple[str, bytes]]:
    """The previous implementation, as it was."""
    head, _ = split_message(message)
    fields: list[tuple[str, bytes]] = []
    current: list[bytes] = []
    name = ""
    for line in head.split(b"\r\n")[:-1] if head else []:
        if line[:1] in (b" ", b"\t"):
            if not current:
                raise MalformedHeader("continuation line before any header field")
            current.append(line)
            continue
        if current:
            fields.append((name, b"\r\n".join(current) + b"\r\n"))
        field_name, colon, _ = line.partition(b":")
        if not colon or not _FIELD_NAME.match(field_name.rstrip(b" \t")):
            raise MalformedHeader("a header line without a field name")
        name = field_name.rstrip(b" \t").decode("ascii")
        current = [line]
    if current:
        fields.append((name, b"\r\n".join(current) + b"\r\n"))
    return fields


def outcome(reader, message: bytes):  # type: ignore[no-untyped-def]
    try:
        return [tuple(f) for f in reader(message)]
    except MalformedHeader as e:
        return ("malformed", str(e))


PIECES = [b"From: a@b.example", b"Subject: hi", b"X-Empty:", b"To : c@d.example", b" folded",
          b"\tfolded", b"no colon here", b"", b"Bad Name: x", b":empty name", b"DKIM-Signature: v=1;",
          b" b=abc", b"From sender@example Mon Nov 23", b"8bit: \xe9t\xe9", b"Key:\tvalue", b" ", b"a:b",
          b"bare\nlf: x", b"cr\rinside: y"]


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=10), st.sampled_from([b"\r\n\r\nbody\r\n", b"\r\n", b"", b"\r\n\r\n"]))
def test_reads_every_header_as_the_line_by_line_reader(lines, end):
    message = b"\r\n".join(lines) + end
    assert outcome(header_fields, message) == outcome(line_by_line, message)


@pytest.mark.parametrize("message", [
    b"", b"\r\n", b"\r\nbody\r\n", b"Subject: x", b"Subject: x\r\n", b"A: b\r\n c", b" lead: x\r\n\r\n",
    b"A: b\r\n\tc\r\n d\r\nE: f\r\n\r\nbody", b"A: b\r\n\r\n\r\n",
])
def test_edges(message):
    assert outcome(header_fields, message) == outcome(line_by_line, message)


def test_the_value_is_unfolded():
    [field] = header_fields(b"Subject: one\r\n two\r\n\r\n")
    assert (field.name, field.value) == ("Subject", "one two")
