"""DKIM signing (RFC 6376), relaxed/relaxed, at close to OpenSSL's own speed.

dkimpy spends most of a signature in Python: canonicalising byte by byte, parsing
its own header, and (for RSA) pure-Python modular arithmetic.  Here:

* the body is canonicalised with whole-buffer ``bytes.replace`` passes, each run
  only when a C-speed ``in`` test shows it has work to do, and hashed once per
  message for all signatures (dual RSA + Ed25519 signing shares it);
* the header section is unfolded and its white space collapsed in the same way,
  as one buffer; only then is it split, and only signed fields are looked at;
* the DKIM-Signature field is built already folded, in a form whose relaxed
  canonicalisation is a single ``replace``;
* the signature operation itself is OpenSSL, through ``cryptography``.

Signing is CPU work: from async code, call :func:`sign_message_off_loop`.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
from collections.abc import Sequence
from concurrent.futures import Executor

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from gateway.config.domains import normalise_domain
from gateway.dkim.keystore import ActiveKey
from gateway.message import MalformedHeader, addresses_in, fields_named, header_fields
from gateway.rules.signing import SigningFacts


class MalformedMessage(ValueError):
    """The message cannot be signed as it is (the caller answers 5xx)."""


# RFC 6376 §5.4.1: the fields that SHOULD be signed, plus the MIME fields whose change
# alters how the body is shown, and RFC 8058's List-Unsubscribe-Post.
SIGNED_FIELDS = (
    "from", "sender", "reply-to", "subject", "date", "message-id", "to", "cc",
    "mime-version", "content-type", "content-transfer-encoding",
    "in-reply-to", "references",
    "resent-date", "resent-from", "resent-sender", "resent-to", "resent-cc", "resent-message-id",
    "list-id", "list-help", "list-unsubscribe", "list-unsubscribe-post", "list-subscribe",
    "list-post", "list-owner", "list-archive",
    # Our token naming the sending account to us (docs/abuse.md): signed, so an abuse
    # report can be trusted to carry the token we stamped.
    "x-portcullis-sender-id",
)
# RFC 6376 §8.15: listing a field once more than it occurs signs its absence, so
# another instance cannot be added.  These are listed once more even when absent
# (an added From, Reply-To or Subject changes what the reader sees) ...
OVERSIGN_ALWAYS = frozenset({"from", "reply-to", "subject"})
# ... these only when present: downstream MTAs add a missing Date, Message-ID or
# "To: undisclosed-recipients:;", and signing their absence would break on that.
OVERSIGN_PRESENT = frozenset({
    "sender", "date", "message-id", "to", "cc", "mime-version", "content-type",
    "content-transfer-encoding", "in-reply-to", "references", "list-unsubscribe",
    "list-unsubscribe-post", "x-portcullis-sender-id",
})
_FTEXT = bytes(range(0x21, 0x3A)) + bytes(range(0x3B, 0x7F))  # RFC 5322 §3.6.8
_ORDER = {name.encode("ascii"): i for i, name in enumerate(SIGNED_FIELDS)}
_PREFIX = [name.encode("ascii") + b":" for name in SIGNED_FIELDS]
_OVERSIGN_PRESENT_IDX = frozenset(_ORDER[n.encode()] for n in OVERSIGN_PRESENT | OVERSIGN_ALWAYS)
_OVERSIGN_ALWAYS_IDX = sorted(_ORDER[n.encode()] for n in OVERSIGN_ALWAYS)

_PKCS1 = padding.PKCS1v15()
_PREHASHED_SHA256 = Prehashed(hashes.SHA256())
_MAX_LINE = 78


def split_message(message: bytes) -> tuple[bytes, bytes]:
    """(header section ending in CRLF, body); RFC 5322 §2.1: an empty line separates them."""
    if message.startswith(b"\r\n"):
        return b"", message[2:]
    end = message.find(b"\r\n\r\n")
    if end < 0:
        if not message.endswith(b"\r\n"):
            message += b"\r\n"
        return message, b""
    return message[: end + 2], message[end + 4 :]


def signed_headers(head: bytes) -> tuple[tuple[str, ...], bytes]:
    """The h= names and the relaxed-canonicalised fields they select, concatenated.

    RFC 6376 §3.4.2 is done on the whole header section at once (unfold, WSP runs to
    one SP: a few C-speed passes); what is left per field (lower-case name, strip
    around the colon) is done for the signed fields only.  RFC 6376 §5.4.2: with
    several instances of a name, the bottom one is signed first.  Raises
    MalformedMessage when a line is neither a field nor a continuation.
    ``head`` has CRLF line endings only (see :func:`sign_message`).
    """
    if head[:1] in (b" ", b"\t"):
        raise MalformedMessage("the header section starts with a continuation line")
    if b"\r\n " in head or b"\r\n\t" in head:
        head = head.replace(b"\r\n ", b" ").replace(b"\r\n\t", b" ")
    if b"\t" in head:
        head = head.replace(b"\t", b" ")
    while b"  " in head:  # each pass halves every run of spaces
        head = head.replace(b"  ", b" ")
    lines = head.split(b"\r\n")
    lines.pop()  # the head ends with CRLF
    all_names = []
    found = []
    for i, line in enumerate(lines):
        name, colon, value = line.partition(b":")
        if name[-1:] == b" ":  # RFC 5322 §4.5.8 obsolete: WSP before the colon
            name = name[:-1]
        if not colon or not name:
            raise MalformedMessage("a header line is neither a field nor a continuation")
        all_names.append(name)
        idx = _ORDER.get(name.lower())
        if idx is not None:
            found.append((idx, -i, value))
    # RFC 5322 §3.6.8: field names are printable ASCII but colon; one check for all.
    if b"".join(all_names).translate(None, _FTEXT):
        raise MalformedMessage("a header field name has a character RFC 5322 does not allow")
    found.sort()
    names: list[str] = []
    parts: list[bytes] = []
    previous = -1
    for idx, _, value in found:
        if idx != previous and previous in _OVERSIGN_PRESENT_IDX:
            names.append(SIGNED_FIELDS[previous])
        previous = idx
        names.append(SIGNED_FIELDS[idx])
        parts.append(_PREFIX[idx] + value.strip(b" ") + b"\r\n")
    if previous in _OVERSIGN_PRESENT_IDX:
        names.append(SIGNED_FIELDS[previous])
    present = {idx for idx, _, _ in found}
    names += [SIGNED_FIELDS[i] for i in _OVERSIGN_ALWAYS_IDX if i not in present]
    return tuple(names), b"".join(parts)


def canonical_body(body: bytes) -> bytes:
    """RFC 6376 §3.4.4 relaxed body: trailing WSP of each line removed, WSP runs to
    one SP, empty lines at the end removed, CRLF after a non-empty body.

    Each step is a C-speed ``in`` test and runs only when it has work to do."""
    if b"\t" in body:
        body = body.replace(b"\t", b" ")
    while b"  " in body:  # each pass halves every run of spaces
        body = body.replace(b"  ", b" ")
    if b" \r\n" in body:  # runs are single spaces now
        body = body.replace(b" \r\n", b"\r\n")
    # An unterminated last line loses its trailing WSP too, as it will on the wire:
    # SMTP clients end DATA content with CRLF (Mail::DKIM agrees; dkimpy, fed the
    # unterminated bytes, keeps it).  Content read by DATA always ends in CRLF anyway.
    body = body.rstrip(b" ").rstrip(b"\r\n")
    return body + b"\r\n" if body else b""


def check_line_endings(message: bytes) -> None:
    """RFC 5322 §2.3: CR and LF only as CRLF.  The DATA reader already refuses a
    bare one (gateway/smtp/protocol.py); callers with other sources call this first."""
    crlf = message.count(b"\r\n")
    if message.count(b"\r") != crlf or message.count(b"\n") != crlf:
        raise MalformedMessage("bare CR or LF in the message")


def body_hash(body: bytes) -> bytes:
    return base64.b64encode(hashlib.sha256(canonical_body(body)).digest())


@functools.lru_cache(maxsize=512)
def _h_tag(names: tuple[str, ...]) -> str:
    """h=..., folded at colons (RFC 6376 §3.5 allows FWS around them) to keep lines short.
    Messages mostly share a few header shapes: cached."""
    lines, current = [], "h="
    for i, name in enumerate(names):
        item = name + (":" if i < len(names) - 1 else "")
        if len(current) + len(item) > _MAX_LINE - 8:
            lines.append(current)
            current = ""
        current += item
    lines.append(current)
    return "\r\n\t".join(lines)


def _unsigned_field(key: ActiveKey, t: int, x: int | None, h: str, bh: str) -> str:
    """The DKIM-Signature value with an empty b=, folded.  Every fold is CRLF TAB in
    place of one space, so its relaxed form (§3.4.2) is a single replace."""
    expiry = f" x={x};" if x is not None else ""
    return (
        f"v=1; a={key.algorithm}; c=relaxed/relaxed; d={key.domain};\r\n"
        f"\ts={key.selector}; t={t};{expiry}\r\n\t{h};\r\n\tbh={bh};\r\n\tb="
    )


def _signature_value(key: ActiveKey, data: bytes) -> bytes:
    digest = hashlib.sha256(data).digest()
    if key.algorithm == "rsa-sha256":
        return key.private_key.sign(digest, _PKCS1, _PREHASHED_SHA256)
    # RFC 8463 §3: Ed25519 signs the SHA-256 hash of the canonicalised data (PureEdDSA).
    return key.private_key.sign(digest)


def sign_message(
    message: bytes,
    keys: Sequence[ActiveKey],
    now: int,
    expire_after: int | None = None,
) -> bytes:
    """The DKIM-Signature fields (folded, CRLF-terminated) to put at the top of
    ``message``, one per key, in the order of ``keys``.

    Relaxed/relaxed, t= always, x= = t + expire_after when given, never l=.
    ``message`` is as accepted at DATA: CRLF line endings only (the DATA reader has
    refused bare CR/LF; other callers run :func:`check_line_endings` first).
    Raises MalformedMessage for a message that cannot be signed as it is.
    """
    if not keys:
        return b""
    head, body = split_message(message)
    names, signed = signed_headers(head)
    # "from" comes first in SIGNED_FIELDS, so a present From starts the signed data.
    if not signed.startswith(b"from:"):
        raise MalformedMessage("no From: field (RFC 6376 §5.4: From must be signed)")
    bh = body_hash(body).decode("ascii")
    h = _h_tag(names)
    t = int(now)
    x = t + int(expire_after) if expire_after else None
    out = []
    for key in keys:
        unsigned = _unsigned_field(key, t, x, h, bh)
        # Relaxed form of our own field: lower-case name, no space after the colon.
        data = signed + b"dkim-signature:" + unsigned.replace("\r\n\t", " ").encode("ascii")
        b64 = base64.b64encode(_signature_value(key, data)).decode("ascii")
        # FWS inside b= is allowed (§3.5); verifiers drop it with the value (§3.7).
        folded_b = "\r\n\t".join([b64[i : i + 72] for i in range(0, len(b64), 72)])
        out.append(f"DKIM-Signature: {unsigned}{folded_b}\r\n".encode("ascii"))
    return b"".join(out)


async def sign_message_off_loop(
    message: bytes,
    keys: Sequence[ActiveKey],
    now: int,
    expire_after: int | None = None,
    executor: Executor | None = None,
) -> bytes:
    """:func:`sign_message` in a worker thread, so a slow RSA signature does not stall
    every other session on the event loop."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, sign_message, message, keys, now, expire_after)


def signing_facts(message: bytes) -> SigningFacts:
    """The author facts :func:`gateway.rules.signing.decide_signing` needs."""
    try:
        fields = header_fields(message)
        froms = fields_named(fields, "From")
        domains = tuple(
            normalise_domain(address.rpartition("@")[2])
            for field in froms
            for address in addresses_in(field)
        )
    except (MalformedHeader, ValueError):
        return SigningFacts(header_ok=False, from_fields=0, from_domains=())
    return SigningFacts(header_ok=True, from_fields=len(froms), from_domains=domains)
