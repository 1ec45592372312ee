"""The signer's fast paths give the same bytes as RFC 6376 relaxed canonicalisation
done the plain way, line by line, and the signatures they make verify with dkimpy.

gateway/dkim/sign.py hashes a body in place between the white-space runs it has to
fix, switches to whole-buffer passes when there are many, builds the signed header
fields from a cached per-shape template, and writes the DKIM-Signature field from
per-key constant parts.  Each of those is checked here against a reference written
straight from the RFC text (slow, obviously right), on chosen edge cases and on
hypothesis-generated shapes.
"""

from __future__ import annotations

import hashlib
import os
import re
import time

import dkim
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.dkim.keystore import ActiveKey, public_record
from gateway.dkim.sign import (
    _INLINE_RUNS,
    MalformedMessage,
    _body_digest,
    _cached_shape,
    body_hash,
    canonical_body,
    sign_message,
    signed_headers,
)

RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ED = ed25519.Ed25519PrivateKey.generate()
RSA_KEY = ActiveKey("fast.example", "r", "rsa-sha256", RSA)
ED_KEY = ActiveKey("fast.example", "e", "ed25519-sha256", ED)
RECORDS = {b"r._domainkey.fast.example.": public_record(RSA).encode(),
           b"e._domainkey.fast.example.": public_record(ED).encode()}


def dnsfunc(name: bytes, timeout: float = 5) -> bytes:
    return RECORDS.get(name, b"")


# --- references, straight from RFC 6376 §3.4.2 and §3.4.4 -----------------------------
def reference_body(body: bytes) -> bytes:
    """§3.4.4, line by line.  An unterminated last line is taken as the SMTP client
    sends it: with CRLF added (the signer's documented choice)."""
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    lines = body.split(b"\r\n")[:-1]
    lines = [re.sub(rb"[ \t]+", b" ", line).rstrip(b" ") for line in lines]
    while lines and not lines[-1]:
        lines.pop()
    return b"".join(line + b"\r\n" for line in lines)


def reference_fields(head: bytes) -> list[tuple[str, bytes]]:
    """§3.4.2: every field as (lower-case name, canonical "name:value" CRLF line)."""
    out = []
    for field in re.split(rb"\r\n(?![ \t])", head.removesuffix(b"\r\n")):
        name, _, value = field.partition(b":")
        name = name.replace(b"\r\n", b"").rstrip(b" \t").lower()
        value = re.sub(rb"[ \t]+", b" ", value.replace(b"\r\n", b"")).strip(b" ")
        out.append((name.decode(), name + b":" + value + b"\r\n"))
    return out


def reference_signed(head: bytes, names: tuple[str, ...]) -> bytes:
    """§5.4.2: each name in h= takes the bottom-most instance not yet taken; a name
    listed more often than it occurs takes nothing (§5.4: signs its absence)."""
    left: dict[str, list[bytes]] = {}
    for name, line in reference_fields(head):
        left.setdefault(name, []).append(line)
    return b"".join(left[n].pop() for n in names if left.get(n))


def verifies(msg: bytes, keys: list[ActiveKey]) -> list[bool]:
    signed = sign_message(msg, keys, int(time.time())) + msg
    d = dkim.DKIM(signed)
    return [bool(d.verify(idx=i, dnsfunc=dnsfunc)) for i in range(len(keys))]


# --- chosen shapes --------------------------------------------------------------------
RUNS = b"".join(b"word%d \t  next  \r\n" % i for i in range(3 * _INLINE_RUNS))
BODIES = {
    "clean": b"Hello Bob,\r\nthe figures.\r\n",
    "signature delimiter": b"Hello\r\n-- \r\nAlice\r\n",
    "trailing WSP on every line": b"one \r\ntwo\t\r\nthree \t \r\n",
    "tabs inside lines": b"a\tb\r\nc \t d\r\n\tindented\r\n",
    "a tab first in the body": b"\tx\r\n",
    "a space then a tab": b"a \tb\r\n",
    "runs of spaces": b"a  b   c    d\r\n",
    "more runs than are fixed in place": RUNS,
    "empty": b"",
    "only CRLF": b"\r\n",
    "only empty lines": b"\r\n\r\n\r\n",
    "only WSP lines": b" \r\n\t\r\n  \r\n",
    "empty lines at the end": b"x\r\n\r\n\r\n",
    "WSP lines at the end": b"x\r\n \r\n\t \r\n",
    "a trailing-WSP line then WSP lines": b"x \r\n \r\n",
    "no final CRLF": b"line one\r\nlast",
    "no final CRLF, trailing WSP": b"line one\r\nlast  ",
    "no final CRLF, one trailing SP": b"line one\r\nlast ",
    "one character": b"x",
    "long line": b"y" * 5000 + b"  z\r\n",
    "long line, trailing WSP": b"y " * 2000 + b"\r\n",
    "8-bit": "Grüße  aus Köln \r\n".encode(),
}


