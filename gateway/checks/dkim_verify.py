"""DKIM verification (RFC 6376) of every signature on an inbound message.

Our own verifier, not dkimpy's: dkimpy parses and canonicalises a message with a
regular expression per line and spent about 0.25 ms on a 5 KB message, several
times the RSA check itself.  Here (see gateway/checks/dkim_canon.py) the message
is the one gateway/message.py read at the end of DATA, for all signatures; each
body canonicalisation is a few whole-buffer ``bytes`` passes, run once per
(c=, l=) however many signatures share it, and RSA and Ed25519 are verified by
OpenSSL through ``cryptography``.
tests/test_checks_dkim_differential.py holds it to dkimpy's answers.

Around the cryptography, the rules:

* keys are looked up first, asynchronously, through the shared resolver; a DNS
  failure is ``temperror`` (never ``fail``); no key is ``permerror``;
* every signature gets its own result, mapped to RFC 8601 §2.7.1;
* RFC 8301: ``rsa-sha1`` is refused, and RSA keys under 1024 bits fail;
* RFC 6376 §6.1.1: h= must name From; i= must be d= or under it; x= past and
  t= in the future fail (with dkimpy's 10 hours of slack for clocks);
* RFC 6376 §3.6.1: the key record's v=, k=, h=, s= and p= (empty p= = revoked).

The CPU work is small for ordinary mail (about 65 us for a 5 KB message with one
RSA-2048 signature in bench/checks_cost.py; dkimpy took 260): it runs inline on the
event loop up to :data:`INLINE_MAX_BYTES` of message and
:data:`INLINE_MAX_SIGNATURES` signatures, where a trip to a worker thread
(20-50 us) would cost as much as the work; anything larger goes to the executor.

Keys and signatures are checked by our own functions (:func:`public_key`, parsed
records kept; :meth:`PublicKey.verifies`), not by dkimpy's with ours swapped in:
dkimpy, used for ARC (gateway/checks/arc.py) and as the reference in the tests,
runs as its authors wrote it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import logging
import re
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from gateway.checks.dkim_canon import (
    BODY_CANONICALISERS,
    body_digest,
    header_data,
    signed_names,
)
from gateway.checks.dns import DnsTempError, Resolver
from gateway.checks.memo import remembered
from gateway.message import HeaderField, MalformedHeader, Message
from gateway.values.domains import normalise_domain
from gateway.values.evidence import DkimResult

MIN_RSA_BITS = 1024  # RFC 8301 §3.2
# dkimpy's leeway for signers' clocks (RFC 6376 §3.5 x=: verifiers MAY allow for drift).
CLOCK_SLACK = 36000
# Work small enough to do on the loop (see the module docstring).  Measured: relaxed
# canonicalisation and hashing of a 64 KB body take 40-310 us (simple .. relaxed with
# white space to fix), so 32 KB keeps the loop's longest stall near 0.15 ms plus RSA.
# A worker thread shortens that stall less than it seems: canonicalising holds the
# GIL, which the loop gets back only every 5 ms; only hashing and RSA release it.
INLINE_MAX_BYTES = 32 * 1024
INLINE_MAX_SIGNATURES = 4
_quiet = logging.getLogger("gateway.checks.dkim.lib")  # dkimpy logs every failure as an error
_quiet.setLevel(logging.CRITICAL)


# --- keys: fetched asynchronously, then read synchronously -------------------
class KeyTable:
    """DNS TXT answers for DKIM/ARC key names, fetched ahead for dkimpy's ``dnsfunc``."""

    def __init__(self, answers: dict[str, bytes | None | DnsTempError]):
        self._answers = answers

    def dnsfunc(self, name: bytes | str, timeout: float = 5) -> bytes | None:
        key = _key_name(name)
        answer = self._answers.get(key)
        if isinstance(answer, DnsTempError):
            raise answer
        return answer

    def is_missing(self, name: str) -> bool:
        return self._answers.get(_key_name(name)) is None

    def answer(self, name: str) -> bytes | None:
        """The key record at ``name``; None when there is none; raises DnsTempError."""
        return self.dnsfunc(name)


