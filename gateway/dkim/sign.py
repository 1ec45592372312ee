"""DKIM signing (RFC 6376), relaxed/relaxed, at close to OpenSSL's own speed.

dkimpy spends most of a signature in Python: canonicalising byte by byte, parsing
its own header, and (for RSA) pure-Python modular arithmetic.  Here every pass over
the message is a C-speed ``bytes``/``re``/``hashlib`` call, and Python-level work is
per signed field or per white-space run that needs fixing, never per byte or line:

* the body is hashed where it lies in the message: between the WSP runs that relaxed
  canonicalisation changes (found with one ``re`` search, CR mapped to SP) it goes to
  SHA-256 as memoryview slices; a body with many such runs gets whole-buffer passes.
  It is hashed once per message for all signatures (dual RSA + Ed25519 shares it);
* the header fields are those gateway/message.py read (the one header parser, so
  the field signed as From: is the one the sender check read as From:); the
  sequence of their names (its "shape": which fields are signed, in what order, the
  h= tag) is computed once per shape and cached; the signed values are put into the
  shape's template and canonicalised together, in one buffer;
* the DKIM-Signature field is built from per-key constant parts, already folded and
  in its relaxed form side by side;
* the signature operation itself is C: RSA in OpenSSL (``cryptography``), Ed25519
  in libsodium (PyNaCl, already needed by dkimpy), which signs the same bytes in
  a little over half of OpenSSL's time.

Signing is CPU work: from async code, call :func:`sign_message_where_cheapest`
(on the loop for ordinary mail, where a thread would only add its hop) or
:func:`sign_message_off_loop`.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import re
from binascii import b2a_base64
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import NamedTuple

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from nacl.bindings import crypto_sign

from gateway.dkim.body_hash import SLAB, slab_digest
from gateway.message import HeaderField, MalformedHeader, Message, addresses_in
from gateway.values.domains import normalise_domain
from gateway.values.keys import ActiveKey, SigningFacts


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
_ORDER = {name.encode("ascii"): i for i, name in enumerate(SIGNED_FIELDS)}
_PREFIX = [name.encode("ascii") + b":" for name in SIGNED_FIELDS]
_OVERSIGN_PRESENT_IDX = frozenset(_ORDER[n.encode()] for n in OVERSIGN_PRESENT | OVERSIGN_ALWAYS)
_OVERSIGN_ALWAYS_IDX = sorted(_ORDER[n.encode()] for n in OVERSIGN_ALWAYS)
_WSP = b" \t"
_WSP_CRLF = b" \t\r\n"
_SP, _CR = 0x20, 0x0D
_EMPTY_SHA256 = hashlib.sha256(b"").digest()
_INLINE_RUNS = 3  # WSP runs fixed in place before whole-buffer passes take over

_PKCS1 = padding.PKCS1v15()
_PREHASHED_SHA256 = Prehashed(hashes.SHA256())
_MAX_LINE = 78
# Headers with more fields, or longer names, are rare: not worth caching; and the
# bounds keep what the cache holds (the names) under 512 x 16 KB.
_SHAPE_CACHE_MAX_FIELDS = 64
_SHAPE_CACHE_MAX_NAMES = 16384

# Searches by ``re`` with a literal prefix run a tight C loop, about twice the speed
# of ``bytes.__contains__`` with a two-byte needle on text full of spaces.
_DOUBLE_SPACE = re.compile(rb"  ")
_SPACE_CR = re.compile(rb"\r(?<= \r)")  # found at the CR: CRs are rare, spaces are not
_SPACE_CRLF = re.compile(rb" \r\n")
_WSP_RUN = re.compile(rb"[ \t]+")


def _relaxed_wsp(data: bytes) -> bytes:
    """RFC 6376 §3.4.2 / §3.4.4 white space: HTAB to SP, runs of SP to one, SP before
    CRLF removed.  Each pass runs only when a C-speed search shows it has work."""
    if b"\t" in data:  # one byte: memchr
        data = data.replace(b"\t", b" ")
    while _DOUBLE_SPACE.search(data):  # each pass halves every run of spaces
        data = _DOUBLE_SPACE.sub(b" ", data)
    if _SPACE_CR.search(data):  # runs are single spaces now
        data = _SPACE_CRLF.sub(b"\r\n", data)
    return data


class _Shape(NamedTuple):
    """What a header section's sequence of field names decides, whatever the values:
    the h= list, which fields are signed in which order, and the canonical
    ``name:value CRLF`` lines as a ``%`` template over the selected values."""

    names: tuple[str, ...]
    template: bytes
    positions: tuple[int, ...]  # of the signed fields, in the order of ``template``
    has_from: bool
    h_folded: bytes
    h_relaxed: bytes


def _make_shape(keys: tuple[bytes, ...]) -> _Shape:
    """``keys``: the header's field names in lower case, top to bottom, as
    gateway/message.py read them (WSP before a colon is already no part of them)."""
    # RFC 6376 §5.4.2: with several instances of a name, the bottom one is signed first.
    found = sorted((idx, -i) for i, key in enumerate(keys)
                   if (idx := _ORDER.get(key)) is not None)
    h_names: list[str] = []
    positions: list[int] = []
    previous = -1
    for idx, negative_position in found:
        if idx != previous and previous in _OVERSIGN_PRESENT_IDX:
            h_names.append(SIGNED_FIELDS[previous])
        previous = idx
        h_names.append(SIGNED_FIELDS[idx])
        positions.append(-negative_position)
    if previous in _OVERSIGN_PRESENT_IDX:
        h_names.append(SIGNED_FIELDS[previous])
    present = {idx for idx, _ in found}
    h_names += [SIGNED_FIELDS[i] for i in _OVERSIGN_ALWAYS_IDX if i not in present]
    h_folded = _h_tag(tuple(h_names)).encode("ascii")
    return _Shape(
        names=tuple(h_names),
        template=b"".join(_PREFIX[idx] + b"%s\r\n" for idx, _ in found),
        positions=tuple(positions),
        has_from=bool(found) and found[0][0] == _ORDER[b"from"],
        h_folded=h_folded,
        h_relaxed=h_folded.replace(b"\r\n\t", b" "),
    )


# Messages mostly come in a few header shapes (one per sending program): cached.
_cached_shape = functools.lru_cache(maxsize=512)(_make_shape)


def _signed_value(raw: bytes) -> bytes:
    """A field's value as RFC 6376 §3.4.2 starts it: unfolded, no WSP after the colon,
    without the final CRLF (the other white-space rules run on all signed fields)."""
    value = raw[raw.index(b":") + 1 :]
    if value[-2:] == b"\r\n":
        value = value[:-2]
    if b"\r\n" in value:  # read by gateway/message.py: every CRLF left is a fold
        value = value.replace(b"\r\n", b"")  # the WSP after it stays, to be collapsed
    return value.lstrip(_WSP)


def _signed_fields(fields: Sequence[HeaderField]) -> tuple[_Shape, bytes]:
    """The shape of a header and the relaxed canonical form of the fields it signs.

    The field names decide the shape (cached); the signed values are unfolded, put
    into the shape's template, and the other white-space rules (HTAB, runs, trailing
    WSP) run once, on the joined signed fields alone."""
    keys = tuple(f.key for f in fields)
    cacheable = len(keys) <= _SHAPE_CACHE_MAX_FIELDS and sum(map(len, keys)) <= _SHAPE_CACHE_MAX_NAMES
    shape = _cached_shape(keys) if cacheable else _make_shape(keys)
    signed = shape.template % tuple(_signed_value(fields[i].raw) for i in shape.positions)
    # Most headers have nothing left to do: with CR mapped to SP, one search finds
    # SP SP and SP CR alike (as in :func:`_body_digest`).
    if b"\t" in signed or _DOUBLE_SPACE.search(signed.replace(b"\r", b" ")):
        signed = _relaxed_wsp(signed)
    return shape, signed


def signed_headers(head: bytes) -> tuple[tuple[str, ...], bytes]:
    """The h= names and the relaxed-canonicalised fields they select, concatenated.

    RFC 6376 §3.4.2, §5.4.2 (several instances of a name: the bottom one is signed
    first).  Raises MalformedMessage when a line is neither a field nor a continuation,
    or a field name has a character RFC 5322 does not allow.
    ``head`` has CRLF line endings only (see :func:`sign_message`).
    """
    shape, signed = _signed_fields(_parsed(head).fields)
    return shape.names, signed


def _parsed(message: bytes | bytearray | Message) -> Message:
    if isinstance(message, Message):
        return message
    try:
        return Message.parse(message)
    except MalformedHeader as exc:
        raise MalformedMessage(str(exc)) from None


def canonical_body(body: bytes) -> bytes:
    """RFC 6376 §3.4.4 relaxed body: trailing WSP of each line removed, WSP runs to
    one SP, empty lines at the end removed, CRLF after a non-empty body.

    Each step is a C-speed search and runs only when it has work to do."""
    body = _relaxed_wsp(body)
    # An unterminated last line loses its trailing WSP too, as it will on the wire:
    # SMTP clients end DATA content with CRLF (Mail::DKIM agrees; dkimpy, fed the
    # unterminated bytes, keeps it).  Content read by DATA always ends in CRLF anyway.
    body = body.rstrip(b" ").rstrip(b"\r\n")
    return body + b"\r\n" if body else b""


def _body_digest(data: bytes, begin: int = 0) -> bytes:
    """SHA-256 of :func:`canonical_body` of ``data[begin:]``, fed from ``data`` in
    place where it can be (``begin``: the body's offset in the whole message, so the
    body is never copied out).

    Relaxed canonicalisation (RFC 6376 §3.4.4) only touches WSP runs that are longer
    than one SP, contain an HTAB or end a line, and the WSP and empty lines at the end.
    With CR mapped to SP (a one-byte replace, memchr-driven), one C-speed search for
    SP SP finds both SP SP and SP CR (CR is always followed by LF); HTAB is a memchr.
    The bytes between such runs go to the hash as memoryview slices, without a copy;
    a body with many runs (format=flowed text) gets whole-buffer passes after the
    first few instead."""
    end = len(data)
    # The canonical body ends with the last line that has more than WSP, then CRLF.
    as_is = end - begin > 2 and data[-3] not in _WSP_CRLF and data.endswith(b"\r\n")
    if as_is:
        content = end - 2
    else:
        content = len(data.rstrip(_WSP_CRLF))
        if content <= begin:
            return _EMPTY_SHA256
    mapped = data.replace(b"\r", b" ")
    view = memoryview(data)
    digest = hashlib.sha256()
    start = pos = begin  # hashed up to start; searching from pos
    for _ in range(_INLINE_RUNS):
        found = _DOUBLE_SPACE.search(mapped, pos, content)
        cut = found.start() if found else content
        tab = data.find(b"\t", pos, cut)
        if tab >= 0:  # a lone HTAB, or the one SP before it starts the run
            cut = tab - 1 if tab > begin and mapped[tab - 1] == _SP else tab
        if cut == content:
            if start == begin and as_is:
                return hashlib.sha256(view[begin:] if begin else data).digest()
            digest.update(view[start:content])
            digest.update(b"\r\n")
            return digest.digest()
        if data[cut] == _CR:  # a bare CR (refused before us): the plain way below
            break
        run_end = _WSP_RUN.match(mapped, cut).end()
        digest.update(view[start:cut])
        if data[run_end - 1] == _CR:  # trailing WSP: gone, the CRLF stays
            start = run_end - 1
        else:  # WSP inside a line: one SP
            digest.update(b" ")
            start = run_end
        pos = run_end
    # Many runs (or a bare CR): whole-buffer passes over the rest, which starts on a
    # run boundary and ends with neither WSP nor CRLF.
    digest.update(_relaxed_wsp(data[start:content]))
    digest.update(b"\r\n")
    return digest.digest()


def check_line_endings(message: bytes) -> None:
    """RFC 5322 §2.3: CR and LF only as CRLF.  The DATA reader already refuses a
    bare one (gateway/smtp/protocol.py); callers with other sources call this first."""
    crlf = message.count(b"\r\n")
    if message.count(b"\r") != crlf or message.count(b"\n") != crlf:
        raise MalformedMessage("bare CR or LF in the message")


def body_hash(body: bytes) -> bytes:
    return base64.b64encode(_body_digest(body))


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


@functools.lru_cache(maxsize=256)
def _key_prefix(algorithm: str, domain: str, selector: str) -> tuple[bytes, bytes]:
    """The constant start of a key's DKIM-Signature field, up to ``t=``: as written
    (folded) and in its relaxed canonical form (lower-case name, no space after the
    colon, every fold CRLF TAB back to the one SP it replaced)."""
    value = f"v=1; a={algorithm}; c=relaxed/relaxed; d={domain};\r\n\ts={selector}; t="
    return (f"DKIM-Signature: {value}".encode("ascii"),
            f"dkim-signature:{value}".replace("\r\n\t", " ").encode("ascii"))


class SignedParts(NamedTuple):
    """What a signature over ``prefix + message`` hashes, as :func:`sign_message`
    computes it (an ARC-Message-Signature hashes the same: RFC 8617 §4.1.2)."""

    h_folded: bytes  # h=..., folded with CRLF TAB
    h_relaxed: bytes  # the same, each fold back to one SP
    signed: bytes  # the selected fields, relaxed, each ending in CRLF
    bh: bytes  # the relaxed body's SHA-256, base64


def signed_parts(message: Message | bytes, prefix: bytes = b"") -> SignedParts:
    shape, signed, bh = _canonical_parts(message, prefix)
    return SignedParts(shape.h_folded, shape.h_relaxed, signed, bh)


def _canonical_parts(message: Message | bytes, prefix: bytes) -> tuple[_Shape, bytes, bytes]:
    message = _parsed(message)
    fields = message.fields
    if prefix:  # our own fields, read by the same parser
        fields = _parsed(prefix).fields + fields
    shape, signed = _signed_fields(fields)
    data, begin = message.data, message.body_offset
    if not shape.has_from:
        raise MalformedMessage("no From: field (RFC 6376 §5.4: From must be signed)")
    if len(data) - begin > SLAB:  # a large body: hashed in slabs, never copied whole
        body_digest = slab_digest(memoryview(data)[begin:], _relaxed_wsp, relaxed=True)
    else:
        body_digest = _body_digest(data, begin)
    return shape, signed, b2a_base64(body_digest, newline=False)


def rsa_signature(key: ActiveKey, digest: bytes) -> bytes:
    """RSASSA-PKCS1-v1_5 over a SHA-256 ``digest`` (RFC 6376 §3.3.1), base64, folded
    in 72-character lines (FWS inside b= is allowed, §3.5)."""
    b64 = b2a_base64(key.private_key.sign(digest, _PKCS1, _PREHASHED_SHA256), newline=False)
    return b"\r\n\t".join([b64[i : i + 72] for i in range(0, len(b64), 72)])


def sign_message(
    message: Message | bytes,
    keys: Sequence[ActiveKey],
    now: int,
    expire_after: int | None = None,
    prefix: bytes = b"",
) -> bytes:
    """The DKIM-Signature fields (folded, CRLF-terminated) to put at the top of
    ``prefix + message``, one per key, in the order of ``keys``.

    ``prefix``: header fields that go out above ``message`` (our own stamps),
    signed with it but never joined to it: a large message is not copied.

    Relaxed/relaxed, t= always, x= = t + expire_after when given, never l=.
    ``message``: as read at the end of DATA (gateway/message.py), or its bytes: CRLF
    line endings only (the DATA reader has refused bare CR/LF; other callers run
    :func:`check_line_endings` first).
    Raises MalformedMessage for a message that cannot be signed as it is.
    """
    if not keys:
        return b""
    shape, signed, bh = _canonical_parts(message, prefix)
    t = int(now)
    tx = b"%d;" % t if not expire_after else b"%d; x=%d;" % (t, t + int(expire_after))
    # The rest of the field after t=, folded (every fold CRLF TAB in place of one SP,
    # so its relaxed form is that SP) and relaxed; b= empty while signing (§3.7).
    rest = b"%s\r\n\t%s;\r\n\tbh=%s;\r\n\tb=" % (tx, shape.h_folded, bh)
    rest_relaxed = b"%s %s; bh=%s; b=" % (tx, shape.h_relaxed, bh)
    out = []
    for key in keys:
        folded_start, relaxed_start = _key_prefix(key.algorithm, key.domain, key.selector)
        # Relaxed form of our own field last (§3.7), lower-case name, no SP after the colon.
        digest = hashlib.sha256(b"%s%s%s" % (signed, relaxed_start, rest_relaxed)).digest()
        if key.algorithm == "rsa-sha256":
            b64 = rsa_signature(key, digest)
        else:
            # RFC 8463 §3: Ed25519 signs the SHA-256 hash of the canonical data (PureEdDSA).
            # libsodium's signature is the same bytes (Ed25519 is deterministic), in
            # 18 us where cryptography's OpenSSL takes 31.
            b64 = b2a_base64(crypto_sign(digest, _sodium_secret(key.private_key))[:64],
                             newline=False)
            b64 = b64[:72] + b"\r\n\t" + b64[72:]  # 88 characters: two lines
        # FWS inside b= is allowed (§3.5); verifiers drop it with the value (§3.7).
        out.append(b"%s%s%s\r\n" % (folded_start, rest, b64))
    return b"".join(out)


# libsodium's 64-byte secret key (seed, then public key) per key object.  The key
# store keeps its keys for the life of the process; the bound covers reloads.
_sodium_keys: dict[int, tuple[object, bytes]] = {}


def _sodium_secret(private_key: ed25519.Ed25519PrivateKey) -> bytes:
    entry = _sodium_keys.get(id(private_key))
    if entry is None or entry[0] is not private_key:
        if len(_sodium_keys) >= 1024:
            _sodium_keys.clear()
        seed = private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        public = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        entry = _sodium_keys[id(private_key)] = (private_key, seed + public)
    return entry[1]


# Up to this size (message and prefix) a message is signed on the event loop.  A
# worker thread buys nothing for the signature itself.  cryptography 42-46 held the
# GIL through the RSA operation (two threads sign at 1.0x one), so the loop waited
# for it either way, and a thread cost a hop: a submit, two wake-ups and the GIL
# handed back and forth, 50-100 us of the loop's CPU and a place where a message
# waits behind other threads (issue 16: the signing step's p99 was 12-20 ms at half
# the peak rate, for ~0.25 ms of work).  Release 47 drops the GIL there (1.9-2.0x),
# and still: the RSA operation alone in a pool of two threads of its own, the rest
# on the loop, gave 0.78x (SQLite) and 0.85x (Redis) the rate of this, at 1.12x and
# 1.21x the CPU per message (`python -m bench.submission --only "workers 1"`,
# 2026-12-07): the GIL's hand-over to and from a thread, twice a message, costs
# more than the 0.2 ms it moves off the loop.  Only hashing a large body runs in
# parallel in a thread (hashlib drops the GIL): past this size, the thread again
# (a 64 KB message signs in about 0.15 ms more than a 5 KB one).
INLINE_MAX_BYTES = 64 * 1024


async def sign_message_where_cheapest(
    message: Message | bytes,
    keys: Sequence[ActiveKey],
    now: int,
    expire_after: int | None = None,
    executor: Executor | None = None,
    prefix: bytes = b"",
) -> bytes:
    """:func:`sign_message` on the loop for ordinary mail (up to
    :data:`INLINE_MAX_BYTES`), in a worker thread for a larger message."""
    data = message.data if isinstance(message, Message) else message
    if len(data) + len(prefix) <= INLINE_MAX_BYTES:
        return sign_message(message, keys, now, expire_after, prefix)
    return await sign_message_off_loop(message, keys, now, expire_after, executor, prefix)


async def sign_message_off_loop(
    message: Message | bytes,
    keys: Sequence[ActiveKey],
    now: int,
    expire_after: int | None = None,
    executor: Executor | None = None,
    prefix: bytes = b"",
) -> bytes:
    """:func:`sign_message` in a worker thread, so a slow RSA signature does not stall
    every other session on the event loop."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, sign_message, message, keys, now, expire_after,
                                      prefix)


def signing_facts(message: Message) -> SigningFacts:
    """The author facts :func:`gateway.rules.signing.decide_signing` needs."""
    try:
        froms = message.named("From")
        domains = tuple(
            normalise_domain(address.rpartition("@")[2])
            for field in froms
            for address in addresses_in(field)
        )
    except (MalformedHeader, ValueError):
        return SigningFacts(header_ok=False, from_fields=0, from_domains=())
    return SigningFacts(header_ok=True, from_fields=len(froms), from_domains=domains)