# The signer hashes the body where it lies in the message; a head ending in WSP and
# CRLFs must not be mistaken for part of an all-WSP body.
HEAD_BEFORE = b"From: a@fast.example\r\nSubject: x \t\r\n\r\n"


@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
def test_body_digest_equals_the_hash_of_the_line_by_line_canonical_body(body):
    assert canonical_body(body) == reference_body(body)
    expected = hashlib.sha256(reference_body(body)).digest()
    assert _body_digest(body) == expected
    assert _body_digest(HEAD_BEFORE + body, len(HEAD_BEFORE)) == expected


HEADS = {
    "plain": b"From: a@fast.example\r\nTo: b@example.org\r\nSubject: hi\r\n",
    "folded with SP and HTAB": (b"From: a@fast.example\r\nSubject: a\r\n b\r\n\tc\r\n"
                                b"To: b@example.org,\r\n  c@example.org\r\n"),
    "fold right after the colon": b"From: a@fast.example\r\nSubject:\r\n folded first\r\n",
    "tabs and runs": b"From:\ta@fast.example\r\nSubject: x \t y\t\r\nTo:  b@example.org  \r\n",
    "no space after the colon": b"From:a@fast.example\r\nSubject:hi\r\n",
    "empty values": b"From: a@fast.example\r\nSubject:\r\nTo: \r\nCc:\t \r\n",
    "duplicates": b"To: one\r\nFrom: a@fast.example\r\nTo: two\r\nReceived: x\r\nReceived: y\r\nTo: three\r\n",
    "mixed case names": b"FROM: a@fast.example\r\nsubject: hi\r\nMessage-Id: <1@x>\r\n",
    "colons in values": b"From: a@fast.example\r\nSubject: Re: Fwd: a:b\r\nDate: Mon, 23 Nov 2026 19:00:00 +0000\r\n",
    "very long header line": b"From: a@fast.example\r\nSubject: " + b"long " * 400 + b"\r\n",
    "many fields": b"From: a@fast.example\r\n" + b"".join(b"X-F%d: v\r\n" % i for i in range(100)),
    "many signed fields": b"From: a@fast.example\r\n" + b"To: r\r\n" * 80,
    "head longer than the shape cache keeps": (b"From: a@fast.example\r\nX-Long: " + b"z" * 20000
                                               + b"\r\nSubject: s\r\n"),
    # NUL marks value starts in the signer's templates; one in the input takes the
    # value-by-value way instead.
    "NUL in a value": b"From: a@fast.example\r\nSubject: \x00 a\x00b \x00\r\nTo:\x00\r\n",
}


@pytest.mark.parametrize("head", HEADS.values(), ids=HEADS.keys())
def test_signed_fields_equal_the_field_by_field_canonical_form(head):
    names, signed = signed_headers(head)
    assert signed == reference_signed(head, names)
    assert signed.startswith(b"from:")


def test_an_empty_head_signs_nothing_but_oversigns_from_reply_to_and_subject():
    assert signed_headers(b"") == (("from", "reply-to", "subject"), b"")
    with pytest.raises(MalformedMessage, match="From"):
        sign_message(b"\r\nbody\r\n", [ED_KEY], int(time.time()))


def test_the_same_shape_with_other_values_gives_those_values():
    # The per-shape template is cached: a second message of the same shape must get
    # its own values, not the first one's.
    first = signed_headers(b"From: a@fast.example\r\nSubject: one\r\n")
    second = signed_headers(b"From: b@fast.example\r\nSubject:  two  \r\n")
    assert first[0] == second[0]
    assert second[1] == b"from:b@fast.example\r\nsubject:two\r\n"