async def fetch_keys(resolver: Resolver, names: Iterable[str]) -> KeyTable:
    answers: dict[str, bytes | None | DnsTempError] = {}
    missing = []
    for name in {_key_name(n) for n in names}:  # warm cache: no tasks needed
        cached = resolver.cached(name, "TXT")
        if cached is None:
            missing.append(name)
        else:
            answers[name] = _first(cached.texts())
    if missing:
        missing.sort()  # the queries go out in a fixed order
        results = await asyncio.gather(*(_fetched_key(resolver, n) for n in missing))
        answers.update(zip(missing, results, strict=True))
    return KeyTable(answers)


async def _fetched_key(resolver: Resolver, name: str) -> bytes | None | DnsTempError:
    try:
        return _first(await resolver.txt(name))
    except DnsTempError as e:
        return e


def _first(texts: list[bytes]) -> bytes | None:
    # dkimpy's own plug-in also takes the first TXT record.
    return texts[0] if texts else None


def key_name(selector: bytes | str, domain: bytes | str) -> str:
    # Tags come from the sender: never let odd bytes raise here.
    s = selector.decode("utf-8", "replace") if isinstance(selector, bytes) else selector
    d = domain.decode("utf-8", "replace") if isinstance(domain, bytes) else domain
    if not d.isascii():
        # A d= in U-labels (internationalized mail, RFC 8616): its key is at the A-label,
        # IDNA 2008 as everywhere (gateway/values/domains.py), not dnspython's IDNA 2003.
        try:
            d = normalise_domain(d)
        except ValueError:
            pass  # no such name: the lookup answers NXDOMAIN, the signature permerror
    return f"{s}._domainkey.{d}"


def _key_name(name: bytes | str) -> str:
    if isinstance(name, bytes):
        name = name.decode("ascii", "replace")
    return name.rstrip(".").lower()


# --- the check -------------------------------------------------------------------------
async def verify_dkim(
    resolver: Resolver, message: Message, *, executor: Executor | None = None,
    now: float | None = None,
) -> list[DkimResult]:
    """One result per DKIM-Signature, top to bottom; [] when the message has none.

    ``message``: as gateway/message.py read it at the end of DATA (CRLF line ends
    only: the DATA reader makes sure).  ``now`` (Unix time) is the verification
    time for t= and x=; the clock by default.
    """
    when = time.time() if now is None else now
    signatures = _signatures(message.fields)
    if not signatures:
        return []  # RFC 8601 §2.7.1: dkim=none, decided by the caller
    keys = await fetch_keys(resolver, _key_names([t for _, t in signatures]))
    if len(message.data) <= INLINE_MAX_BYTES and len(signatures) <= INLINE_MAX_SIGNATURES:
        return verify_parsed(message, signatures, keys, when)  # cheaper than a thread hop
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, verify_parsed, message, signatures, keys, when)


def _key_names(tags: list[dict[bytes, bytes] | None]) -> list[str]:
    return [_signature_key_name(t[b"s"], t[b"d"]) for t in tags if t and b"s" in t and b"d" in t]


def _signatures(fields: Sequence[HeaderField]) -> list[tuple[HeaderField, dict | None]]:
    """The DKIM-Signature fields with their tags, top first."""
    return [(f, parse_tags(f.raw_value)) for f in fields if f.key == b"dkim-signature"]


def parse_tags(value: bytes) -> dict[bytes, bytes] | None:
    """RFC 6376 §3.2 tag=value list (values stripped, inner FWS kept); None if unparsable.

    Same reading as dkimpy's parse_tag_value: a duplicate tag, a spec without
    ``=`` or a name not starting with a letter makes the whole list unparsable; a
    trailing ``;`` is allowed.
    """
    tags: dict[bytes, bytes] = {}
    specs = value.strip().split(b";")
    if not specs[-1]:
        specs.pop()
    for spec in specs:
        name, eq, val = spec.partition(b"=")
        name = name.strip()
        if not eq or not name[:1].isalpha() or name in tags:  # isalpha: ASCII letters
            return None
        tags[name] = val.strip()
    return tags


