"""An ARC set (RFC 8617 §5.1): ARC-Authentication-Results, ARC-Message-Signature
and ARC-Seal, for the top of an inbound message, made with our DKIM signer's
canonicalisation and OpenSSL's RSA (gateway/dkim/sign.py).

dkimpy's ``arc_sign`` does the same with pure-Python RSA: about 24 times the CPU
for a 5 KB message (bench/arc_seal.py, 11.7 ms against 0.49 ms); dkimpy stays one
of the two verifiers the tests check our seals with, beside mailauth.

* AAR (§4.1.1): our Authentication-Results, as we wrote it, with ``i=`` in front.
* AMS (§4.1.2): a DKIM signature in all but name (no ``v=``, an ``i=``): the same
  header fields our DKIM signer signs (From over-signed; never ARC or A-R fields),
  relaxed/relaxed, and the same body hash.
* AS (§4.1.3, §5.1.1): over every ARC set, oldest first, each as AAR, AMS, AS,
  then its own with ``b=`` empty; with ``cv=fail`` over its own set only.

``cv=`` is decided before (gateway/rules/arc_seal.py), from our verdict on the
chain.  CPU work: call :func:`seal_off_loop` from async code.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Sequence
from concurrent.futures import Executor

from gateway.dkim.sign import MalformedMessage, rsa_signature, signed_parts
from gateway.message import HeaderField, MalformedHeader, Message
from gateway.stamps.authresults import claims_authserv_id
from gateway.values.keys import ActiveKey

ARC_FIELDS = (b"arc-authentication-results", b"arc-message-signature", b"arc-seal")
_WSP_RUN = re.compile(rb"[ \t]+")
_INSTANCE = re.compile(rb"^\s*i\s*=\s*([0-9]+)\s*(?:;|$)|;\s*i\s*=\s*([0-9]+)\s*(?:;|$)")


class SealError(Exception):
    """No seal can be made (no A-R of ours, no From:, a chain we cannot line up)."""


def relaxed_field(raw: bytes) -> bytes:
    """RFC 6376 §3.4.2 relaxed header canonicalisation of one field, without CRLF:
    lower-case name, unfolded, WSP runs to one SP, none at the end or by the colon."""
    name, _, value = raw.partition(b":")
    value = _WSP_RUN.sub(b" ", value.replace(b"\r\n", b"")).strip(b" ")
    return name.rstrip(b" \t").lower() + b":" + value


def instance_of(field: HeaderField) -> int | None:
    """The ``i=`` of an ARC field (the first tag of an AAR, a tag of AMS and AS)."""
    found = _INSTANCE.search(field.raw_value.replace(b"\r\n", b""))
    if found is None:
        return None
    return int(found.group(1) or found.group(2))


def _chain(fields: Sequence[HeaderField], upto: int) -> list[bytes]:
    """The arriving sets 1..upto in the order the seal hashes them (§5.1.1)."""
    by_instance: dict[tuple[int, bytes], list[HeaderField]] = {}
    for field in fields:
        if field.key in ARC_FIELDS and (i := instance_of(field)) is not None:
            by_instance.setdefault((i, field.key), []).append(field)
    out = []
    for i in range(1, upto + 1):
        for key in ARC_FIELDS:
            found = by_instance.get((i, key), [])
            if len(found) != 1:  # a chain our check passed has exactly one of each
                raise SealError(f"ARC set {i} has {len(found)} {key.decode()} fields")
            out.append(relaxed_field(found[0].raw))
    return out


def seal(prefix: bytes, message: Message, key: ActiveKey, authserv_id: str, cv: str,
         instance: int, timestamp: int) -> bytes:
    """The three fields for the top of ``prefix + message``, newest first (AS, AMS,
    AAR).  ``prefix``: our fields above the message, our Authentication-Results
    among them; ``instance``: the new set's ``i=`` (one more than the chain's)."""
    if key.algorithm != "rsa-sha256":
        raise SealError(f"ARC is sealed with rsa-sha256, not {key.algorithm}")
    try:
        ours = [f for f in Message.parse(prefix).fields
                if claims_authserv_id(f, authserv_id.strip().lower())]
        parts = signed_parts(message, prefix)
    except (MalformedHeader, MalformedMessage) as exc:
        raise SealError(str(exc)) from exc
    if len(ours) != 1:
        raise SealError(f"{len(ours)} Authentication-Results fields of ours to seal")
    ar_value = ours[0].raw.partition(b":")[2].lstrip(b" \t")
    if not ar_value.endswith(b"\r\n"):
        ar_value += b"\r\n"
    aar = b"ARC-Authentication-Results: i=%d; %s" % (instance, ar_value)

    head = b"i=%d; a=rsa-sha256; c=relaxed/relaxed; d=%s;\r\n\ts=%s; t=%d;\r\n\t" % (
        instance, key.domain.encode("ascii"), key.selector.encode("ascii"), timestamp)
    ams = b"ARC-Message-Signature: %s%s;\r\n\tbh=%s;\r\n\tb=" % (head, parts.h_folded, parts.bh)
    # §4.1.2: as DKIM (RFC 6376 §3.7), the signed fields, then the AMS with b= empty.
    ams += rsa_signature(key, hashlib.sha256(parts.signed + relaxed_field(ams)).digest())
    ams += b"\r\n"

    seal_field = b"ARC-Seal: i=%d; a=rsa-sha256; t=%d; cv=%s;\r\n\td=%s; s=%s;\r\n\tb=" % (
        instance, timestamp, cv.encode("ascii"), key.domain.encode("ascii"),
        key.selector.encode("ascii"))
    earlier = _chain(message.fields, instance - 1) if cv != "fail" else []
    hashed = b"".join(f + b"\r\n" for f in (*earlier, relaxed_field(aar), relaxed_field(ams)))
    seal_field += rsa_signature(key, hashlib.sha256(hashed + relaxed_field(seal_field)).digest())
    return seal_field + b"\r\n" + ams + aar


async def seal_off_loop(prefix: bytes, message: Message, key: ActiveKey, authserv_id: str,
                        cv: str, instance: int, timestamp: int,
                        executor: Executor | None = None) -> bytes:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, seal, prefix, message, key, authserv_id, cv,
                                      instance, timestamp)
