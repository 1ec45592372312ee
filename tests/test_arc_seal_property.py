"""Our ARC sets (gateway/stamps/arc_seal.py) against dkimpy's ``arc_verify`` on random
header and body shapes (folding, WSP runs, tabs, 8-bit, long lines, empty bodies),
as a first hop (i=1, cv=none) and extending a chain dkimpy made (i=2, cv=pass).
The wire tests (tests/test_wire_arc_sealing.py) add mailauth as a second verifier."""

from __future__ import annotations

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from hypothesis import HealthCheck, given, settings

from gateway.dkim.keystore import ActiveKey, public_record
from gateway.message import Message
from gateway.stamps.arc_seal import SealError, instance_of, relaxed_field, seal
from tests.test_dkim_property import message

RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
FORWARDER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
SEALER = ActiveKey("isp.example", "arc1", "rsa-sha256", RSA)
RECORDS = {b"arc1._domainkey.isp.example.": public_record(RSA).encode(),
           b"fw._domainkey.forwarder.example.": public_record(FORWARDER).encode()}
OURS = "mx.isp.example"


def dnsfunc(name: bytes, timeout: float = 5) -> bytes:
    return RECORDS.get(name, b"")


def our_ar(arc: str | None) -> bytes:
    arc_part = f";\r\n\tarc={arc}" if arc else ""
    return f"Authentication-Results: {OURS};\r\n\tspf=pass smtp.mailfrom=a@prop.example{arc_part}\r\n".encode()


def forwarded(msg: bytes) -> bytes:
    pem = FORWARDER.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    with_ar = b"Authentication-Results: forwarder.example; spf=pass smtp.mailfrom=a@prop.example\r\n" + msg
    return b"".join(dkim.arc_sign(with_ar, b"fw", b"forwarder.example", pem, b"forwarder.example")) + with_ar


def sealed(msg: bytes, arc: str | None, cv: str, instance: int) -> bytes:
    prefix = our_ar(arc)
    return seal(prefix, Message.parse(msg), SEALER, OURS, cv, instance, 1_790_000_000) + prefix + msg


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message())
def test_a_first_hop_seal_verifies_with_dkimpy(msg):
    cv, sets, reason = dkim.arc_verify(sealed(msg, None, "none", 1), dnsfunc=dnsfunc)
    assert (cv, len(sets)) == (dkim.CV_Pass, 1), reason


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message())
def test_a_chain_we_extend_verifies_with_dkimpy(msg):
    arriving = forwarded(msg)
    assert dkim.arc_verify(arriving, dnsfunc=dnsfunc)[0] == dkim.CV_Pass
    cv, sets, reason = dkim.arc_verify(sealed(arriving, "pass", "pass", 2), dnsfunc=dnsfunc)
    assert (cv, len(sets)) == (dkim.CV_Pass, 2), reason
    assert [s["as-domain"] for s in sets] == [b"isp.example", b"forwarder.example"]


MSG = b"From: a@prop.example\r\nSubject: x\r\n\r\nbody\r\n"


def test_a_changed_body_fails_our_seal():
    tampered = sealed(MSG, None, "none", 1).replace(b"body", b"bodY")
    assert dkim.arc_verify(tampered, dnsfunc=dnsfunc)[0] != dkim.CV_Pass


def test_a_seal_with_cv_fail_covers_only_its_own_set():
    broken = forwarded(MSG).replace(b"body", b"bodY")  # the forwarder's AMS no longer verifies
    out = sealed(broken, "fail", "fail", 2)
    assert b"cv=fail" in out.split(b"\r\nARC-Message-Signature:", 1)[0]
    cv, _, _ = dkim.arc_verify(out, dnsfunc=dnsfunc)
    assert cv != dkim.CV_Pass  # dkimpy: None for a newest seal with cv=fail (LIBRARY-NOTES)


@pytest.mark.parametrize(("prefix", "words"), [
    (b"Received: from x by y; Mon, 30 Nov 2026 10:00:00 +0000\r\n", "0 Authentication-Results"),
    (b"Authentication-Results: someone.else; spf=pass\r\n", "0 Authentication-Results"),
])
def test_no_seal_without_our_authentication_results(prefix, words):
    with pytest.raises(SealError, match=words):
        seal(prefix, Message.parse(MSG), SEALER, OURS, "none", 1, 0)


def test_no_seal_with_an_ed25519_key():
    key = ActiveKey("isp.example", "ed", "ed25519-sha256", ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(SealError, match="rsa-sha256"):
        seal(our_ar(None), Message.parse(MSG), key, OURS, "none", 1, 0)


def test_a_chain_missing_a_field_cannot_be_extended_with_cv_pass():
    arriving = forwarded(MSG)
    # dkimpy puts the set on top as AS, AMS, AAR: cut the AMS out.
    head, rest = arriving.split(b"ARC-Message-Signature:", 1)
    without_ams = head + b"ARC-Authentication-Results:" + rest.split(b"\r\nARC-Authentication-Results:", 1)[1]
    with pytest.raises(SealError, match="arc-message-signature"):
        seal(our_ar("pass"), Message.parse(without_ams), SEALER, OURS, "pass", 2, 0)


@pytest.mark.parametrize(("raw", "relaxed"), [
    (b"Subject:  a \t b  \r\n", b"subject:a b"),
    (b"ARC-Seal: i=1;\r\n\tcv=none; b=\r\n", b"arc-seal:i=1; cv=none; b="),
    (b"To \t: x\r\n", b"to:x"),
])
def test_relaxed_header_canonicalisation_rfc6376_3_4_2(raw, relaxed):
    assert relaxed_field(raw) == relaxed


def test_instance_tags_are_read_where_rfc8617_puts_them():
    fields = Message.parse(b"ARC-Authentication-Results: i=3; mx; dkim=pass header.i=@x\r\n"
                           b"ARC-Seal: a=rsa-sha256; i=12; cv=pass\r\nFrom: a@b\r\n\r\n").fields
    assert [instance_of(f) for f in fields] == [3, 12, None]
