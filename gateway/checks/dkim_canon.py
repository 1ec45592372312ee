"""DKIM canonicalisation for verification (RFC 6376 §3.4), on whole buffers.

The verifier's side of what gateway/dkim/sign.py does for signing, with both
algorithms (``simple`` and ``relaxed``) and any signer's choice of fields.
dkimpy does the same with a regular expression per header line and per body
pass; here each step is a C-speed ``bytes`` operation over the whole body,
run only when an ``in`` test shows it has work to do.

The header fields are those gateway/message.py read (the one header parser), from
a message with CRLF line ends (what the DATA reader accepts).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from gateway.checks.memo import remembered
from gateway.dkim.body_hash import SLAB, slab_digest
from gateway.message import HeaderField

# RFC 6376 §3.7: the b= tag's value is removed from the signature field before it is
# hashed.  dkimpy's expression for it (RE_BTAG) backtracks over every base64 character
# (about 50 us a field); these two find the same span with one C loop each.
_B_START = re.compile(rb"b(?<=[;\s]b)\s*=")  # starts with a literal: a fast scan for "b"
_B_VALUE = re.compile(rb"[\sa-zA-Z0-9+/=]*")
_TRAILING_CRLFS = re.compile(rb"(?:\r\n)*\Z")
_H_SPLIT = re.compile(rb"\s*:\s*")


# --- body (RFC 6376 §3.4.3, §3.4.4) ------------------------------------------------------
def _without_trailing_crlfs(body: bytes) -> bytes:
    stripped = body.rstrip(b"\r\n")
    if len(stripped) == len(body):
        return body
    # The stripped tail may hold a bare CR that is not part of an empty line: keep it.
    tail = body[len(stripped) :]
    match = _TRAILING_CRLFS.search(tail)
    return stripped + tail[: match.start()]


def _ends_in_one_line_end(body: bytes) -> bool:
    # The usual body: its last line ends in CRLF and no empty line follows it, so
    # canonicalisation leaves the end as it is (and need not copy 5 KB twice).
    return body.endswith(b"\r\n") and not body.endswith(b"\r\n\r\n")


def simple_body(body: bytes) -> bytes:
    """§3.4.3: empty lines at the end removed; a body always ends with one CRLF."""
    if _ends_in_one_line_end(body):
        return body
    return _without_trailing_crlfs(body) + b"\r\n"


def relaxed_body(body: bytes) -> bytes:
    """§3.4.4: WSP at line ends removed, WSP runs to one SP, empty lines at the end
    removed; an empty body stays empty."""
    if b"\t" in body:
        body = body.replace(b"\t", b" ")
    while b"  " in body:  # each pass halves every run of spaces
        body = body.replace(b"  ", b" ")
    if b" \r\n" in body:  # runs are single spaces now
        body = body.replace(b" \r\n", b"\r\n")
    if _ends_in_one_line_end(body) and body != b"\r\n":
        return body
    body = _without_trailing_crlfs(body)
    return body + b"\r\n" if body else b""


BODY_CANONICALISERS = {b"simple": simple_body, b"relaxed": relaxed_body}


def _relaxed_lines(lines: bytes) -> bytes:
    """§3.4.4 within complete lines: WSP runs to one SP, none before a CRLF."""
    if b"\t" in lines:
        lines = lines.replace(b"\t", b" ")
    while b"  " in lines:
        lines = lines.replace(b"  ", b" ")
    if b" \r\n" in lines:
        lines = lines.replace(b" \r\n", b"\r\n")
    return lines


def body_digest(body: bytes | memoryview, canon: bytes, length: int | None) -> bytes:
    """SHA-256 of the canonical body (§3.7), its first ``length`` octets when l= says so.
    A large body is hashed in slabs, never canonicalised (copied) whole."""
    if len(body) > SLAB:
        relaxed = canon == b"relaxed"
        return slab_digest(body, _relaxed_lines if relaxed else None, relaxed, length)
    data = BODY_CANONICALISERS[canon](bytes(body))
    if length is not None:  # RFC 6376 §3.5 l=: only the first l octets are signed
        data = data[:length]
    return hashlib.sha256(data).digest()


# --- header (RFC 6376 §3.4.1, §3.4.2) ------------------------------------------------------
def relaxed_field(key: bytes, value: bytes) -> bytes:
    """§3.4.2: lower-case name, unfolded, WSP runs to one SP, none around the colon."""
    if value.endswith(b"\r\n"):  # the field's own line end: unfolding would drop it
        value = value[:-2]
    if b"\n" in value:  # folds (and any bare LF) inside the value
        value = value.replace(b"\r\n", b"").replace(b"\n", b"")
    if b"\t" in value:
        value = value.replace(b"\t", b" ")
    while b"  " in value:
        value = value.replace(b"  ", b" ")
    return key + b":" + value.strip() + b"\r\n"


def simple_field(field: HeaderField) -> bytes:
    """§3.4.1: the field exactly as it arrived (a last line without its CRLF gets
    it, as the SMTP client will send it)."""
    raw = field.raw
    return raw if raw[-2:] == b"\r\n" else raw + b"\r\n"


def select_fields(fields: Sequence[HeaderField], names: Sequence[bytes]) -> list[HeaderField]:
    """RFC 6376 §5.4.2: each name in h= takes the next instance from the bottom up; a
    name listed more often than it occurs selects nothing (it signs the absence)."""
    wanted = set(names)
    instances: dict[bytes, list[HeaderField]] = {}
    for field in fields:  # top to bottom: the bottom one is last
        if field.key in wanted:
            instances.setdefault(field.key, []).append(field)
    chosen: list[HeaderField] = []
    for name in names:
        found = instances.get(name)
        if found:
            chosen.append(found.pop())
    return chosen


@remembered(maxsize=4096)  # a sender signs the same h= on every message: split it once
def signed_names(h_value: bytes) -> tuple[bytes, ...]:
    """The h= list, lower case (§3.5: names separated by colons, FWS allowed)."""
    return tuple(n.lower() for n in _H_SPLIT.split(h_value.strip()))


def without_b_value(value: bytes) -> bytes:
    """The field value with every b= tag's value (FWS included) emptied.

    The span removed is what dkimpy's RE_BTAG removes: base64 characters, each
    with the FWS before it, and a line end right after when it ends the field.
    """
    parts: list[bytes] = []
    pos = 0
    while (start := _B_START.search(value, pos)) is not None:
        run_end = _B_VALUE.match(value, start.end()).end()
        end = len(value[:run_end].rstrip()) if run_end > start.end() else run_end
        end = max(end, start.end())
        if value[end:] in (b"\r\n", b"\n"):
            end = len(value)
        parts.append(value[pos : start.end()])
        pos = end
    if not parts:
        return value
    parts.append(value[pos:])
    return b"".join(parts)


def signature_field_data(field: HeaderField, canon: bytes) -> bytes:
    """The DKIM-Signature field itself as hashed (§3.7): b= emptied, canonicalised,
    without the final CRLF."""
    colon = field.raw.index(b":") + 1
    value = without_b_value(field.raw[colon:])
    if canon == b"relaxed":
        return relaxed_field(field.key, value).rstrip()
    return (field.raw[:colon] + value).rstrip()


def header_data(fields: Sequence[HeaderField], names: Sequence[bytes], signature: HeaderField,
                canon: bytes) -> bytes:
    """What the header hash covers: the selected fields, then the signature field."""
    chosen = select_fields(fields, names)
    if canon == b"relaxed":
        parts = [relaxed_field(f.key, f.raw_value) for f in chosen]
    else:
        parts = [simple_field(f) for f in chosen]
    parts.append(signature_field_data(signature, canon))
    return b"".join(parts)