def verify_signatures(message: bytes, keys: KeyTable, now: float) -> list[DkimResult]:
    """Every DKIM-Signature of ``message`` (its bytes, from elsewhere than DATA), top
    first, against the fetched ``keys``."""
    if message.count(b"\n") != message.count(b"\r\n"):
        # Bare LF: dkimpy reads either line end; make them CRLF so we agree.  (The
        # DATA reader refuses bare LF: mail through the gateway never has one.)
        message = re.sub(rb"\r?\n", b"\r\n", message)
    try:
        parsed = Message.parse(message)
    except MalformedHeader as e:
        # Each signature that can be read is a permerror: the header is not one.
        return [_made(tags or {}, "permerror", str(e)) for _, tags in _signatures(e.readable)]
    return verify_parsed(parsed, _signatures(parsed.fields), keys, now)


def verify_parsed(parsed: Message, signatures: list[tuple[HeaderField, dict | None]],
                  keys: KeyTable, now: float) -> list[DkimResult]:
    body_hashes: dict[tuple[bytes, int | None], bytes] = {}
    return [_verify_one(parsed, f, tags, keys, now, body_hashes) for f, tags in signatures]


def _made(tags: dict[bytes, bytes], result: str, reason: str = "") -> DkimResult:
    g = tags.get
    domain, selector, algorithm, identity = _texts(g(b"d", b""), g(b"s", b""), g(b"a", b""),
                                                   g(b"i", b""))
    return DkimResult(result, domain, selector, algorithm, _b_prefix(g(b"b", b"")), identity,
                      reason)


@remembered(maxsize=4096)  # a sender's d=, s=, a= and i= repeat: decode them once
def _texts(d: bytes, s: bytes, a: bytes, i: bytes) -> tuple[str, str, str, str]:
    """header.d, .s, .a and .i (RFC 8601 §2.7.1) of a signature's tags."""
    return (d.decode("ascii", "replace").lower(), s.decode("ascii", "replace"),
            a.decode("ascii", "replace").lower(), i.decode("ascii", "replace"))


def _b_prefix(b: bytes) -> str:
    """The first 8 characters of b= without its folding white space (RFC 6008 §4)."""
    head = "".join(b[:64].decode("ascii", "replace").split())
    if len(head) < 8:  # mostly white space at the start: read all of it
        head = "".join(b.decode("ascii", "replace").split())
    return head[:8]


class _Refused(Exception):
    """One signature's verdict short of verification: (result, reason)."""

    def __init__(self, result: str, reason: str):
        super().__init__(reason)
        self.result, self.reason = result, reason


def _verify_one(parsed: Message, field: HeaderField, tags: dict | None, keys: KeyTable,
                now: float, body_hashes: dict) -> DkimResult:
    if tags is None:
        return _made({}, "permerror", "signature tag list unparsable")
    try:
        _verify_signature(parsed, field, tags, keys, now, body_hashes)
    except _Refused as e:
        return _made(tags, e.result, e.reason)
    return _made(tags, "pass")


_ALGORITHMS = {b"rsa-sha256": "rsa", b"ed25519-sha256": "ed25519"}
_REQUIRED = (b"v", b"a", b"b", b"bh", b"d", b"h", b"s")  # RFC 6376 §3.5
_REQUIRED_SET = frozenset(_REQUIRED)
_BASE64_AND_WSP = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/ \t\r\n\x0b\x0c"
_WSP_AND_PAD = b"= \t\r\n\x0b\x0c"
_DOMAIN_SPECIALS = re.compile(rb"[()<>\[\]:;@\\,]")
_DIGITS = re.compile(rb"\d{1,76}\Z")


def _check_tags(tags: dict[bytes, bytes], now: float) -> str:
    """RFC 6376 §6.1.1: is this signature acceptable at all?  The key type it needs.

    The checks run in a fixed order (the first failing one gives the result).  Those
    on tags a sender repeats from message to message (a=, d=, h=, c= ...) are
    remembered by value; b=, bh=, t= and x= change with every message."""
    g = tags.get
    a, v = g(b"a"), g(b"v")
    missing = None if _REQUIRED_SET <= tags.keys() else next(t for t in _REQUIRED if t not in tags)
    _raise_if_refused(_early_refusal(a, v, missing))
    for tag in (b"b", b"bh"):
        value = tags[tag]
        # Base64 with FWS anywhere, "=" padding only at the end (RFC 6376 §2.4).
        data = value.rstrip(_WSP_AND_PAD)
        if not data or data.translate(None, _BASE64_AND_WSP) or len(b"".join(value.split())) % 4:
            raise _Refused("permerror", f"{tag.decode()}= is not valid base64")
    _raise_if_refused(_middle_refusal(tags[b"d"], g(b"i"), g(b"l"), g(b"q"), tags[b"h"]))
    t = _number(tags, b"t")
    x = _number(tags, b"x")
    if t is not None and t > now + CLOCK_SLACK:
        raise _Refused("fail", "t= is in the future")
    if x is not None and x < now - CLOCK_SLACK:
        raise _Refused("fail", "signature expired (x=)")
    if t is not None and x is not None and x < t:
        raise _Refused("permerror", "x= is before t=")
    c = g(b"c", b"simple/simple")
    _raise_if_refused(_canon_refusal(c))
    return _ALGORITHMS[tags[b"a"]]