def test_many_field_or_long_name_heads_are_not_kept_in_the_shape_cache():
    # The cache holds the field names: their number and length are bounded.
    before = _cached_shape.cache_info().currsize
    signed_headers(HEADS["many fields"])
    signed_headers(b"From: a@fast.example\r\nX-" + b"n" * 20000 + b"%d: v\r\n" % time.time_ns())
    assert _cached_shape.cache_info().currsize == before


@pytest.mark.parametrize("head", [
    b"From: a@fast.example\r\nno colon\r\n",
    b"From: a@fast.example\r\n: empty name\r\n",
    b"From: a@fast.example\r\nBad Name: x\r\n",
    b" From: a@fast.example\r\n",
])
def test_malformed_heads_are_refused_on_every_call_not_only_the_first(head):
    for _ in range(2):  # a refused shape is never cached as good
        with pytest.raises(MalformedMessage):
            signed_headers(head)


@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
@pytest.mark.parametrize("head", HEADS.values(), ids=HEADS.keys())
def test_every_chosen_shape_verifies_with_dkimpy(head, body):
    msg = head + b"\r\n" + body
    if body and not body.endswith(b"\r\n"):
        msg += b"\r\n"  # as SMTP delivers it; dkimpy keeps WSP of an unterminated line
    assert verifies(msg, [ED_KEY]) == [True]


def test_dual_signature_with_expiry_verifies_and_folds_b_at_72():
    msg = HEADS["folded with SP and HTAB"] + b"\r\n" + BODIES["signature delimiter"]
    fields = sign_message(msg, [RSA_KEY, ED_KEY], int(time.time()), expire_after=3600)
    assert all(len(line) <= 78 for line in fields.split(b"\r\n"))
    d = dkim.DKIM(fields + msg)
    assert [bool(d.verify(idx=i, dnsfunc=dnsfunc)) for i in range(2)] == [True, True]
    assert fields.count(b" x=") == 2
    assert body_hash(BODIES["signature delimiter"]) in fields.replace(b"\r\n\t", b"")


# --- generated shapes -----------------------------------------------------------------
CHUNK = st.sampled_from([b"a", b"Z", b"\xe9", b":", b" ", b"  ", b"\t", b" \t ", b"   ", b"\r\n",
                         b" \r\n", b"\t\r\n", b"\r\n\r\n", b"\r\n \r\n"])
BODY = st.lists(CHUNK, max_size=60).map(b"".join)


@settings(max_examples=500, deadline=None)
@given(BODY)
def test_any_body_digest_equals_the_line_by_line_reference(body):
    expected = hashlib.sha256(reference_body(body)).digest()
    assert _body_digest(body) == expected
    assert _body_digest(HEAD_BEFORE + body, len(HEAD_BEFORE)) == expected


VALUE = st.lists(st.sampled_from([b"v", b"W", b":", b" ", b"\t", b"  ", b"\r\n ", b"\r\n\t", b"\xfc"]),
                 max_size=12).map(b"".join).filter(lambda v: not v.endswith((b"\r\n ", b"\r\n\t")))
NAME = st.sampled_from([b"From", b"from", b"To", b"Subject", b"X-Other", b"Received", b"Cc",
                        b"Content-Type", b"Subject \t"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(NAME, VALUE), max_size=10), BODY)
def test_any_head_gives_the_reference_fields_and_verifies(fields, body):
    head = b"From: a@fast.example\r\n" + b"".join(n + b":" + v + b"\r\n" for n, v in fields)
    names, signed = signed_headers(head)
    assert signed == reference_signed(head, names)
    if b" :" not in head and b"\t:" not in head:  # dkimpy cannot parse WSP before the colon
        msg = head + b"\r\n" + body
        if body and not body.endswith(b"\r\n"):
            msg += b"\r\n"
        assert verifies(msg, [ED_KEY]) == [True]


def test_libsodium_signs_the_same_bytes_as_openssl_for_every_key():
    # Ed25519 is deterministic (RFC 8032 §5.1.6): the signer may use either library.
    from nacl.bindings import crypto_sign

    from gateway.dkim.sign import _sodium_secret

    for _ in range(20):
        key = ed25519.Ed25519PrivateKey.generate()
        for digest in (b"\x00" * 32, hashlib.sha256(b"dkim").digest(), os.urandom(32)):
            assert crypto_sign(digest, _sodium_secret(key))[:64] == key.sign(digest)
