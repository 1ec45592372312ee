"""Reading the header section of a message as it arrived, without rewriting it.

The gateway forwards the bytes it received (plus its own headers), so it never
re-serialises a parsed message: it only looks at header fields to decide.
"""

from __future__ import annotations

import os
import re
from email.errors import HeaderParseError
from email.headerregistry import HeaderRegistry
from typing import NamedTuple

_FIELD_NAME = re.compile(rb"^[\x21-\x39\x3b-\x7e]+$")  # RFC 5322 §3.6.8 ftext
_FIELD_START = re.compile(rb"\r\n(?![ \t])")  # a line end not followed by a fold
_registry = HeaderRegistry()


class MalformedHeader(ValueError):
    pass


class HeaderField(NamedTuple):  # a tuple: every message has a dozen, and tuples are cheap
    name: str  # as sent
    raw: bytes  # the whole field, folded, with its final CRLF

    @property
    def value(self) -> str:
        """Unfolded value (RFC 5322 §2.2.3), without the name and colon."""
        _, _, value = self.raw.partition(b":")
        return re.sub(rb"\r\n(?=[ \t])", b"", value).strip().decode("utf-8", "surrogateescape")


def split_message(message: bytes) -> tuple[bytes, bytes]:
    """(header section with its final CRLF, body after the empty line)."""
    if message.startswith(b"\r\n"):
        return b"", message[2:]
    end = message.find(b"\r\n\r\n")
    if end < 0:
        return message, b""
    return message[: end + 2], message[end + 4:]


def header_fields(message: bytes) -> list[HeaderField]:
    """The header fields in order; raises MalformedHeader on a line that is neither
    a field nor a continuation."""
    # Only the header section is cut out: the body of a large message is not copied.
    if message.startswith(b"\r\n"):
        return []
    end = message.find(b"\r\n\r\n")
    head = bytes(message if end < 0 else message[: end + 2])
    if not head.endswith(b"\r\n"):  # a last line without its CRLF is not read
        cut = head.rfind(b"\r\n")
        head = head[: cut + 2] if cut >= 0 else b""
    if not head:
        return []
    if head[:1] in (b" ", b"\t"):
        raise MalformedHeader("continuation line before any header field")
    pieces = _FIELD_START.split(head)  # one piece per field, its folds included
    pieces.pop()  # the head ends in CRLF: nothing after it
    fields = []
    for piece in pieces:
        field_name, colon, _ = piece.partition(b":")
        name = field_name.rstrip(b" \t")
        if not colon or not _FIELD_NAME.match(name):
            raise MalformedHeader("a header line without a field name")
        fields.append(HeaderField(name.decode("ascii"), piece + b"\r\n"))
    return fields


def fields_named(fields: list[HeaderField], name: str) -> list[HeaderField]:
    lname = name.lower()
    return [f for f in fields if f.name.lower() == lname]


def addresses_in(field: HeaderField) -> list[str]:
    """The addr-specs of an address header (From, Sender, ...), as ``local@domain``.

    Display names are ignored: ``"alice@ours" <bot@elsewhere>`` is bot@elsewhere.
    Raises MalformedHeader when the field does not parse as an address list.
    """
    try:
        header = _registry(field.name, field.value)
    except (HeaderParseError, IndexError, ValueError) as exc:
        raise MalformedHeader(f"{field.name}: cannot parse") from exc
    out = []
    for address in getattr(header, "addresses", ()):
        if not address.username or not address.domain:
            raise MalformedHeader(f"{field.name}: address without a domain")
        out.append(address.addr_spec)
    if header.defects or not out:
        raise MalformedHeader(f"{field.name}: not a valid address list")
    return out


# A message going out as parts: our fields, then the one copy the DATA reader made
# (a bytes, or the bytearray a large message was gathered in), never joined.
Buffer = bytes | bytearray | memoryview


def message_parts(message: Buffer | list[Buffer]) -> list[Buffer]:
    """The non-empty parts of a message given whole or as parts."""
    if isinstance(message, bytes | bytearray | memoryview):
        return [message] if message else []
    return [part for part in message if len(part)]


def write_parts(fd: int, parts: list[Buffer]) -> None:
    """Write every part to ``fd`` in order, without joining them (blocking)."""
    for part in parts:
        view = memoryview(part)
        while view:
            view = view[os.write(fd, view):]