def _raise_if_refused(refusal: tuple[str, str] | None) -> None:
    if refusal is not None:
        raise _Refused(*refusal)


@remembered(maxsize=1024)
def _early_refusal(a: bytes | None, v: bytes | None,
                   missing: bytes | None) -> tuple[str, str] | None:
    # RFC 8301 §3.1: verifiers MUST NOT consider rsa-sha1 signatures valid.
    if a is not None and a.lower() == b"rsa-sha1":
        return "fail", "rsa-sha1 is not accepted (RFC 8301)"
    if missing is not None:  # the first required tag absent, in _REQUIRED's order
        return "permerror", f"missing {missing.decode()}="
    if v != b"1":
        return "permerror", "v= is not 1"
    if a not in _ALGORITHMS:
        return "permerror", "unknown signature algorithm"
    return None


@remembered(maxsize=4096)
def _middle_refusal(d: bytes, i: bytes | None, length: bytes | None, q: bytes | None,
                    h: bytes) -> tuple[str, str] | None:
    if not d or _DOMAIN_SPECIALS.search(d):
        return "permerror", "d= is not a domain"
    # §3.5 i=: the domain part must be d= or a subdomain of it.
    if i is not None:
        domain = i.rpartition(b"@")[2].lower()
        if b"@" not in i or not (domain == d.lower() or domain.endswith(b"." + d.lower())):
            return "permerror", "i= is not within d="
    if length is not None and not _DIGITS.match(length):
        return "permerror", "l= is not a decimal number"
    if q is not None and q != b"dns/txt":
        return "permerror", "q= is not dns/txt"
    if b"from" not in signed_names(h):
        return "permerror", "From is not signed (RFC 6376 §6.1.1)"
    return None


@remembered(maxsize=64)
def _canon_refusal(c: bytes) -> tuple[str, str] | None:
    canon = c.split(b"/")
    if len(canon) > 2 or any(part not in BODY_CANONICALISERS for part in canon):
        return "permerror", "invalid c="
    return None


def _number(tags: dict[bytes, bytes], tag: bytes) -> int | None:
    value = tags.get(tag)
    if value is None:
        return None
    if not value.isdigit():
        raise _Refused("permerror", f"{tag.decode()}= is not a decimal number")
    return int(value)


def _verify_signature(parsed: Message, field: HeaderField, tags: dict[bytes, bytes],
                      keys: KeyTable, now: float, body_hashes: dict) -> None:
    """Returns for a good signature; raises _Refused with the result otherwise."""
    kind = _check_tags(tags, now)  # below, every tag used is there and of sane size
    try:
        record = keys.answer(_signature_key_name(tags[b"s"], tags[b"d"]))
    except DnsTempError as e:
        raise _Refused("temperror", f"key lookup failed: {e}") from None
    if record is None:
        raise _Refused("permerror", "no key for signature")
    key = public_key(record)
    if isinstance(key, str):
        raise _Refused("permerror", key)
    if key.kind != kind:
        raise _Refused("permerror", f"a {key.kind} key for an {tags[b'a'].decode()} signature")
    if key.kind == "rsa" and key.bits < MIN_RSA_BITS:
        raise _Refused("fail", f"RSA key under {MIN_RSA_BITS} bits (RFC 8301)")

    header_canon, body_canon = _canonicalisations(tags.get(b"c", b"simple/simple"))
    length = int(tags[b"l"]) if b"l" in tags else None
    memo = (body_canon, length)
    digest = body_hashes.get(memo)
    if digest is None:
        digest = body_hashes[memo] = body_digest(parsed.body, body_canon, length)
    if digest != _b64(tags[b"bh"]):
        raise _Refused("fail", "body hash mismatch")

    data = header_data(parsed.fields, _hashed_names(tags[b"h"]), field, header_canon)
    if not key.verifies(_b64(tags[b"b"]), hashlib.sha256(data).digest()):
        raise _Refused("fail", "signature did not verify")


