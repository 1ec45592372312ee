"""The message as it arrived, parsed once at the end of DATA: the one header parser.

The gateway forwards the bytes it received (plus its own fields above them), so it
never re-serialises a parsed message.  :class:`Message` is a view over the one copy
the DATA reader made: the header fields (each with its bytes as sent and its offset)
and the offset of the body.  Every reader of the header (the sender check, DKIM
signing and verification, DMARC's From:, ARC, the strippers of fields only we may
set) takes its fields from here, so none of them can see a field the others miss.

One definition, for every reader (RFC 5322):

* a field is a line ``name ":" value`` and the continuation lines after it (lines
  starting with SP or HTAB, §2.2.3); a line that is neither, or a continuation
  before any field, makes the header malformed (the gateway answers 550 5.6.0);
* a name is one or more printable US-ASCII characters other than colon (§3.6.8
  ftext, 33-126 but 58).  WSP between the name and the colon (``Subject :``, the
  obsolete syntax of §4.5.8 obs-optional) belongs to no name: the field is read as
  ``Subject``, everywhere, as §4 requires of a parser ("MUST accept and parse"),
  and as RFC 6376 §3.4.2 relaxed canonicalisation reads it (WSP before the colon
  deleted).  We do not refuse it: the same name for every reader is what closes the
  gap, and a signature over it verifies with Mail::DKIM (dkimpy cannot read it);
* the header section ends at the first empty line; what follows the empty line is
  the body (§2.1).  A message without an empty line is all header and has no body
  (a line in it that is not a field makes it malformed); a last line without its
  CRLF (never from DATA, which ends every line) is still read as a header line, as
  the SMTP client will end it on the wire.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Iterable, Sequence
from email.errors import HeaderParseError
from email.headerregistry import HeaderRegistry
from typing import NamedTuple

_FTEXT = bytes(range(0x21, 0x3A)) + bytes(range(0x3B, 0x7F))  # RFC 5322 §3.6.8
_FIELD_START = re.compile(rb"\r\n(?![ \t])")  # a line end not followed by a fold
_WSP = b" \t"
# A body larger than this is handed out as a view: the DKIM body hashers take such a
# body in slabs (gateway/dkim/body_hash.py SLAB) rather than copy it.
_BODY_VIEW_ABOVE = 1 << 20
_registry = HeaderRegistry()

# A message going out as parts: our fields, then the one copy the DATA reader made
# (a bytes, or the bytearray a large message was gathered in), never joined.
Buffer = bytes | bytearray | memoryview


class MalformedHeader(ValueError):
    """A header line that is neither a field nor a continuation (RFC 5322 §2.2).

    ``readable``: the lines of the header that are fields, by the same definition,
    for a caller that must still name what it found (a DKIM permerror per signature).
    """

    def __init__(self, reason: str, readable: tuple[HeaderField, ...] = ()):
        super().__init__(reason)
        self.readable = readable


class HeaderField(NamedTuple):  # a tuple: every message has a dozen, and tuples are cheap
    name: str  # as sent, without any WSP before the colon
    raw: bytes  # the whole field as sent: name, colon, value, folds, final CRLF
    start: int  # offset of ``raw`` in the message's bytes
    key: bytes  # the name in lower case: what lookups by name and DKIM's h= compare

    @property
    def end(self) -> int:
        return self.start + len(self.raw)

    @property
    def raw_value(self) -> bytes:
        """Everything after the colon, as sent: folds and the final CRLF included."""
        return self.raw[self.raw.index(b":") + 1 :]

    @property
    def value(self) -> str:
        """Unfolded value (RFC 5322 §2.2.3), without the name and colon."""
        value = self.raw_value
        if b"\r\n" in value:
            value = value.replace(b"\r\n", b"")  # after the parser, every CRLF inside is a fold
        return value.strip().decode("utf-8", "surrogateescape")


# HeaderField((name, raw, start, key)) without NamedTuple's Python-level __new__.
_field = functools.partial(tuple.__new__, HeaderField)


class Message:
    """A message's bytes and its header fields, read once (see the module docstring).

    ``data`` is referenced, never copied: the fields hold only the header's bytes,
    and :attr:`body` of a large message is a view.
    """

    __slots__ = ("body_offset", "data", "fields")

    def __init__(self, data: bytes | bytearray, fields: tuple[HeaderField, ...], body_offset: int):
        self.data = data
        self.fields = fields  # top to bottom
        self.body_offset = body_offset  # where the body starts; len(data) when there is none

    @classmethod
    def parse(cls, data: bytes | bytearray) -> Message:
        """Raises MalformedHeader when a header line is neither a field nor a continuation."""
        if data[:2] == b"\r\n":
            return cls(data, (), 2)
        end = data.find(b"\r\n\r\n")
        if end < 0:
            head_end = body_offset = len(data)
        else:
            head_end, body_offset = end + 2, end + 4
        # Only the header section is cut out: the body of a large message is not copied.
        head = data[:head_end] if type(data) is bytes else bytes(data[:head_end])
        return cls(data, _header_fields(head), body_offset)

    @property
    def head_end(self) -> int:
        """Where the header section ends (after its last field's CRLF)."""
        return self.fields[-1].end if self.fields else 0

    @property
    def body(self) -> bytes | memoryview:
        """After the empty line; a view (not a copy) when the body is large."""
        if len(self.data) - self.body_offset > _BODY_VIEW_ABOVE:
            return memoryview(self.data)[self.body_offset :]
        return bytes(self.data[self.body_offset :])

    def named(self, name: str) -> list[HeaderField]:
        return fields_named(self.fields, name)

    def has(self, key: bytes) -> bool:
        """Is there a field of this lower-case name?"""
        return any(f.key == key for f in self.fields)

    def without(self, drop: Callable[[HeaderField], bool]) -> Message:
        """The message less the fields for which ``drop(field)``, every other byte
        kept as it was.  Without such a field, the message itself (nothing copied)."""
        kept = [f for f in self.fields if not drop(f)]
        if len(kept) == len(self.fields):
            return self
        head_end = self.head_end
        data = b"".join(f.raw for f in kept) + self.data[head_end:]
        fields, offset = [], 0
        for f in kept:
            fields.append(_field((f.name, f.raw, offset, f.key)))
            offset += len(f.raw)
        return Message(data, tuple(fields), self.body_offset - head_end + offset)


def _header_fields(head: bytes) -> tuple[HeaderField, ...]:
    """The fields of a header section (no empty line in it), top to bottom."""
    if not head:
        return ()
    pieces = _FIELD_START.split(head)  # one piece per field, its folds included
    terminated = not pieces[-1]
    if terminated:
        pieces.pop()  # the head ends in CRLF: nothing after it
    fields: list[HeaderField] = []
    bad = ""
    start = 0
    for piece in pieces:
        name, colon, _ = piece.partition(b":")
        name = name.rstrip(_WSP)  # RFC 5322 §4.5.8: WSP before the colon is no part of it
        raw = piece + b"\r\n"
        if not colon or not name or name.translate(None, _FTEXT):
            bad = bad or ("continuation line before any header field" if piece[:1] in (b" ", b"\t")
                          else "a header line without a field name")
        else:
            fields.append(_field((name.decode("ascii"), raw, start, name.lower())))
        start += len(raw)
    if not terminated:  # the last line lacks its CRLF (see the module docstring)
        last = fields[-1] if fields and fields[-1].end == start else None
        if last is not None:
            fields[-1] = _field((last.name, last.raw[:-2], last.start, last.key))
    if bad:
        raise MalformedHeader(bad, tuple(fields))
    return tuple(fields)


def fields_named(fields: Iterable[HeaderField], name: str) -> list[HeaderField]:
    key = name.lower().encode("ascii")
    return [f for f in fields if f.key == key]


def addresses_in(field: HeaderField) -> list[str]:
    """The addr-specs of an address header (From, Sender, ...), as ``local@domain``.

    Display names are ignored: ``"alice@ours" <bot@elsewhere>`` is bot@elsewhere.
    Raises MalformedHeader when the field does not parse as an address list.
    """
    # The email package's address parser takes about 80 us a field, and the sender
    # check and the signer both ask for the From: of every submitted message (a
    # sender's From: repeats from message to message, too): remembered, for fields
    # of ordinary size (the key comes from the sender).
    if len(field.raw) <= _REMEMBERED_FIELD_MAX:
        addresses, problem = _remembered_addresses(field.name, field.raw)
    else:
        addresses, problem = _addresses(field.name, field.raw)
    if problem:
        raise MalformedHeader(problem)
    return list(addresses)


_REMEMBERED_FIELD_MAX = 1024


def _addresses(name: str, raw: bytes) -> tuple[tuple[str, ...], str]:
    """(the addr-specs, '') or ((), what is wrong), for the field ``name``/``raw``."""
    field = HeaderField(name, raw, 0, b"")
    try:
        header = _registry(name, field.value)
    except (HeaderParseError, IndexError, ValueError):
        return (), f"{name}: cannot parse"
    out = []
    for address in getattr(header, "addresses", ()):
        if not address.username or not address.domain:
            return (), f"{name}: address without a domain"
        out.append(address.addr_spec)
    if header.defects or not out:
        return (), f"{name}: not a valid address list"
    return tuple(out), ""


_remembered_addresses = functools.lru_cache(maxsize=4096)(_addresses)


def message_parts(message: Buffer | list[Buffer]) -> list[Buffer]:
    """The non-empty parts of a message given whole or as parts."""
    if isinstance(message, bytes | bytearray | memoryview):
        return [message] if message else []
    return [part for part in message if len(part)]


def write_parts(fd: int, parts: Sequence[Buffer]) -> None:
    """Write every part to ``fd`` in order, without joining them (blocking)."""
    for part in parts:
        view = memoryview(part)
        while view:
            view = view[os.write(fd, view):]