@remembered(maxsize=4096)
def _signature_key_name(selector: bytes, domain: bytes) -> str:
    return _key_name(key_name(selector, domain))


@functools.lru_cache(maxsize=64)  # c= passed _check_tags: one of six values
def _canonicalisations(c: bytes) -> tuple[bytes, bytes]:
    header_canon, _, body_canon = c.partition(b"/")
    return header_canon, body_canon or b"simple"


def _hashed_names(h: bytes) -> tuple[bytes, ...]:
    # As dkimpy does (its bug #644046): a second From above the signed one is hashed
    # too, so an added From breaks the signature instead of hiding behind it.
    return (*signed_names(h), b"from")


def _b64(value: bytes) -> bytes:
    try:  # base64.b64decode without its Python-level argument handling
        return binascii.a2b_base64(b"".join(value.split()))
    except (binascii.Error, ValueError):
        return b""


# --- keys records (RFC 6376 §3.6.1) -----------------------------------------------------
_PKCS1 = padding.PKCS1v15()
# RFC 8017 §9.2 EMSA-PKCS1-v1_5, step 2: the DER DigestInfo of SHA-256 before the digest.
_SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")


@dataclass(frozen=True, slots=True)
class PublicKey:
    kind: str  # "rsa" or "ed25519" (k=)
    key: rsa.RSAPublicKey | ed25519.Ed25519PublicKey
    bits: int

    def verifies(self, signature: bytes, digest: bytes) -> bool:
        try:
            if self.kind == "rsa":
                # OpenSSL undoes the RSA and checks the padding; the DigestInfo and
                # digest are then compared whole (RFC 8017 §8.2.2 step 4), which is
                # what OpenSSL's own RSA_verify does.  Its verify() with a prehashed
                # SHA-256 costs a digest fetch on top: 68 against 58 us a signature
                # inside the running gateway.
                recovered = self.key.recover_data_from_signature(signature, _PKCS1, None)
                return recovered == _SHA256_DIGEST_INFO + digest
            # RFC 8463 §3: Ed25519 signs the SHA-256 hash (PureEdDSA)
            self.key.verify(signature, digest)
        except (InvalidSignature, ValueError):
            return False
        return True


# Records repeat and parsing DER per message is waste, so parsed keys are kept; a
# record over 4 KB (an RSA-4096 record is about 750 octets) is parsed each time
# instead: whoever runs a sending domain chooses its records' size.
@remembered(maxsize=4096, max_octets=4096)
def public_key(record: bytes) -> PublicKey | str:
    """The key a DKIM key record publishes, or the reason it is unusable."""
    tags = parse_tags(record)
    if tags is None:
        return "key record unparsable"
    if tags.get(b"v", b"DKIM1") != b"DKIM1":
        return "key record v= is not DKIM1"
    # §3.6.1 h=: the hash algorithms the key may be used with (default: any).
    if b"h" in tags and b"sha256" not in signed_names(tags[b"h"]):
        return "key record does not allow sha256"
    services = signed_names(tags.get(b"s", b"*"))
    if not {b"*", b"email", b"tlsrpt"} & set(services):
        return "key record is not for email (s=)"
    p = b"".join(tags.get(b"p", b"").split())
    if not p:
        return "key revoked (empty p=)" if b"p" in tags else "key record has no p="
    try:
        raw = base64.b64decode(p)
    except (binascii.Error, ValueError):
        return "key record p= is not base64"
    kind = tags.get(b"k", b"rsa").lower()
    try:
        if kind == b"rsa":
            key = serialization.load_der_public_key(raw)
            if not isinstance(key, rsa.RSAPublicKey):
                return "key record k=rsa holds another kind of key"
            return PublicKey("rsa", key, key.key_size)
        if kind == b"ed25519":
            return PublicKey("ed25519", ed25519.Ed25519PublicKey.from_public_bytes(raw), 256)
    except (ValueError, UnsupportedAlgorithm) as e:
        return f"key record p= unusable: {e}"
    return "key record k= unknown"
